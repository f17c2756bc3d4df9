"""A training run's life cycle: start a new run or resume one, under the run's lock.

A new run that ends before its first epoch finished (an error, Ctrl-C) leaves nothing behind;
an interrupted run keeps every finished epoch and says how to resume. A resumed run takes only
what it can honour: more `--epochs`, another `--device`, and its data moved (`--data`).

Under torchrun both run in every process of the training (`distributed.session`): rank 0 sets
up and locks the run directory and reports progress; the other ranks train silently beside it.
A resumed run needs as many processes as it started with: its batch order depends on them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from imdbsent import config, data, distributed, engine, runs, vectors
from imdbsent.config import DATA_DEFAULT, HUB_DEFAULT
from imdbsent.errors import OutputFailed, Terminated, Usage, UserError, stop_status, stop_word

RESUMABLE = ("train.epochs", "train.device", "data")  # what --resume may change
T = TypeVar("T")


@dataclass
class Interrupted(Exception):
    """Training stopped by Ctrl-C (`code` 130), SIGTERM (143), its standard output gone (141
    for a reader that went away, 1 for a full disk), or another process of a distributed
    training lost (1), said in `cause`; `run` is None when nothing was kept (no epoch had
    finished)."""

    run: Path | None
    epochs_done: int
    code: int
    quiet: bool = False  # a rank other than 0: rank 0 says what happened
    processes: int = 1
    cause: str = ""

    def __str__(self) -> str:
        if self.quiet:
            return ""
        how = stop_word(self.code)  # as prepare says it
        if self.run is None:
            said = f"{how} before the first epoch finished; nothing was kept"
        else:
            nproc = f"--nproc {self.processes} " if self.processes > 1 else ""
            said = (f"{how} after {self.epochs_done} finished epoch(s); resume with: "
                    f"imdbsent train {nproc}--resume {self.run}")
        return f"{self.cause}: {said}" if self.cause else said


class Silent:
    """The reporter of the ranks other than 0: they train, rank 0 shows it."""

    def start(self, run: Path, parameters: int, device: str, first_epoch: int) -> None: ...
    def epoch_start(self, epoch: int, batches: int) -> None: ...
    def batch(self, examples: int, loss: float, acc: float) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...
    def test(self, record: dict[str, Any]) -> None: ...
    def regions(self, step: int, steps: int) -> None: ...


def start(recipe: str | None, overrides: dict[str, Any], reporter: engine.Reporter, *,
          run_dir: Path | None = None, root: Path = Path("runs"),
          timeout: float = config.DIST_TIMEOUT) -> engine.FitResult:
    """Train a recipe (with command-line `overrides`, dotted keys) into a new run directory:
    `run_dir`, or a fresh `root/<model>-<time>`. Under torchrun, every rank calls this; a
    collective step that waits more than `timeout` seconds for another rank fails."""
    cfg = planned_start(recipe, overrides)
    prepared = prepared_for(cfg)
    with _session(cfg, timeout) as world, ExitStack() as lock:
        cfg.train.world_size = world.size
        _same_data_everywhere(prepared)

        def claim() -> tuple[Path, set[str], bool]:
            """The run directory, locked, with the run files it held before (rank 0)."""
            if run_dir is None:
                run, created = runs.new_run_dir(root, cfg.model.name), True
            else:
                run, created = run_dir, runs.make_dir(run_dir)
            held, before = runs.claim(run)
            lock.push(held)
            return run, before, created

        run, before, created = distributed.on_main(claim)
        try:
            distributed.on_main(lambda: runs.init_run(run, cfg, prepared.folder))
            return _interruptible(run, lambda: engine.fit(cfg, prepared, run, _reporter(reporter)))
        except BaseException:
            if world.main and not runs.has_progress(run):
                runs.remove_unstarted(run, keep=before, created=created)
            raise


def resume(run: Path, overrides: dict[str, Any], reporter: engine.Reporter, *,
           timeout: float = config.DIST_TIMEOUT) -> engine.FitResult:
    """Continue `run` from its last checkpoint. Overrides other than RESUMABLE that change the
    run's config are refused; the config is rewritten only once the checkpoint has loaded.
    Under torchrun every rank reads the run's config (on other machines too: the run directory
    must be shared with them); rank 0 alone reads the checkpoints and writes."""
    run = runs.check_run(run)
    old, cfg = planned_resume(run, overrides)
    prepared = prepared_for(cfg)
    with _session(cfg, timeout) as world, ExitStack() as lock:
        if world.size != old.train.world_size:  # the same on every rank: rank 0 says it
            raise distributed.everywhere(world_size_advice(run, old.train.world_size,
                                                           world.size))
        _same_data_everywhere(prepared)

        def hold() -> None:
            lock.enter_context(runs.RunLock(run))

        distributed.on_main(hold)
        shown = _reporter(reporter)
        if cfg.model.name == "ensemble":
            distributed.on_main(lambda: runs.write_config(run, cfg))
            return _interruptible(run, lambda: engine.fit_ensemble(cfg, prepared, run, shown,
                                                                   resume=True))
        trainer = _interruptible(run, lambda: engine.Trainer(cfg, prepared, run, resume=True))
        distributed.on_main(lambda: runs.write_config(run, cfg))
        return _interruptible(run, lambda: trainer.fit(shown))


def prepared_for(cfg: config.Config) -> data.Prepared:
    """The recipe's prepared data, refused if it was split otherwise than the recipe's
    `split_ratio` asks (a recipe chosen for more training reviews would quietly get fewer);
    either error says how to prepare it (`_prepare_flags`)."""
    prepared = data.load_prepared(Path(cfg.data), lambda: _prepare_flags(cfg))
    made = prepared.manifest.get("args", {}).get("split_ratio")
    if cfg.split_ratio and made != cfg.split_ratio:
        raise UserError(f"{prepared.folder} was prepared with --split-ratio {made}, but the "
                        f"recipe is meant for {cfg.split_ratio}: run imdbsent prepare "
                        f"{_prepare_flags(cfg)} --out DIR, and train with --data DIR")
    return prepared


def _prepare_flags(cfg: config.Config) -> str:
    """prepare's flags for the recipe's data: where the data named, or else the default data,
    came from (--source, its columns), and the recipe's split."""
    like = data.prepared_args(Path(cfg.data)) or data.prepared_args(Path(DATA_DEFAULT))
    args = data.PrepareArgs(HUB_DEFAULT)
    if like is not None:
        args = replace(args, source=like.source, text_column=like.text_column,
                       label_column=like.label_column)
    return replace(args, split_ratio=cfg.split_ratio or args.split_ratio).flags()


