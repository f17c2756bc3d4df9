"""How a recipe's validation accuracy grows with its training reviews: the recipe trained on
seeded subsets of the prepared train split (the whole validation split scores every one).
Reads no test review.

    python benchmarks/learning_curve.py --data benchmarks/work/data --recipe nblr 8750 12500
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from imdbsent import config, data, engine
from imdbsent.training import Silent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="+", type=int, help="training reviews (0: all)")
    parser.add_argument("--data", type=Path, default=Path("benchmarks/work/data"))
    parser.add_argument("--recipe", default="nblr")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    args = parser.parse_args()
    print("| training reviews | valid acc (best epoch) |\n| --- | --- |")
    for size in args.sizes:
        prepared = data.load_prepared(args.data)
        train = prepared.split("train")
        size = size or len(train)
        rows = np.sort(np.random.default_rng(args.seed).permutation(len(train))[:size])
        prepared._cache["train"] = train.take(rows)  # the subset stands in for the split
        cfg = config.load(args.recipe, {"data": str(args.data)})
        with tempfile.TemporaryDirectory() as run:
            trainer = engine.Trainer(cfg, prepared, Path(run))
            records = [trainer.epoch(e, Silent()) for e in range(1, cfg.train.epochs + 1)]
        best = min(records, key=lambda r: r["valid_loss"])
        print(f"| {size:,} | {100 * best['valid_acc']:.2f}% ({best['epoch']}) |", flush=True)


if __name__ == "__main__":
    main()
