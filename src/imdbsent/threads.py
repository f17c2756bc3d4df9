"""How many threads an imdbsent process computes with: the cores other processes leave idle.

Torch's CPU kernels run on an OpenMP pool whose idle workers spin for a while before they sleep.
One such process alone is fastest that way, but two of them on the same cores collapse: each
one's spinning workers hold the cores the other's workers need to reach the next barrier (on 2
cores an `evaluate` of 19 s alone had not finished after 300 s beside a training run). Sleeping
workers (OMP_WAIT_POLICY=PASSIVE) avoid the collapse but cost a lone process dearly, as every
parallel region must wake them (+47% for `evaluate` on this machine: benchmarks/CONCURRENCY.md).
A single-threaded process never waits at a barrier, so beside it a spinning process does well.

So imdbsent takes only the cores that are idle: `configure()` measures, at the start of a
command, how much CPU other processes use on the cores this process may run on, and sets torch's
intra-op threads to what they leave (at least 1); `balance()`, called from compute loops,
measures again about once a second and follows the load as other processes come and go. Two
imdbsent processes thus settle on a share each instead of fighting over every core. OpenMP's
wait policy is left as it is (a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT applies as usual).

Only the standard library is imported here; torch is imported when a count is set.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import chain, islice
from typing import TypeVar

from imdbsent.errors import BadValue, Pending

T = TypeVar("T")
R = TypeVar("R")

#: Seconds over which configure() measures other processes' CPU use before choosing.
SAMPLE_SECONDS = 0.1
#: balance() measures again when at least this many seconds have passed.
BALANCE_SECONDS = 1.0
#: A core counts as taken when other processes use at least this much of it.
TAKEN = 0.75
#: The most batches `mapped` scores at once: each worker holds a batch's activations and its own
#: allocator arena (`predict` of the 1,024 longest test reviews with the default LSTM: peak RSS
#: 823 MiB one batch at a time, 1,066 on two workers; with four, 1,626 in a first try), so more
#: cores share two workers (benchmarks/notes.md).
MAX_WORKERS = 2

_ceiling = 0  # the most threads balance() may use; 0: counts are not balanced
_current = 0
_mark: tuple[float, int, float] | None = None  # (time, busy ticks of our cores, own ticks)
_rayon_ours: str | None = None  # the RAYON_NUM_THREADS value configure() set, if any
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_clock, _sleep = time.monotonic, time.sleep  # (replaced by the tests)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def _busy_ticks() -> int | None:
    """Clock ticks the cores of this process's affinity spent busy since boot (user, nice,
    system, irq, softirq), from /proc/stat; None where it cannot be read."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        with open("/proc/stat") as fh:
            rows = [line.split() for line in fh if line.startswith("cpu")]
    except (OSError, AttributeError):
        return None
    busy = 0
    for row in rows:
        if row[0] in cpus:
            user, nice, system, _idle, _iowait, irq, softirq = map(int, row[1:8])
            busy += user + nice + system + irq + softirq
    return busy


def _own_ticks() -> float:
    """Clock ticks this process (all its threads) has used."""
    t = os.times()
    return (t.user + t.system) * _TICK


def _sample() -> tuple[float, int, float] | None:
    busy = _busy_ticks()
    return None if busy is None else (_clock(), busy, _own_ticks())


def others_busy(since: tuple[float, int, float], now: tuple[float, int, float]) -> float:
    """Cores other processes used, on average, between two samples."""
    seconds = max(now[0] - since[0], 1e-3)
    return max(0.0, (now[1] - since[1]) - (now[2] - since[2])) / _TICK / seconds


def idle_share(others: float, ceiling: int) -> int:
    """Threads to use when other processes use `others` cores of `ceiling`: a core counts as
    taken from TAKEN of it on; at least 1."""
    return max(1, min(ceiling, ceiling - int(others + 1 - TAKEN)))


