"""Threads: the count follows --threads, then OMP_NUM_THREADS, then the cores other processes
leave idle (measured at the start, followed by balance()); the ceiling goes to the tokenizers'
Rayon pool; OpenMP's wait policy is left alone.

What torch reads from the environment it reads when it is imported, so the precedence cases
run in a fresh interpreter with an environment of its own. The load-following logic runs on a
fake machine (clock and CPU counters), as a real shared machine's load cannot be controlled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from imdbsent import threads
from imdbsent.errors import Pending, UserError

THREAD_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "RAYON_NUM_THREADS", "MKL_NUM_THREADS",
               "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV")

# Pins the interpreter to one core (as `taskset -c N` would) unless told not to, before anything
# is imported, then configures and reports what torch and Rayon's environment got.
PROBE = """
import json, os, sys
if sys.argv[2] == "pin":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from imdbsent import threads
import torch
used = threads.configure(json.loads(sys.argv[1]))
print(json.dumps({"used": used, "torch": torch.get_num_threads(),
                  "rayon": os.environ.get("RAYON_NUM_THREADS")}))
"""


def clean_env(**env: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in THREAD_VARS}, **env}


def probe(explicit: int | None, pin: bool = True, **env: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(explicit), "pin" if pin else "-"],
                          env=clean_env(**env), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_neither_set_uses_the_cores_this_process_may_run_on() -> None:
    # pinned to 1 core: torch alone would take every physical core of the machine
    assert probe(None) == {"used": 1, "torch": 1, "rayon": "1"}


@pytest.mark.skipif(threads.available_cores() < 2, reason="needs 2 cores to tell 1 from the cores")
def test_omp_num_threads_is_honoured_as_torch_read_it() -> None:
    got = probe(None, pin=False, OMP_NUM_THREADS="1")
    assert (got["used"], got["torch"], got["rayon"]) == (1, 1, "1")


def test_an_explicit_value_wins_over_omp_num_threads() -> None:
    assert probe(1, pin=False, OMP_NUM_THREADS="3")["torch"] == 1


def test_an_explicit_value_is_capped_at_the_cores_this_process_may_run_on() -> None:
    got = probe(3)  # pinned to 1 core: 3 threads would only wait at each other's barriers
    assert (got["used"], got["torch"], got["rayon"]) == (1, 1, "1")
    got = probe(None, OMP_NUM_THREADS="3")  # the same, however asked
    assert (got["used"], got["torch"], got["rayon"]) == (1, 1, "1")
    cores = threads.available_cores()
    got = probe(cores, pin=False)
    assert (got["used"], got["torch"], got["rayon"]) == (cores, cores, str(cores))


def test_a_users_rayon_setting_is_kept() -> None:
    got = probe(1, RAYON_NUM_THREADS="5")
    assert (got["used"], got["torch"], got["rayon"]) == (1, 1, "5")


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, "2"])
def test_an_invalid_value_is_a_user_error(bad: object) -> None:
    with pytest.raises(UserError, match="^threads must be a whole number of at least 1"):
        threads.configure(bad)  # type: ignore[arg-type]


def openmp_spin_count(code: str) -> int:
    """How long the OpenMP runtime lets an idle worker spin, as it reports at start-up
    (OMP_DISPLAY_ENV=VERBOSE): 0 for PASSIVE, 300,000 for libgomp's default."""
    proc = subprocess.run([sys.executable, "-c", code + "; import torch; torch.ones(2) + 1"],
                          env=clean_env(OMP_DISPLAY_ENV="VERBOSE"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    if not lines:
        pytest.skip("torch's OpenMP runtime is not libgomp")
    return int(lines[0].split("=", 1)[1].strip().strip("'"))


def test_openmp_wait_policy_is_left_alone() -> None:
    # PASSIVE (spin 0) made a lone evaluate 47% slower here: benchmarks/CONCURRENCY.md
    assert openmp_spin_count("import imdbsent.cli, imdbsent.engine") == openmp_spin_count("pass")


def test_other_processes_cpu_use_is_measured() -> None:
    core = min(os.sched_getaffinity(0))
    burner = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})"
                               "\nwhile True: pass"])
    try:
        time.sleep(0.5)  # started
        before = threads._sample()
        if before is None:
            pytest.skip("no /proc/stat here")
        time.sleep(1.0)
        assert threads.others_busy(before, threads._sample()) >= 0.5
    finally:
        burner.kill()
        burner.wait()


@pytest.mark.parametrize(("others", "ceiling", "share"), [
    (0.0, 2, 2), (0.5, 2, 2), (0.8, 2, 1), (1.0, 2, 1), (2.0, 2, 1), (2.0, 1, 1),
    (7.9, 16, 8), (8.0, 16, 8), (30.0, 16, 1)])
def test_a_core_counts_as_taken_from_three_quarters_used(others: float, ceiling: int,
                                                          share: int) -> None:
    assert threads.idle_share(others, ceiling) == share


