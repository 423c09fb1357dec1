# Sourced by the benchmark scripts. run_bench SYSTEM SETUP COMMAND...: runs a load generator
# (kalamdb-load or kalamdb-tail). With BENCH_RECORDS set (scripts/bench-all.sh does), the
# command's --json figures are appended to that file as one record
# {"system":...,"setup":...,"result":{...}}; otherwise its human-readable line is printed.
# shellcheck shell=bash
run_bench() {
  local system=$1 setup=$2 out
  shift 2
  if [[ -n "${BENCH_RECORDS:-}" ]]; then
    out="$("$@" --json | tail -n 1)"
    printf '{"system":"%s","setup":"%s","result":%s}\n' "$system" "$setup" "$out" >>"$BENCH_RECORDS"
    echo "$system ($setup): $out"
  else
    echo "$system ($setup): $("$@" | tr '\n' ' ')"
  fi
}
