"""`imdbsent train --nproc N`: one training started as N processes on this machine by torchrun
itself (`torch.distributed.run`, standalone rendezvous), each running `python -m imdbsent train`
with the same arguments; then one exit status and, where a process failed, one line saying which.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

from imdbsent import threads

INTERRUPTED = (130, 143)  # Ctrl-C, SIGTERM: rank 0 has said how to resume


@dataclass
class Outcome:
    """How a distributed training ended: the exit status, and a line to show (or "")."""

    code: int
    message: str = ""


def share_threads(nproc: int, explicit: int | None) -> None:
    """Give each process its share of the cores (cores / nproc, at least 1) through
    OMP_NUM_THREADS, unless the user set it or `--threads` is passed on (torchrun alone would
    set 1)."""
    if explicit is None and not os.environ.get("OMP_NUM_THREADS", "").strip():
        os.environ["OMP_NUM_THREADS"] = str(max(1, threads.available_cores() // nproc))


def run(nproc: int, train_args: list[str]) -> Outcome:
    """Start `imdbsent train TRAIN_ARGS` as `nproc` processes under torchrun and wait for them."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # The agent's own log (its rendezvous, each worker it stops) would bury rank 0's lines;
    # its loggers set their own levels, so each is quietened.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = torchrun.parse_args(["--standalone", "--nproc-per-node", str(nproc), "--max-restarts",
                                "0", "-m", "imdbsent", "train", *train_args])
    try:
        torchrun.run(args)
    except SignalException as exc:  # the launcher was stopped; it stopped every rank
        return Outcome(130 if exc.sigval == signal.SIGINT else 143)
    except ChildFailedError as exc:
        return outcome(exc.failures)
    return Outcome(0)


def outcome(failures: dict[int, Any]) -> Outcome:
    """The exit status and line for torchrun's failed processes (rank: ProcessFailure): the
    first to fail is named when a signal ended it; else the ranks printed their own line."""
    def cause(item: tuple[int, Any]) -> tuple[bool, bool, int, int]:
        rank, failure = item  # not a rank that was stopped (SIGTERM, SIGINT); a signal's
        stopped = -failure.exitcode in (signal.SIGTERM, signal.SIGINT)  # death before an
        return (stopped, failure.exitcode >= 0, failure.timestamp, rank)  # exit (same second)

    rank, first = min(failures.items(), key=cause)
    if first.exitcode < 0:
        name = signal.Signals(-first.exitcode).name
        return Outcome(128 - first.exitcode,
                       f"rank {rank} (pid {first.pid}) was killed by {name}; torchrun stopped "
                       "the other ranks")
    codes = [f.exitcode for _, f in sorted(failures.items())]
    return Outcome(next((c for c in INTERRUPTED if c in codes), first.exitcode))
