#!/usr/bin/env python3
"""One compile serves everything (issue 16): after the full build of scripts/test.sh, building
any package, binary or benchmark alone must compile nothing. Each case runs cargo with JSON
messages; the first artifact that is not fresh stops cargo and fails the check, naming the
package (a dependency compiled again means its feature set differs: run `cargo hakari
generate`; a workspace crate means its features or wrapper differ).

Usage: scripts/check-one-build.py   (CARGO_TARGET_DIR as for the other scripts)
"""
import json
import os
import signal
import subprocess
import sys
import tempfile


def members():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"],
        check=True, capture_output=True, text=True,
    ).stdout
    return sorted(p["name"] for p in json.loads(out)["packages"])


def cases():
    # What README and the scripts build on their own: the server (`cargo run --release --bin
    # kalamdb-server`), the image's binaries, each package alone, and the criterion benches.
    yield ["build", "--release", "--bin", "kalamdb-server"]
    yield ["build", "--release", "-p", "kalamdb-node", "--bins"]
    for m in members():
        yield ["build", "--release", "-p", m]
    yield ["bench", "--no-run", "-p", "kalamdb-benches", "--bench", "micro"]


def run(args):
    cmd = ["cargo", *args, "--locked", "--message-format=json"]
    # stderr to a file, not a pipe: nobody reads it while stdout is read, and a full pipe would
    # stall cargo. A new process group, so stopping cargo also stops the compilers it started.
    errfile = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errfile, text=True,
                            start_new_session=True)
    stale = None
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and not msg.get("fresh", True):
            stale = msg["package_id"]
            os.killpg(proc.pid, signal.SIGTERM)
            break
    proc.stdout.close()
    code = proc.wait()
    errfile.seek(0)
    err = errfile.read()
    errfile.close()
    if stale is not None:
        print(f"check-one-build: `cargo {' '.join(args)}` compiled {stale} again", file=sys.stderr)
        return False
    if code != 0:
        print(f"check-one-build: `cargo {' '.join(args)}` failed:\n{err}", file=sys.stderr)
        return False
    print(f"check-one-build: `cargo {' '.join(args)}`: nothing to compile")
    return True


def main():
    ok = all([run(c) for c in cases()])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
