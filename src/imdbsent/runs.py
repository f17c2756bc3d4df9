"""The run directory: self-contained, so `predict` needs nothing else.

    config.toml         the resolved config
    tokenizer.json      the vocabulary the model was trained with
    best.safetensors    weights at the best validation loss
    average-D.safetensors  with train.averages: a moving average of the weights (decay D) at
                        its best validation loss, stacked by an ensemble in the model's place
    last.safetensors    weights, optimizer and RNG state after the last finished epoch (resume)
    metrics.jsonl       one JSON line per epoch, then one for the test pass
    members/NAME/       an ensemble's member runs (its best.safetensors holds the stacking
                        weights only)
    .lock               held (flock) by the training process; the kernel frees it if it dies

A checkpoint is one safetensors file whose header carries its JSON metadata (epoch, metrics,
vocabulary size, optimizer hyper-parameters), so weights and metadata change together in one
atomic rename. Loading never runs code: safetensors holds tensors only, the metadata is JSON.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from tokenizers import Tokenizer

from imdbsent import config as configs
from imdbsent import text
from imdbsent.errors import UserError, briefly
from imdbsent.fsutil import LOCK_NAME, FolderLock, append_line, atomic_write, atomic_write_text, is_locked
from imdbsent.text import TOKENIZER

if TYPE_CHECKING:
    from imdbsent.data import Prepared

CHECKPOINT_FORMAT = 1
CONFIG, METRICS = "config.toml", "metrics.jsonl"
BEST, LAST = "best.safetensors", "last.safetensors"
MEMBERS = "members"  # an ensemble's member runs, one folder each
RUN_FILES = (CONFIG, TOKENIZER, METRICS, BEST, LAST, MEMBERS)  # what a run directory holds
OPTIM_PREFIX, RNG_KEY = "optimizer.", "rng.torch"
AVERAGE_PREFIX = "average."  # `last`'s running moving averages: average.DECAY/KEY


@dataclass
class Checkpoint:
    """Weights (a state_dict), JSON metadata, and for `last` the optimizer and RNG state and
    the running moving averages (a state_dict each, by decay as `average_name` writes it)."""

    weights: dict[str, torch.Tensor]
    meta: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    rng: torch.Tensor | None = None
    averages: dict[str, dict[str, torch.Tensor]] | None = None


def average_name(decay: float) -> str:
    """How a moving average's decay is written in file and column names (shortest exact)."""
    return repr(float(decay))


def average_file(name: str) -> str:
    """The checkpoint of a run's moving average at its best, by the decay's `average_name`."""
    return f"average-{name}.safetensors"


def member_columns(run: Path, names: list[str]) -> list[str]:
    """An ensemble's stacked inputs: each member's best model (`NAME`), or, for a member that
    keeps moving averages, those in its place (`NAME@DECAY`, one each): stacked beside the
    model as well, they gained less on validation (benchmarks/notes.md)."""
    return [column for name in names for column in [
        f"{name}@{average_name(d)}" for d in load_config(member_run(run, name)).train.averages
    ] or [name]]


def member_checkpoint(run: Path, column: str) -> Path:
    """The checkpoint behind one of an ensemble's stacked inputs: a member's best model
    (`NAME`), or one of its moving averages (`NAME@DECAY`)."""
    name, _, decay = column.partition("@")
    return member_run(run, name) / (average_file(decay) if decay else BEST)


