"""How much a tv-embedding knows about sentiment, in minutes instead of a model's training: a
linear probe (issue 12). Learns a region embedding (`imdbsent.regions.learn`) from the train
split and the 50,000 unlabeled reviews, or takes a run's (`--tv-from`), pools its regions over
each review's first 800 tokens (max and mean, as the models read them), and fits a logistic
regression on the train split's pooled features; prints its accuracy on the validation split.
Reads no test review.

    python benchmarks/tv_probe.py --data benchmarks/work/data-0.9 --passes 3
    python benchmarks/tv_probe.py --tv-from benchmarks/work/runs/tvstack-1234/members/tvlstm
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from imdbsent import data, regions
from imdbsent.data import Batches, Encoded
from region_embeddings import tv_of  # benchmarks/, beside this script


def pooled(split: Encoded, table: torch.Tensor, bias: torch.Tensor, region: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Max and mean over each review of its regions' embeddings, and the labels."""
    features, labels = [], []
    with torch.no_grad():
        for batch in Batches(split, 256, max_length=800):
            z = regions.centred(F.embedding(batch.text, table), bias, region)
            z = z * (torch.arange(z.shape[1])[None] < batch.lengths[:, None])[..., None]
            features.append(torch.cat([z.max(1).values, z.sum(1) / batch.lengths[:, None]], 1))
            labels.append(batch.label)
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def probe(prepared: data.Prepared, table: torch.Tensor, bias: torch.Tensor, region: int
          ) -> tuple[float, float]:
    """Validation accuracy of the best of three regularisations, and that one's C."""
    x_train, y_train = pooled(prepared.split("train"), table, bias, region)
    x_valid, y_valid = pooled(prepared.split("valid"), table, bias, region)
    scale = StandardScaler().fit(x_train)
    return max((LogisticRegression(C=c, max_iter=2000).fit(scale.transform(x_train), y_train)
                .score(scale.transform(x_valid), y_valid), c) for c in (0.01, 0.1, 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("benchmarks/work/data-0.9"))
    parser.add_argument("--tv-from", type=Path,
                        help="a run of a model with region embeddings (tvlstm): probe its own "
                             "(the options below are then ignored)")
    parser.add_argument("--region", type=int, default=5)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--lr", type=float, default=regions.LR)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    torch.set_num_threads(2)
    prepared = data.load_prepared(args.data)
    if args.tv_from is not None:
        table, bias, region = tv_of(args.tv_from)
        what = str(args.tv_from)
    else:
        start = time.time()
        stream = prepared.unlabeled_stream()
        table, bias = regions.learn(stream, prepared.tokenizer.get_vocab_size(), args.region,
                                    args.dim, args.seed, passes=args.passes, lr=args.lr)
        region = args.region
        what = (f"region {region}, dim {args.dim}, {args.passes} pass(es), lr {args.lr}, "
                f"seed {args.seed}: learned in {time.time() - start:.0f} s")
    accuracy, c = probe(prepared, table, bias, region)
    print(f"{what}: probe valid {100 * accuracy:.2f}% (C={c})", flush=True)


if __name__ == "__main__":
    main()
