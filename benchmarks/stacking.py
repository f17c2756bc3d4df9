"""Which recipes stack well: every subset of two or more trained runs, stacked by a logistic
regression over their logits and scored cross-fitted on the validation split (each review by
weights fitted on the other four fifths, as an ensemble's validation figure is), best first.
Needs only finished runs (e.g. those benchmarks/run.py leaves in benchmarks/work/runs); test
figures are printed beside, and choose nothing.

    python benchmarks/stacking.py --runs benchmarks/work/runs default-1234 gru-1234 nblr-1234

A name of several runs joined by "+" is one member whose logits are those runs' mean (seeds
averaged: default-1234+default-1235+default-1236).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from imdbsent import engine, models
from imdbsent.predict import score_run


def stacked_accuracy(xv: torch.Tensor, yv: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
                     seed: int = 1234) -> tuple[float, float]:
    """Accuracy of a logistic regression over member logits [reviews, members]: on validation
    cross-fitted (`engine.out_of_fold`), on test with the weights fitted on all of validation."""
    valid = (engine.out_of_fold(xv, yv, seed) > 0).to(yv.dtype) == yv
    weight, bias = models.fit_logistic(xv, yv)
    test = (xt @ weight + bias > 0).to(yt.dtype) == yt
    return valid.double().mean().item(), test.double().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="run folders under --runs (a+b: their mean logits)")
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/work/runs"))
    parser.add_argument("--data", type=Path, help="prepared data (default: each run's own)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    by_run = {(run, split): score_run(args.runs / run, split=split, data_dir=args.data)
              for name in args.names for run in name.split("+") for split in ("valid", "test")}
    splits = ("valid", "test")
    members = {name: tuple(torch.stack([by_run[(run, split)].logits.float()
                                        for run in name.split("+")]).mean(0)
                           for split in splits)
               for name in args.names}
    yv, yt = (by_run[(args.names[0].split("+")[0], split)].labels.float() for split in splits)
    for (run, split), scored in by_run.items():
        if not torch.equal(scored.labels.float(), yv if split == "valid" else yt):
            raise SystemExit(f"{run} was not scored on the same {split} reviews as "
                             f"{args.names[0]}: give --data, or runs of the same prepared data")
    print_ranked(ranked_subsets(members, yv, yt), args.top)
    wrong = torch.stack([(v > 0).float() != yv for v, _ in members.values()]).sum(0)
    print("\nvalidation reviews that k of the members get wrong: " + ", ".join(
        f"{k}: {100 * (wrong == k).float().mean():.2f}%" for k in range(len(members) + 1)))


def ranked_subsets(members: dict[str, tuple[torch.Tensor, torch.Tensor]], yv: torch.Tensor,
                   yt: torch.Tensor) -> list[tuple[float, float, tuple[str, ...]]]:
    """Every subset of two or more members (name: its valid and test logits, in the labels'
    order), stacked by `stacked_accuracy`: (valid, test, names), best on validation first
    (ties in the order given: test accuracy ranks nothing)."""
    rows = []
    for size in range(2, len(members) + 1):
        for subset in itertools.combinations(members, size):
            xv, xt = (torch.stack([members[n][i] for n in subset], dim=1) for i in (0, 1))
            rows.append((*stacked_accuracy(xv, yv, xt, yt), subset))
    return sorted(rows, key=lambda row: -row[0])


def print_ranked(rows: list[tuple[float, float, tuple[str, ...]]], top: int) -> None:
    """The first `top` rows of `ranked_subsets` as a Markdown table."""
    print("| members | cross-fitted valid acc | test acc |\n| --- | --- | --- |")
    for valid, test, subset in rows[:top]:
        print(f"| {', '.join(subset)} | {100 * valid:.2f} | {100 * test:.2f} |")


if __name__ == "__main__":
    main()
