"""Self-training with a strong teacher: a finished run (an ensemble, say `tvstack3`) labels the
prepared unlabeled reviews; a student recipe trains on the train split plus those it labeled
with confidence (|P(pos) - 0.5| >= --threshold, hard labels), on region embeddings taken from
a run (`--regions-from`, so that the pseudo-labeled copies of the unlabeled reviews are not
learned from twice); then the student is stacked with `--members` in every subset
(`stacking.py`: cross-fitted on validation; test figures choose nothing). The teacher reads
no validation or test review; its stacker's weights were fitted on validation.

    python benchmarks/self_training.py --teacher benchmarks/work/fresh/runs/tvstack3-1234 \
        --data benchmarks/work/fresh/data-0.9 --recipe rcnn --epochs 3 \
        --regions-from benchmarks/work/fresh/runs/tvstack3-1234/members/rcnn \
        --members benchmarks/work/fresh/runs/tvstack3-1234/members/{tvlstm,nblr,rcnn} \
        --out /work/scratch/st/rcnn
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imdbsent import config as configs
from imdbsent import data, engine, runs
from imdbsent.predict import MODEL_BATCH, Predictor
from stacking import print_ranked, ranked_subsets, scored_members  # benchmarks/, beside this


class EpochLines:
    """Prints each epoch's record and the test line (an `engine.Reporter`)."""

    def start(self, run: Path, parameters: int, device: str, first_epoch: int) -> None:
        print(f"training {run}: {parameters:,} parameters on {device}", flush=True)

    def epoch_start(self, epoch: int, batches: int) -> None:
        pass

    def batch(self, examples: int, loss: float, acc: float) -> None:
        pass

    def epoch_end(self, record: dict[str, Any]) -> None:
        print(record, flush=True)

    def test(self, record: dict[str, Any]) -> None:
        print(record, flush=True)

    def regions(self, step: int, steps: int) -> None:
        pass


def teacher_probabilities(teacher: Path, unlabeled: data.Encoded) -> np.ndarray:
    """P(pos) of each unlabeled review by the teacher's best (calibrated) model, in order."""
    predictor = Predictor(teacher)
    rows = data.Encoded(unlabeled.flat, unlabeled.offsets, np.arange(len(unlabeled)))
    logits, order = engine.predict_logits(
        predictor.model, data.Batches(rows, MODEL_BATCH, max_length=predictor.max_length))
    probs = np.empty(len(unlabeled))
    probs[order.long().numpy()] = torch.sigmoid(logits.double()).numpy()
    return probs


def student_data(prepared: data.Prepared, probs: np.ndarray, threshold: float,
                 out: Path) -> data.Prepared:
    """A copy of the prepared folder (hard links) whose train split also holds the unlabeled
    reviews the teacher labeled with confidence."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in prepared.folder.iterdir():
        if f.name != "train.parquet":
            os.link(f, out / f.name)
    keep = np.flatnonzero(np.abs(probs - 0.5) >= threshold)
    pseudo = prepared.split("unsupervised").take(keep)
    pseudo.labels = (probs[keep] > 0.5).astype(np.int64)
    print(f"pseudo-labeled: {len(keep):,} of {len(probs):,} unlabeled reviews, "
          f"{np.mean(pseudo.labels):.3f} positive", flush=True)
    data.write_encoded(out / "train.parquet", [prepared.split("train"), pseudo])
    return data.load_prepared(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True, help="a finished run")
    parser.add_argument("--data", type=Path, required=True, help="its prepared data")
    parser.add_argument("--recipe", default="rcnn", help="the student's recipe")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threshold", type=float, default=0.2)
    parser.add_argument("--regions-from", type=Path, help="a run whose region embeddings the "
                        "student takes (else it learns its own)")
    parser.add_argument("--members", type=Path, nargs="*", default=[],
                        help="finished runs on --data to stack the student with")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    prepared = data.load_prepared(args.data)
    start = time.time()
    probs = teacher_probabilities(args.teacher, prepared.split("unsupervised"))
    print(f"teacher pass: {time.time() - start:.0f} s", flush=True)
    student = student_data(prepared, probs, args.threshold, args.out / "data")
    cfg = configs.load(args.recipe, {"train.epochs": args.epochs, "train.seed": args.seed})
    cfg.data = str(student.folder)
    run = args.out / "student"
    runs.init_run(run, cfg, student.folder)
    regions = engine.regions_of(args.regions_from) if args.regions_from else None
    start = time.time()
    engine.fit(cfg, student, run, EpochLines(), regions=regions)
    print(f"student trained: {time.time() - start:.0f} s", flush=True)
    members, yv, yt = scored_members({r.name: [r] for r in [*args.members, run]}, args.data)
    print_ranked(ranked_subsets(members, yv, yt), 20)


if __name__ == "__main__":
    main()
