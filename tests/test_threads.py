"""Threads: idle OpenMP workers sleep (OMP_WAIT_POLICY=PASSIVE) unless the user chose otherwise,
and the number of compute threads follows --threads, then OMP_NUM_THREADS, then the cores this
process may run on.

What torch reads from the environment it reads when it is imported, so every case runs in a
fresh interpreter with an environment of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from imdbsent import threads
from imdbsent.errors import UserError

THREAD_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "RAYON_NUM_THREADS", "MKL_NUM_THREADS",
               "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV")

# Pins the interpreter to one core (as `taskset -c N` would) unless told not to, before anything
# is imported, then configures and reports what torch, OpenMP's environment and Rayon's got.
PROBE = """
import json, os, sys
if sys.argv[2] == "pin":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from imdbsent import threads
import torch
used = threads.configure(json.loads(sys.argv[1]))
print(json.dumps({"used": used, "torch": torch.get_num_threads(),
                  "rayon": os.environ.get("RAYON_NUM_THREADS"),
                  "wait": os.environ.get("OMP_WAIT_POLICY")}))
"""


def probe(explicit: int | None, pin: bool = True, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(explicit), "pin" if pin else "-"],
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def openmp_spin_count(**env: str) -> int:
    """How long the OpenMP runtime that torch loaded after imdbsent lets an idle worker spin, as
    it reports at start-up (OMP_DISPLAY_ENV=VERBOSE): 0 for PASSIVE, 300,000 for libgomp's
    default, 30 billion for ACTIVE. (It shows OMP_WAIT_POLICY as PASSIVE when it is unset.)"""
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    proc = subprocess.run([sys.executable, "-c", "import imdbsent.engine, torch; torch.ones(2) + 1"],
                          env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    if not lines:
        pytest.skip("torch's OpenMP runtime is not libgomp")
    return int(lines[0].split("=", 1)[1].strip().strip("'"))


def test_neither_set_uses_the_cores_this_process_may_run_on() -> None:
    # pinned to 1 core: torch alone would take every physical core of the machine
    assert probe(None) == {"used": 1, "torch": 1, "rayon": "1", "wait": "PASSIVE"}


@pytest.mark.skipif(threads.available_cores() < 2, reason="needs 2 cores to tell 1 from the cores")
def test_omp_num_threads_is_honoured_as_torch_read_it() -> None:
    got = probe(None, pin=False, OMP_NUM_THREADS="1")
    assert (got["used"], got["torch"], got["rayon"]) == (1, 1, "1")


def test_an_explicit_value_wins_over_omp_num_threads_and_the_cores() -> None:
    assert probe(2, OMP_NUM_THREADS="3")["torch"] == 2
    got = probe(3)
    assert (got["used"], got["torch"], got["rayon"]) == (3, 3, "3")


def test_a_users_rayon_setting_is_kept() -> None:
    got = probe(2, RAYON_NUM_THREADS="5")
    assert (got["used"], got["torch"], got["rayon"]) == (2, 2, "5")


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, "2"])
def test_an_invalid_value_is_a_user_error(bad: object) -> None:
    with pytest.raises(UserError, match="--threads must be a whole number of at least 1"):
        threads.configure(bad)  # type: ignore[arg-type]


def test_openmp_waits_passively_by_default() -> None:
    assert openmp_spin_count() == 0


def test_the_users_wait_policy_is_not_overridden() -> None:
    assert openmp_spin_count(OMP_WAIT_POLICY="ACTIVE") > 1_000_000
    assert probe(None, OMP_WAIT_POLICY="active")["wait"] == "active"