def new_run_dir(root: Path, model_name: str) -> Path:
    """A fresh run directory under `root`, named by model and start time."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = Path(root) / (f"{model_name}-{stamp}" + (f"-{n}" if n else ""))
        if make_dir(path):
            return path
    raise UserError(f"cannot find a free run directory name under {root}")


def make_dir(path: Path) -> bool:
    """Create a run directory and its parents; whether it was created (False: it existed)."""
    try:
        path.mkdir(parents=True)
        return True
    except FileExistsError:
        if not path.is_dir():
            raise UserError(f"run directory {path}: it exists and is not a folder") from None
        return False
    except OSError as exc:
        raise UserError(f"cannot create run directory {path}: {exc.strerror}") from None


def claim(run: Path) -> tuple[RunLock, set[str]]:
    """Lock `run` for a new run, refused as `refuse_taken` says, and never leaving a lock file
    it made in a folder it refuses. Returns the lock, held, and the run files that were there
    before (its lock file, if any)."""
    if not is_locked(run):  # before locking; a locked one is a training's, which the lock names
        refuse_taken(run)
    had_lock = (run / LOCK_NAME).exists()
    lock = RunLock(run).__enter__()
    try:
        refuse_taken(run)  # what came while it locked
    except UserError:
        lock.__exit__(None, None, None)
        if not had_lock:
            (run / LOCK_NAME).unlink(missing_ok=True)
        raise
    return lock, {LOCK_NAME} if had_lock else set()


def refuse_taken(run: Path) -> None:
    """Refuse to start a run in a folder that holds one (an unfinished one: continue it with
    --resume), or that holds files named as a run's but no run (someone's: training would
    replace them; a prepared dataset's tokenizer.json, a config.toml of another program)."""
    names = sorted(name for name in RUN_FILES if (run / name).exists())
    if (run / CONFIG).is_file() and ((run / TOKENIZER).is_file() or (run / MEMBERS).is_dir()):
        if _tested_quietly(run):  # --resume would most often refuse it (its schedule ended)
            raise UserError(f"{run} already holds a finished run: choose another --run-dir")
        raise UserError(f"{run} already holds a run: continue it with --resume {run}, or "
                        "choose another --run-dir")
    if names:
        raise UserError(f"{run} holds {', '.join(names)} but no run: training would overwrite "
                        f"{'them' if len(names) > 1 else 'it'}; choose another --run-dir")
    held = sorted(p.name for p in _listed(run))
    if held:  # `imdbsent runs` lists a run's folder alone: they would be hidden
        raise UserError(f"{run} holds runs ({briefly(held)}): a run would hide them; give a "
                        f"folder of its own, such as --run-dir {run / 'NAME'}")


def latest_run(root: Path = Path("runs"), report: Callable[[str], None] = lambda _m: None
               ) -> Path:
    """The most recently started run under `root` that has finished (tested) and can predict
    (`imdbsent runs` does not call it broken), else that has a model to score with (a best
    checkpoint), so a run that failed before its first epoch, or is still in it, is passed
    over. Newer runs passed over (still training, interrupted: not calibrated nor tested, or
    broken), and a run taken unfinished, are said through `report`."""
    found = [p.parent for p in Path(root).glob(f"*/{CONFIG}") if (p.parent / BEST).is_file()]
    if not found:
        raise UserError(f"no runs in {root}/ with a trained model: train one with imdbsent "
                        "train, or name a run directory")
    found.sort(key=lambda p: (_started(p), p.name), reverse=True)  # as `imdbsent runs` lists
    idle = [p for p in found if not is_locked(p)]
    finished = next((p for p in idle if _tested_quietly(p) and _missing_file(p) is None), None)
    chosen = finished or (idle or found)[0]
    passed = found[:found.index(chosen)]
    if passed:
        report("passing over " + ", ".join(f"{p} ({_passed_because(p)})" for p in passed)
               + f"; using {chosen}")
    say_unfinished(chosen, report)
    return chosen


def _passed_because(run: Path) -> str:
    """Why `latest_run` passed over a newer run than the one it took."""
    return ("still training" if is_locked(run) else "broken" if _tested_quietly(run)
            else "interrupted")


def say_unfinished(run: Path, report: Callable[[str], None]) -> None:
    """Say through `report` when `run` has not finished: still training, or interrupted (its
    best checkpoint so far is neither calibrated nor tested)."""
    if not (run / BEST).is_file():  # no model yet: the command that needs one says so
        return
    if is_locked(run):
        report(f"{run} is still training: using its best checkpoint so far")
        return
    try:
        done = tested(run)
    except UserError:  # a damaged metrics file: said by the command, if it reads it
        return
    if not done:
        report(f"{run} has not finished (interrupted): using its best checkpoint so far, "
               "neither calibrated nor tested")


def _tested_quietly(run: Path) -> bool:
    """`tested`, with a damaged metrics file counted as not finished."""
    try:
        return tested(run)
    except UserError:
        return False


def check_run(run: Path) -> Path:
    """A run directory that exists and has a config; otherwise a clear error."""
    run = Path(run)
    if not (run / CONFIG).is_file():
        what = "no such run directory" if not run.exists() else f"not a run directory (no {CONFIG})"
        raise UserError(f"{run}: {what}")
    return run


