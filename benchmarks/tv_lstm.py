"""The default BiLSTM reading region embeddings learned from the unlabeled reviews as well as
its word vectors (Johnson & Zhang 2016's LSTM with tv-embeddings): one experiment of issue 12,
scored alone and stacked with the members of finished runs. Reads no test review before the
final scoring.

1. tv-embedding (`region_embeddings.train_tv`): each region of `--region` words (a bag) is
   embedded, z = relu(E r + b), and trained to predict the words of the two regions beside it,
   on the train split and the 50,000 unlabeled reviews.
2. The default recipe (`configs/default.toml`, trained by imdbsent's own Trainer: crop,
   schedule, clipping, best checkpoint by validation loss, calibration), except that each
   word's input to the LSTM is its word vector plus P z, z the frozen tv-embedding of the
   region centred on the word and P a trained projection (zero at the start, so that training
   starts where the default does).
3. Its logits stacked with those of `--members` runs in every subset (logistic regression
   cross-fitted on validation; test with weights fitted on all of it), best on validation
   first.

    python benchmarks/tv_lstm.py --data benchmarks/work/data-0.9 \\
        --run-dir benchmarks/work/runs/tv-lstm-1234 \\
        --members benchmarks/work/runs/stack-1234/members/{default,gru,nblr,nbow}
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imdbsent import config, data, engine
from imdbsent.text import PAD_ID
from imdbsent.training import Silent
from region_embeddings import logits_of, region_sums, train_tv  # benchmarks/, beside this
from stacking import rank_with_runs


class TvInput(nn.Module):
    """A word's embedding plus the projected tv-embedding of the region centred on it."""

    def __init__(self, words: nn.Embedding, tv: tuple[torch.Tensor, torch.Tensor],
                 region: int) -> None:
        super().__init__()
        self.words, self.region = words, region
        self.tv = nn.Embedding.from_pretrained(tv[0], freeze=True, padding_idx=PAD_ID)
        self.register_buffer("tv_bias", tv[1])
        self.project = nn.Linear(tv[0].shape[1], words.embedding_dim, bias=False)
        nn.init.zeros_(self.project.weight)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        half = (self.region - 1) // 2  # window index t + half covers t - half .. t + half
        sums = region_sums(self.tv(text), self.region)[:, half:half + text.shape[1]]
        return self.words(text) + self.project(F.relu(sums + self.tv_bias))


class Printer(Silent):
    """An `engine.Reporter` that prints the start, each epoch's record and the best epoch."""

    def start(self, run: Path, parameters: int, device: str, first_epoch: int) -> None:
        print(f"training {run}: {parameters:,} parameters on {device}", flush=True)

    def epoch_end(self, record: dict[str, Any]) -> None:
        print(f"epoch {record['epoch']}: {record['seconds']:.0f} s, valid loss "
              f"{record['valid_loss']:.4f}, acc {100 * record['valid_acc']:.2f}%", flush=True)

    def test(self, record: dict[str, Any]) -> None:
        print(f"best epoch {record['best_epoch']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("benchmarks/work/data-0.9"))
    parser.add_argument("--run-dir", type=Path, required=True, help="a new folder")
    parser.add_argument("--members", type=Path, nargs="*", default=[],
                        help="finished runs on the same data, to stack with")
    parser.add_argument("--region", type=int, default=5)
    parser.add_argument("--tv-dim", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    args = parser.parse_args()
    if args.region % 2 == 0:
        parser.error("--region must be odd, to be centred on a word")
    prepared = data.load_prepared(args.data)
    cfg = config.load("default", {"train.seed": args.seed,
                                  **({"train.epochs": args.epochs} if args.epochs else {})})
    start = time.time()
    stream = np.concatenate([prepared.split("train").flat, prepared.split("unsupervised").flat])
    tv = train_tv(stream, prepared.tokenizer.get_vocab_size(), args.region, args.tv_dim,
                  args.seed)
    print(f"tv-embedding: {len(stream):,} tokens in {time.time() - start:.0f} s", flush=True)
    args.run_dir.mkdir(parents=True)
    trainer = engine.Trainer(cfg, prepared, args.run_dir)
    trainer.model.embedding = TvInput(trainer.model.embedding, tv, args.region)
    trainer.optimizer = engine.make_optimizer(cfg.train, trainer.model.parameters())
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, trainer.schedule)
    trainer.net = trainer.model
    start = time.time()
    trainer.fit(Printer())
    print(f"trained in {time.time() - start:.0f} s", flush=True)
    scored = {s: logits_of(trainer.model, prepared.split(s), cfg.train.max_length)
              for s in ("valid", "test")}
    rank_with_runs({"tv-LSTM": tuple(scored[s][0] for s in ("valid", "test"))},
                   {s: scored[s][1].float() for s in ("valid", "test")}, args.members, args.data)


if __name__ == "__main__":
    main()