def configure(threads: int | None = None,
              warn: Callable[[str], None] = lambda _message: None) -> int:
    """Set the number of compute threads and return it.

    An explicit `threads` (`--threads N`) wins; else OMP_NUM_THREADS, when set, stands as
    torch read it at import; either up to the cores this process may run on (more only wait
    at each other's barriers: a review saw 1,000 threads on 2 cores run far slower; `warn`
    is told when a count is cut so, in one line that names what asked for it). Else the
    cores this process may run on that other processes leave idle (measured over
    SAMPLE_SECONDS), and from then on `balance()` follows the load. Call it at the start of a
    command, from the thread that will compute.

    The Rayon pool of the `tokenizers` library gets the ceiling (the explicit count, or
    OMP_NUM_THREADS, or every core; its workers do not spin at barriers) through
    RAYON_NUM_THREADS, unless the user set that; it only takes effect when set before
    `tokenizers` first runs in parallel. Torch's inter-op pool is left alone: imdbsent runs no
    inter-op parallel work, so it is never started.
    """
    global _ceiling, _current, _mark, _rayon_ours
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise BadValue("threads", f"must be a whole number of at least 1, not {threads}")
    import torch  # here, not at module level: --help and --version must not load torch

    _ceiling, _mark = 0, None
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if threads is not None or env:
        if threads is not None:
            what, count = f"--threads {threads}", threads
            asked = count
        else:  # torch's count (it caps OMP_NUM_THREADS at the cores), but the user's to say
            what, count = f"OMP_NUM_THREADS={env}", torch.get_num_threads()
            asked = int(env) if env.isdigit() else count
        ceiling = threads = min(count, available_cores())
        torch.set_num_threads(threads)
        if threads < asked:
            warn(f"warning: {what} is more than the {threads} cores this process may run on: "
                 f"computing with {threads}")
    else:
        ceiling = threads = available_cores()
        first = _sample()
        if first is not None:
            _sleep(SAMPLE_SECONDS)
            _mark = _sample()
            if _mark is not None:
                _ceiling = ceiling
                threads = idle_share(others_busy(first, _mark), ceiling)
        torch.set_num_threads(threads)
    _current = threads
    rayon = os.environ.get("RAYON_NUM_THREADS")
    if rayon is None or rayon == _rayon_ours:
        _rayon_ours = os.environ["RAYON_NUM_THREADS"] = str(ceiling)
    return threads


def balance() -> int:
    """Follow the load: about once every BALANCE_SECONDS, measure other processes' CPU use
    since the last time and set torch's intra-op threads to the cores they leave idle. Cheap
    between measurements (a clock read), so call it often, e.g. once a batch, from the thread
    that computes (OpenMP's thread count belongs to the calling thread). Does nothing when the
    count was given (`--threads`, OMP_NUM_THREADS) or configure() did not measure. Returns the
    number of threads now in use (0 before configure())."""
    global _current, _mark
    if not _ceiling or _mark is None or _clock() - _mark[0] < BALANCE_SECONDS:
        return _current
    now = _sample()
    if now is None:
        return _current
    wanted = idle_share(others_busy(_mark, now), _ceiling)
    _mark = now
    if wanted != _current:
        import torch

        torch.set_num_threads(wanted)
        _current = wanted
    return _current


def balanced(items: Iterable[T]) -> Iterator[T]:
    """`items`, calling balance() before each one: `for batch in threads.balanced(batches):`;
    a Ctrl-C or SIGTERM that a library swallowed (`Pending`) stops the work here."""
    for item in items:
        Pending.raise_again()
        balance()
        yield item


def mapped(work: Callable[[T], R], items: Iterable[T], parallel: bool = True) -> Iterator[R]:
    """`work(item)` for each item, in order, checking for an interruption (`Pending`) between
    items. With `parallel` (inference on the CPU), N compute threads and two items or more,
    called from the main thread: up to MAX_WORKERS items are worked on at once, each by a
    worker thread of its own, the N threads shared among them (torch's intra-op count set to
    N // workers meanwhile, and restored). A recurrent model's small matrix products meet at an
    OpenMP barrier at every step of a sequence, so two threads on one batch are far from twice
    one thread's speed (the default LSTM, `imdbsent predict` over the 25,000 test reviews on 2
    cores of an Intel Xeon: 309 a second on two threads, 415 on two workers of one thread;
    benchmarks/THROUGHPUT.md). Anything else runs as `balanced` runs it, on the caller's
    threads: a single batch (on all N), a caller other than the main thread (torch's thread
    count is the process's, which two callers would fight over). `work` runs in the workers, so
    it enters anything thread-local (inference mode, autocast) itself: the caller's is not
    seen there."""
    import torch

    balance()
    items = iter(items)
    ahead = list(islice(items, 2))
    threads = torch.get_num_threads()
    workers = min(threads, MAX_WORKERS) if parallel and len(ahead) > 1 else 1
    if workers < 2 or threading.current_thread() is not threading.main_thread():
        for item in balanced(chain(ahead, items)):
            yield work(item)
        return
    torch.set_num_threads(threads // workers)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="imdbsent-infer")
    try:
        queued: deque[Future[R]] = deque()
        for item in chain(ahead, items):
            Pending.raise_again()
            queued.append(pool.submit(work, item))
            if len(queued) > 2 * workers:  # a few ahead, so that no worker waits
                yield queued.popleft().result()
        while queued:
            Pending.raise_again()
            yield queued.popleft().result()
    finally:
        try:
            pool.shutdown(cancel_futures=True)  # waits for the items being worked on
        finally:  # even if a second interruption comes while it waits
            torch.set_num_threads(threads)