class FakeMachine:
    """A clock, and CPU counters where other processes use `others` cores and this one none."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cores: int) -> None:
        self.now, self.busy, self.others = 100.0, 0.0, 0.0
        monkeypatch.setattr(threads, "available_cores", lambda: cores)
        monkeypatch.setattr(threads, "_clock", lambda: self.now)
        monkeypatch.setattr(threads, "_sleep", self.advance)
        monkeypatch.setattr(threads, "_busy_ticks", lambda: int(self.busy))
        monkeypatch.setattr(threads, "_own_ticks", lambda: 0.0)
        for name in ("_ceiling", "_current", "_mark", "_rayon_ours"):  # restored afterwards
            monkeypatch.setattr(threads, name, getattr(threads, name))
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("RAYON_NUM_THREADS", "")
        monkeypatch.delenv("RAYON_NUM_THREADS")

    def advance(self, seconds: float) -> None:
        self.busy += self.others * seconds * threads._TICK
        self.now += seconds


@pytest.fixture
def torch_threads() -> None:
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


@pytest.mark.usefixtures("torch_threads")
def test_configure_takes_the_idle_cores_and_balance_follows_the_load(
        monkeypatch: pytest.MonkeyPatch) -> None:
    machine = FakeMachine(monkeypatch, cores=2)
    machine.others = 1.9  # another process busy on both cores at the start
    assert threads.configure(None) == 1 and torch.get_num_threads() == 1
    assert os.environ["RAYON_NUM_THREADS"] == "2"  # the ceiling: Rayon workers do not spin
    machine.others = 0.0  # it ended
    machine.advance(0.5)
    assert threads.balance() == 1  # not measured again yet: under BALANCE_SECONDS
    machine.advance(0.6)
    assert threads.balance() == 2 and torch.get_num_threads() == 2
    machine.others = 1.0  # another process started, with one thread
    machine.advance(1.0)
    assert [threads.balance() for _ in range(3)] == [1, 1, 1]
    assert torch.get_num_threads() == 1


@pytest.mark.usefixtures("torch_threads")
def test_balanced_iterates_and_balances(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = FakeMachine(monkeypatch, cores=2)
    assert threads.configure(None) == 2
    counts = []
    for i in threads.balanced(range(4)):
        counts.append(torch.get_num_threads())
        machine.others = 1.0 if i >= 1 else 0.0
        machine.advance(1.0)
    assert counts == [2, 2, 1, 1]


@pytest.mark.usefixtures("torch_threads")
def test_a_given_count_is_never_balanced(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = FakeMachine(monkeypatch, cores=2)
    machine.others = 2.0
    assert threads.configure(2) == 2
    machine.advance(5.0)
    assert threads.balance() == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.configure(None) == torch.get_num_threads()
    machine.advance(5.0)
    assert threads.balance() == torch.get_num_threads()


@pytest.fixture
def unbalanced(monkeypatch: pytest.MonkeyPatch, torch_threads: None) -> None:
    """No load-following (as after `--threads N`): the count a test sets stands."""
    monkeypatch.setattr(threads, "_ceiling", 0)


def mapped_where(items: list[int], **kwargs: bool) -> tuple[list[int], set[tuple[str, int]]]:
    """threads.mapped squaring `items`: the results, and (thread name, torch's thread count)
    of every call."""
    seen = set()

    def work(i: int) -> int:
        time.sleep(0.01 * (i % 3))  # later items may finish first
        seen.add((threading.current_thread().name, torch.get_num_threads()))
        return i * i

    return list(threads.mapped(work, items, **kwargs)), seen


@pytest.mark.usefixtures("unbalanced")
@pytest.mark.parametrize(("cores", "workers", "each"), [(2, 2, 1), (8, 2, 4)])
def test_mapped_shares_the_threads_among_workers_and_keeps_the_order(
        cores: int, workers: int, each: int) -> None:
    torch.set_num_threads(cores)
    results, seen = mapped_where(list(range(24)))
    assert results == [i * i for i in range(24)]
    assert len({name for name, _ in seen}) == workers  # at most MAX_WORKERS
    assert {count for _, count in seen} == {each}
    assert torch.get_num_threads() == cores  # restored


@pytest.mark.usefixtures("unbalanced")
def test_mapped_runs_on_the_callers_threads_otherwise() -> None:
    torch.set_num_threads(3)
    here = {(threading.current_thread().name, 3)}
    assert mapped_where([5]) == ([25], here)  # one batch: on all the threads
    assert mapped_where([1, 2, 3], parallel=False) == ([1, 4, 9], here)  # e.g. on a GPU
    got = []
    other = threading.Thread(target=lambda: got.append(mapped_where([1, 2, 3])), name="caller")
    other.start()
    other.join()
    assert got[0][0] == [1, 4, 9]
    assert {name for name, _ in got[0][1]} == {"caller"}  # the count is the process's: no pool


@pytest.mark.usefixtures("unbalanced")
@pytest.mark.parametrize("stop", ["error", "interrupt"])
def test_mapped_stops_at_a_failure_or_an_interruption(monkeypatch: pytest.MonkeyPatch,
                                                      stop: str) -> None:
    torch.set_num_threads(2)
    started = []

    def work(i: int) -> int:
        started.append(i)
        if i == 0:
            if stop == "error":
                raise ValueError("bad item")
            monkeypatch.setattr(Pending, "raised", KeyboardInterrupt)
        else:
            time.sleep(2)  # holds the workers while the stop is seen
        return i

    with pytest.raises(ValueError if stop == "error" else KeyboardInterrupt):
        list(threads.mapped(work, range(1000)))
    # the workers took at most items 1 and 2 after 0; those queued behind them were dropped
    assert started[0] == 0 and set(started) <= {0, 1, 2}
    assert torch.get_num_threads() == 2


@pytest.mark.usefixtures("torch_threads")
def test_a_count_above_the_cores_is_cut_and_said_once(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeMachine(monkeypatch, cores=1)
    said: list[str] = []
    assert threads.configure(3, warn=said.append) == 1 and torch.get_num_threads() == 1
    assert said == ["warning: --threads 3 is more than the 1 cores this process may run on: "
                    "computing with 1"]
    said.clear()
    assert threads.configure(1, warn=said.append) == 1 and said == []
    assert threads.configure(None, warn=said.append) == 1 and said == []  # measured: not asked
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert threads.configure(None, warn=said.append) == 1
    assert said == ["warning: OMP_NUM_THREADS=4 is more than the 1 cores this process may run "
                    "on: computing with 1"]