def _session(cfg: config.Config, timeout: float) -> AbstractContextManager[distributed.World]:
    """The distributed session for `cfg`'s device (nothing to join without torchrun)."""
    local_rank = distributed.launched().local_rank
    return distributed.session(engine.resolve_device(cfg.train.device, local_rank), timeout)


def _same_data_everywhere(prepared: data.Prepared) -> None:
    """Refuse, on every rank, a training whose processes found different prepared data."""
    prints = distributed.gather(prepared.fingerprint)
    if len(set(prints)) > 1:
        odd = [rank for rank, p in enumerate(prints) if p != prints[0]]
        message = (f"the processes found different prepared data at {prepared.folder} (ranks "
                   f"{', '.join(map(str, odd))} differ from rank 0): give every machine the "
                   "same prepared folder (a copy of it)")
        raise distributed.everywhere(message)


def _reporter(reporter: engine.Reporter) -> engine.Reporter:
    return reporter if distributed.world().main else Silent()


def world_size_advice(run: Path, trained: int, now: int) -> str:
    """Why a run cannot go on with another number of processes, and the command that can (as
    torchrun's ranks and the --nproc launcher say it)."""
    how = (f"imdbsent train --resume {run}" if trained == 1
           else f"imdbsent train --nproc {trained} --resume {run} (or torchrun with "
                f"{trained} processes in all)")
    return (f"{run} was trained by {trained} process(es), not {now}: its batch order and "
            f"random streams depend on that number; resume it with {how}")


