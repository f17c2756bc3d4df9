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

import numpy as np
import torch

from imdbsent import data, engine, models, runs
from imdbsent.predict import score_run


def stacked_accuracy(xv: torch.Tensor, yv: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
                     seed: int = 1234) -> tuple[float, float]:
    """Accuracy of a logistic regression over member logits [reviews, members]: on validation
    cross-fitted (`engine.out_of_fold`), on test with the weights fitted on all of validation."""
    valid = (engine.out_of_fold(xv, yv, seed) > 0).to(yv.dtype) == yv
    weight, bias = models.fit_platt(xv, yv)  # as an ensemble fits it
    test = (xt @ weight + bias > 0).to(yt.dtype) == yt
    return valid.double().mean().item(), test.double().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="run folders under --runs (a+b: their mean logits)")
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/work/runs"))
    parser.add_argument("--data", type=Path, help="prepared data (default: each run's own)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--length", action="store_true",
                        help="also stack all the members with each logit times the review's "
                        "standardized log length (and that length), beside the plain stack")
    args = parser.parse_args()
    members, yv, yt = scored_members(
        {name: [args.runs / run for run in name.split("+")] for name in args.names}, args.data)
    print_ranked(ranked_subsets(members, yv, yt), args.top)
    if args.length:
        prepared = data.load_prepared(args.data or Path(runs.load_config(
            args.runs / args.names[0].split("+")[0]).data))
        xv, xt = (torch.stack([m[i] for m in members.values()], dim=1).double() for i in (0, 1))
        zv, zt = (torch.tensor(np.log(np.sort(prepared.split(s).lengths, kind="stable")))
                  for s in ("valid", "test"))  # a scored run's order: by length
        zv, zt = (zv - zv.mean()) / zv.std(), (zt - zv.mean()) / zv.std()
        valid, test = stacked_accuracy(torch.cat([xv, xv * zv[:, None], zv[:, None]], 1),
                                       yv.double(),
                                       torch.cat([xt, xt * zt[:, None], zt[:, None]], 1),
                                       yt.double())
        print(f"\nall members with length features: cross-fitted valid {100 * valid:.2f}, "
              f"test {100 * test:.2f}")
    wrong = torch.stack([(v > 0).float() != yv for v, _ in members.values()]).sum(0)
    print("\nvalidation reviews that k of the members get wrong: " + ", ".join(
        f"{k}: {100 * (wrong == k).float().mean():.2f}%" for k in range(len(members) + 1)))


def scored_members(runs: dict[str, list[Path]], data: Path | None
                   ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor,
                              torch.Tensor]:
    """Each member's valid and test logits (the mean of its runs'), and the valid and test
    labels; exits if any run was scored on other reviews or in another order than the first."""
    by_run = {(run, split): score_run(run, split=split, data_dir=data)
              for group in runs.values() for run in group for split in ("valid", "test")}
    first = next(iter(runs.values()))[0]
    yv, yt = (by_run[(first, split)].labels.float() for split in ("valid", "test"))
    for (run, split), scored in by_run.items():
        if not torch.equal(scored.labels.float(), yv if split == "valid" else yt):
            raise SystemExit(f"{run} was not scored on the same {split} reviews as {first}: "
                             "give --data, or runs of the same prepared data")
    members = {name: tuple(torch.stack([by_run[(run, split)].logits.float()
                                        for run in group]).mean(0)
                           for split in ("valid", "test"))
               for name, group in runs.items()}
    return members, yv, yt


def rank_with_runs(members: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   labels: dict[str, torch.Tensor], runs: list[Path], data: Path) -> None:
    """For a script that made members of its own (name: valid and test logits, in a scored
    run's order, with their `labels` by split): add finished `runs` on the same `data`, print
    each member's accuracy alone, then every subset stacked (`print_ranked`)."""
    if runs:
        scored, yv, yt = scored_members({run.name: [run] for run in runs}, data)
        if not (torch.equal(yv, labels["valid"]) and torch.equal(yt, labels["test"])):
            raise SystemExit(f"the runs were not scored on {data}'s reviews in its order")
        members = {**members, **scored}
    for name, (valid, test) in members.items():
        acc = [100 * ((x > 0).float() == labels[s]).float().mean() for x, s in
               ((valid, "valid"), (test, "test"))]
        print(f"{name} alone: valid {acc[0]:.2f}%, test {acc[1]:.2f}%")
    print_ranked(ranked_subsets(members, labels["valid"], labels["test"]), 20)


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
