"""Averaged weights (issue 12): one run of a recipe, and beside its best checkpoint the same
training's weights averaged two ways, each scored on validation and stacked with `--members`
(`stacking.py`: cross-fitted on validation; test figures choose nothing):

- an exponential moving average of the weights after every step (`train.averages`, one per
  `--decays`, kept and written by the Trainer itself), its best epoch by validation loss;
- the plain mean of the last k epochs' weights (stochastic weight averaging's form), k chosen
  by validation loss.

Each averaged model is written as a run of its own beside the trained one (its weights as
`best`, calibrated on validation as training calibrates), so that it is scored as runs are.

    python benchmarks/averaging.py --data benchmarks/work/fresh/data-0.9 --recipe rcnn \
        --regions-from benchmarks/work/fresh/runs/tvstack3-1234/members/rcnn \
        --members benchmarks/work/fresh/runs/tvstack3-1234/members/{tvlstm,nblr,rcnn} \
        --out /work/scratch/avg/rcnn
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import time
from pathlib import Path

import torch

from imdbsent import config as configs
from imdbsent import data, engine, runs
from self_training import EpochLines  # benchmarks/, beside this
from stacking import print_ranked, ranked_subsets, scored_members, stacked_accuracy

Weights = dict[str, torch.Tensor]


class AveragingTrainer(engine.Trainer):
    """A Trainer (whose recipe's moving averages it keeps and writes, `train.averages`) that
    also keeps every epoch's own weights."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_weights: list[Weights] = []

    def epoch(self, epoch: int, reporter: engine.Reporter) -> dict:
        record = super().epoch(epoch, reporter)
        self.epoch_weights.append(_copied(self.model.state_dict()))
        return record

    def valid_loss(self, weights: Weights) -> float:
        self.model.load_state_dict(weights)
        return engine.evaluate(self.model, self.valid_batches, self.criterion)[0]

    def write_variant(self, run: Path, weights: Weights, out: Path, note: dict) -> Path:
        """`run` copied to `out` with `weights` as its best checkpoint, calibrated on
        validation as `Trainer.calibrate` does."""
        self.model.load_state_dict(weights)
        temperature, bias = engine.fit_calibration(
            *engine.predict_logits(self.model, self.valid_batches))
        meta = {**runs.load_checkpoint(run / runs.BEST).meta, **note,
                "temperature": temperature, "bias": bias}
        return _variant(run, out, runs.Checkpoint(weights, meta))


def _variant(run: Path, out: Path, best: runs.Checkpoint) -> Path:
    """`run` copied to `out` (a run of its own to score), with `best` as its best checkpoint."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(run, out, ignore=shutil.ignore_patterns(runs.BEST, runs.LAST, "average-*"))
    runs.save_checkpoint(out / runs.BEST, best)
    return out


def _copied(weights: Weights) -> Weights:
    return {k: v.detach().clone() for k, v in weights.items()}


def _mean(weights: list[Weights]) -> Weights:
    return {k: torch.stack([w[k].float() for w in weights]).mean(0).to(weights[0][k].dtype)
            for k in weights[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--decays", type=float, nargs="*", default=[0.995, 0.998, 0.999])
    parser.add_argument("--regions-from", type=Path, help="a run whose region embeddings the "
                        "model takes (else it learns its own)")
    parser.add_argument("--members", type=Path, nargs="*", default=[],
                        help="finished runs on --data to stack with")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    prepared = data.load_prepared(args.data)
    cfg = configs.load(args.recipe, {"train.seed": args.seed, "train.averages": args.decays})
    cfg.data = str(prepared.folder)
    run = args.out / "trained"  # not a member's name
    runs.init_run(run, cfg, prepared.folder)
    regions = engine.regions_of(args.regions_from) if args.regions_from else None
    trainer = AveragingTrainer(cfg, prepared, run, regions=regions)
    start = time.time()
    trainer.fit(EpochLines())
    print(f"trained: {time.time() - start:.0f} s", flush=True)

    variants = []
    for name in trainer.averages.models:  # written by the Trainer, calibrated as `best`
        average = runs.load_checkpoint(run / runs.average_file(name))
        print(f"ema {name}: best epoch {average.meta['epoch']}, valid loss "
              f"{trainer.averages.best[name]:.4f}", flush=True)
        variants.append(_variant(run, args.out / f"ema{name}", average))
    epochs = trainer.epoch_weights
    tails = {k: trainer.valid_loss(_mean(epochs[-k:])) for k in range(2, len(epochs) + 1)}
    print("mean of the last k epochs, valid loss: " + ", ".join(
        f"k={k}: {loss:.4f}" for k, loss in tails.items()), flush=True)
    k = min(tails, key=tails.get)
    variants.append(trainer.write_variant(run, _mean(epochs[-k:]), args.out / f"swa{k}",
                                          {"swa_last_epochs": k}))
    last = len(epochs)
    variants.append(trainer.write_variant(run, epochs[-1], args.out / f"last{last}",
                                          {"last_epoch": last}))
    members, yv, yt = scored_members(
        {r.name: [r] for r in [*args.members, run, *variants]}, args.data)
    for name, (v, t) in members.items():
        print(f"{name} alone: valid {100 * ((v > 0).float() == yv).float().mean():.2f}, "
              f"test {100 * ((t > 0).float() == yt).float().mean():.2f}")
    given = [r.name for r in args.members]
    averaged = [v.name for v in variants if v.name.startswith("ema")]
    print("\n--members with the trained model, or in its place one variant or two moving "
          "averages (cross-fitted valid / test):")
    for extra in [["trained"], *([v.name] for v in variants),
                  *map(list, itertools.combinations(averaged, 2))]:
        names = [n for n in given if n != args.recipe] + extra
        xv, xt = (torch.stack([members[n][i] for n in names], 1).double() for i in (0, 1))
        valid, test = stacked_accuracy(xv, yv.double(), xt, yt.double())
        print(f"{', '.join(names)}: {100 * valid:.2f} / {100 * test:.2f}")
    print()
    print_ranked(ranked_subsets(members, yv, yt), 25)


if __name__ == "__main__":
    main()
