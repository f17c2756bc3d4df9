"""A run's life cycle: what resume accepts and refuses, a kill between an epoch's checkpoint
and its metrics line, prepared data that changed under a run, a train that fails before its
first epoch, and the files a run is made of."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SMALL_GRU, run_cli
from imdbsent import data, engine, runs, threads, training
from imdbsent.errors import UserError

SMALL_COSINE = SMALL_GRU.replace('optimizer = "adam"', 'optimizer = "adam"\nschedule = "cosine"')


def _config(tmp_path: Path, prepared_dir: Path, epochs: int) -> Path:
    path = tmp_path / f"c{epochs}.toml"
    path.write_text(SMALL_COSINE.format(data=prepared_dir).replace("epochs = 3",
                                                                   f"epochs = {epochs}"))
    return path


class Quiet:
    """A Reporter that draws nothing."""

    def start(self, *args): ...
    def epoch_start(self, *args): ...
    def batch(self, *args): ...
    def epoch_end(self, *args): ...
    def test(self, *args): ...
    def regions(self, *args): ...


def _without_times(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in runs.read_metrics(run)]


def _stop_at_metrics_of_epoch(monkeypatch, epoch: int, exc: BaseException) -> None:
    """Raise `exc` at the moment epoch `epoch`'s line would be appended to metrics.jsonl, after
    its `last` checkpoint was saved."""
    append = runs.append_metrics

    def stop(run, record):
        if record.get("epoch") == epoch:
            raise exc
        append(run, record)

    monkeypatch.setattr(runs, "append_metrics", stop)


@pytest.fixture(scope="module")
def two_epochs(prepared_dir, tmp_path_factory) -> Path:
    """A finished 2-epoch cosine run, to copy and resume."""
    folder = tmp_path_factory.mktemp("two")
    run = folder / "run"
    assert run_cli(["train", "--config", str(_config(folder, prepared_dir, 2)), "--run-dir",
                    str(run)]) == 0
    return run


def _copy(run: Path, tmp_path: Path, *, untested: bool = False) -> Path:
    """A copy of `run`; `untested`: as if it had been killed during its final test."""
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    if untested:
        lines = (copy / "metrics.jsonl").read_text().splitlines(keepends=True)
        assert json.loads(lines[-1])["split"] == "test"
        (copy / "metrics.jsonl").write_text("".join(lines[:-1]))
    return copy


@pytest.mark.parametrize("args, flags", [
    (["--model", "lstm"], "--model"),
    (["--lr", "0.5"], "--lr"),
    (["--optimizer", "sgd"], "--optimizer"),
    (["--batch-size", "7", "--max-length", "5"], "--batch-size, --max-length"),
    (["--seed", "3", "--epochs", "9"], "--seed"),
])
def test_resume_refuses_what_it_cannot_honour_and_writes_nothing(two_epochs, tmp_path, capsys,
                                                                 args, flags):
    run = _copy(two_epochs, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert run_cli(["train", "--resume", str(run), *args]) == 2  # flags that conflict
    err = capsys.readouterr().err
    assert err.startswith(f"imdbsent: error: {flags}: a resumed run keeps its recipe (only "
                          "--epochs, --device, --data can change)") and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_accepts_the_values_it_already_has(two_epochs, tmp_path):
    run = _copy(two_epochs, tmp_path, untested=True)
    assert run_cli(["train", "--resume", str(run), "--lr", "0.01", "--model", "gru",
                    "--device", "cpu"]) == 0
    assert runs.tested(run)


def test_resuming_a_finished_run_is_refused_instead_of_testing_it_again(two_epochs, tmp_path,
                                                                        capsys):
    run = _copy(two_epochs, tmp_path)
    before = (run / "metrics.jsonl").read_bytes()
    for args in ([], ["--epochs", "1"], ["--epochs", "2"], ["--epochs", "3"]):
        assert run_cli(["train", "--resume", str(run), *args]) == 1
        err = capsys.readouterr().err  # one answer, whatever --epochs: its cosine has ended
        assert err == (f"imdbsent: error: {run} has finished: it trained 2 epochs and was "
                       "tested, and its learning rate decayed to zero, so more epochs would "
                       "train nothing: start a new run with more --epochs\n")
    assert (run / "metrics.jsonl").read_bytes() == before  # no second test line


def test_a_finished_run_at_a_constant_rate_can_train_on(prepared_dir, tmp_path, capsys):
    config = _config(tmp_path, prepared_dir, 1)
    config.write_text(config.read_text().replace('"cosine"', '"constant"'))
    run = tmp_path / "run"
    assert run_cli(["train", "--config", str(config), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    for args in ([], ["--epochs", "1"]):
        assert run_cli(["train", "--resume", str(run), *args]) == 1
        assert capsys.readouterr().err == (f"imdbsent: error: {run} has finished: it trained 1 "
                                           "epoch and was tested; resume with --epochs 2 or "
                                           "more to train on\n")
    assert run_cli(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert [r.get("epoch") for r in runs.read_metrics(run)] == [1, None, 2, None]


@pytest.mark.parametrize("untested", [False, True])
def test_a_run_whose_last_checkpoint_is_gone_is_not_trained_again_from_scratch(
        two_epochs, tmp_path, capsys, untested):
    """Without `last`, resuming would start epoch 1 over the run's best model and metrics:
    refused, and `runs` says why the run cannot go on (finished runs still predict)."""
    run = _copy(two_epochs, tmp_path, untested=untested)
    (run / runs.LAST).unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert run_cli(["train", "--resume", str(run), "--epochs", "3"]) == 1
    assert capsys.readouterr().err == (
        f"imdbsent: error: {run / runs.LAST}: missing, so {run} cannot be resumed (it trained "
        "before: its best model and metrics would be overwritten); start a new run\n")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert runs.describe(run)["status"] == (
        "broken: last.safetensors: missing, so it cannot be resumed" if untested else "finished")


def test_data_without_a_test_split_is_refused_before_training_not_after(
        prepared_dir, two_epochs, tmp_path, capsys):
    """The test split is read once every epoch has trained: its absence is found at the start,
    of a new run and of a resumed one (whose config keeps its data)."""
    folder = shutil.copytree(prepared_dir, tmp_path / "data")
    (folder / "test.parquet").unlink()
    line = f"imdbsent: error: {folder}: no 'test' split (run imdbsent prepare again)\n"
    run = tmp_path / "new"
    assert run_cli(["train", "--config", str(_config(tmp_path, prepared_dir, 2)), "--data",
                    str(folder), "--run-dir", str(run)]) == 1
    assert capsys.readouterr().err == line and not runs.read_metrics(run)
    run = _copy(two_epochs, tmp_path, untested=True)
    config = (run / "config.toml").read_bytes()
    assert run_cli(["train", "--resume", str(run), "--data", str(folder), "--epochs", "3"]) == 1
    assert capsys.readouterr().err == line
    assert (run / "config.toml").read_bytes() == config and len(runs.epoch_records(run)) == 2


def test_resume_with_fewer_epochs_than_done_is_refused(two_epochs, tmp_path, capsys):
    run = _copy(two_epochs, tmp_path, untested=True)
    config = (run / "config.toml").read_bytes()
    assert run_cli(["train", "--resume", str(run), "--epochs", "1"]) == 1
    assert "has already trained 2 epochs" in capsys.readouterr().err
    assert (run / "config.toml").read_bytes() == config


def _train_diverging_in(epoch: int, prepared_dir: Path, tmp_path: Path, monkeypatch
                        ) -> tuple[int, Path]:
    """Train 3 epochs with engine.evaluate as it is, but epoch `epoch`'s validation loss NaN
    (diverged weights): the exit code and the run."""
    evaluate, calls = engine.evaluate, []

    def diverging(model, batches, *args, **kwargs):
        loss, acc = evaluate(model, batches, *args, **kwargs)
        calls.append(loss)
        return (math.nan, acc) if len(calls) == epoch else (loss, acc)

    monkeypatch.setattr(engine, "evaluate", diverging)
    run = tmp_path / "run"
    return run_cli(["train", "--config", str(_config(tmp_path, prepared_dir, 3)), "--run-dir",
                    str(run)]), run


def test_a_diverged_epoch_is_not_kept_and_the_best_before_it_is_tested(prepared_dir, tmp_path,
                                                                       monkeypatch, capsys):
    code, run = _train_diverging_in(2, prepared_dir, tmp_path, monkeypatch)
    assert code == 0
    records = runs.read_metrics(run)
    assert [r.get("epoch") for r in records] == [1, None]
    assert records[-1]["split"] == "test" and records[-1]["diverged_epoch"] == 2
    assert records[-1]["best_epoch"] == 1
    assert runs.load_checkpoint(run / runs.LAST).meta["epoch"] == 1
    assert "warning: training diverged in epoch 2 (its validation loss is not a number; try a " \
           "lower --lr): stopped there, and tested the best epoch before it (1)" in \
           capsys.readouterr().err


def test_a_run_that_diverges_in_its_first_epoch_fails_and_keeps_nothing(prepared_dir, tmp_path,
                                                                        monkeypatch, capsys):
    code, run = _train_diverging_in(1, prepared_dir, tmp_path, monkeypatch)
    assert code == 1
    assert capsys.readouterr().err.endswith(
        "imdbsent: error: training diverged in epoch 1 (validation loss nan): try a lower "
        "--lr\n")
    assert not run.exists()


def test_extending_a_finished_cosine_run_is_refused_as_useless(two_epochs, tmp_path, capsys):
    run = _copy(two_epochs, tmp_path)
    config = (run / "config.toml").read_bytes()
    assert run_cli(["train", "--resume", str(run), "--epochs", "4"]) == 1
    assert "decayed to zero, so more epochs would train nothing" in capsys.readouterr().err
    assert (run / "config.toml").read_bytes() == config  # written only after a good load


def test_extending_an_interrupted_run_stretches_the_rest_of_its_schedule(
        prepared_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = _config(tmp_path, prepared_dir, 4)
    with monkeypatch.context() as patch:
        _stop_at_metrics_of_epoch(patch, 3, KeyboardInterrupt())
        with pytest.raises(training.Interrupted) as stopped:
            training.start(str(cfg), {}, Quiet(), run_dir=run)
    assert stopped.value.code == 130 and stopped.value.run == run
    assert stopped.value.epochs_done == 3  # the line that the stop cut off is written
    training.resume(run, {"train.epochs": 6}, Quiet())
    assert runs.load_config(run).train.epochs == 6
    records = [r for r in runs.read_metrics(run) if "epoch" in r]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    lr0, steps = 0.01, len(data.Batches(data.load_prepared(prepared_dir).split("train"), 16))
    planned, extended = engine.Schedule("cosine", 4 * steps), engine.Schedule("cosine", 4 * steps)
    extended.extend(3 * steps, 6 * steps)  # epoch 3 was saved in `last`: the rest stretches
    for r in records:
        schedule = planned if r["epoch"] <= 3 else extended
        assert r["lr"] == pytest.approx(lr0 * schedule(r["epoch"] * steps), abs=1e-9)
    lrs = [r["lr"] for r in records]
    assert all(b < a for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_a_kill_between_last_checkpoint_and_metrics_line_loses_no_epoch(prepared_dir, tmp_path):
    cfg = _config(tmp_path, prepared_dir, 3)
    straight = tmp_path / "straight"
    assert run_cli(["train", "--config", str(cfg), "--run-dir", str(straight)]) == 0
    run = tmp_path / "killed"
    code = (  # SIGKILL exactly when epoch 2's line is due: `last` of epoch 2 is on disk
        "import os, signal, sys\n"
        "from imdbsent import runs\n"
        "append = runs.append_metrics\n"
        "def kill(run, record):\n"
        "    if record.get('epoch') == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    append(run, record)\n"
        "runs.append_metrics = kill\n"
        "from imdbsent.cli import main\n"
        "main(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", code, "train", "--config", str(cfg),
                           "--run-dir", str(run)], capture_output=True)
    assert proc.returncode == -9
    assert [r["epoch"] for r in runs.read_metrics(run)] == [1]
    assert runs.load_checkpoint(run / runs.LAST).meta["epoch"] == 2
    assert run_cli(["train", "--resume", str(run)]) == 0
    assert _without_times(run) == _without_times(straight)


def test_data_prepared_again_is_refused_by_resume_evaluate_and_the_final_test(
        source_dir, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "prepared"
    args = data.PrepareArgs(source=str(source_dir), vectors_dim=0)
    data.prepare(args, folder)
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL_COSINE.format(data=folder))
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _stop_at_metrics_of_epoch(patch, 2, KeyboardInterrupt())
        with pytest.raises(training.Interrupted):
            training.start(str(cfg), {}, Quiet(), run_dir=run)
    assert runs.describe(run)["status"] == "interrupted"
    data.prepare(args, folder, force=True)  # the same arguments, but a new dataset
    assert runs.describe(run)["status"] == ("interrupted (its data was prepared again: resume "
                                            "needs the data it trained on)")
    with pytest.raises(UserError, match="is not the prepared data .* was trained on .*; give "
                       "the run's own data") as refused:
        training.resume(run, {}, Quiet())
    assert "all the same" not in str(refused.value)  # resume never takes other data
    capsys.readouterr()
    assert run_cli(["evaluate", str(run)]) == 1
    assert f"name the data with --data {folder} to use it all the same" in \
        capsys.readouterr().err
    assert run_cli(["evaluate", str(run), "--data", str(folder)]) == 0  # named: the user's call

    again = tmp_path / "again"  # prepared again while a run trains: its final test refuses
    real_fit = engine.Trainer.fit

    def prepare_during_training(self, reporter):
        data.prepare(args, folder, force=True)
        return real_fit(self, reporter)

    monkeypatch.setattr(engine.Trainer, "fit", prepare_during_training)
    with pytest.raises(UserError, match="changed"):
        training.start(str(cfg), {}, Quiet(), run_dir=again)
    assert runs.load_checkpoint(again / runs.BEST).meta["epoch"] >= 1  # the epochs are kept
    assert not any("split" in r for r in runs.read_metrics(again))


def test_a_train_that_fails_before_its_first_epoch_leaves_nothing(source_dir, tmp_path,
                                                                 monkeypatch, capsys):
    folder = tmp_path / "novectors"
    data.prepare(data.PrepareArgs(source=str(source_dir), vectors_dim=0), folder)
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL_GRU.format(data=folder) + 'vectors = "prepared"\n')
    monkeypatch.chdir(tmp_path)
    assert run_cli(["train", "--config", str(cfg)]) == 1
    assert "has no word vectors of its own" in capsys.readouterr().err
    assert list((tmp_path / "runs").iterdir()) == []  # no config-only run folder
    assert run_cli(["train", "--config", str(cfg), "--run-dir", "mine"]) == 1
    assert not (tmp_path / "mine").exists()
    mixed = tmp_path / "mixed"  # a folder of the user's: only what imdbsent wrote goes
    mixed.mkdir()
    (mixed / "notes.txt").write_text("mine")
    (mixed / ".other.tmp").write_text("another program's temporary")
    assert run_cli(["train", "--config", str(cfg), "--run-dir", str(mixed)]) == 1
    assert sorted(p.name for p in mixed.iterdir()) == [".other.tmp", "notes.txt"]  # no lock
    (mixed / ".lock").write_text("")  # one of an earlier run's, left: kept
    assert run_cli(["train", "--config", str(cfg), "--run-dir", str(mixed)]) == 1
    assert sorted(p.name for p in mixed.iterdir()) == [".lock", ".other.tmp", "notes.txt"]

    cfg.write_text(SMALL_GRU.format(data=folder))  # Ctrl-C in the first epoch: nothing kept

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(engine, "evaluate", ctrl_c)  # the first epoch's validation
        capsys.readouterr()
        assert run_cli(["train", "--config", str(cfg), "--run-dir", "stopped"]) == 130
    assert "interrupted before the first epoch finished; nothing was kept" in \
        capsys.readouterr().err
    assert not (tmp_path / "stopped").exists()


@pytest.mark.parametrize("sig, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_that_a_library_swallows_still_stops_the_training(prepared_dir, tmp_path,
                                                                   monkeypatch, capsys, sig,
                                                                   status):
    """pyarrow's first to_numpy imports pandas, and an exception raised within that import
    (as the SIGTERM handler raises Terminated, the SIGINT one KeyboardInterrupt) never comes
    out: a run killed then, or a rank of `--nproc` stopped by torchrun, trained on to the end
    (exit 0). The handler's `Pending` mark stops it at the next batch."""
    import signal
    import time

    real = data.Prepared.split

    def swallowing(self, name):  # as pyarrow's import of pandas, while the signal comes
        try:
            os.kill(os.getpid(), getattr(signal, sig))
            time.sleep(0.5)  # the handler runs here, in the main thread
        except BaseException:
            pass
        return real(self, name)

    monkeypatch.setattr(data.Prepared, "split", swallowing)
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL_GRU.format(data=prepared_dir))
    assert run_cli(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "r")]) == status
    said = "terminated" if sig == "SIGTERM" else "interrupted"  # as prepare says it
    assert f"{said} before the first epoch finished; nothing was kept" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert list(threads.balanced([1])) == [1]  # the mark does not outlive its command,
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # nor the handler
    monkeypatch.setattr(data.Prepared, "split", real)
    assert run_cli(["train", "--config", str(cfg), "--epochs", "1", "--run-dir",
                    str(tmp_path / "next")]) == 0


