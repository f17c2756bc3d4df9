"""Data beyond memory: `prepare --vectors-dim 0` on IMDB and on synthetic corpora 4 and 16
times its size (each review repeated with a marker word, so that no two are identical), its
wall time and peak memory; `train --config nbow --epochs 1` on the largest; written to
benchmarks/STREAMING.md (which benchmarks/run.py copies into RESULTS.md).

    python benchmarks/streaming.py --source ../shared/data/imdb
    python benchmarks/streaming.py --source ../shared/data/imdb --before ../old/src

`--before SRC` also times the same prepare of IMDB by another checkout of imdbsent (its `src`
folder), for "no slower than before". Run it on a quiet machine: each row is timed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).parent / "imdbsent"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "short"))
SPLITS = ("train", "test", "unsupervised")
ROW_GROUP = 10_000  # rows a row group of the synthetic corpora (IMDB's files have one each)
RSS_LIMIT_MIB = 2.5 * 1000**3 / 2**20  # the 2.5 GB
WALL_FACTOR = 20.0  # 16x IMDB within 20 times IMDB's wall time


def synthetic(source: Path, factor: int, folder: Path) -> Path:
    """IMDB `factor` times over: copy k of every review starts with the marker word
    `copyk`, so that no two reviews are identical. Written a row group at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        table = pq.read_table(source / f"{split}.parquet", columns=["text", "label"])
        with pq.ParquetWriter(folder / f"{split}.parquet", table.schema) as writer:
            for k in range(factor):
                marked = table.set_column(0, "text", pc.binary_join_element_wise(
                    pa.scalar(f"copy{k}"), table.column("text"), " "))
                for start in range(0, len(marked), ROW_GROUP):
                    writer.write_table(marked.slice(start, ROW_GROUP))
    return folder


def measured(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    """Run a command, its output to `log`: wall seconds and the command's own peak RSS."""
    from run import run_measured
    wall, rss, code = run_measured(cmd, log, env)
    if code:
        sys.exit(f"failed: {' '.join(cmd)}; see {log}")
    return {"wall_s": wall, "rss_mib": rss}


def rows_of(folder: Path) -> int:
    return sum(pq.ParquetFile(folder / f"{s}.parquet").metadata.num_rows for s in SPLITS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="local IMDB copy (Parquet)")
    parser.add_argument("--factors", default="1,4,16")
    parser.add_argument("--before", type=Path, help="src folder of another imdbsent to compare")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "streaming")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "STREAMING.md")
    args = parser.parse_args()
    import suite

    factors = [int(f) for f in args.factors.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    if args.before:
        print("prepare of IMDB by the imdbsent in", args.before, file=sys.stderr, flush=True)
        env = {**os.environ, "PYTHONPATH": str(args.before.resolve())}
        out = args.work / "prepared-before"
        rows.append({"corpus": f"IMDB, imdbsent in {args.before}", "reviews": rows_of(args.source),
                     **measured([sys.executable, "-m", "imdbsent", "prepare", "--source",
                                 str(args.source), "--out", str(out), "--vectors-dim", "0",
                                 "--force"], args.work / "prepare-before.log", env)})
        shutil.rmtree(out, ignore_errors=True)
    prepared = {}
    for factor in factors:
        corpus = args.source if factor == 1 else synthetic(
            args.source, factor, args.work / f"corpus-{factor}x")
        out = prepared[factor] = args.work / f"prepared-{factor}x"
        print(f"prepare of {factor}x IMDB", file=sys.stderr, flush=True)
        rows.append({"corpus": "IMDB" if factor == 1 else f"{factor}x IMDB", "factor": factor,
                     "reviews": rows_of(corpus),
                     **measured([str(EXE), "prepare", "--source", str(corpus), "--out", str(out),
                                 "--vectors-dim", "0", "--force"],
                                args.work / f"prepare-{factor}x.log")})
        if factor != 1:
            shutil.rmtree(corpus)
    largest = max(factors)
    print(f"train --config nbow --epochs 1 on {largest}x IMDB", file=sys.stderr, flush=True)
    run = args.work / f"nbow-{largest}x"
    shutil.rmtree(run, ignore_errors=True)
    trained = measured([str(EXE), "train", "--config", "nbow", "--epochs", "1", "--data",
                        str(prepared[largest]), "--run-dir", str(run)],
                       args.work / f"train-{largest}x.log")
    from imdbsent import runs
    test_acc = runs.read_metrics(run)[-1]["test_acc"]

    by_factor = {r["factor"]: r for r in rows if "factor" in r}
    lines = ["# Data beyond memory: streaming `prepare`", "",
             f"- machine: {suite.machine()}", f"- date: {started}",
             "- command: `python benchmarks/streaming.py --source ../shared/data/imdb"
             + (f" --before {args.before}`" if args.before else "`"),
             "- `imdbsent prepare --vectors-dim 0 --force` of each corpus; Nx IMDB is every "
             "review N times, copy k starting with the marker word `copyk`, in Parquet row "
             f"groups of {ROW_GROUP:,}; peak RSS is the command's own (GNU time)", "",
             "| corpus | reviews | wall s | peak RSS MiB | wall / IMDB's |",
             "| --- | --- | --- | --- | --- |"]
    base = by_factor.get(1, rows[0])["wall_s"]
    for r in rows:
        lines.append(f"| {r['corpus']} | {r['reviews']:,} | {r['wall_s']:.1f} | "
                     f"{r['rss_mib']:,.0f} | {r['wall_s'] / base:.2f} |")
    lines += ["", f"`train --config nbow --epochs 1` on {largest}x IMDB: "
              f"{trained['wall_s']:.0f} s, peak RSS {trained['rss_mib']:,.0f} MiB, test accuracy "
              f"{100 * test_acc:.2f}% (its test split is IMDB's test reviews {largest} times, "
              "marked)", "", "## Targets", ""]
    if largest == 16 and 1 in by_factor:
        big = by_factor[16]
        lines.append(f"- 16x IMDB: peak RSS <= 2.5 GB ({RSS_LIMIT_MIB:,.0f} MiB): "
                     f"{big['rss_mib']:,.0f} MiB: {'met' if big['rss_mib'] <= RSS_LIMIT_MIB else 'MISSED'}")
        ratio = big["wall_s"] / base
        lines.append(f"- 16x IMDB: wall <= {WALL_FACTOR:g} x IMDB's: {ratio:.1f} x: "
                     f"{'met' if ratio <= WALL_FACTOR else 'MISSED'}")
    if args.before and 1 in by_factor:
        before, now = rows[0]["wall_s"], by_factor[1]["wall_s"]
        lines.append(f"- IMDB no slower than before: {now:.1f} s against {before:.1f} s: "
                     f"{'met' if now <= before * 1.05 else 'MISSED'} (5% allowed for timing noise)")
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