def load_config(run: Path) -> configs.Config:
    """The run's resolved config."""
    return configs.load(check_run(run) / CONFIG, written=True)


def write_config(run: Path, cfg: configs.Config) -> None:
    atomic_write_text(run / CONFIG, cfg.to_toml())


def init_run(run: Path, cfg: configs.Config, data_folder: Path) -> None:
    """Set up a new run directory: the prepared data's tokenizer and the resolved config,
    which records when the run started."""
    run.mkdir(parents=True, exist_ok=True)
    cfg.started = datetime.now().astimezone().isoformat()
    atomic_write(run / TOKENIZER, lambda tmp: shutil.copyfile(data_folder / TOKENIZER, tmp))
    write_config(run, cfg)


def remove_unstarted(run: Path, keep: set[str], created: bool) -> None:
    """Undo `init_run` for a run that ended before its first epoch finished: remove the run
    files and the lock not in `keep` (those that were there before), and the folder if this
    process made it and nothing else is left in it."""
    for name in (*RUN_FILES, LOCK_NAME):
        if name not in keep:
            path = run / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    if created:
        try:
            run.rmdir()
        except OSError:
            pass  # something else was put there meanwhile: leave it


def has_progress(run: Path) -> bool:
    """Whether a run (or one of an ensemble's members) has finished an epoch."""
    return (run / LAST).exists() or any((run / MEMBERS).glob(f"*/{LAST}"))


def trained_without_last(run: Path) -> bool:
    """Whether a run (not an ensemble) trained an epoch, by its best checkpoint or its
    metrics, though its `last` checkpoint, which resuming needs, is gone."""
    return not (run / LAST).exists() and ((run / BEST).exists()
                                          or any("epoch" in r for r in read_metrics(run)))


def load_tokenizer(run: Path) -> Tokenizer:
    """The run's tokenizer; a missing or broken one is a clear error."""
    return text.load(run / TOKENIZER)


def check_data(run: Path, data: Prepared, recorded: str | None,
               use: Literal["train", "score", "named"] = "train") -> None:
    """Refuse prepared data that is not what `run` was trained on: another fingerprint
    (`recorded`, None for runs that predate fingerprints) unless `use` is "named" (scoring
    data the user named; "score": the run's own data, found from its config; "train": no other
    data is ever taken), or in any case another vocabulary."""
    if recorded and data.fingerprint != recorded and use != "named":
        anyway = (f"name the data with --data {data.folder} to use it all the same, or "
                  if use == "score" else "")
        raise UserError(f"{data.folder} is not the prepared data {run} was trained on (it was "
                        f"prepared again, or is another dataset); {anyway}give the run's own "
                        "data (a copy of it) with --data")
    if load_tokenizer(run).get_vocab() != data.tokenizer.get_vocab():
        other = ("" if use == "train" else
                 f"; to score other labeled reviews: imdbsent evaluate {run} --data-file FILE")
        raise UserError(f"{data.folder} was prepared with another vocabulary than {run} was "
                        f"trained on; use the run's data (--data){other}")


def recorded_fingerprint(run: Path) -> str | None:
    """The fingerprint of the prepared data a run trained on, from its checkpoint's header:
    `best`'s, the one that is scored (`last` serves only to resume), else `last`'s."""
    for name in (BEST, LAST):
        if (run / name).is_file():
            return checkpoint_meta(run / name).get("data_fingerprint")
    return None


def append_metrics(run: Path, record: dict[str, Any]) -> None:
    append_line(run / METRICS, json.dumps(record))


def reconcile_metrics(run: Path, last_record: dict[str, Any]) -> None:
    """Make metrics.jsonl agree with the `last` checkpoint, the commit point of an epoch: drop
    epoch lines past it, and add its own record if a kill came between the checkpoint and its
    line."""
    records = read_metrics(run)
    epoch = last_record["epoch"]
    kept = [r for r in records if r.get("epoch", 0) <= epoch]
    if not any(r.get("epoch") == epoch for r in kept):
        kept.append(last_record)
    if kept != records:
        atomic_write_text(run / METRICS, "".join(json.dumps(r) + "\n" for r in kept))


def reconcile_all(run: Path) -> None:
    """`reconcile_metrics` for a run and each of an ensemble's members that has a `last`."""
    for folder in (run, *members(run)):
        if (folder / LAST).is_file():
            reconcile_metrics(folder, checkpoint_meta(folder / LAST)["metrics"])


