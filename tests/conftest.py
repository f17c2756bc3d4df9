"""Shared fixtures: a small synthetic IMDB made by the tests (no network, no shared data), the
prepared dataset made from it, and one quickly trained run."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imdbsent import data
from imdbsent.cli import main

POSITIVE = "great wonderful superb brilliant moving loved masterpiece charming".split()
NEGATIVE = "awful boring dull terrible waste hated mess clumsy".split()
NEUTRAL = "the film movie plot actor scene story director it was a and of this".split()
EXE = Path(sys.executable).parent / "imdbsent"


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as a terminal gives it, for the tests and the commands they start: a test run
    started in the background (`nohup pytest &` in a script) inherits SIGINT ignored, and so
    would every imdbsent it starts, which then, as documented, keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def make_reviews(n: int, seed: int, labeled: bool = True) -> tuple[list[str], list[int]]:
    """`n` reviews, half positive: neutral filler with a few words of their sentiment, and
    the `<br />` tags and punctuation real reviews carry."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        cue = POSITIVE if label else NEGATIVE
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(5, 40))]
        for _ in range(rng.randint(2, 4)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(cue))
        texts.append(" ".join(words).capitalize() + "!<br /><br />" + rng.choice(NEUTRAL) + ".")
        labels.append(label if labeled else -1)
    return texts, labels


def write_parquet(path: Path, texts: list[str], labels: list[int]) -> None:
    pq.write_table(pa.table({"text": texts, "label": labels}), path)


@pytest.fixture(scope="session")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder in the Hub's Parquet schema: train, test and unsupervised splits."""
    folder = tmp_path_factory.mktemp("imdb")
    write_parquet(folder / "train.parquet", *make_reviews(400, seed=1))
    write_parquet(folder / "test.parquet", *make_reviews(200, seed=2))
    write_parquet(folder / "unsupervised.parquet", *make_reviews(100, seed=3, labeled=False))
    return folder


@pytest.fixture(scope="session")
def prepared_dir(source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    data.prepare(data.PrepareArgs(source=str(source_dir)), out)
    return out


@pytest.fixture(scope="session")
def trained_run(prepared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GRU trained for 3 epochs on the synthetic data (a few seconds)."""
    run = tmp_path_factory.mktemp("runs") / "gru"
    config = tmp_path_factory.mktemp("cfg") / "small.toml"
    config.write_text(SMALL_GRU.format(data=prepared_dir))
    run_cli(["train", "--config", str(config), "--run-dir", str(run)])
    return run


SMALL_GRU = """
version = 1
data = "{data}"
[model]
name = "gru"
embedding_dim = 16
hidden_dim = 16
bidirectional = true
pooling = "max"
[train]
epochs = 3
batch_size = 16
optimizer = "adam"
lr = 0.01
"""


def small_recipe(name: str, extra: str = "") -> str:
    """SMALL_GRU as a recipe of model `name`: the [model] fields that model reads, then the
    `extra` [model] lines."""
    from imdbsent.config import MODEL_FIELDS
    out, in_model = [], False
    for line in SMALL_GRU.splitlines():
        if line.startswith("["):
            in_model = line == "[model]"
        key = line.split("=")[0].strip()
        if not in_model or not key or key.startswith("[") or key in MODEL_FIELDS[name]:
            out.append(line)
        elif key == "name":
            out += [f'name = "{name}"', *extra.splitlines()]
    return "\n".join(out) + "\n"


def run_cli(argv: list[str]) -> int:
    """Run `imdbsent argv` in this process; returns its exit code."""
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def set_started(run: Path, seconds: float) -> None:
    """Make `run` look started `seconds` after the epoch, as its config.toml records it."""
    path = run / "config.toml"
    stamp = datetime.fromtimestamp(seconds).astimezone().isoformat()
    text, found = re.subn(r'(?m)^started = ".*"$', f'started = "{stamp}"', path.read_text())
    assert found == 1
    path.write_text(text)


def hold_lock(folder: Path, holder: str = "train") -> subprocess.Popen:
    """A subprocess that holds `folder`'s imdbsent lock (as `holder`) until killed; returns once
    the lock is held."""
    code = ("import time; from imdbsent.fsutil import FolderLock; "
            f"FolderLock({str(folder)!r}, {holder!r}).__enter__(); print('locked', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"locked"
    return proc


def run_exe(args: list[str], *, input: bytes | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed `imdbsent` executable in a subprocess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(EXE), *args], input=input, capture_output=True, cwd=cwd,
                          timeout=timeout, env=env)
