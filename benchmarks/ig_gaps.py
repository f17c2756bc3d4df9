"""How far integrated gradients (explain's method for the recurrent models) fall short of the
logit on whole reviews: the gap left by explain's adaptive path at several budgets of
gradients, and by the same number of equal steps, with the largest jump of the logit between
neighbouring points of a fine sweep of the path (from the reference text, every word `<unk>`).
Reads the run's own validation reviews (no test review).

    python benchmarks/ig_gaps.py --run benchmarks/work/runs/default-1234 --reviews 100
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from imdbsent import data, explain, models, runs
from imdbsent.predict import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--reviews", type=int, default=6, help="the first N validation reviews")
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256, 512],
                        help="gradients at most a review, from 64 equal steps")
    parser.add_argument("--points", type=int, default=201, help="path samples for the sweep")
    args = parser.parse_args()
    predictor = Predictor(args.run)
    prepared = data.load_prepared(runs.data_folder(args.run, predictor.config.data))
    valid = prepared.split("valid")
    model = predictor.model.model if isinstance(predictor.model, models.Calibrated) \
        else predictor.model
    widest = max(args.budgets)
    columns = [f"gap, {b} gradients at most" for b in args.budgets] + [f"gap, {widest} equal steps"]
    print("| review | tokens read | logit - reference | " + " | ".join(columns)
          + " | largest jump on the path |")
    print("| --- " * (4 + len(columns)) + "|")
    incomplete = np.zeros(len(columns), dtype=int)
    for i in range(args.reviews):
        ids = torch.from_numpy(valid.flat[valid.offsets[i]:valid.offsets[i + 1]]
                               [:predictor.max_length].astype(np.int64))[None]
        with torch.no_grad():
            logit = model(ids, torch.tensor([ids.shape[1]])).double().item()
        settings = [(explain.STEPS, b) for b in args.budgets] + [(widest, widest)]
        gaps = []
        for steps, budget in settings:
            scores, reference, _ = explain.integrated_gradients(model, ids, steps, budget)
            gaps.append(logit - reference - float(scores.sum()))
        total = logit - reference
        incomplete += np.abs(gaps) > explain.COMPLETENESS_TOLERANCE * max(1.0, abs(total))
        jump, where = _largest_jump(model, ids, args.points)
        print(f"| {i} | {ids.shape[1]} | {total:+.3f} | " + " | ".join(f"{g:+.3f}" for g in gaps)
              + f" | {jump:+.3f} at {where:.3f} of the way |", flush=True)
    print(f"| over the tolerance, of {args.reviews} | | | "
          + " | ".join(str(n) for n in incomplete) + " | |")


def _largest_jump(model: torch.nn.Module, ids: torch.Tensor, points: int) -> tuple[float, float]:
    """The largest change of the logit between neighbouring points of explain's path, sampled
    at `points` equal steps, and where it starts."""
    logits, _ = explain.Path(model, ids)(torch.linspace(0.0, 1.0, points, dtype=torch.float64))
    steps = np.diff(logits.numpy())
    k = int(np.abs(steps).argmax())
    return float(steps[k]), k / (points - 1)


if __name__ == "__main__":
    main()
