"""Members that read whole reviews when they score (issue 12): the GRU recipe trains on each
review's first 400 tokens and the default on its first 800, and scores the same cut, so the
end of a long review, where its verdict often is, goes unread. Each run is scored on
validation with its reviews cut three ways (its first max_length tokens; half of them from
each end; none cut), then every subset of the runs, and of their whole-review versions
(NAME-whole), is stacked (`stacking.print_ranked`, cross-fitted on validation).

    python benchmarks/whole_reviews.py --runs benchmarks/work/runs \\
        default-1234 gru-1234 nblr-1234 nbow-k64-1234

Nothing is trained: the whole-review versions are copies of the runs (in a temporary folder)
whose config reads every token.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from imdbsent import data, engine, runs
from imdbsent.data import Encoded
from stacking import print_ranked, ranked_subsets, scored_members


def cut(enc: Encoded, head: int, tail: int) -> Encoded:
    """Each review cut to its first `head` and last `tail` tokens where it has more."""
    rows = []
    for start, end in zip(enc.offsets[:-1], enc.offsets[1:]):
        ids = enc.flat[start:end]
        rows.append((np.concatenate([ids[:head], ids[len(ids) - tail:]])
                     if len(ids) > head + tail else ids).tolist())
    return Encoded.from_lists(rows, enc.labels)


def accuracies_by_cut(run: Path) -> dict[str, float]:
    """The run's validation accuracy with its reviews cut to the first max_length tokens, to
    half of them from each end, and not at all."""
    cfg = runs.load_config(run)
    model = engine.load_best(run, cfg, runs.load_tokenizer(run).get_vocab_size()).eval()
    valid = data.load_prepared(runs.data_folder(run, cfg.data)).split("valid")
    limit = cfg.train.max_length
    cuts = {"first": (limit, 0), "both ends": (limit // 2, limit - limit // 2),
            "whole": (len(valid.flat), 0)}
    out = {}
    for name, (head, tail) in cuts.items():
        logits, labels = engine.predict_logits(model, data.Batches(cut(valid, head, tail), 64))
        out[name] = 100 * ((logits > 0).float() == labels).float().mean().item()
    return out


def whole_copy(run: Path, folder: Path) -> Path:
    """A copy of `run` in `folder` whose config reads every token (max_length = 0)."""
    copy = folder / f"{run.name}-whole"
    shutil.copytree(run, copy, symlinks=True)
    config = copy / "config.toml"
    lines = config.read_text().splitlines()
    config.write_text("\n".join("max_length = 0" if line.startswith("max_length =") else line
                                for line in lines) + "\n")
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="run folders under --runs")
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/work/runs"))
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    paths = {name: [args.runs / name] for name in args.names}
    cut_runs = [name for name in args.names
                if runs.load_config(args.runs / name).train.max_length]
    print("| run | first max_length tokens | half from each end | whole |\n| --- | --- | --- | --- |")
    for name in cut_runs:
        acc = accuracies_by_cut(args.runs / name)
        print(f"| {name} | " + " | ".join(f"{a:.2f}%" for a in acc.values()) + " |", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths |= {f"{name}-whole": [whole_copy(args.runs / name, Path(tmp))] for name in cut_runs}
        members, yv, yt = scored_members(paths, None)
    rows = ranked_subsets(members, yv, yt)
    print()
    print_ranked(rows, args.top)
    whole = [f"{name}-whole" if name in cut_runs else name for name in args.names]
    for what, subset in (("as they are", args.names), ("reading whole reviews", whole)):
        print(f"\nthe runs {what}, all stacked: " + next(
            f"cross-fitted valid {100 * v:.2f}%, test {100 * t:.2f}%"
            for v, t, names in rows if set(names) == set(subset)))


if __name__ == "__main__":
    main()
