"""A training run's life cycle: start a new run or resume one, under the run's lock.

A new run that ends before its first epoch finished (an error, Ctrl-C) leaves nothing behind;
an interrupted run keeps every finished epoch and says how to resume. A resumed run takes only
what it can honour: more `--epochs`, another `--device`, and its data moved (`--data`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from imdbsent import config, data, engine, runs
from imdbsent.errors import Terminated, UserError

RESUMABLE = ("train.epochs", "train.device", "data")  # what --resume may change
ENSEMBLE_OWN = ("train.device", "data")  # what an ensemble takes; members follow their recipes
T = TypeVar("T")


@dataclass
class Interrupted(Exception):
    """Training stopped by Ctrl-C (`code` 130) or SIGTERM (143); `run` is None when nothing was
    kept (no epoch had finished)."""

    run: Path | None
    epochs_done: int
    code: int

    def __str__(self) -> str:
        if self.run is None:
            return "interrupted before the first epoch finished; nothing was kept"
        return (f"interrupted after {self.epochs_done} finished epoch(s); resume with: "
                f"imdbsent train --resume {self.run}")


def start(recipe: str | None, overrides: dict[str, Any], reporter: engine.Reporter, *,
          run_dir: Path | None = None, root: Path = Path("runs")) -> engine.FitResult:
    """Train a recipe (with command-line `overrides`, dotted keys) into a new run directory:
    `run_dir`, or a fresh `root/<model>-<time>`."""
    cfg = config.load(recipe, overrides)
    if cfg.model.name == "ensemble":
        _refuse(cfg, overrides, ENSEMBLE_OWN, "an ensemble trains each member by its own recipe; "
                "change the member recipes instead")
    prepared = data.load_prepared(Path(cfg.data))
    if run_dir is None:
        run, created = runs.new_run_dir(root, cfg.model.name), True
    else:
        run, created = run_dir, runs.make_dir(run_dir)
    with runs.RunLock(run):
        before = {name for name in runs.RUN_FILES if (run / name).exists()}
        if before & {runs.CONFIG, runs.LAST, runs.MEMBERS}:
            raise UserError(f"{run} already holds a run: continue it with --resume {run}, "
                            "or choose another --run-dir")
        try:
            runs.init_run(run, cfg, prepared.folder)
            return _interruptible(run, lambda: engine.fit(cfg, prepared, run, reporter))
        except BaseException:
            if not runs.has_progress(run):
                runs.remove_unstarted(run, keep=before, created=created)
            raise


def resume(run: Path, overrides: dict[str, Any], reporter: engine.Reporter) -> engine.FitResult:
    """Continue `run` from its last checkpoint. Overrides other than RESUMABLE that change the
    run's config are refused; the config is rewritten only once the checkpoint has loaded."""
    run = runs.check_run(run)
    old = runs.load_config(run)
    cfg = config.load(run / runs.CONFIG, overrides)
    own = ENSEMBLE_OWN if cfg.model.name == "ensemble" else RESUMABLE
    _refuse(cfg, {k: v for k, v in overrides.items() if _get(old, k) != _get(cfg, k)}, own,
            "a resumed run keeps its recipe (only " + ", ".join(_flag(k) for k in own)
            + " can change); start a new run to change the rest")
    prepared = data.load_prepared(Path(cfg.data))
    with runs.RunLock(run):
        if cfg.model.name == "ensemble":
            runs.write_config(run, cfg)
            return _interruptible(run, lambda: engine.fit_ensemble(cfg, prepared, run, reporter,
                                                                   resume=True))
        trainer = _interruptible(run, lambda: engine.Trainer(cfg, prepared, run, resume=True))
        runs.write_config(run, cfg)
        return _interruptible(run, lambda: trainer.fit(reporter))


def _interruptible(run: Path, work: Callable[[], T]) -> T:
    """Run `work()`, turning Ctrl-C and SIGTERM into `Interrupted` with the run's state."""
    try:
        return work()
    except (KeyboardInterrupt, Terminated) as exc:
        code = 143 if isinstance(exc, Terminated) else 130
        if not runs.has_progress(run):
            raise Interrupted(None, 0, code) from None
        runs.reconcile_all(run)  # stopped between a checkpoint and its line: the line too
        raise Interrupted(run, len(runs.epoch_records(run)), code) from None


def _refuse(cfg: config.Config, overrides: dict[str, Any], allowed: tuple[str, ...], why: str
            ) -> None:
    """A UserError naming the flags among `overrides` (set, not in `allowed`) and `why`."""
    fixed = [k for k, v in overrides.items() if v is not None and k not in allowed]
    if fixed:
        raise UserError(", ".join(_flag(k) for k in fixed) + ": " + why)


def _flag(key: str) -> str:
    """The command-line flag of a dotted config key."""
    return "--model" if key == "model.name" else "--" + key.split(".")[-1].replace("_", "-")


def _get(cfg: config.Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