def data_folder(run: Path, recorded: str) -> Path:
    """The prepared data a run records, as a folder; a relative path is relative to the folder
    its training started in, and one that is not here says so rather than "run prepare"."""
    path = Path(recorded)
    if not path.is_absolute() and not path.exists():
        raise UserError(f"{run} was trained on {recorded}, a path relative to the folder its "
                        "training started in, and it is not here: run this from that folder, "
                        "or give --data with the prepared dataset")
    return path


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl, a record a line. imdbsent never leaves half a line (it rewrites
    the file atomically), so any damage is a UserError that names the file and line."""
    path = run / METRICS
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # JSON and UTF-8 errors alike
            record = None
        if not isinstance(record, dict):
            raise UserError(f"{path}, line {number}: not a metrics record (a JSON object); "
                            "the file is damaged")
        records.append(record)
    return records


def tested(run: Path) -> bool:
    """Whether a run has finished: the last line of its metrics.jsonl is a test line (not one
    that more epochs followed)."""
    records = read_metrics(run)
    return bool(records) and records[-1].get("split") == "test"


def members(run: Path) -> list[Path]:
    """An ensemble run's member runs (none for other runs)."""
    return sorted((run / MEMBERS).glob("*"))


def member_run(run: Path, name: str) -> Path:
    """Where an ensemble run keeps its member `name`'s run."""
    return run / MEMBERS / name


def training_seconds(run: Path) -> float | None:
    """The time that a run's epoch records (its members', for an ensemble) say training took:
    their epochs, and the region embeddings learned before the first (`regions_seconds`). None
    when a model trained on region embeddings and no record says what learning them took:
    `train --resume` gives a member that was removed those that another member learned alike,
    so when that one was removed too, their time is in no record."""
    epochs = {r: [m for m in read_metrics(r) if "epoch" in m] for r in (run, *members(run))}
    trained = [(configs.regions_recipe(load_config(r)), e) for r, e in epochs.items() if e]
    timed = {recipe for recipe, e in trained if any("regions_seconds" in m for m in e)}
    if any(recipe is not None and recipe not in timed for recipe, _ in trained):
        return None
    return sum(m.get("seconds", 0.0) + m.get("regions_seconds", 0.0)
               for e in epochs.values() for m in e)