def test_every_run_file_gets_the_umasks_permissions(trained_run):
    expected = 0o666 & ~_umask()
    for name in ("config.toml", "tokenizer.json", "metrics.jsonl", "best.safetensors",
                 "last.safetensors"):
        assert stat.S_IMODE((trained_run / name).stat().st_mode) == expected, name


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_training_sweeps_only_its_own_temporaries(two_epochs, tmp_path):
    run = _copy(two_epochs, tmp_path, untested=True)
    (run / ".best.safetensors.imdbsent-0123abcd.tmp").write_bytes(b"half")  # a killed writer's
    (run / ".notes.tmp").write_text("another program's")
    assert run_cli(["train", "--resume", str(run)]) == 0
    assert sorted(p.name for p in run.glob(".*.tmp")) == [".notes.tmp"]


def test_training_fits_a_calibration_that_evaluate_and_predict_apply(trained_run, capsys):
    from imdbsent.predict import Predictor
    best = runs.load_checkpoint(trained_run / runs.BEST)
    temperature, bias = best.meta["temperature"], best.meta["bias"]
    test = runs.read_metrics(trained_run)[-1]
    assert (test["temperature"], test["bias"]) == (temperature, bias) and temperature > 0
    predictor = Predictor(trained_run)
    valid = data.Batches(data.load_prepared(runs.load_config(trained_run).data).split("valid"), 16)
    calibrated, labels = engine.predict_logits(predictor.model, valid)
    raw, _ = engine.predict_logits(predictor.model.model, valid)
    torch = pytest.importorskip("torch")
    torch.testing.assert_close(calibrated, raw / temperature + bias)
    loss = torch.nn.functional.binary_cross_entropy_with_logits
    assert loss(calibrated, labels) <= loss(raw, labels)  # fitted to this split's log loss
    capsys.readouterr()
    assert run_cli(["evaluate", str(trained_run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["loss"] == pytest.approx(test["test_loss"], abs=1e-6)  # the test line's
    assert 0 <= metrics["ece"] < 0.5 and metrics["reliability"] and "brier" in metrics
    assert metrics["unk_rate"] == 0.0  # the synthetic test reviews use train's words only


def test_the_baseline_recipe_is_not_calibrated(prepared_dir, tmp_path):
    from imdbsent import config
    assert config.load("baseline").train.calibrate is False
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL_GRU.format(data=prepared_dir).replace("epochs = 3", "epochs = 1")
                   + "calibrate = false\n")
    run = tmp_path / "run"
    assert run_cli(["train", "--config", str(cfg), "--run-dir", str(run)]) == 0
    assert "temperature" not in runs.load_checkpoint(run / runs.BEST).meta
    assert (runs.read_metrics(run)[-1]["temperature"], runs.read_metrics(run)[-1]["bias"]) == (
        1.0, 0.0)


@pytest.mark.parametrize("how", ["predict", "predict_logits", "evaluate"])
def test_scoring_on_worker_threads_gives_what_one_thread_gives(trained_run, how, monkeypatch):
    """Inference on N compute threads scores N batches at once (`threads.mapped`): the same
    numbers, in the same order, as one thread scoring them one after another."""
    torch = pytest.importorskip("torch")
    from concurrent.futures import ThreadPoolExecutor

    from imdbsent import threads
    from imdbsent.predict import Predictor
    monkeypatch.setattr(threads, "_ceiling", 0)  # the counts set below stand
    pools = []

    class Pool(ThreadPoolExecutor):
        def __init__(self, workers: int, **kwargs) -> None:
            pools.append(workers)
            super().__init__(workers, **kwargs)

    monkeypatch.setattr(threads, "ThreadPoolExecutor", Pool)
    predictor = Predictor(trained_run)
    valid = data.load_prepared(runs.load_config(trained_run).data).split("valid")
    texts = [f"review {i}: " + " ".join(f"w{j}" for j in range(i % 40)) for i in range(300)]

    def score():
        if how == "predict":
            return [p.prob_pos for p in predictor.predict(texts)]
        batches = data.Batches(valid, 8)
        if how == "predict_logits":
            return engine.predict_logits(predictor.model, batches)
        return engine.evaluate(predictor.model, batches, torch.nn.BCEWithLogitsLoss())

    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = score()
        assert not pools
        torch.set_num_threads(3)
        on_workers = score()
        assert pools == [threads.MAX_WORKERS]
    finally:
        torch.set_num_threads(saved)
    if how == "predict_logits":
        assert all(torch.equal(a, b) for a, b in zip(alone, on_workers))
    else:
        assert alone == on_workers


def test_region_embeddings_are_learned_at_the_start_and_kept_on_resume(prepared_dir, tmp_path,
                                                                      capsys):
    """Learned from the training and unlabeled reviews before the first epoch (the CLI says so,
    piped: a line with the steps and one with the time), saved with the weights, and not
    learned again by a resumed run, which goes on with the same ones."""
    from imdbsent import regions
    from imdbsent.text import PAD_ID

    cfg = tmp_path / "tv.toml"
    cfg.write_text(SMALL_GRU.format(data=prepared_dir).replace("epochs = 3", "epochs = 1")
                   .replace('pooling = "max"', 'pooling = "max"\nregion_size = 3\nregion_dim = 8'))
    run = tmp_path / "run"
    assert run_cli(["train", "--config", str(cfg), "--run-dir", str(run)]) == 0
    err = capsys.readouterr().err
    prepared = data.load_prepared(prepared_dir)
    tokens = sum(len(prepared.split(s).flat) for s in ("train", "unsupervised"))
    steps = regions.steps(tokens, 3)
    assert f"region embeddings: {steps:,}/{steps:,}" in err
    assert "region embeddings learned in" in err
    first = runs.epoch_records(run)[0]  # their time counts in the training's
    assert first["regions_seconds"] > 0
    assert runs.list_runs(run)[0]["train_seconds"] == round(
        first["seconds"] + first["regions_seconds"], 1)
    table = runs.load_checkpoint(run / runs.LAST).weights["regions.table"]
    assert table.shape == (prepared.tokenizer.get_vocab_size(), 8)
    assert table.abs().sum() > 0 and not table[PAD_ID].any()

    assert run_cli(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert "region embeddings" not in capsys.readouterr().err
    assert torch.equal(runs.load_checkpoint(run / runs.LAST).weights["regions.table"], table)
    assert runs.load_checkpoint(run / runs.LAST).meta["epoch"] == 2
    assert "regions_seconds" not in runs.epoch_records(run)[1]  # learned once, counted once
    assert run_cli(["explain", "--run", str(run), "a great film, not a bad one"]) == 0
    explained = json.loads(capsys.readouterr().out)  # the word embeddings' share, complete
    assert explained["complete"] and len(explained["tokens"]) == 8  # "," a token


def test_region_embeddings_are_learned_after_the_run_is_announced(prepared_dir, tmp_path):
    """The reporter hears `start` (the run directory; an ensemble member's name) before the
    minutes of learning region embeddings, so piped output says whose they are."""
    from imdbsent import config

    recipe = tmp_path / "tv.toml"
    recipe.write_text(SMALL_GRU.format(data=prepared_dir).replace("epochs = 3", "epochs = 1")
                      .replace('pooling = "max"', 'pooling = "max"\nregion_size = 3'))
    heard: list[str] = []

    class Recorder:
        def __getattr__(self, name: str):
            return lambda *args: heard.append(name)

    run = tmp_path / "run"
    runs.init_run(run, config.load(recipe), prepared_dir)
    engine.Trainer(config.load(recipe), data.load_prepared(prepared_dir), run).fit(Recorder())
    calls = [name for i, name in enumerate(heard) if i == 0 or heard[i - 1] != name]
    assert calls[:3] == ["start", "regions", "epoch_start"]


def test_region_embeddings_learn_from_the_training_reviews_alone_without_unlabeled_ones(
        source_dir, prepared_dir, tmp_path):
    from imdbsent import config, regions

    out = tmp_path / "labeled-only"
    data.prepare(data.PrepareArgs(source=str(source_dir), unsupervised=False, vectors_dim=0), out)
    seen = []
    for folder in (out, prepared_dir):
        cfg = config.from_dict({"data": str(folder), "model": {
            "name": "lstm", "embedding_dim": 8, "hidden_dim": 8, "region_size": 3}},
            "test")
        engine.Trainer(cfg, data.load_prepared(folder), tmp_path / folder.name).learn_regions(
            lambda step, steps: seen.append(steps))
    train_only = data.load_prepared(out).split("train").flat
    assert seen[0] == regions.steps(len(train_only), 3) < seen[-1]


def test_a_run_killed_while_learning_region_embeddings_learns_them_again_on_resume(
        prepared_dir, tmp_path, capsys):
    """A run killed (SIGKILL) before its first epoch keeps its config and no checkpoint:
    resumed, it starts afresh, and says that it learns the region embeddings."""
    from imdbsent import config

    recipe = tmp_path / "tv.toml"
    recipe.write_text(SMALL_GRU.format(data=prepared_dir).replace("epochs = 3", "epochs = 1")
                      .replace('pooling = "max"', 'pooling = "max"\nregion_size = 3'))
    run = tmp_path / "run"
    runs.init_run(run, config.load(recipe), prepared_dir)  # as the killed run left it
    assert run_cli(["train", "--resume", str(run)]) == 0
    assert "region embeddings learned in" in capsys.readouterr().err
    assert runs.load_checkpoint(run / runs.BEST).weights["regions.table"].abs().sum() > 0
