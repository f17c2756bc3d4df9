"""Peak memory of `imdbsent predict -` streaming N lines from standard input: it must not grow
with N. Writes one Markdown table row per N to standard output (and the machine).

    python benchmarks/predict_memory.py --run benchmarks/work/runs/default 10000 1000000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

EXE = Path(sys.executable).parent / "imdbsent"
LINES = [b"A great film, I loved every minute of it.", b"Dull, far too long and badly acted.",
         b"", b"The plot made no sense but the music was wonderful!",
         "\u8fd9\u90e8\u7535\u5f71\u592a\u68d2\u4e86 \U0001F600".encode()]


def measure(run: Path, n: int) -> tuple[float, float, int]:
    """Feed `n` lines to predict; return wall seconds, peak RSS in MiB (run.peak_measured),
    output rows."""
    from run import peak_measured
    with peak_measured([str(EXE), "predict", "-", "--run", str(run)]) as (timed, peak_mib):
        proc = subprocess.Popen(timed, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        rows = 0

        def count() -> None:
            nonlocal rows
            for _ in proc.stdout:
                rows += 1

        reader = threading.Thread(target=count)
        reader.start()
        start = time.time()
        chunk = b"\n".join(LINES) + b"\n"
        full, rest = divmod(n, len(LINES))
        for _ in range(full):
            proc.stdin.write(chunk)
        proc.stdin.write(b"".join(line + b"\n" for line in LINES[:rest]))
        proc.stdin.close()
        status = proc.wait()
        reader.join()
        if status:
            sys.exit(f"predict failed on {n} lines")
        return time.time() - start, peak_mib(), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("counts", type=int, nargs="+")
    args = parser.parse_args()
    print("| lines in | rows out | wall s | lines/s | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- |")
    for n in args.counts:
        seconds, rss, rows = measure(args.run, n)
        print(f"| {n:,} | {rows:,} | {seconds:.0f} | {n / seconds:,.0f} | {rss:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
