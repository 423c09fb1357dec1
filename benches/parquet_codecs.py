"""How the Parquet codec moves the cold-query ratio to DuckDB (issue 22, a study, not a gate).

Writes the data set of `kalamdb-cold` (10M rows, the columns our flush writes, 1M-row files,
128Ki-row row groups, ~8 KiB pages, 8 KiB dictionary pages) once per codec with pyarrow, then
times `kalamdb-cold`'s two queries with DuckDB and with DataFusion (the version our server
links) over each set: median of 7 runs after warm-up runs. Only the ratio within one codec
is meant to be read; the files are pyarrow's, not our writer's.

Usage (the bench venv of scripts/bench-cold.sh, plus pyarrow and numpy):
    python benches/parquet_codecs.py /tmp/codecs [snappy lz4 none zstd]
"""
import glob
import os
import statistics
import sys
import time

import datafusion
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 10_000_000
FILE_ROWS = 1 << 20
QUERIES = {
    "aggregate": "SELECT category, count(*), sum(amount), avg(amount) FROM {t} GROUP BY category ORDER BY category",
    "filter": "SELECT count(*), sum(amount) FROM {t} WHERE category = 'c3' AND amount > 990.0",
}


def write(out, codec):
    """The rows of kalamdb-cold's `row(i)`, plus `_seq` and `_deleted` as a flush writes them."""
    os.makedirs(out, exist_ok=True)
    categories = pa.array(["c%d" % c for c in range(10)])
    users = pa.array(["u%d" % u for u in range(1000)])
    for f in range((ROWS + FILE_ROWS - 1) // FILE_ROWS):
        i = np.arange(f * FILE_ROWS, min(ROWS, (f + 1) * FILE_ROWS), dtype=np.uint64)
        table = pa.table({
            "id": i.astype(np.int64),
            "user_id": users.take(pa.array(i % 1000)),
            "category": categories.take(pa.array((i * 7) % 10)),
            "amount": ((i * 7919) % 100000).astype(np.float64) / 100.0,
            "ts": pa.array((1_700_000_000_000 + i * 1000).astype(np.int64), type=pa.timestamp("ms")),
            "_seq": (i + 1).astype(np.int64),
            "_deleted": np.zeros(len(i), dtype=bool),
        })
        pq.write_table(table, "%s/f%02d.parquet" % (out, f), compression=codec, row_group_size=131072,
                       data_page_size=8192, dictionary_pagesize_limit=8192,
                       use_dictionary=["user_id", "category", "ts", "amount", "_deleted"], write_page_index=True)
    return sum(os.path.getsize(p) for p in glob.glob(out + "/*.parquet"))


def timed(run, warmup):
    for _ in range(warmup):
        run()
    times = []
    for _ in range(7):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    root = sys.argv[1]
    codecs = sys.argv[2:] or ["snappy", "lz4", "none", "zstd"]
    print("duckdb %s datafusion %s pyarrow %s" % (duckdb.__version__, datafusion.__version__, pa.__version__))
    for codec in codecs:
        d = os.path.join(root, codec)
        size = write(d, codec)
        files = sorted(glob.glob(d + "/*.parquet"))
        con = duckdb.connect()
        src = "read_parquet([%s])" % ", ".join("'%s'" % f for f in files)
        ctx = datafusion.SessionContext()
        ctx.register_parquet("t", d + "/")
        line = ["codec=%s bytes=%d" % (codec, size)]
        for name, q in QUERIES.items():
            duck = timed(lambda: con.execute(q.replace("{t}", src)).fetchall(), 2)
            # DataFusion's first runs are slower while the allocator warms up (see bench-cold.sh).
            fusion = timed(lambda: ctx.sql(q.replace("{t}", "t")).collect(), 8)
            line.append("%s duckdb=%.4f datafusion=%.4f ratio=%.2f" % (name, duck, fusion, fusion / duck))
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
