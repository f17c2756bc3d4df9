"""How many threads an imdbsent process computes with, and how idle ones wait.

Two imdbsent processes on the same cores must share them, not fight over them. Torch's CPU
kernels run on an OpenMP pool, and by default an OpenMP worker that runs out of work spins on
its core for a while before it sleeps: beside a second busy process those spinning workers
steal the very cores the other one's workers need, and both crawl (an `evaluate` that takes
19 s alone had not finished after 300 s beside a training run, on 2 cores). Waiting workers
that sleep at once (OMP_WAIT_POLICY=PASSIVE) give the cores back.

The OpenMP runtime reads OMP_WAIT_POLICY once, when it is loaded (when torch is first
imported), so this module sets it on import and `imdbsent/__init__.py` imports it before
anything else. A user's own OMP_WAIT_POLICY is kept. The module imports nothing heavy.
"""

from __future__ import annotations

import os

from imdbsent.errors import UserError

WAIT_POLICY = "PASSIVE"

#: The user set OMP_WAIT_POLICY before imdbsent was imported: theirs stands.
USER_WAIT_POLICY = "OMP_WAIT_POLICY" in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)

_rayon_ours: str | None = None  # the RAYON_NUM_THREADS value configure() set, if any


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def configure(threads: int | None = None) -> int:
    """Set the number of compute threads and return it.

    An explicit `threads` (`--threads N`) wins; else OMP_NUM_THREADS, when set, stands as torch
    read it at import; else every core this process may run on. Torch's intra-op pool gets that
    many threads, and so does the Rayon pool of the `tokenizers` library (RAYON_NUM_THREADS,
    unless the user set it; it only takes effect when set before `tokenizers` first runs in
    parallel, so call this at the start of a command). Torch's inter-op pool is left alone:
    imdbsent runs no inter-op parallel work, so it is never started.
    """
    global _rayon_ours
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise UserError(f"--threads must be a whole number of at least 1, not {threads}")
    import torch  # here, not at module level: this module is imported by every imdbsent process

    if threads is not None:
        torch.set_num_threads(threads)
    elif os.environ.get("OMP_NUM_THREADS", "").strip():
        threads = torch.get_num_threads()
    else:
        threads = available_cores()
        torch.set_num_threads(threads)
    rayon = os.environ.get("RAYON_NUM_THREADS")
    if rayon is None or rayon == _rayon_ours:
        _rayon_ours = os.environ["RAYON_NUM_THREADS"] = str(threads)
    return threads
