"""Predict's speed: reviews a second of `Predictor.stream`, as `imdbsent predict` scores a
stream, over IMDB's 25,000 raw test reviews (model load excluded), for each run given; by this
checkout and, with `--before SRC`, by another checkout of imdbsent (its `src` folder) too.
Each measurement runs in a fresh interpreter, the code bases in turn (`--repeats` times; the
machine's speed drifts, so only measurements taken side by side compare). Written to
benchmarks/THROUGHPUT.md.

    python benchmarks/throughput.py --source ../shared/data/imdb benchmarks/work/runs/default-1234
    python benchmarks/throughput.py --source ../shared/data/imdb --before ../old/src RUN [RUN ...]

Run it on a quiet machine: each row is timed. benchmarks/run.py measures its recipes' column
"predict reviews/s" with `--json`. `--peak THREADS` prints predict's peak memory on the longest
test reviews instead (one run; PYTHONPATH picks the code base):

    python benchmarks/throughput.py --source ../shared/data/imdb --peak 2 RUN
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "THROUGHPUT.md"


def throughput(run: Path, source: Path) -> dict:
    """Reviews a second of Predictor.stream over the raw test texts, after a warm-up."""
    import pyarrow.parquet as pq

    from imdbsent.predict import Predictor
    texts = pq.read_table(source / "test.parquet").column("text").to_pylist()
    predictor = Predictor(run)
    predictor.predict(texts[:512])  # warm-up
    start = time.time()
    for _ in predictor.stream(texts):
        pass
    seconds = time.time() - start
    return {"reviews": len(texts), "seconds": seconds, "per_second": len(texts) / seconds}


def peak(run: Path, source: Path, threads: int, longest: int = 1024) -> dict:
    """Peak RSS (MiB) of Predictor.predict on the `longest` test reviews on `threads` compute
    threads, and before scoring (the model loaded)."""
    import resource

    import pyarrow.parquet as pq
    import torch

    from imdbsent.predict import Predictor
    torch.set_num_threads(threads)
    texts = sorted(pq.read_table(source / "test.parquet").column("text").to_pylist(), key=len)
    predictor = Predictor(run)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    predictor.predict(texts[-longest:])
    return {"threads": threads, "loaded_mib": loaded,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measured(run: Path, source: Path, src: Path | None = None) -> dict:
    """`throughput` in a fresh interpreter, importing imdbsent from `src` (default: this
    checkout's)."""
    path = [str((src or ROOT / "src").resolve()), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    out = subprocess.run([sys.executable, __file__, "--json", "--source", str(source), str(run)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders to score with")
    parser.add_argument("--source", type=Path, required=True, help="local IMDB copy (Parquet)")
    parser.add_argument("--before", type=Path, help="src folder of another imdbsent to compare")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measurements a run and code base, alternating (the median counts)")
    parser.add_argument("--peak", type=int, metavar="THREADS",
                        help="print the peak memory of predicting the 1,024 longest test reviews "
                        "with the one run on THREADS compute threads, as JSON, and stop")
    parser.add_argument("--json", action="store_true",
                        help="measure the one run here and print JSON (benchmarks/run.py)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.json or args.peak:
        if len(args.runs) > 1:
            parser.error("--json and --peak measure one run")
        print(json.dumps(peak(args.runs[0], args.source, args.peak) if args.peak
                         else throughput(args.runs[0], args.source)))
        return
    sys.path.insert(0, str(ROOT / "benchmarks" / "short"))
    import suite

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = ["# Predict's speed", "", f"- machine: {suite.machine()}", f"- date: {started}",
             "- command: `python benchmarks/throughput.py --source ../shared/data/imdb"
             + (f" --before {args.before}" if args.before else "")
             + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
             + (f" --out {args.out}" if args.out != DEFAULT_OUT else "")
             + " " + " ".join(str(r) for r in args.runs) + "`",
             "- reviews a second of `Predictor.stream` over the 25,000 raw test reviews, as "
             "`imdbsent predict` scores a stream (model load excluded), one fresh interpreter "
             f"a row; {args.repeats} measurements each, the code bases alternating, and their "
             "median", "", "| run | imdbsent | reviews/s, each | median reviews/s |",
             "| --- | --- | --- | --- |"]
    codes = ([args.before] if args.before else []) + [None]
    for run in args.runs:
        speeds: dict[Path | None, list[float]] = {src: [] for src in codes}
        for _ in range(args.repeats):
            for src in codes:
                print(f"{run} by {src or 'this checkout'}", file=sys.stderr, flush=True)
                speeds[src].append(measured(run, args.source, src)["per_second"])
        lines += [f"| {run.name} | {src or 'this checkout'} | "
                  f"{', '.join(f'{v:,.0f}' for v in got)} | {statistics.median(got):,.0f} |"
                  for src, got in speeds.items()]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
