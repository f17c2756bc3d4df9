"""The run directory: self-contained, so `predict` needs nothing else.

    config.toml         the resolved config
    tokenizer.json      the vocabulary the model was trained with
    best.safetensors    weights at the best validation loss
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

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from tokenizers import Tokenizer

from imdbsent import config as configs
from imdbsent import text
from imdbsent.errors import UserError
from imdbsent.fsutil import append_line, atomic_write, atomic_write_text

CHECKPOINT_FORMAT = 1
CONFIG, TOKENIZER, METRICS, LOCK = "config.toml", "tokenizer.json", "metrics.jsonl", ".lock"
MEMBERS = "members"  # an ensemble's member runs, one folder each
OPTIM_PREFIX, RNG_KEY = "optimizer.", "rng.torch"


@dataclass
class Checkpoint:
    """Weights (a state_dict), JSON metadata, and for `last` the optimizer and RNG state."""

    weights: dict[str, torch.Tensor]
    meta: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    rng: torch.Tensor | None = None


def new_run_dir(root: Path, model_name: str) -> Path:
    """A fresh run directory under `root`, named by model and start time."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = Path(root) / (f"{model_name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"cannot create run directory {path}: {exc.strerror}") from None
    raise UserError(f"cannot find a free run directory name under {root}")


def latest_run(root: Path = Path("runs")) -> Path:
    """The most recently started run under `root` that has a model to score with (its config
    written last among those with a best checkpoint), so a run that failed before its first
    epoch, or is still in it, is passed over."""
    runs = [p.parent for p in Path(root).glob(f"*/{CONFIG}")
            if (p.parent / "best.safetensors").is_file()]
    if not runs:
        raise UserError(f"no runs in {root}/ with a trained model: train one with imdbsent "
                        "train, or name a run directory")
    return max(runs, key=lambda p: (p / CONFIG).stat().st_mtime)


def check_run(run: Path) -> Path:
    """A run directory that exists and has a config; otherwise a clear error."""
    run = Path(run)
    if not (run / CONFIG).is_file():
        what = "no such run directory" if not run.exists() else f"not a run directory (no {CONFIG})"
        raise UserError(f"{run}: {what}")
    return run


def load_config(run: Path) -> configs.Config:
    """The run's resolved config."""
    return configs.load(check_run(run) / CONFIG)


def write_config(run: Path, cfg: configs.Config) -> None:
    atomic_write_text(run / CONFIG, cfg.to_toml())


def load_tokenizer(run: Path) -> Tokenizer:
    """The run's tokenizer; a missing or broken one is a clear error."""
    try:
        return text.load(run / TOKENIZER)
    except Exception:  # tokenizers raises a bare Exception for unreadable JSON
        raise UserError(f"{run / TOKENIZER}: missing or unreadable tokenizer") from None


def copy_tokenizer(src: Path, run: Path) -> None:
    atomic_write(run / TOKENIZER, lambda tmp: shutil.copyfile(src, tmp))


def append_metrics(run: Path, record: dict[str, Any]) -> None:
    append_line(run / METRICS, json.dumps(record))


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = run / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def epoch_records(run: Path) -> list[dict[str, Any]]:
    """The finished epochs of a run, an ensemble's being those of its members."""
    return [m for r in (run, *sorted((run / MEMBERS).glob("*"))) for m in read_metrics(r)
            if "epoch" in m]


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
    header = {"imdbsent": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; anything else is a clear error."""
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(path))
        meta = json.loads(header["imdbsent"])
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not a readable imdbsent checkpoint "
                        f"(truncated or corrupted? {str(exc).splitlines()[0][:120]})") from None
    if not isinstance(meta, dict) or meta.get("format", 0) > CHECKPOINT_FORMAT:
        raise UserError(f"{path}: checkpoint format {meta.get('format')} is newer than this "
                        "imdbsent reads; upgrade imdbsent")
    optimizer = None
    if "optimizer" in meta:
        optimizer = _unflatten_optimizer(
            {k: v for k, v in tensors.items() if k.startswith(OPTIM_PREFIX)}, meta.pop("optimizer"))
    rng = tensors.pop(RNG_KEY, None)
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX)}
    return Checkpoint(weights, meta, optimizer, rng)


class RunLock:
    """An exclusive lock on a run directory for one training process.

    flock, not a PID file: the kernel releases it when the holder exits or is killed, so a dead
    process never holds a run forever.
    """

    def __init__(self, run: Path) -> None:
        self.path = Path(run) / LOCK
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot lock {self.path.parent}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"{self.path.parent} is in use by another imdbsent train process "
                            f"(pid {holder}); wait for it to finish or use another --run-dir") \
                from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        for stale in self.path.parent.glob(".*.tmp"):  # left by a writer that was killed
            stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


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
    state: dict[int, dict[str, Any]] = {}
    items = [(k.removeprefix(OPTIM_PREFIX), v) for k, v in tensors.items()]
    for name, value in items + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}
