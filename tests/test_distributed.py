"""Training on many processes: torchrun and `train --nproc` on gloo, with small data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import EXE, SMALL_GRU, run_cli, run_exe, small_recipe
from imdbsent import data, distributed, engine, launch, runs, training

LONG = SMALL_GRU.replace("epochs = 3", "epochs = 6")


def _recipe(folder: Path, prepared_dir: Path, text: str = SMALL_GRU) -> Path:
    path = folder / "recipe.toml"
    path.write_text(text.format(data=prepared_dir))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _metrics(run: Path) -> list[dict]:
    """A run's metrics without wall times."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in runs.read_metrics(run)]


def _layout(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e[5:]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def _wait_for_epochs(run: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not (run / "metrics.jsonl").exists() or len(runs.read_metrics(run)) < n:
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.time() < deadline, "training made no progress"
        time.sleep(0.05)


# --- the pieces, in one process ------------------------------------------------------------

def test_each_rank_takes_an_equal_share_of_the_same_batch_order(prepared_dir, monkeypatch):
    split = data.load_prepared(prepared_dir).split("train")
    whole = data.Batches(split, 16, shuffle=True, seed=3)
    whole.epoch = 2
    order = [b.label.tolist() for b in whole]
    shares = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "_world", distributed.World(rank, 3))
        sharded = data.Batches(split, 16, shuffle=True, seed=3, shard=True)
        sharded.epoch = 2
        shares.append([b.label.tolist() for b in sharded])
        assert len(sharded) == len(shares[-1]) == -(-len(order) // 3)  # equal steps for all
    # rank r serves batches r, r + 3, ...; the order is padded with its own first batches
    padded = order + order[:-len(order) % 3]
    assert [batch for rank in range(3) for batch in shares[rank]] == [
        padded[i] for rank in range(3) for i in range(rank, len(padded), 3)]


def test_scoring_shares_are_not_padded(monkeypatch):
    monkeypatch.setattr(distributed, "_world", distributed.World(1, 2))
    assert distributed.share(list(range(5)), pad=False) == [1, 3]
    assert distributed.share(list(range(5)), pad=True) == [1, 3, 0]


def test_each_process_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # recorded, so that the test leaves it as it was
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(launch.threads, "available_cores", lambda: 16)
    launch.share_threads(4, None)
    assert os.environ["OMP_NUM_THREADS"] == "4"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting stands
    launch.share_threads(4, None)
    assert os.environ["OMP_NUM_THREADS"] == "3"
    monkeypatch.delenv("OMP_NUM_THREADS")
    launch.share_threads(4, 2)  # so does --threads, passed on to every process
    assert "OMP_NUM_THREADS" not in os.environ


def test_the_launcher_names_the_rank_that_was_killed():
    def failure(code: int, when: int, pid: int = 7) -> SimpleNamespace:
        return SimpleNamespace(exitcode=code, timestamp=when, pid=pid)

    killed = launch.outcome({0: failure(-15, 5), 1: failure(-9, 6, pid=42)})
    assert killed.code == 137 and "rank 1 (pid 42) was killed by SIGKILL" in killed.message
    interrupted = launch.outcome({0: failure(143, 5), 1: failure(143, 5)})
    assert interrupted == launch.Outcome(143)  # rank 0 said how to resume
    assert launch.outcome({1: failure(1, 5)}) == launch.Outcome(1)  # the rank printed its error
    # rank 0 lost contact and exited in the same second as rank 1 was killed: rank 1 is named
    same_second = launch.outcome({0: failure(1, 5), 1: failure(-9, 5, pid=43)})
    assert same_second.code == 137 and "rank 1 (pid 43)" in same_second.message
    # rank 0 gave up on a hung rank 1 (it said so), which torchrun killed 30 s later
    hung = launch.outcome({0: failure(1, 5), 1: failure(-9, 35, pid=44)})
    assert hung == launch.Outcome(1)
    # rank 1 refused something (it said what) and torchrun stopped rank 0, which exited as
    # terminated in the same second: the status is the refusal's, not an interruption's
    refused = launch.outcome({0: failure(143, 5), 1: failure(1, 5)})
    assert refused == launch.Outcome(1)
    # a Ctrl-C: rank 0 said it and exited 130, rank 1 died of the SIGTERM that followed
    assert launch.outcome({0: failure(130, 5), 1: failure(-15, 5)}) == launch.Outcome(130)


@pytest.mark.parametrize("rank0_said", [True, False])
def test_an_interrupt_is_said_once_by_rank_0_or_else_by_the_launcher(monkeypatch, rank0_said):
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException

    marker = []

    def interrupted(_args) -> None:  # the ranks as torchrun starts them: the same environment
        marker.append(Path(os.environ[launch.SAID]))
        if rank0_said:
            subprocess.run([sys.executable, "-c", "from imdbsent import launch; "
                            "launch.say_stopped()"], check=True)
        raise SignalException("stopped", signal.SIGINT)

    monkeypatch.setattr(torchrun, "run", interrupted)
    monkeypatch.setattr(launch, "stop_children", lambda _sig: None)
    result = launch.run(2, ["--epochs", "1"])
    assert result.code == 130
    if rank0_said:
        assert result.message == ""
    else:
        assert result.message.startswith("interrupted before rank 0 could say what was kept")
    assert launch.SAID not in os.environ and not marker[0].parent.exists()  # nothing left


def test_a_signal_that_torchs_agent_raised_another_error_over_is_still_a_stop(monkeypatch):
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException

    def stopped_in_its_metrics_wrapper(_args) -> None:  # as torch's agent did, once, in CI
        try:
            raise SignalException("stopped", signal.SIGTERM)
        finally:
            raise UnboundLocalError("cannot access local variable 'start'")

    monkeypatch.setattr(torchrun, "run", stopped_in_its_metrics_wrapper)
    stopped = []
    monkeypatch.setattr(launch, "stop_children", stopped.append)
    assert launch.run(2, ["--epochs", "1"]).code == 143 and stopped == [signal.SIGTERM]

    def failed(_args) -> None:  # any other error is not taken for one
        raise UnboundLocalError("something else")

    monkeypatch.setattr(torchrun, "run", failed)
    with pytest.raises(UnboundLocalError, match="something else"):
        launch.run(2, ["--epochs", "1"])


def test_a_stopped_launcher_stops_every_child_left_running():
    quits = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal("
                                 "signal.SIGINT, signal.SIG_IGN); print(flush=True); "
                                 "time.sleep(60)"], stdout=subprocess.PIPE)
    stubborn.stdout.readline()  # its SIGINT is ignored by now
    start = time.monotonic()
    launch.stop_children(signal.SIGINT, grace=2.0)
    assert 2.0 <= time.monotonic() - start < 10  # the stubborn one was given its grace,
    assert stubborn.wait(timeout=5) == -signal.SIGKILL  # then killed
    quits.wait(timeout=5)  # ended by the SIGINT (and reaped there)
    stubborn.stdout.close()


def test_bf16_autocast_trains_on_the_cpu_and_scores_in_fp32(prepared_dir, tmp_path, capsys):
    recipe = _recipe(tmp_path, prepared_dir)
    trained = {}
    for precision in ("fp32", "bf16"):
        run = tmp_path / precision
        assert run_cli(["train", "--config", str(recipe), "--run-dir", str(run), "--precision",
                        precision, "--epochs", "2"]) == 0
        trained[precision] = run
    bf16 = trained["bf16"]
    assert runs.load_config(bf16).train.precision == "bf16"
    # the forward passes ran in bfloat16: the same seed and batches, another training loss
    assert runs.read_metrics(bf16)[0]["train_loss"] != runs.read_metrics(trained["fp32"])[0][
        "train_loss"]
    weights = runs.load_checkpoint(bf16 / runs.BEST).weights
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
    capsys.readouterr()
    assert run_cli(["evaluate", str(bf16), "--json"]) == 0  # the test line was scored in fp32
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(
        runs.read_metrics(bf16)[-1]["test_loss"], abs=1e-6)


def test_an_lstm_in_bf16_on_a_cpu_without_bf16_is_refused_before_anything_trains(
        prepared_dir, tmp_path, capsys, monkeypatch):
    # torch's LSTM fails in bf16 on an AVX2-only CPU ("could not create a primitive
    # descriptor"), after an ensemble's earlier members or a region pass would have run
    monkeypatch.setattr(engine, "cpu_bf16", lambda: False)
    lstm = tmp_path / "lstm.toml"
    lstm.write_text(small_recipe("lstm").format(data=prepared_dir)
                    + 'precision = "bf16"\n')
    run = tmp_path / "single"
    capsys.readouterr()
    assert run_cli(["train", "--config", str(lstm), "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err
    assert "an LSTM trains in bf16 only on a CPU with AVX-512 BF16 or AMX" in err
    assert len(err.strip().splitlines()) == 1 and not run.exists()
    ensemble = tmp_path / "ens.toml"
    ensemble.write_text(f'version = 1\ndata = "{prepared_dir}"\n[model]\nname = "ensemble"\n'
                        'members = ["nblr", "lstm.toml"]\n')
    run = tmp_path / "ensemble"
    assert run_cli(["train", "--config", str(ensemble), "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err
    assert "error: lstm: an LSTM trains in bf16" in err and len(err.strip().splitlines()) == 1
    assert not (run / runs.MEMBERS / "nblr").exists()  # refused before NB-LR trained
    # a GRU has a bf16 kernel there, and fp32 is never refused
    gru = tmp_path / "gru.toml"
    gru.write_text(small_recipe("gru").format(data=prepared_dir).replace("epochs = 3", "epochs = 1"))
    assert run_cli(["train", "--config", str(gru), "--run-dir", str(tmp_path / "gru"),
                    "--precision", "bf16"]) == 0
    assert run_cli(["train", "--config", str(lstm), "--run-dir", str(tmp_path / "fp32"),
                    "--precision", "fp32", "--epochs", "1"]) == 0


# --- several processes ----------------------------------------------------------------------

EQUIVALENCE = r"""
import os, sys, torch
from pathlib import Path
from imdbsent import config, data, distributed, engine

def merge(batches):
    width = max(b.text.shape[1] for b in batches)
    return data.Batch(torch.cat([torch.nn.functional.pad(b.text, (0, width - b.text.shape[1]))
                                 for b in batches]),
                      torch.cat([b.lengths for b in batches]), torch.cat([b.label for b in batches]))

cfg = config.load(sys.argv[1], {"train.optimizer": "sgd", "train.lr": 0.5})  # no dropout
prepared = data.load_prepared(Path(cfg.data))
with distributed.session(torch.device("cpu"), 60) as world:
    trainer = engine.Trainer(cfg, prepared, Path(sys.argv[2]).parent)
    batches = trainer.train_batches
    for epoch in range(1, 50):  # an epoch whose first two batches are full (equal weights)
        full = data.Batches(batches.data, batches.batch_size, shuffle=True, seed=batches.seed)
        full.epoch = epoch
        first = [len(idx) for idx in full.order()[:2]]
        if first == [batches.batch_size] * 2:
            break
    batches.epoch = epoch
    if world.size == 1:  # one step on the union of what ranks 0 and 1 take
        steps = [merge([b for _, b in zip(range(2), batches)])]
    else:
        steps = [next(iter(batches))]
    if world.main:
        torch.save({k: v.clone() for k, v in trainer.net.state_dict().items()}, sys.argv[2] + ".0")
    engine.train(trainer.net, steps, trainer.optimizer, trainer.criterion, sync=world.size > 1)
    if world.main:
        torch.save(trainer.model.state_dict(), sys.argv[2])
os._exit(0)  # as imdbsent's own processes end (cli._leave_at_once): gloo's threads could abort
# the interpreter's finalization ("terminate called without an active exception", once in CI)
"""


def test_two_processes_take_the_step_one_process_takes_on_both_batches(prepared_dir, tmp_path):
    recipe = _recipe(tmp_path, prepared_dir)
    port = str(_free_port())
    procs = [subprocess.Popen(
        [sys.executable, "-c", EQUIVALENCE, str(recipe), str(tmp_path / "two.pt")],
        env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
             "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
             "OMP_NUM_THREADS": "1"},
        stderr=subprocess.PIPE) for rank in range(2)]
    one = subprocess.run([sys.executable, "-c", EQUIVALENCE, str(recipe), str(tmp_path / "one.pt")],
                         capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr.decode()
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    two, single = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    start = torch.load(tmp_path / "one.pt.0")
    assert {k.removeprefix("module.") for k in torch.load(tmp_path / "two.pt.0")} == start.keys()
    assert two.keys() == single.keys() == start.keys()
    for name in two:
        torch.testing.assert_close(two[name], single[name], atol=1e-5, rtol=0)
    assert max((two[k] - start[k]).abs().max().item() for k in two) > 1e-3  # a real step


def test_nproc_train_interrupt_resume_and_evaluate(prepared_dir, trained_run, tmp_path, capsys):
    recipe = _recipe(tmp_path, prepared_dir, LONG)
    straight = tmp_path / "straight"
    done = run_exe(["train", "--config", str(recipe), "--run-dir", str(straight), "--nproc", "2"])
    assert done.returncode == 0, done.stderr
    assert runs.load_config(straight).train.world_size == 2

    run = tmp_path / "interrupted"
    proc = subprocess.Popen([str(EXE), "train", "--config", str(recipe), "--run-dir", str(run),
                             "--nproc", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_epochs(run, 2, proc)
    proc.send_signal(signal.SIGTERM)  # to the launcher: it stops every rank
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert f"resume with: imdbsent train --nproc 2 --resume {run}" in err.decode()
    assert b"Traceback" not in err and b"before rank 0 could say" not in err  # said once

    resumed = run_exe(["train", "--resume", str(run), "--nproc", "2"])
    assert resumed.returncode == 0, resumed.stderr
    assert _metrics(run) == _metrics(straight)  # exactly where it would have been
    assert _layout(run) == _layout(trained_run)  # what a one-process run holds
    capsys.readouterr()
    assert run_cli(["evaluate", str(run), "--json"]) == 0  # without torch.distributed
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(
        _metrics(run)[-1]["test_loss"], abs=1e-6)
    assert run_cli(["predict", "--run", str(run), "great film"]) == 0
    assert capsys.readouterr().out.startswith("pos\t")

    assert run_cli(["train", "--resume", str(run), "--epochs", "7"]) == 1  # one process
    err = capsys.readouterr().err
    assert "trained by 2 process(es), not 1" in err and "--nproc 2 --resume" in err
    assert len(err.strip().splitlines()) == 1
    assert run_cli(["train", "--resume", str(run), "--epochs", "7", "--nproc", "3"]) == 2
    err = capsys.readouterr().err  # refused before any process starts
    assert "trained by 2 process(es), not 3" in err and "--nproc 2 --resume" in err  # how
    assert len(err.strip().splitlines()) == 1


def _long_training_past_epoch_1(prepared_dir: Path, tmp_path: Path, timeout: int
                                ) -> tuple[subprocess.Popen, int]:
    """A 2-process training of 400 epochs into tmp_path/run with `--dist-timeout timeout`,
    once its first epoch is saved; the launcher and rank 1's pid."""
    recipe = _recipe(tmp_path, prepared_dir, SMALL_GRU.replace("epochs = 3", "epochs = 400"))
    run = tmp_path / "run"
    proc = subprocess.Popen([str(EXE), "train", "--config", str(recipe), "--run-dir", str(run),
                             "--nproc", "2", "--dist-timeout", str(timeout)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_epochs(run, 1, proc)
    rank1 = [pid for pid in _children(proc.pid) if _rank_of(pid) == 1]
    assert len(rank1) == 1, f"rank 1 not found once: {rank1}"
    return proc, rank1[0]


def test_a_killed_rank_ends_the_job_with_a_clear_line(prepared_dir, tmp_path):
    proc, rank1 = _long_training_past_epoch_1(prepared_dir, tmp_path, timeout=20)
    os.kill(rank1, signal.SIGKILL)
    killed = time.time()
    _, err = proc.communicate(timeout=60)
    assert time.time() - killed < 20  # within --dist-timeout
    assert proc.returncode == 137
    assert f"rank 1 (pid {rank1}) was killed by SIGKILL" in err.decode()
    assert b"Traceback" not in err
    last = runs.load_checkpoint(tmp_path / "run" / runs.LAST)  # whole, and resumable
    assert last.meta["epoch"] >= 1


def test_two_nodes_meet_at_a_c10d_rendezvous_on_localhost(prepared_dir, tmp_path):
    recipe = _recipe(tmp_path, prepared_dir)
    endpoint = f"127.0.0.1:{_free_port()}"
    torchrun = Path(sys.executable).parent / "torchrun"
    folders = [tmp_path / f"node{node}" for node in range(2)]  # each "machine" its own folder
    nodes = []
    for folder in folders:
        folder.mkdir()
        with open(folder / "log.txt", "wb") as log:  # files, not pipes: nobody blocks on them
            nodes.append(subprocess.Popen(
                [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend",
                 "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "imdbsent-test", "-m",
                 "imdbsent", "train", "--config", str(recipe), "--run-dir", "run"],
                cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1"}))
    deadline, finished = time.time() + 180, None
    while any(p.poll() is None for p in nodes) and time.time() < deadline:
        written = [f / "run" for f in folders if (f / "run" / "metrics.jsonl").exists()]
        if finished is None and written and runs.read_metrics(written[0])[-1].get("split"):
            finished = time.time()
        if finished is not None and time.time() - finished > 30:
            break  # trained and tested; see below for an agent still waiting
        time.sleep(0.2)
    lingering = [p for p in nodes if p.poll() is None]
    for proc in lingering:
        proc.kill()
        proc.wait()
    logs = [(f / "log.txt").read_text() for f in folders]
    # torchrun's agent on one node may wait on for the rendezvous store after the training
    # has ended, when the other node, which hosted the store, has already exited (torchrun's
    # own shutdown, not imdbsent's): the other node must have ended cleanly
    assert len(lingering) <= 1, logs
    assert all(p.returncode == 0 for p in nodes if p not in lingering), logs
    written = [f / "run" for f in folders if (f / "run").exists()]
    assert len(written) == 1  # rank 0's machine alone holds the run
    assert runs.load_config(written[0]).train.world_size == 2
    assert [r["epoch"] for r in runs.read_metrics(written[0])[:-1]] == [1, 2, 3]
    assert "Traceback" not in "".join(logs)


def test_interrupted_message_names_the_number_of_processes(tmp_path):
    assert "imdbsent train --nproc 4 --resume" in str(training.Interrupted(tmp_path, 2, 130,
                                                                           processes=4))
    assert str(training.Interrupted(None, 0, 130, quiet=True)) == ""


ENSEMBLE = """
version = 1
data = "{data}"
[model]
name = "ensemble"
members = ["gru.toml", "nblr.toml"]
"""


def test_an_ensemble_of_every_kind_trains_on_more_processes_than_validation_batches(
        prepared_dir, tmp_path):
    (tmp_path / "gru.toml").write_text(SMALL_GRU.format(data=prepared_dir).replace(
        "batch_size = 16", 'batch_size = 64\nvectors = "prepared"').replace(  # rank 0 loads
        "embedding_dim = 16", "embedding_dim = 128"))  # them: the prepared vectors' size
    (tmp_path / "nblr.toml").write_text(small_recipe("nblr", "ngram_buckets = 1000").format(
        data=prepared_dir).replace("batch_size = 16", "batch_size = 64"))
    recipe = tmp_path / "ensemble.toml"
    recipe.write_text(ENSEMBLE.format(data=prepared_dir))
    run = tmp_path / "run"
    # 120 validation reviews in batches of 64: rank 2 of 3 scores none of them
    done = run_exe(["train", "--config", str(recipe), "--run-dir", str(run), "--nproc", "3"],
                   timeout=240)
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr
    for member in ("gru", "nblr"):
        member_run = run / "members" / member
        assert runs.load_config(member_run).train.world_size == 3
        assert runs.read_metrics(member_run)[-1]["test_acc"] > 0.8
    assert runs.read_metrics(run)[-1]["test_acc"] > 0.8


def test_an_error_on_rank_0_is_one_line(prepared_dir, trained_run, tmp_path):
    recipe = _recipe(tmp_path, prepared_dir)
    run = shutil.copytree(trained_run, tmp_path / "run")  # (its lock records who tried)
    res = run_exe(["train", "--config", str(recipe), "--run-dir", str(run), "--nproc", "2"])
    assert res.returncode == 1
    assert res.stderr.decode().strip().splitlines() == [
        f"imdbsent: error: {run} already holds a finished run: choose another --run-dir"]


def test_a_hung_rank_ends_the_others_after_the_timeout(prepared_dir, tmp_path):
    import select

    proc, rank1 = _long_training_past_epoch_1(prepared_dir, tmp_path, timeout=5)
    os.kill(rank1, signal.SIGSTOP)  # alive, but answers nothing
    stopped, err = time.time(), b""
    try:
        while b"did not answer within --dist-timeout" not in err:
            assert time.time() - stopped < 30, err.decode()
            if select.select([proc.stderr], [], [], 1.0)[0]:
                err += os.read(proc.stderr.fileno(), 4096)
        assert time.time() - stopped < 5 + 10  # the timeout, and the time to notice it
    finally:
        os.kill(rank1, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert b"Traceback" not in err
    assert runs.load_checkpoint(tmp_path / "run" / runs.LAST).meta["epoch"] >= 1


def test_adversarial_and_virtual_adversarial_training_on_two_processes(prepared_dir, tmp_path):
    # three backward passes a step, the first two kept from DDP's all-reduce (no_sync)
    recipe = _recipe(tmp_path, prepared_dir, SMALL_GRU + "adversarial = 1.0\n"
                     "virtual_adversarial = 1.0\n")
    run = tmp_path / "run"
    done = run_exe(["train", "--config", str(recipe), "--run-dir", str(run), "--nproc", "2"])
    assert done.returncode == 0, done.stderr
    assert runs.load_config(run).train.virtual_adversarial == 1.0
    assert runs.read_metrics(run)[-1]["test_acc"] > 0.8


def test_moving_averages_on_two_processes_are_the_weights_that_both_validated(prepared_dir,
                                                                             tmp_path):
    recipe = _recipe(tmp_path, prepared_dir, SMALL_GRU + "averages = [0.9]\n")
    run = tmp_path / "run"
    done = run_exe(["train", "--config", str(recipe), "--run-dir", str(run), "--nproc", "2"])
    assert done.returncode == 0, done.stderr
    records = runs.epoch_records(run)
    best = min(records, key=lambda r: r["averages"]["0.9"]["valid_loss"])
    prepared = data.load_prepared(prepared_dir)
    model = engine.load_best(run, runs.load_config(run), prepared.tokenizer.get_vocab_size(),
                             runs.average_file("0.9")).model  # unscaled by its calibration
    loss, _ = engine.evaluate(model, data.Batches(prepared.split("valid"), 16),
                              torch.nn.BCEWithLogitsLoss())
    assert loss == pytest.approx(best["averages"]["0.9"]["valid_loss"], rel=1e-5)


def test_nproc_refuses_what_resume_or_an_ensemble_cannot_take_before_starting(
        trained_run, prepared_dir, tmp_path, capsys):
    """Checked once, by the launcher: each rank refusing on its own ended in status 143 and a
    'terminated' line from the rank that torchrun then stopped."""
    assert run_cli(["train", "--nproc", "2", "--resume", str(trained_run), "--lr", "0.1"]) == 2
    assert capsys.readouterr().err == ("imdbsent: error: --lr: a resumed run keeps its recipe "
                                       "(only --epochs, --device, --data can change); start a "
                                       "new run to change the rest (see imdbsent train --help)\n")
    recipe = tmp_path / "ensemble.toml"
    recipe.write_text(f'version = 1\ndata = "{prepared_dir}"\n[model]\nname = "ensemble"\n'
                      'members = ["gru", "nblr"]\n')
    assert run_cli(["train", "--nproc", "2", "--config", str(recipe), "--lr", "0.1"]) == 2
    assert capsys.readouterr().err == ("imdbsent: error: --lr: an ensemble trains each member "
                                       "by its own recipe; change the member recipes instead "
                                       "(see imdbsent train --help)\n")
    small = tmp_path / "small.toml"  # what every rank would refuse at its start, said once
    small.write_text(SMALL_GRU.format(data=prepared_dir))
    missing = tmp_path / "nonexist.txt"
    assert run_cli(["train", "--nproc", "2", "--config", str(small), "--vectors",
                    str(missing)]) == 1
    assert capsys.readouterr().err == (f"imdbsent: error: {missing}: cannot read vectors (No "
                                       "such file or directory)\n")
    if torch.cuda.device_count() < 2:
        assert run_cli(["train", "--nproc", "2", "--config", str(small), "--device",
                        "cuda"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("no CUDA device is available here" in err
                                         or "local rank 1 has no GPU of its own" in err)


def test_every_rank_learns_the_region_embeddings_that_one_process_learns(prepared_dir, tmp_path):
    """Two processes train with the seeded region embeddings that one process learns (each
    rank learns them itself, since a rank waiting minutes for rank 0's would pass the
    --dist-timeout on full data)."""
    recipe = _recipe(tmp_path, prepared_dir, SMALL_GRU.replace(
        'pooling = "max"', 'pooling = "max"\nregion_size = 3\nregion_dim = 8'))
    tables = []
    for nproc in ("1", "2"):
        run = tmp_path / f"run{nproc}"
        done = run_exe(["train", "--config", str(recipe), "--run-dir", str(run), "--nproc",
                        nproc, "--epochs", "1"])
        assert done.returncode == 0, done.stderr
        tables.append(runs.load_checkpoint(run / runs.BEST).weights["regions.table"])
    assert tables[0].abs().sum() > 0 and torch.equal(*tables)
