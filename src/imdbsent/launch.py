"""`imdbsent train --nproc N`: one training started as N processes on this machine by torchrun
itself (`torch.distributed.run`, standalone rendezvous), each running `python -m imdbsent train`
with the same arguments; then one exit status and, where a process failed, one line saying which.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from imdbsent import threads

E = TypeVar("E", bound=BaseException)
INTERRUPTED = (130, 143)  # Ctrl-C, SIGTERM: rank 0 says what was kept, if it lived to
SAID = "IMDBSENT_SAID"  # a file rank 0 makes once it has said why it stopped
# How long stopped ranks may take to end before they are killed (torchrun's own default is 30
# s): a rank blocked in a collective with one that has already ended never sees the signal, and
# one that has it ends within a second; a kill loses nothing that is written (atomic writes).
SHUTDOWN_SECONDS = 10


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
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_SECONDS))
    args = torchrun.parse_args(["--standalone", "--nproc-per-node", str(nproc), "--max-restarts",
                                "0", "-m", "imdbsent", "train", *train_args])
    with tempfile.TemporaryDirectory(prefix="imdbsent-launch-") as folder:
        said = os.environ[SAID] = os.path.join(folder, "said")  # the ranks inherit it
        try:
            torchrun.run(args)
        except ChildFailedError as exc:
            result = outcome(exc.failures)
        except Exception as exc:
            stop = _raised_over(exc, SignalException)
            if stop is None:
                raise
            # the launcher was stopped; it stopped every rank, but for a signal while it was
            # starting them: none then
            stop_children(stop.sigval)
            result = Outcome(130 if stop.sigval == signal.SIGINT else 143)
        else:
            result = Outcome(0)
        finally:
            del os.environ[SAID]
        if result.code in INTERRUPTED and not result.message and not os.path.exists(said):
            result.message = ("interrupted before rank 0 could say what was kept (the ranks "
                              "were starting, or one was killed); imdbsent runs lists the runs")
    return result


def _raised_over(exc: BaseException, kind: type[E]) -> E | None:
    """`exc`, or an exception it was raised while handling, that is a `kind`: torch's agent,
    stopped by a signal inside its metrics wrapper before that had started its timer, raised
    an UnboundLocalError over the SignalException (a SIGTERM in CI: a traceback, status 1)."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, kind):
        seen = seen.__context__
    return seen


def say_stopped() -> None:
    """Mark, for the launcher of this rank 0, that it has said why it stopped."""
    if path := os.environ.get(SAID):
        with contextlib.suppress(OSError):
            open(path, "a").close()


def stop_children(sig: int, grace: float = SHUTDOWN_SECONDS) -> None:
    """Send `sig` to this process's children still running, and kill those left after `grace`
    seconds. torchrun's agent tells its ranks to stop only once it holds them: a Ctrl-C while
    it was still starting them left them training to the end (3 of 16 tries, in the first
    seconds). Every child of the launcher is a rank. Linux (/proc); elsewhere nothing."""
    children = _children()
    for pid in children:
        _signal(pid, sig)
    deadline = time.monotonic() + grace
    while (children := [pid for pid in children if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in children:
        _signal(pid, signal.SIGKILL)


def _children() -> list[int]:
    me, found = os.getpid(), []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{entry}/stat") as fh:  # pid (comm) state ppid ...
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    """Whether a child still runs; one that has ended is reaped here."""
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def outcome(failures: dict[int, Any]) -> Outcome:
    """The exit status and line for torchrun's failed processes (rank: ProcessFailure): the
    first to fail is named when a signal ended it; else the ranks printed their own line, and
    the status is an error's where one rank had one (the others, stopped by torchrun, exit as
    interrupted), else an interruption's. A rank that torchrun killed afterwards (a hung one,
    30 s after another gave up) is not the first."""
    def cause(item: tuple[int, Any]) -> tuple[bool, int, bool, int]:
        rank, failure = item  # not a rank that was stopped (SIGTERM, SIGINT); the earliest
        stopped = -failure.exitcode in (signal.SIGTERM, signal.SIGINT)  # (timestamps are in
        return (stopped, failure.timestamp, failure.exitcode >= 0, rank)  # seconds: within one,
        # a signal's death before an exit)

    rank, first = min(failures.items(), key=cause)
    if first.exitcode < 0:
        name = signal.Signals(-first.exitcode).name
        return Outcome(128 - first.exitcode,
                       f"rank {rank} (pid {first.pid}) was killed by {name}; torchrun stopped "
                       "the other ranks")
    codes = [f.exitcode for _, f in sorted(failures.items())]
    errors = [c for c in codes if c > 0 and c not in INTERRUPTED]  # (< 0: stopped by a signal)
    return Outcome(errors[0] if errors else next(c for c in INTERRUPTED if c in codes))
