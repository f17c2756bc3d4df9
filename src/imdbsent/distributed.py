"""Training on many processes: the world torchrun describes, its process group, and the few
collective steps the fit loop needs (sharing a batch order, summing metrics, sending rank 0's
state to the others).

torchrun (or `imdbsent train --nproc N`, which starts torchrun) sets RANK, WORLD_SIZE,
LOCAL_RANK and LOCAL_WORLD_SIZE in each process's environment; `session()` joins the process
group they describe (gloo on the CPU, NCCL on CUDA with one GPU per local rank). Outside a
session every function here is the identity of a world of one, so the fit loop is one loop,
with or without torchrun. Rank 0 alone writes the run directory and reads its checkpoints; the
others receive what they need from it (`on_main`), so other machines need the prepared data,
and the run's config.toml only to resume.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from imdbsent.config import DIST_TIMEOUT
from imdbsent.errors import Shared, UserError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes training one model."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run and reports progress."""
        return self.rank == 0


_world = World()


def launched() -> World:
    """The world torchrun describes in the environment; a world of one without torchrun."""
    env = os.environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return World()
    try:
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (as torchrun sets "
                        "them)") from None


def world() -> World:
    """The world of the current session (a world of one outside one)."""
    return _world


@contextmanager
def session(device: torch.device, timeout: float = DIST_TIMEOUT) -> Iterator[World]:
    """Join the process group torchrun describes for the time of the block (nothing to join
    for a world of one): NCCL when `device` is CUDA, else gloo. A collective step that waits
    more than `timeout` seconds for another process fails instead of hanging."""
    global _world
    found = launched()
    if found.size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout))
    _world = found
    try:
        yield found
    finally:
        _world = World()
        if found.size > 1:
            dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one of several training together."""
    return _world.size > 1


def _tensor_device() -> torch.device:
    """Where collective tensors live: NCCL reduces only CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: list[float]) -> list[float]:
    """Each value summed over every rank (float64), the same on all of them."""
    if not active():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=_tensor_device())
    dist.all_reduce(total)
    return total.tolist()


def broadcast(value: T) -> T:
    """Rank 0's `value` (any picklable object), on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T]:
    """Every rank's `value`, in rank order, on every rank."""
    if not active():
        return [value]
    out: list[Any] = [None] * _world.size
    dist.all_gather_object(out, value)
    return out


def on_main(work: Callable[[], T]) -> T:
    """`work()` run by rank 0 alone (reading or writing the run), its result sent to every
    rank. If it fails on rank 0, the others are told before rank 0 raises: a UserError is
    raised on them too (as `Shared`: rank 0 says it), anything else ends them with a line
    that points to rank 0, so that no rank waits for one that has stopped."""
    if not active():
        return work()
    result, failure = None, None
    if _world.main:
        try:
            result = work()
        except BaseException as exc:  # KeyboardInterrupt and bugs too: the others must not wait
            failure = exc
    note = None if failure is None else (str(failure) if isinstance(failure, UserError)
                                         else f"rank 0 stopped ({type(failure).__name__})")
    note, result = broadcast((note, result))
    if failure is not None:
        raise failure
    if note is not None:
        raise Shared(note)
    return result


def everywhere(message: str) -> UserError:
    """The error for a refusal that every rank reaches alike: rank 0 says it, the others stop
    silently (`Shared`)."""
    return UserError(message) if _world.main else Shared(message)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module to train: DistributedDataParallel over `model` in a session (it starts every
    rank from rank 0's weights and buffers, and averages gradients in the backward pass),
    `model` itself otherwise."""
    if not active():
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None, forward_sync_buffers=False)


def share(items: list[T], *, pad: bool) -> list[T]:
    """This rank's share of a list that every rank computed alike: items rank, rank + size, ...
    With `pad`, the list is first extended with its own first items to a multiple of the world
    size, so that every rank takes the same number of steps (no rank left waiting in an
    all-reduce); without, shares may differ by one (for scoring, which sums afterwards)."""
    if not active():
        return items
    if pad and items:
        missing = -len(items) % _world.size
        items = items + (items * (missing // len(items) + 1))[:missing]
    return items[_world.rank::_world.size]


def lost_contact(exc: BaseException) -> UserError | None:
    """The one line for `exc` if, raised in a session, it is a collective step's failure:
    another process stopped or did not answer (gloo reports some of these as plain
    RuntimeErrors); None for any other exception."""
    text = str(exc).lower()
    if not active() or not (isinstance(exc, dist.DistError) or (
            isinstance(exc, RuntimeError) and ("gloo" in text or "connection" in text))):
        return None
    why = "did not answer within --dist-timeout" if "time" in text else "stopped"
    return UserError(f"another process of this training {why}")