def _interruptible(run: Path, work: Callable[[], T]) -> T:
    """Run `work()`, turning Ctrl-C, SIGTERM, a standard output that went away (`| head`) and
    a lost distributed peer (status 1) into `Interrupted` with the run's state: rank 0 says
    what was kept and how to resume, the other ranks stop quietly."""
    try:
        return work()
    except (KeyboardInterrupt, Terminated, OutputFailed) as exc:
        code, cause = (exc.code, exc.message) if isinstance(exc, OutputFailed) else (
            stop_status(exc), "")
        raise _interrupted(run, code, cause) from None
    except Exception as exc:
        lost = distributed.lost_contact(exc)
        if lost is None:
            raise
        raise _interrupted(run, 1, str(lost)) from None


def _interrupted(run: Path, code: int, cause: str) -> Interrupted:
    """How a run stopped: quiet on ranks other than 0; else its finished epochs, if any."""
    if not distributed.world().main:
        return Interrupted(None, 0, code, quiet=True)
    if not runs.has_progress(run):
        return Interrupted(None, 0, code, cause=cause)
    runs.reconcile_all(run)  # stopped between a checkpoint and its line: the line too
    return Interrupted(run, len(runs.epoch_records(run)), code,
                       processes=distributed.world().size, cause=cause)


def planned_start(recipe: str | None, overrides: dict[str, Any]) -> config.Config:
    """The config a new run of `recipe` with `overrides` trains, or the refusal of what it
    cannot take (checked before any process starts, by `train --nproc` too)."""
    cfg = config.load(recipe, overrides)
    cfg.recipe = cfg.recipe or Path(recipe or "default").stem
    if cfg.model.name == "ensemble":
        _refuse(cfg, overrides, config.ENSEMBLE_OWN, "an ensemble trains each member by its "
                "own recipe; change the member recipes instead")
    return cfg


def check_launchable(cfg: config.Config, prepared: data.Prepared, nproc: int) -> None:
    """Refuse, before `nproc` processes start, what each would refuse on its own at its start
    (a device this machine lacks, a GPU a process; word vectors that cannot be read), which
    would otherwise come back as every rank's error and the others' stop."""
    engine.resolve_device(cfg.train.device, nproc - 1)
    if cfg.train.vectors:
        vectors.check_readable(prepared.vectors_file(cfg.train.vectors))


def planned_resume(run: Path, overrides: dict[str, Any]) -> tuple[config.Config, config.Config]:
    """`run`'s config as it was and as its resumption with `overrides` trains it, or the
    refusal of what a resumed run cannot change, of a finished ensemble, of data moved away
    (checked before any process starts, by `train --nproc` too)."""
    old = runs.load_config(run)
    if overrides.get("data"):  # recorded whole: a path relative to here means nothing elsewhere
        overrides = {**overrides, "data": str(Path(overrides["data"]).resolve())}
    else:
        runs.data_folder(run, old.data)
    cfg = config.load(run / runs.CONFIG, overrides, written=True)
    if cfg.model.name == "ensemble" and all(map(runs.tested, [run, *(
            runs.member_run(run, name) for name in config.member_names(cfg))])):
        raise UserError(f"{run} has finished: its members were trained and it was tested")
    own = tuple(k for k in RESUMABLE if cfg.model.name != "ensemble" or k in config.ENSEMBLE_OWN)
    _refuse(cfg, {k: v for k, v in overrides.items() if _get(old, k) != _get(cfg, k)}, own,
            "a resumed run keeps its recipe (only " + ", ".join(config.flag(k) for k in own)
            + " can change); start a new run to change the rest")
    return old, cfg


def _refuse(cfg: config.Config, overrides: dict[str, Any], allowed: tuple[str, ...], why: str
            ) -> None:
    """A usage error naming the flags among `overrides` (set, not in `allowed`) and `why`:
    flags that conflict with the run or the recipe, as `--resume` with `--config` does."""
    fixed = [k for k, v in overrides.items() if v is not None and k not in allowed]
    if fixed:
        raise Usage(", ".join(config.flag(k) for k in fixed) + ": " + why)


def _get(cfg: config.Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
