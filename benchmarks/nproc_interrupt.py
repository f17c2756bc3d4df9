"""Ctrl-C in the first seconds of `imdbsent train --nproc 2`: how long the launcher takes to end,
and whether any rank trains on. Each try starts a toy recipe of 100 short epochs on a small
sample of IMDB, waits until both ranks run, waits DELAY seconds more (0.4 to 3.2 s, in turn),
sends SIGINT to the launcher alone (as a terminal's Ctrl-C reaches it: torchrun starts the ranks
in sessions of their own) and times its end.

    python benchmarks/nproc_interrupt.py --source ../shared/data/imdb --tries 16
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

EXE = Path(sys.executable).parent / "imdbsent"
RECIPE = """version = 1
data = "{data}"
[model]
name = "lstm"
embedding_dim = 16
hidden_dim = 16
[train]
epochs = 100
batch_size = 32
optimizer = "adam"
lr = 3e-3
max_length = 128
"""


def sample(source: Path, out: Path) -> None:
    """150 reviews of each label from train, 50 from test, 100 unlabeled: IMDB's files are
    sorted by label, so both ends are taken."""
    out.mkdir()
    for name, n in (("train", 150), ("test", 50), ("unsupervised", 100)):
        table = pq.read_table(source / f"{name}.parquet")
        rows = list(range(n)) + list(range(table.num_rows - n, table.num_rows))
        pq.write_table(table.take(rows), out / f"{name}.parquet")


def ranks_running(run: Path) -> int:
    """How many processes run `-m imdbsent train` for this run directory (the ranks)."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-m" in args and str(run).encode() in args:
            count += 1
    return count


def one_try(config: Path, run: Path, delay: float) -> dict:
    err = run.with_suffix(".err")
    with open(err, "wb") as fh:
        launcher = subprocess.Popen([str(EXE), "train", "--config", str(config), "--nproc", "2",
                                     "--threads", "1", "--run-dir", str(run)],
                                    stdout=subprocess.DEVNULL, stderr=fh)
        deadline = time.monotonic() + 60
        while ranks_running(run) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        start = time.monotonic()
        launcher.send_signal(signal.SIGINT)
        code = launcher.wait()
    metrics = run / "metrics.jsonl"
    epochs = metrics.read_text().count('"epoch"') if metrics.exists() else 0
    said = [line for line in err.read_text().splitlines() if not line.startswith("run ")]
    return {"delay": delay, "seconds": time.monotonic() - start, "code": code,
            "epochs": epochs, "said": said[-1] if said else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="IMDB as Parquet")
    parser.add_argument("--tries", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sample(args.source, tmp / "src")
        subprocess.run([str(EXE), "prepare", "--source", str(tmp / "src"), "--out",
                        str(tmp / "data"), "--vectors-dim", "0"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        config = tmp / "toy.toml"
        config.write_text(RECIPE.format(data=tmp / "data"))
        results = [one_try(config, tmp / f"run{i}", 0.4 * (i % 8 + 1)) for i in range(args.tries)]
    print("| delay s | launcher ended after s | status | epochs trained | last line on stderr |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['delay']:.1f} | {r['seconds']:.2f} | {r['code']} | {r['epochs']} | "
              f"{r['said']} |")
    quick = sum(r["seconds"] < 2 for r in results)
    on = sum(r["epochs"] >= 100 for r in results)
    print(f"\n{quick} of {len(results)} ended within 2 s, the slowest after "
          f"{max(r['seconds'] for r in results):.1f} s; {on} trained on to the end")


if __name__ == "__main__":
    main()
