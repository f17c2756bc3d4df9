"""Region embeddings learned from the unlabeled reviews (Johnson & Zhang 2015, "tv-embeddings"),
feeding a one-layer region CNN: one experiment of issue 12, scored alone and stacked with the
members of finished runs. Reads no test review before the final scoring.

1. tv-embedding (`imdbsent.regions.learn`): each region of `--region` words (a bag) is
   embedded, z = relu(E r + b), and trained to predict the words of the two regions beside it
   (negative sampling, frequent target words subsampled as word2vec's), on the train split and
   the 50,000 unlabeled reviews.
2. Region CNN: h_t = relu(W r_t + U z_t + c) over every region of a review (W trained, z the
   frozen tv-embedding; `--no-tv` drops it, the control), max over the review, dropout, one
   logit; Adam, the checkpoint of the best validation loss.
3. Its logits stacked with those of `--members` runs (logistic regression cross-fitted on
   validation, as an ensemble's validation figure is; test with weights fitted on all of it).

    python benchmarks/region_embeddings.py --data benchmarks/work/data-0.9 \\
        --members benchmarks/work/runs/stack-1234/members/{default,gru,nblr,nbow}

`--tv-from RUN` takes the tv-embedding a `tvlstm` run learned instead (its region size).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from imdbsent import data, engine, regions, runs, threads
from imdbsent.data import Batches, Encoded
from imdbsent.regions import region_sums
from imdbsent.text import PAD_ID
from stacking import scored_members, stacked_accuracy  # benchmarks/, beside this script


class RegionCNN(nn.Module):
    """A bag-of-words region layer, plus the frozen tv-embedding's regions when given."""

    def __init__(self, vocab: int, hidden: int, region: int,
                 tv: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        super().__init__()
        self.region = region
        self.embedding = nn.Embedding(vocab, hidden, padding_idx=PAD_ID)
        nn.init.normal_(self.embedding.weight, std=0.1)
        with torch.no_grad():
            self.embedding.weight[PAD_ID] = 0.0
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.tv = None
        if tv is not None:
            self.tv = nn.Embedding.from_pretrained(tv[0], freeze=True, padding_idx=PAD_ID)
            self.register_buffer("tv_bias", tv[1])
            self.project = nn.Linear(tv[0].shape[1], hidden, bias=False)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(hidden, 1)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = region_sums(self.embedding(text), self.region) + self.bias
        if self.tv is not None:
            h = h + self.project(F.relu(region_sums(self.tv(text), self.region) + self.tv_bias))
        windows = torch.arange(h.shape[1])[None, :] < (lengths + self.region - 1)[:, None]
        pooled = (F.relu(h) * windows[:, :, None]).max(dim=1).values
        return self.fc(self.dropout(pooled)).squeeze(1)


def tv_of(run: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The tv-embedding (E, b) that a run of a model with region embeddings learned, and its
    region size."""
    weights = load_file(run / "best.safetensors")
    return (weights["regions.table"], weights["regions.bias"],
            runs.load_config(run).model.region_size)


def logits_of(model: nn.Module, split: Encoded, max_length: int) -> tuple[torch.Tensor, ...]:
    """Logits and labels in evaluation order (by length), as `score_run` gives a run's."""
    return engine.predict_logits(model, Batches(split, 256, max_length=max_length))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("benchmarks/work/data-0.9"))
    parser.add_argument("--members", type=Path, nargs="*", default=[],
                        help="finished runs on the same data, to stack with")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--no-tv", action="store_true", help="the region CNN alone (control)")
    source.add_argument("--tv-from", type=Path,
                        help="a run of a model with region embeddings (tvlstm) on the same data: "
                             "take the tv-embedding it learned instead of learning one")
    parser.add_argument("--region", type=int, default=5, help="words a region (with --tv-from: "
                        "the run's)")
    parser.add_argument("--tv-dim", type=int, default=100, help="ignored with --tv-from")
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--max-length", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    prepared = data.load_prepared(args.data)
    vocab = prepared.tokenizer.get_vocab_size()
    train, valid = prepared.split("train"), prepared.split("valid")
    members = {}  # scored first: a member that cannot be scored stops the script before training
    if args.members:  # on --data, as the region CNN (a run's recorded folder may differ)
        logits, yv, yt = scored_members({run.name: [run] for run in args.members}, args.data)
        members = {name: {"valid": (v, yv), "test": (t, yt)} for name, (v, t) in logits.items()}
    torch.manual_seed(args.seed)  # after the members, whose loading draws: one CNN whatever they are
    tv = None
    if args.tv_from is not None:
        table, bias, args.region = tv_of(args.tv_from)
        tv = table, bias
    elif not args.no_tv:
        start = time.time()
        stream = prepared.unlabeled_stream()
        tv = regions.learn(stream, vocab, args.region, args.tv_dim, args.seed)
        print(f"tv-embedding: {len(stream):,} tokens in {time.time() - start:.0f} s", flush=True)
    model = RegionCNN(vocab, args.hidden, args.region, tv)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    best = (float("inf"), 0, {})
    for epoch in range(1, args.epochs + 1):
        start = time.time()
        model.train()
        batches = Batches(train, 64, shuffle=True, seed=args.seed, max_length=args.max_length)
        batches.epoch = epoch
        for batch in threads.balanced(batches):
            loss = F.binary_cross_entropy_with_logits(model(batch.text, batch.lengths),
                                                      batch.label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        logits, labels = logits_of(model, valid, args.max_length)
        loss = F.binary_cross_entropy_with_logits(logits, labels).item()
        acc = ((logits > 0).float() == labels).float().mean().item()
        print(f"epoch {epoch}: {time.time() - start:.0f} s, valid loss {loss:.4f}, "
              f"acc {100 * acc:.2f}%", flush=True)
        if loss < best[0]:
            best = (loss, epoch, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    scored = {"region CNN": {s: logits_of(model, prepared.split(s), args.max_length)
                             for s in ("valid", "test")}}
    scored.update(members)
    report(scored, best[1])


def report(scored: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]], epoch: int
           ) -> None:
    """Each model alone, then the members with and without the region CNN, stacked."""
    yv, yt = (scored["region CNN"][s][1].double() for s in ("valid", "test"))
    print(f"\nregion CNN best epoch {epoch}\n\n| models | valid acc | test acc |\n| --- | --- | --- |")
    for name, s in scored.items():
        print(f"| {name} | {_acc(s['valid'][0], yv):.2f} | {_acc(s['test'][0], yt):.2f} |")
    members = [n for n in scored if n != "region CNN"]
    subsets = [members, [*members, "region CNN"]] if len(members) > 1 else []
    subsets += [[m, "region CNN"] for m in members]
    for subset in subsets:
        xv, xt = (torch.stack([scored[n][s][0].double() for n in subset], dim=1)
                  for s in ("valid", "test"))
        valid, test = stacked_accuracy(xv, yv, xt, yt)
        print(f"| {' + '.join(subset)} (stacked; valid cross-fitted) | {100 * valid:.2f} | "
              f"{100 * test:.2f} |")


def _acc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100 * ((logits > 0).double() == labels.double()).double().mean().item()


if __name__ == "__main__":
    main()