def epoch_records(run: Path) -> list[dict[str, Any]]:
    """The finished epochs of a run, an ensemble's being those of its members."""
    return [m for r in (run, *members(run)) for m in read_metrics(r) if "epoch" in m]


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write weights, metadata and optional optimizer/RNG state as one safetensors file."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in ckpt.weights.items()}
    meta = {"format": CHECKPOINT_FORMAT, **ckpt.meta}
    if ckpt.optimizer is not None:
        opt_tensors, opt_meta = _flatten_optimizer(ckpt.optimizer)
        tensors.update(opt_tensors)
        meta["optimizer"] = opt_meta
    if ckpt.rng is not None:
        tensors[RNG_KEY] = ckpt.rng
    for decay, state in (ckpt.averages or {}).items():
        tensors.update({f"{AVERAGE_PREFIX}{decay}/{k}": v.detach().cpu().contiguous()
                        for k, v in state.items()})
    header = {"imdbsent": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; anything else is a clear error."""
    meta = checkpoint_meta(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(path, exc) from None
    optimizer = None
    if "optimizer" in meta:
        try:
            optimizer = _unflatten_optimizer(
                {k: v for k, v in tensors.items() if k.startswith(OPTIM_PREFIX)},
                meta.pop("optimizer"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{path}: malformed optimizer state in the checkpoint "
                            f"({type(exc).__name__}: {exc}); it cannot be resumed") from None
    rng = tensors.pop(RNG_KEY, None)
    averages: dict[str, dict[str, torch.Tensor]] = {}
    for key in [k for k in tensors if k.startswith(AVERAGE_PREFIX)]:
        decay, _, name = key.removeprefix(AVERAGE_PREFIX).partition("/")
        averages.setdefault(decay, {})[name] = tensors.pop(key)
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX)}
    return Checkpoint(weights, meta, optimizer, rng, averages or None)


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON metadata, read from its header alone (no tensors)."""
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        open(path, "rb").close()  # safetensors reports a file it may not read as missing
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        meta = json.loads(header["imdbsent"])
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
        raise _unreadable(path, exc) from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: not an imdbsent checkpoint (its metadata is a "
                        f"{type(meta).__name__}, not an object)")
    if not isinstance(meta.get("format", 0), int) or meta.get("format", 0) > CHECKPOINT_FORMAT:
        raise UserError(f"{path}: checkpoint format {meta.get('format')!r} is newer than this "
                        "imdbsent reads; upgrade imdbsent")
    return meta


def _unreadable(path: Path, exc: Exception) -> UserError:
    return UserError(f"{path}: not a readable imdbsent checkpoint "
                     f"(truncated or corrupted? {str(exc).splitlines()[0][:120]})")


LISTED = ("name", "started", "recipe", "model", "parameters", "processes", "epochs",
          "best_epoch", "best_valid_loss", "best_valid_acc", "test_acc", "train_seconds",
          "status")  # the fields of a row of `imdbsent runs`, in its order


def list_runs(folder: Path) -> list[dict[str, Any]]:
    """One row (`describe`) for each folder in `folder` that holds any of a run's files (not
    a report's figures, nor a prepared dataset's tokenizer), the most recently started first;
    the row of `folder` alone if it is a run itself."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'} "
                        "of runs")
    if (folder / CONFIG).is_file():  # a run itself, not a folder of them
        return [describe(folder)]
    rows = [(_described(p), p.name) for p in _listed(folder)]  # each config read once
    rows.sort(key=lambda r: (r[0][1], r[1]), reverse=True)  # as latest_run orders them
    return [row for (row, _started_at), _name in rows]


def _listed(folder: Path) -> list[Path]:
    """The folders in `folder` that `imdbsent runs` lists: each that holds any of a run's
    files (not a hidden one, nor a prepared dataset, whose tokenizer a run's is named as)."""
    try:
        found = [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        raise UserError(f"{folder}: cannot list: {exc.strerror}") from None
    return [p for p in found if _holds_run_files(p)]


def _holds_run_files(folder: Path) -> bool:
    """Whether `folder` holds any of a run's files (a prepared dataset's tokenizer aside); a
    folder that cannot be read is not known to."""
    from imdbsent.data import MANIFEST  # here, as in _stale

    try:
        return folder.is_dir() and any((folder / name).exists() for name in RUN_FILES
                                       if name != TOKENIZER or not (folder / MANIFEST).exists())
    except OSError:  # Path.exists re-raises a permission error
        return False


def describe(run: Path) -> dict[str, Any]:
    """What a run is and how far it got: a row of `imdbsent runs` (fields LISTED). Reads only,
    and never raises: a run that cannot be read says what is wrong in its status."""
    return _described(run)[0]


def _described(run: Path) -> tuple[dict[str, Any], float]:
    """`describe`'s row, and when the run started (`_started`: to order rows as `latest_run`
    does, to the fraction of a second the row's time leaves out)."""
    row: dict[str, Any] = dict.fromkeys(LISTED)
    name = Path(os.path.abspath(run)).name  # `runs .` and `runs ..` name their folder
    row["name"] = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    try:
        cfg, unread = load_config(run), None
    except Exception as exc:  # said below, as the row's status
        cfg, unread = None, exc
    started = _started(run, cfg) if unread is None else _first_written(run)
    row["started"] = datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds")
    try:
        if unread is not None:
            raise unread
        records = read_metrics(run)
        seconds = training_seconds(run)
        row.update(recipe=cfg.recipe or None, model=cfg.model.name,
                   processes=cfg.train.world_size, epochs=len(epoch_records(run)),
                   train_seconds=None if seconds is None else round(seconds, 1))
        best = [r for r in records if r.get("best")] or [r for r in records if "members" in r]
        if best:
            row.update(best_epoch=best[-1].get("epoch"), best_valid_loss=best[-1]["valid_loss"],
                       best_valid_acc=best[-1]["valid_acc"])
        if records and records[-1].get("split") == "test":  # not one that more epochs followed
            row["test_acc"] = records[-1]["test_acc"]
    except Exception as exc:  # any of them: this row says what is wrong, the listing goes on
        row["status"] = _broken(run, str(exc).splitlines()[0] if str(exc) else
                                type(exc).__name__)
        return row, started
    unusable = None  # why a finished run cannot predict
    try:
        row["parameters"] = _parameters(run) if (run / BEST).is_file() else None
    except UserError as exc:
        unusable = str(exc)  # the rest of the row still holds
    for key, value in row.items():
        if isinstance(value, float):  # to 6 decimals, as evaluate writes them (JSON has no NaN)
            row[key] = round(value, 6) if math.isfinite(value) else None
    if is_locked(run):
        row["status"] = "training"
    elif row["test_acc"] is not None:
        unusable = unusable or _missing_file(run)
        row["status"] = _broken(run, unusable) if unusable else "finished"
    elif has_progress(run):
        row["status"] = "interrupted" + _stale(run, cfg)
    elif cfg.model.name != "ensemble" and trained_without_last(run):
        row["status"] = _broken(run, f"{LAST}: missing, so it cannot be resumed")
    else:
        row["status"] = "failed before epoch 1"
    return row, started


def _stale(run: Path, cfg: configs.Config) -> str:
    """Why an interrupted run cannot be resumed as it is: the data it records was prepared
    again (resume refuses other data); "" when it can, or when its data is not here to tell."""
    from imdbsent.data import fingerprint_of  # here: data is the layer below, for its types

    try:
        recorded = recorded_fingerprint(run)
    except UserError:  # a damaged checkpoint: resume says so
        return ""
    now = fingerprint_of(Path(cfg.data))
    if recorded is None or now is None or now == recorded:
        return ""
    return " (its data was prepared again: resume needs the data it trained on)"


def _broken(run: Path, why: str) -> str:
    """A broken run's status: `why`, its files named within the run (the row names the run)."""
    return "broken: " + why.replace(f"{run}/", "").replace(f"{run}: ", "")


def _missing_file(run: Path) -> str | None:
    """Which file that predicting needs a finished run lacks (its tokenizer, its best
    checkpoint, that of each member its best names, for an ensemble), if any, or why its
    tokenizer or best checkpoint cannot be read."""
    try:
        needed = [run / TOKENIZER, run / BEST]
        if (run / BEST).is_file():
            needed += [member_checkpoint(run, column)
                       for column in checkpoint_meta(run / BEST).get("members", [])]
        missing = next((path for path in needed if not path.is_file()), None)
        if missing:
            return f"{missing}: missing"
        text.load(run / TOKENIZER)  # a few milliseconds; a damaged one would stop predict
    except UserError as exc:
        return str(exc)
    return None


def _started(run: Path, cfg: configs.Config | None = None) -> float:
    """When a run started, in seconds: as its config (`cfg`, read if not given) records it (a
    copied run keeps it), or, for a run from before that was recorded, its tokenizer's time
    (written first)."""
    try:
        return datetime.fromisoformat((cfg or load_config(run)).started).timestamp()
    except Exception:  # no readable config, or no time in it: the listing still goes on
        return _first_written(run)


def _first_written(run: Path) -> float:
    """When a run's first file was written (its tokenizer), as far as its files' times say."""
    for path in (run / TOKENIZER, run / CONFIG, run):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def _parameters(run: Path) -> int:
    """The trained parameters of a run's model: recorded in its best checkpoint (older runs:
    every tensor in it, buffers too); an ensemble's are its members' and its stacker's."""
    inner = sum(_parameters(m) for m in members(run) if (m / BEST).is_file())
    meta = checkpoint_meta(run / BEST)
    if "parameters" in meta:
        return inner + meta["parameters"]
    try:
        with safe_open(str(run / BEST), framework="pt") as fh:
            return inner + sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    except (SafetensorError, OSError) as exc:
        raise _unreadable(run / BEST, exc) from None


class RunLock(FolderLock):
    """The exclusive lock of one training process on its run directory (see `FolderLock`)."""

    def __init__(self, run: Path) -> None:
        super().__init__(run, "train", advice="wait for it to finish or use another --run-dir")


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and plain values (JSON)."""
    tensors, scalars = {}, {}
    for pid, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIM_PREFIX}{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `_flatten_optimizer`; malformed metadata raises KeyError, TypeError,
    ValueError or AttributeError."""
    if not isinstance(meta.get("param_groups"), list):
        raise TypeError("param_groups is not a list")
    state: dict[int, dict[str, Any]] = {}
    items = [(k.removeprefix(OPTIM_PREFIX), v) for k, v in tensors.items()]
    for name, value in items + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}
