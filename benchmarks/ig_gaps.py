"""How far integrated gradients (explain's method for the recurrent models) fall short of the
logit on whole reviews, at several step counts, and why: the logit along the straight path
from zero embeddings to a review, sampled finely, with its largest jump between neighbours.
Reads the run's own validation reviews (no test review).

    python benchmarks/ig_gaps.py --run benchmarks/work/runs/default-1234 --reviews 6
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from imdbsent import data, explain, models, runs
from imdbsent.predict import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--reviews", type=int, default=6, help="the first N validation reviews")
    parser.add_argument("--steps", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--points", type=int, default=201, help="path samples for the sweep")
    args = parser.parse_args()
    predictor = Predictor(args.run)
    prepared = data.load_prepared(runs.data_folder(args.run, predictor.config.data))
    valid = prepared.split("valid")
    model = predictor.model.model if isinstance(predictor.model, models.Calibrated) \
        else predictor.model
    print("| review | tokens read | logit - reference | " +
          " | ".join(f"gap at {s} steps" for s in args.steps) + " | largest jump on the path |")
    print("| --- " * (4 + len(args.steps)) + "|")
    incomplete = 0
    for i in range(args.reviews):
        ids = torch.from_numpy(valid.flat[valid.offsets[i]:valid.offsets[i + 1]]
                               [:predictor.max_length].astype(np.int64))[None]
        lengths = torch.tensor([ids.shape[1]])
        with torch.no_grad():
            logit = model(ids, lengths).double().item()
        gaps = []
        for steps in args.steps:
            scores, reference, _ = explain.attribute(model, ids, steps)
            gaps.append(logit - reference - float(scores.sum()))
        total = logit - reference
        incomplete += abs(gaps[min(1, len(gaps) - 1)]) > explain.COMPLETENESS_TOLERANCE * max(
            1.0, abs(total))
        jump, where = _largest_jump(model, ids, lengths, args.points)
        print(f"| {i} | {ids.shape[1]} | {total:+.3f} | " + " | ".join(f"{g:+.3f}" for g in gaps)
              + f" | {jump:+.3f} at {where:.3f} of the way |")
    print(f"\nover the tolerance at {args.steps[min(1, len(args.steps) - 1)]} steps: "
          f"{incomplete} of {args.reviews}")


def _largest_jump(model: torch.nn.Module, ids: torch.Tensor, lengths: torch.Tensor,
                  points: int) -> tuple[float, float]:
    """The largest change of the logit between neighbouring points of the path alpha * e,
    alpha from 0 to 1, and where it starts."""
    with torch.no_grad():
        embedded = model.embedding(ids)
        values = []
        for alpha in np.linspace(0.0, 1.0, points):
            with models.output_hooked(model.embedding, lambda _o, a=float(alpha): a * embedded):
                values.append(model(ids, lengths).item())
    steps = np.diff(values)
    k = int(np.abs(steps).argmax())
    return float(steps[k]), k / (points - 1)


if __name__ == "__main__":
    main()
