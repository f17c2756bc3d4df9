"""One process against several: the default recipe trained for 5 epochs on full IMDB as
1 process x all cores and as N processes (`train --nproc N`) x cores/N threads each; training
examples per second and test accuracy of each, written to benchmarks/DISTRIBUTED.md (which
benchmarks/run.py copies into RESULTS.md; `run.py --nproc N` measures it first).

    python benchmarks/distributed.py --data benchmarks/work/data            # 1 against 2
    python benchmarks/distributed.py --data DIR --nproc 4 --device cuda     # on a GPU machine

Run it on a quiet machine: each row is timed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).parent / "imdbsent"
sys.path.insert(0, str(ROOT / "benchmarks" / "short"))


def train(data: Path, run: Path, nproc: int, device: str, epochs: int, log: Path) -> dict:
    """Train the default recipe with `nproc` processes; its figures."""
    cmd = [str(EXE), "train", "--data", str(data), "--run-dir", str(run), "--epochs", str(epochs),
           "--device", device]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    start = time.time()
    with open(log, "w") as fh:
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.time() - start
    if code:
        sys.exit(f"training failed: see {log}")
    from imdbsent import data as data_mod
    from imdbsent import runs

    records = runs.read_metrics(run)
    epochs_run = [r for r in records if "epoch" in r]
    test = records[-1]
    examples = len(data_mod.load_prepared(data).split("train"))
    seconds = sum(r["seconds"] for r in epochs_run)
    return {"nproc": nproc, "threads": max(1, len(os.sched_getaffinity(0)) // nproc),
            "examples_per_s": examples * len(epochs_run) / seconds, "epoch_s": seconds / len(epochs_run),
            "wall_s": wall,
            "valid_acc": next(r["valid_acc"] for r in epochs_run if r["epoch"] == test["best_epoch"]),
            "test_acc": test["test_acc"], "best_epoch": test["best_epoch"]}


def measure(data: Path, work: Path, nproc: int, device: str, epochs: int, out: Path) -> None:
    """Train both rows and write their table to `out`."""
    import suite

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    for n in (1, nproc):
        run = work / "runs" / f"distributed-{n}"
        shutil.rmtree(run, ignore_errors=True)
        print(f"training the default recipe with {n} process(es)", file=sys.stderr, flush=True)
        rows.append(train(data, run, n, device, epochs, work / f"distributed-{n}.log"))
    base = rows[0]["examples_per_s"]
    lines = ["# One process against several (`train --nproc`)", "",
             f"- machine: {suite.machine()}", f"- date: {started}",
             f"- command: `python benchmarks/distributed.py --data DATA --nproc {nproc} "
             f"--device {device}` (or run.py, which calls it)",
             f"- the default recipe, {epochs} epochs, full IMDB; `--batch-size` is per "
             "process (64), so N processes take N times fewer steps of N x 64 reviews together",
             "- examples/s: training reviews an epoch over the mean epoch time (training and "
             "validation); threads: each process's compute threads; valid acc: the best "
             "epoch's, before calibration", "",
             "| processes x threads | examples/s | speed-up | s/epoch | whole command s | "
             "valid acc | test acc | best epoch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['nproc']} x {r['threads']} | {r['examples_per_s']:,.0f} | "
                     f"{r['examples_per_s'] / base:.2f}x | {r['epoch_s']:.1f} | {r['wall_s']:.0f} | "
                     f"{100 * r['valid_acc']:.2f} | {100 * r['test_acc']:.2f} | {r['best_epoch']} |")
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared full IMDB")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the second row")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "DISTRIBUTED.md")
    args = parser.parse_args()
    measure(args.data, args.work, args.nproc, args.device, args.epochs, args.out)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
