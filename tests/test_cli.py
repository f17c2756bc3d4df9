"""End to end: Typer's runner in-process, and the installed `imdbsent` in a subprocess."""

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import EXE, SMALL_GRU, make_reviews, run_cli, run_exe, set_started
from imdbsent import config, runs, text, threads, training
from imdbsent.cli import app
from imdbsent.errors import Terminated, UserError

runner = CliRunner()


def test_prepare_train_evaluate_predict_through_typers_runner(source_dir, tmp_path):
    out = tmp_path / "prepared"
    res = runner.invoke(app, ["prepare", "--source", str(source_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "train\t280\t140\t140\t0" in res.stdout
    config = tmp_path / "c.toml"
    config.write_text(SMALL_GRU.format(data=out))
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--config", str(config), "--run-dir", str(run),
                              "--epochs", "2"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("The model has ") and lines[0].endswith(" trainable parameters")
    assert lines[1].startswith("Epoch: 01 | Epoch Time: 0m ")
    assert lines[2].startswith("\tTrain Loss: ") and "| Train Acc: " in lines[2]
    assert lines[3].startswith("\t Val. Loss: ") and "|  Val. Acc: " in lines[3]
    assert lines[-1].startswith("Test Loss: ") and "| Test Acc: " in lines[-1]
    for name in ("config.toml", "tokenizer.json", "best.safetensors", "last.safetensors"):
        assert (run / name).is_file()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("epoch") for r in records[:2]] == [1, 2] and records[-1]["split"] == "test"
    res = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["examples"] == 200
    assert metrics["accuracy"] == pytest.approx(records[-1]["test_acc"], abs=1e-6)
    assert set(metrics["confusion"]) == {"tn", "fp", "fn", "tp"}
    res = runner.invoke(app, ["evaluate", str(run), "--split", "valid"])
    assert res.exit_code == 0, res.output
    lines = [line.split("\t") for line in res.stdout.splitlines()]
    piped = {fields[0]: fields[1] for fields in lines if len(fields) == 2}
    as_json = json.loads(runner.invoke(app, ["evaluate", str(run), "--split", "valid",
                                             "--json"]).stdout)
    assert piped["examples"] == "120"  # raw numbers, no units, for awk and friends
    for name in ("loss", "accuracy", "f1", "ece", "brier"):  # to 6 decimals, as runs has them
        assert piped[name] == str(round(as_json[name], 6))
    assert sum(int(piped[k]) for k in ("tn", "fp", "fn", "tp")) == 120
    bins = [fields for fields in lines if fields[0] == "reliability"]
    assert bins and sum(int(fields[2]) for fields in bins) == 120
    assert all(0 <= float(value) <= 1 for fields in bins for value in fields[3:])
    assert all(len(fields) == 2 for fields in lines if fields[0] != "reliability")
    res = runner.invoke(app, ["predict", "--run", str(run), "great superb wonderful",
                              "awful boring terrible"])
    assert res.exit_code == 0, res.output
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert [r[0] for r in rows] == ["pos", "neg"]
    assert float(rows[0][1]) > 0.5 > float(rows[1][1])
    assert rows[0][2] == "great superb wonderful"


def test_resolved_config_and_tokenizer_are_in_the_run(trained_run, prepared_dir):
    from imdbsent import config
    cfg = config.load(trained_run / "config.toml")
    assert cfg.model.name == "gru" and cfg.data == str(prepared_dir)
    assert (trained_run / "tokenizer.json").read_bytes() == \
        (prepared_dir / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("how", ["stdin", "file"])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le", "utf-16-be"])
def test_predict_reads_a_windows_file_as_its_text(trained_run, tmp_path, how, encoding):
    # a byte-order mark, CRLF lines: as Windows editors (UTF-8) and PowerShell's > (UTF-16) write
    raw = "\ufeffgreat film\r\nawful mess\r\n".encode(encoding)
    path = tmp_path / "reviews.txt"
    path.write_bytes(raw)
    args = ["-"] if how == "stdin" else ["--file", str(path)]
    got = run_exe(["predict", *args, "--run", str(trained_run), "--format", "jsonl"],
                  input=raw if how == "stdin" else None)
    plain = run_exe(["predict", "--run", str(trained_run), "--format", "jsonl", "great film",
                     "awful mess"])
    assert got.returncode == 0 and got.stdout == plain.stdout  # the mark is not a word


def test_predict_file_dash_is_standard_input_after_the_texts(trained_run):
    res = run_exe(["predict", "--run", str(trained_run), "--file", "-", "superb"],
                  input=b"awful boring mess\n")
    assert res.returncode == 0, res.stderr
    assert [r.split("\t")[2] for r in res.stdout.decode().splitlines()] == [
        "superb", "awful boring mess"]


def test_predict_reads_every_file_given_in_order_standard_input_among_them(trained_run,
                                                                          tmp_path):
    (tmp_path / "a.txt").write_text("first file\n")
    (tmp_path / "b.txt").write_text("second file\n")
    res = run_exe(["predict", "--run", str(trained_run), "--file", str(tmp_path / "a.txt"),
                   "--file", "-", "an argument", "--file", str(tmp_path / "b.txt")],
                  input=b"from standard input\n")
    assert res.returncode == 0, res.stderr
    assert [r.split("\t")[2] for r in res.stdout.decode().splitlines()] == [
        "an argument", "first file", "from standard input", "second file"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_predict_reads_a_named_pipe_given_as_a_file(trained_run, tmp_path):
    # `--file <(producer)` and mkfifo: a pipe has one writer; opening it once to check it and
    # again to read it lost the writer's lines (or waited for a second writer forever)
    fifo = tmp_path / "reviews.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"printf 'great film\\nawful mess\\n' > '{fifo}'"])
    res = run_exe(["predict", "--run", str(trained_run), "--file", str(fifo)], timeout=60)
    writer.wait(timeout=10)
    assert res.returncode == 0, res.stderr
    assert [r.split("\t")[2] for r in res.stdout.decode().splitlines()] == [
        "great film", "awful mess"]


def _fifo_writer(fifo: Path, wait: float = 30) -> io.TextIOWrapper:
    """The writing end of a named pipe once its reader has opened it (opened before that, a
    pipe waits: for ever if the reader never comes)."""
    end = time.monotonic() + wait
    while True:
        try:
            return os.fdopen(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "w")
        except OSError:  # ENXIO: no reader yet
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")])
def test_a_named_pipe_that_waits_is_scored_so_far_and_stops_at_once(trained_run, tmp_path, sig,
                                                                    code, said):
    # the texts before it are scored while it waits for its writer, and then its lines as
    # they come; a stop while it waits hung on closing the pipe that its reader was reading
    fifo = tmp_path / "reviews.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([str(EXE), "predict", "--run", str(trained_run), "an argument",
                             "--file", str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    timer = threading.Timer(60, proc.kill)  # a hang fails the test, never waits for ever
    timer.start()
    try:
        first = proc.stdout.readline()  # no writer yet: the argument alone
        with _fifo_writer(fifo) as writer:  # a producer that writes one line and goes quiet
            writer.write("great film\n")
            writer.flush()
            second = proc.stdout.readline()
            proc.send_signal(sig)
            _out, err = proc.communicate(timeout=30)
    finally:
        timer.cancel()
        proc.kill()
    assert first.split(b"\t")[2] == b"an argument\n"
    assert second.split(b"\t")[2] == b"great film\n"
    assert proc.returncode == code and err.decode() == f"imdbsent: error: {said}\n"


def test_a_socket_given_as_a_file_is_refused_before_any_row(trained_run, tmp_path):
    import socket
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        res = run_exe(["predict", "--run", str(trained_run), "--batch-size", "1", "great film",
                       "--file", str(path)])
    assert res.returncode == 1 and res.stdout == b""
    assert res.stderr.decode() == f"imdbsent: error: {path}: No such device or address\n"


@pytest.mark.skipif(not os.path.exists("/dev/stdin"), reason="needs /dev/stdin")
def test_standard_input_named_as_a_file_and_as_dash_is_refused(trained_run):
    # the second read found the pipe at its end: its lines were scored once, silently
    res = run_exe(["predict", "--run", str(trained_run), "--file", "/dev/stdin", "-"],
                  input=b"great film\n")
    assert res.returncode == 2 and res.stdout == b""
    assert res.stderr.decode().startswith("imdbsent: error: standard input (-) is given 2 times")


def test_predict_from_stdin_in_every_format(trained_run):
    lines = ["great wonderful film", "", "awful, boring\tmess", "   ", "superb", "<br /><br/>"]
    stdin = "\n".join(lines).encode() + b"\n"
    res = run_exe(["predict", "-", "--run", str(trained_run)], input=stdin)
    assert res.returncode == 0, res.stderr
    rows = res.stdout.decode().splitlines()
    assert len(rows) == len(lines)
    assert rows[1] == "skip\t\t" and rows[3] == "skip\t\t   "
    assert rows[2].endswith("\tawful, boring mess")  # the tab cannot break the TSV
    assert [r.split("\t")[0] for r in rows] == ["pos", "skip", "neg", "skip", "pos", "skip"]
    res = run_exe(["predict", "-", "--run", str(trained_run), "--format", "jsonl"], input=stdin)
    objs = [json.loads(x) for x in res.stdout.decode().splitlines()]
    assert [o["text"] for o in objs] == lines
    assert objs[1] == {"label": None, "prob_pos": None, "text": "", "skipped": "no words"}
    assert 0.0 <= objs[0]["prob_pos"] <= 1.0
    res = run_exe(["predict", "-", "--run", str(trained_run), "--format", "csv"], input=stdin)
    parsed = list(csv.reader(io.StringIO(res.stdout.decode())))
    assert [r[2] for r in parsed] == lines and parsed[0][0] == "pos"
    assert res.stderr == b"" or b"Traceback" not in res.stderr


def test_predict_reads_files_and_applies_the_threshold(trained_run, tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_text("great wonderful\nawful boring\n")
    res = run_exe(["predict", "--file", str(path), "--run", str(trained_run),
                   "--threshold", "1.0"])
    assert res.returncode == 0, res.stderr
    assert [r.split("\t")[0] for r in res.stdout.decode().splitlines()] == ["neg", "neg"]


@pytest.mark.parametrize("newest", ["good", "broken"])
def test_predict_uses_the_latest_run_by_default(trained_run, tmp_path, monkeypatch, capsys,
                                                newest):
    for name in ("good", "broken"):
        shutil.copytree(trained_run, tmp_path / "runs" / name)
    (tmp_path / "runs" / "broken" / "tokenizer.json").write_text("not a tokenizer")
    older = "broken" if newest == "good" else "good"
    set_started(tmp_path / "runs" / older, 1)
    monkeypatch.chdir(tmp_path)
    code = run_cli(["predict", "--format", "tsv", "great superb"])
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("pos\t"), err
    # a newer run that `imdbsent runs` calls broken is passed over, with a word
    assert err == ("" if newest == "good" else
                   "passing over runs/broken (broken); using runs/good\n")


def test_predict_needs_only_the_run_directory(trained_run, tmp_path):
    alone = tmp_path / "elsewhere"
    shutil.copytree(trained_run, alone)
    res = run_exe(["predict", "--run", str(alone), "superb"], cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.decode().startswith("pos\t")


def test_evaluate_a_labeled_file(trained_run, tmp_path, capsys):
    texts, labels = make_reviews(30, seed=9)
    path = tmp_path / "extra.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, ["pos" if x else "neg" for x in labels]))
    res = run_exe(["evaluate", str(trained_run), "--data-file", str(path), "--json"])
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout)
    assert metrics["examples"] == 30 and metrics["on"] == str(path)
    assert metrics["accuracy"] > 0.9 and metrics["unk_rate"] == 0.0
    other = tmp_path / "other.csv"  # other column names, and words the vocabulary lacks
    with open(other, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["review", "sentiment"])
        w.writerows([("great zzyzx", "pos"), ("awful qqq www", "neg"), ("<br />", "pos"),
                     ("", "neg")])  # the last two: no words, skipped as predict skips them
    assert run_cli(["evaluate", str(trained_run), "--data-file", str(other), "--json",
                    "--text-column", "review", "--label-column", "sentiment"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["examples"] == 2 and metrics["unk_rate"] == pytest.approx(3 / 5)
    assert metrics["on"] == str(other) and metrics["skipped"] == 2
    assert run_cli(["evaluate", str(trained_run), "--data-file", str(other), "--text-column",
                    "review", "--label-column", "sentiment"]) == 0  # piped: name<TAB>value
    assert "examples\t2\nskipped\t2\n" in capsys.readouterr().out
    blank = tmp_path / "blank.csv"
    blank.write_text('text,label\n"",pos\n')
    assert run_cli(["evaluate", str(trained_run), "--data-file", str(blank)]) == 1
    assert capsys.readouterr().err == (f"imdbsent: error: {blank}: no row has a text with words "
                                       "to score\n")


def test_seeded_training_is_repeatable(prepared_dir, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(SMALL_GRU.format(data=prepared_dir))
    results = []
    for name in ("a", "b"):
        res = runner.invoke(app, ["train", "--config", str(config), "--run-dir",
                                  str(tmp_path / name), "--epochs", "1"])
        assert res.exit_code == 0, res.output
        results.append((tmp_path / name / "metrics.jsonl").read_text())
    strip = [[{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in r.splitlines()]
             for r in results]
    assert strip[0] == strip[1]


def test_adversarial_flags_set_the_run_recipe(prepared_dir, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(SMALL_GRU.format(data=prepared_dir))
    res = runner.invoke(app, ["train", "--config", str(config), "--run-dir", str(tmp_path / "r"),
                              "--epochs", "1", "--adversarial", "0.5",
                              "--virtual-adversarial", "2"])
    assert res.exit_code == 0, res.output
    train = runs.load_config(tmp_path / "r").train
    assert (train.adversarial, train.virtual_adversarial) == (0.5, 2.0)


@pytest.mark.parametrize("files, holds", [
    (["train.csv", "test.csv"], "test.csv, train.csv"),
    (["train.jsonl", "test.jsonl"], "test.jsonl, train.jsonl"),
    (["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
      "data/test-00000-of-00001.parquet"], "data/test-00000-of-00001.parquet, data/train-00000"),
    (["aclImdb/train/pos/1_9.txt", "aclImdb/train/neg/2_1.txt"],
     "aclImdb/train/neg/, aclImdb/train/pos/"),
])
def test_train_on_a_source_folder_says_to_prepare_it_elsewhere(tmp_path, capsys, files, holds):
    # prepare --out SOURCE, what "no prepared dataset: run imdbsent prepare --out X" said, would
    # be refused: the folder holds a source's files
    for name in files:
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_text("")
    src = tmp_path / "src"
    assert run_cli(["train", "--data", str(src), "--run-dir", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"imdbsent: error: no prepared dataset in {src}, which holds {holds}")
    assert err.endswith(f"if it is a source, prepare it with imdbsent prepare --source {src} "
                        "--out OTHER_FOLDER, and give that folder\n")


def test_train_on_a_source_archive_says_to_prepare_it(tmp_path, capsys):
    archive = tmp_path / "aclImdb_v1.tar.gz"
    archive.write_bytes(b"")
    assert run_cli(["train", "--data", str(archive), "--run-dir", str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err == (
        f"imdbsent: error: {archive} is an archive, not a prepared dataset: if it is aclImdb's, "
        f"prepare it with imdbsent prepare --source {archive} --out OTHER_FOLDER, and give that "
        "folder\n")


def test_train_on_the_folder_above_a_prepared_dataset_names_it(prepared_dir, tmp_path, capsys):
    # its encoded splits (train.parquet) looked like a source's, and prepare --source failed
    shutil.copytree(prepared_dir, tmp_path / "parent" / "imdb")
    assert run_cli(["train", "--data", str(tmp_path / "parent"), "--run-dir",
                    str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err == (f"imdbsent: error: no prepared dataset in "
                                       f"{tmp_path / 'parent'}, but in a folder in it: give "
                                       f"--data {tmp_path / 'parent' / 'imdb'}\n")


def test_a_folder_of_many_sources_is_named_in_short_and_not_searched_deep(tmp_path, capsys):
    # `train --data /` listed every train.parquet on the disk, in 7 s
    for n in range(6):
        for name in (f"s{n}/train.csv", f"deep/er/s{n}/train.csv"):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text("")
    assert run_cli(["train", "--data", str(tmp_path), "--run-dir", str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err.startswith(
        f"imdbsent: error: no prepared dataset in {tmp_path}, which holds s0/train.csv, "
        "s1/train.csv, s2/train.csv, s3/train.csv, ... (6 in all): if it is a source")


@pytest.mark.parametrize("files, said", [
    # split files three folders down: prepare --out there would have mixed its files in
    (["a/b/train.csv", "a/b/test.csv"], "which holds a: if it is a source, prepare it with "
                                        "imdbsent prepare --source {folder} --out OTHER_FOLDER"),
    (["public/manifest.json"], "which holds public: if it is a source"),  # a web app's
    ([".hidden/manifest.json", "train.csv", "test.csv"], "which holds test.csv, train.csv: if"),
    ([".build-1/train.parquet", ".build-1/test.parquet"], "run imdbsent prepare --out {folder}"),
])
def test_train_on_a_folder_that_is_not_prepared_says_what_it_holds(tmp_path, capsys, files,
                                                                   said):
    folder = tmp_path / "d"
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text('{"name": "app"}' if name.endswith(".json") else "")
    assert run_cli(["train", "--data", str(folder), "--run-dir", str(tmp_path / "r")]) == 1
    assert said.format(folder=folder) in capsys.readouterr().err


def test_train_on_a_prepared_folder_whose_rebuild_was_killed_says_to_prepare_it(
        prepared_dir, tmp_path, capsys):
    # prepare removes the manifest before it moves the new files in: a kill between leaves its
    # own files and lock, which looked like a source's
    folder = shutil.copytree(prepared_dir, tmp_path / "d")
    (folder / "manifest.json").unlink()
    (folder / ".lock").write_text("")
    assert run_cli(["train", "--data", str(folder), "--run-dir", str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err.startswith(f"imdbsent: error: no prepared dataset in {folder}: "
                                              "run imdbsent prepare")


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "imdbsent", "--help"], capture_output=True)
    assert res.returncode == 0 and b"prepare" in res.stdout and b"predict" in res.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "nowhere"], "no prepared dataset in nowhere: run imdbsent prepare"),
    (["train", "--data", "{source}/train.parquet"], "train.parquet is a file, not a prepared "
                                                    "dataset folder"),  # not prepare --out it
    (["train", "--data", "{source}"], "which holds test.parquet, train.parquet, unsupervised."
                                      "parquet: if it is a source, prepare it with imdbsent "
                                      "prepare --source "),  # not prepare --out SOURCE: refused
    (["train", "--bogus"], "No such option: --bogus (see imdbsent train --help)"),
    (["bogus"], "No such command 'bogus' (see imdbsent --help)"),
    (["prepare", "--source"], "Option '--source' requires an argument (see imdbsent prepare "
                              "--help)"),  # click gives no context: found on the line
    (["evaluate", "--split", "train"], "Invalid value for '--split': 'train' is not one of "
                                       "'test', 'valid' (see imdbsent evaluate --help)"),
    (["train", "--epochs", "many"], "--epochs must be an integer, not 'many' (see"),
    (["train", "--lr", "fast"], "--lr must be a number, not 'fast' (see"),
    (["train", "--config", "nope"], "no recipe named 'nope'"),
    (["train", "--threads", "0"], "--threads must be at least 1, not 0 (see"),
    (["train", "--virtual-adversarial", "-1"], "--virtual-adversarial must be at least 0, not -1 "
                                               "(see"),
    (["train", "--model", "nblr", "--vectors", "none", "--adversarial", "1", "--data",
      "{prepared}"],
     "--adversarial needs a model with a word embedding (rnn, lstm, gru, cnn), not nblr"),
    (["train", "--config", "nblr", "--vectors", "v.txt"],
     "--vectors needs a model with word embeddings (nblr has none: --vectors none)"),
    (["evaluate", "no/such/run"], "no/such/run: no such run directory"),
    (["predict", "--run", "no/such/run", "hi"], "no such run directory"),
    (["predict"], "nothing to predict: give texts, - for standard input, or --file PATH (see "
                  "imdbsent predict --help)"),
    (["predict", "hi"], "no runs in runs/"),
    (["prepare", "--source", "./missing"], "./missing: no such file or folder"),
    (["prepare", "--split-ratio", "1.5", "--source", "."], "--split-ratio must be between 0 and 1"),
    (["predict", "--threshold", "nan", "hi"], "--threshold must be between 0 and 1, not nan (see "
                                              "imdbsent predict --help)"),  # ours, as typer's
    (["predict", "--batch-size", "0", "hi"], "--batch-size must be at least 1, not 0 (see "
                                             "imdbsent predict --help)"),  # a typer range, as ours
    (["train", "--nproc", "0"], "--nproc must be at least 1, not 0 (see"),
    (["report", "--out", "", "r"], "--out must not be empty (. is this folder) (see imdbsent "
                                   "report --help)"),  # typer read "" as ".": wrote here
    (["evaluate", ""], "run must not be empty"),
    (["prepare", "--source", ""], "--source must not be empty (. is this folder)"),
    (["evaluate", "--label-column", "y"], "--label-column names a column of --data-file, which "
                                          "is not given (see imdbsent evaluate --help)"),
    (["predict", "--file", "", "hi"], "--file must not be empty"),
    (["train", "--data", "", "--run-dir", "r"], "--data must not be empty"),
    (["predict", "-", "-"], "standard input (-) is given 2 times: it can be read once (see "
                            "imdbsent predict --help)"),  # the second read nothing
    (["explain", "-", "--file", "-"], "standard input (-) is given 2 times"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, monkeypatch, capsys, args, message,
                                                    prepared_dir, source_dir):
    monkeypatch.chdir(tmp_path)
    assert run_cli([a.format(prepared=prepared_dir, source=source_dir) for a in args]) != 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("imdbsent: error: "), err
    assert message in err
    assert out == ""


@pytest.mark.parametrize("by", ["flag", "env"])
def test_more_threads_than_cores_are_said_and_capped(trained_run, by):
    cores = threads.available_cores()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if by == "env":
        env["OMP_NUM_THREADS"] = str(cores + 5)
    res = subprocess.run([str(EXE), "predict", *(["--threads", str(cores + 5)] if by == "flag"
                                                   else []), "--run", str(trained_run),
                          "great film"], capture_output=True, env=env, timeout=120)
    what = f"--threads {cores + 5}" if by == "flag" else f"OMP_NUM_THREADS={cores + 5}"
    assert res.stderr.decode() == (f"warning: {what} is more than the {cores} cores this "
                                   f"process may run on: computing with {cores}\n")
    assert res.returncode == 0 and res.stdout.decode().endswith("\tgreat film\n")


@pytest.mark.parametrize("args, status", [
    (["train", "--epochs", "0"], 2),  # out of range, as
    (["train", "--epochs", "x"], 2),  # one that cannot be parsed
    (["prepare", "--split-ratio", "1.5"], 2),
    (["train", "--threads", "0"], 2),
    (["predict", "--threshold", "1.5", "hi"], 2),  # before the run that is missing: 1
    (["predict", "--batch-size", "0", "hi"], 2),
    (["evaluate", "--data-file", "a.csv", "--data-file", "b.csv"], 2),  # not the last alone
    (["predict", "hi"], 1),
    (["predict"], 2),  # nothing to predict: a usage error
    (["explain"], 2),
    (["explain", "-", "-"], 2),
    (["evaluate", "--text-column", "review"], 2),  # no --data-file: it was ignored
    (["train", "--resume", "runs/a", "--config", "default"], 2),  # flags that conflict
    (["prepare", "--source", "./missing"], 1),
    (["prepare", "--out", "", "--source", "./missing"], 2),
])
def test_a_usage_error_exits_2_and_any_other_error_1(tmp_path, monkeypatch, capsys, args,
                                                     status):
    monkeypatch.chdir(tmp_path)
    assert run_cli(args) == status
    err = capsys.readouterr().err
    assert err.startswith("imdbsent: error: ") and err.count("\n") == 1
    assert status == 1 or [*args, "--help"][1] in err  # a usage error names the flag or help
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_a_recipe_meant_for_another_split_refuses_data_split_otherwise(prepared_dir, source_dir,
                                                                        tmp_path, monkeypatch,
                                                                        capsys):
    """`stack` trains on a 90/10 split (split_ratio = 0.9): missing data is named with the
    flags that make it (those the default data was prepared with, a --source among them), and
    data prepared 70/30 is refused before any run is made, with the flags that made it."""
    monkeypatch.chdir(tmp_path)
    assert run_cli(["train", "--config", "stack"]) == 1
    assert capsys.readouterr().err.endswith("no prepared dataset in data/imdb90: run imdbsent "
                                            "prepare --split-ratio 0.9 --out data/imdb90\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "imdb").symlink_to(prepared_dir)
    assert run_cli(["train", "--config", "stack"]) == 1
    assert capsys.readouterr().err.endswith(f"run imdbsent prepare --source {source_dir} "
                                            "--split-ratio 0.9 --out data/imdb90\n")
    assert run_cli(["train", "--data", "data/other"]) == 1  # any recipe: where the data came from
    assert capsys.readouterr().err.endswith(f"run imdbsent prepare --source {source_dir} --out "
                                            "data/other\n")
    assert run_cli(["train", "--config", "stack", "--data", str(prepared_dir),
                    "--run-dir", "run"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was prepared with --split-ratio 0.7, but the recipe is " \
        f"meant for 0.9: run imdbsent prepare --source {source_dir} --split-ratio 0.9 --out " \
        "DIR" in err
    assert not (tmp_path / "run").exists()
    small = tmp_path / "small.toml"  # a recipe whose split the data has passes
    small.write_text(SMALL_GRU.format(data=prepared_dir))
    assert training.prepared_for(config.load(small, {"split_ratio": 0.7})).folder == prepared_dir


def test_the_installed_command_reports_a_user_error_in_one_line(tmp_path):
    res = run_exe(["evaluate", "no/such/run"], cwd=tmp_path)
    assert res.returncode == 1 and res.stdout == b""
    assert res.stderr == b"imdbsent: error: no/such/run: no such run directory\n"


def test_training_into_a_finished_run_refuses_and_keeps_it(trained_run, capsys):
    def files():  # the lock file only names its last holder
        return {p.name: p.read_bytes() for p in trained_run.iterdir() if p.name != ".lock"}

    before = files()
    assert run_cli(["train", "--config", str(trained_run / "config.toml"),
                    "--run-dir", str(trained_run)]) == 1
    assert "already holds a finished run: choose another --run-dir\n" in capsys.readouterr().err
    assert files() == before


def test_training_into_a_file_says_so_and_leaves_it(prepared_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert run_cli(["train", "--data", str(prepared_dir), "--run-dir",
                    str(tmp_path / "notes.txt")]) == 1
    assert capsys.readouterr().err == (f"imdbsent: error: run directory {tmp_path / 'notes.txt'}: "
                                       "it exists and is not a folder\n")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_training_into_an_unfinished_run_says_how_to_continue_it(trained_run, tmp_path, capsys):
    run = shutil.copytree(trained_run, tmp_path / "run")
    metrics = run / "metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))  # untested
    assert run_cli(["train", "--config", str(run / "config.toml"), "--run-dir", str(run)]) == 1
    assert capsys.readouterr().err == (f"imdbsent: error: {run} already holds a run: continue "
                                       f"it with --resume {run}, or choose another --run-dir\n")


def test_training_into_a_folder_of_files_named_as_a_runs_refuses_and_keeps_them(
        prepared_dir, trained_run, tmp_path, capsys):
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    (mine / "tokenizer.json").write_text("precious")
    (mine / "best.safetensors").write_text("precious")
    (other / "config.toml").write_text("foo = 1\n")  # another program's, not a run
    for folder, names in ((mine, "best.safetensors, tokenizer.json"), (other, "config.toml"),
                          (prepared_dir, "tokenizer.json")):
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert run_cli(["train", "--config", str(trained_run / "config.toml"),
                        "--run-dir", str(folder)]) == 1
        them = "them" if "," in names else "it"
        assert capsys.readouterr().err == (f"imdbsent: error: {folder} holds {names} but no "
                                           f"run: training would overwrite {them}; choose "
                                           "another --run-dir\n")
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no .lock either


def test_training_into_a_folder_of_runs_refuses_and_keeps_them_listed(trained_run, tmp_path,
                                                                     capsys):
    # --run-dir runs for --run-dir runs/NAME: the run made there would hide the runs in it
    folder = tmp_path / "runs"
    shutil.copytree(trained_run, folder / "gru-1")
    (folder / "broken").mkdir()  # a run's files without its config: listed, as broken
    shutil.copy(trained_run / "metrics.jsonl", folder / "broken")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    listed = sorted(r["name"] for r in runs.list_runs(folder))
    assert run_cli(["train", "--config", str(trained_run / "config.toml"),
                    "--run-dir", str(folder)]) == 1
    assert capsys.readouterr().err == (f"imdbsent: error: {folder} holds runs (broken, gru-1): "
                                       "a run would hide them; give a folder of its own, such "
                                       f"as --run-dir {folder / 'NAME'}\n")
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert sorted(r["name"] for r in runs.list_runs(folder)) == listed == ["broken", "gru-1"]


def test_a_folder_of_runs_with_one_that_cannot_be_read_lists_and_refuses_the_rest(
        trained_run, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "runs"
    for n in range(6):
        shutil.copytree(trained_run, folder / f"gru-{n}")
    (folder / "locked").mkdir()
    real = Path.exists

    def exists(self: Path, *args, **kwargs) -> bool:  # Python 3.11's, in a folder chmod 000
        if self.parent.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    assert len(runs.list_runs(folder)) == 6
    assert run_cli(["train", "--config", str(trained_run / "config.toml"),
                    "--run-dir", str(folder)]) == 1
    assert capsys.readouterr().err == (f"imdbsent: error: {folder} holds runs (gru-0, gru-1, "
                                       "gru-2, gru-3, ... (6 in all)): a run would hide them; "
                                       f"give a folder of its own, such as --run-dir "
                                       f"{folder / 'NAME'}\n")


def test_checkpoint_and_tokenizer_that_do_not_match(trained_run, tmp_path, capsys):
    run = tmp_path / "mismatch"
    shutil.copytree(trained_run, run)
    text.save(text.fit_tokenizer(["only three words"], max_vocab=10), run / "tokenizer.json")
    assert run_cli(["predict", "--run", str(run), "hello"]) == 1
    assert "do not belong together" in capsys.readouterr().err


def test_resume_refuses_data_prepared_with_another_vocabulary(trained_run, source_dir, tmp_path,
                                                              capsys):
    other = tmp_path / "other"
    assert runner.invoke(app, ["prepare", "--source", str(source_dir), "--out", str(other),
                               "--max-vocab", "5"]).exit_code == 0
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert run_cli(["train", "--resume", str(run), "--data", str(other), "--epochs", "4"]) == 1
    assert "is not the prepared data" in capsys.readouterr().err
    (run / "last.safetensors").unlink()  # a run from before fingerprints: the vocabulary decides
    assert run_cli(["evaluate", str(run), "--data", str(other)]) == 1
    assert capsys.readouterr().err.endswith(  # scoring names the way to score other reviews
        f"another vocabulary than {run} was trained on; use the run's data (--data); to score "
        f"other labeled reviews: imdbsent evaluate {run} --data-file FILE\n")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == \
        {k: v for k, v in before.items() if k != "last.safetensors"}


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["train", "--help"],
                                  ["predict", "--help"]])
def test_version_and_help_import_neither_torch_nor_datasets(args):
    import subprocess
    import sys
    code = ("import sys\nfrom imdbsent.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
            "heavy = [m for m in ('torch', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.startswith(b"imdbsent 0.") if args == ["--version"] else b"Usage" in res.stdout


def test_the_imdbsent_command_enters_through_the_quiet_entry_point():
    from importlib.metadata import entry_points
    [command] = [e for e in entry_points(group="console_scripts") if e.name == "imdbsent"]
    assert command.value == "imdbsent.__main__:run"  # as the test below runs it


@pytest.mark.parametrize("entry", [
    "runpy.run_module('imdbsent', run_name='__main__')",  # python -m imdbsent (torchrun's)
    "from imdbsent.__main__ import run; run()",  # the imdbsent command's entry point
])
def test_ctrl_c_while_the_command_imports_ends_quietly_with_130(entry):
    import subprocess
    import sys
    code = ("import builtins, os, runpy, signal\nreal = builtins.__import__\n"
            "def slow(name, *args, **kwargs):\n    if name == 'imdbsent.cli':\n"
            "        os.kill(os.getpid(), signal.SIGINT)  # as torchrun forwards a Ctrl-C\n"
            "    return real(name, *args, **kwargs)\nbuiltins.__import__ = slow\n"
            f"{entry}\n")
    res = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True)
    assert res.returncode == 130 and res.stderr == b""  # no KeyboardInterrupt traceback


def test_a_ctrl_c_is_said_in_one_line_by_every_command(trained_run, monkeypatch, capsys):
    import os
    import signal
    import time

    from imdbsent.predict import Predictor

    def stopped(self, texts):  # a Ctrl-C: typer turns its KeyboardInterrupt into a silent 130
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)

    monkeypatch.setattr(Predictor, "predict", stopped)
    assert run_cli(["predict", "--run", str(trained_run), "great film"]) == 130
    assert capsys.readouterr().err == "imdbsent: error: interrupted\n"


@pytest.mark.parametrize("sig, code, said", [("SIGINT", 130, "interrupted"),
                                             ("SIGTERM", 143, "terminated")])
def test_a_signal_swallowed_until_the_command_ended_still_ends_it(trained_run, monkeypatch,
                                                                  capsys, sig, code, said):
    """A Ctrl-C or SIGTERM while torch imports numpy is dropped by torch's C code; a command
    with no batch after it (`imdbsent runs`) finished and exited 0, as if never stopped."""
    import os
    import signal

    real = runs.list_runs

    def swallowing(folder):
        try:
            os.kill(os.getpid(), getattr(signal, sig))
            signal.sigtimedwait([], 0.1) if hasattr(signal, "sigtimedwait") else None
        except BaseException:
            pass
        return real(folder)

    monkeypatch.setattr(runs, "list_runs", swallowing)
    assert run_cli(["runs", str(trained_run.parent)]) == code
    assert capsys.readouterr().err == f"imdbsent: error: {said}\n"


def test_an_ignored_ctrl_c_stays_ignored(trained_run, monkeypatch, capsys):
    """`imdbsent train ... &` in a script starts with SIGINT ignored, and should keep it so."""
    import signal

    seen = []
    real = runs.list_runs
    monkeypatch.setattr(runs, "list_runs", lambda folder: seen.append(
        signal.getsignal(signal.SIGINT)) or real(folder))
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert run_cli(["runs", str(trained_run.parent)]) == 0
        assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_swallowed_signal_ends_a_wait_on_idle_standard_input(monkeypatch):
    import os
    import threading

    from imdbsent.cli import READER, live_lines
    from imdbsent.errors import Pending, Terminated
    read_end, write_end = os.pipe()  # a pipe that never speaks: `sleep 30 | imdbsent predict -`
    monkeypatch.setattr(Pending, "raised", Terminated)
    raised = []

    def wait(fh) -> None:  # in a thread of its own, so that a wait for ever fails the test
        try:
            for _ in live_lines(fh, pause=0.05):
                pass
        except Terminated as exc:
            raised.append(exc)

    with os.fdopen(read_end, "rb") as fh:
        waiting = threading.Thread(target=wait, args=(fh,), daemon=True)
        waiting.start()
        waiting.join(timeout=10)
        stopped_in_time = not waiting.is_alive()
        os.close(write_end)  # the reader thread sees the end and lets go of the file
        waiting.join(timeout=5)
        for thread in threading.enumerate():
            if thread.name == READER:
                thread.join(timeout=5)
    assert stopped_in_time and raised


def test_predict_and_evaluate_of_a_prepared_split_never_import_datasets(trained_run):
    import subprocess
    import sys
    code = ("import sys\nfrom imdbsent.cli import main\nfor argv in (['predict', '--run', "
            "sys.argv[1], 'great film'], ['evaluate', sys.argv[1], '--json']):\n    try:\n"
            "        main(argv)\n    except SystemExit as exc:\n        assert not exc.code\n"
            "assert 'datasets' not in sys.modules  # a second of start-up for nothing\n")
    res = subprocess.run([sys.executable, "-c", code, str(trained_run)], capture_output=True)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.startswith(b"pos\t")


def test_prepare_piped_says_each_stage_once_in_order(source_dir, tmp_path, capsys):
    from conftest import run_cli
    assert run_cli(["prepare", "--source", str(source_dir), "--out", str(tmp_path / "p"),
                    "--vectors-dim", "4", "--vectors-tokens", "100000"]) == 0
    err = capsys.readouterr().err.splitlines()
    stages = [line for line in err if "loss" not in line and line.split(": ")[0] in (
        "reading train", "reading test", "reading unsupervised", "vocabulary",
        "encoding train and valid", "encoding test", "encoding unsupervised", "word vectors")]
    assert stages == ["reading train: 400", "reading test: 200", "reading unsupervised: 100",
                      "vocabulary: 280/280", "encoding train and valid: 400/400",
                      "encoding test: 200/200", "encoding unsupervised: 100/100",
                      "word vectors: 5/5"]
    assert err.index("vocabulary: 280/280") < err.index("encoding train and valid (400 reviews)")


def test_bare_imdbsent_shows_its_help_and_no_empty_error(capsys):
    assert run_cli([]) == 2
    out, err = capsys.readouterr()
    assert "Usage: imdbsent [OPTIONS] COMMAND" in out and err == ""


def test_help_shows_no_value_for_a_switch_and_plain_types(capsys):
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    for command in [[], *([name] for name in commands)]:
        assert run_cli([*command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "Usage:" in out and "<bool>" not in out, command
        assert not re.search(r"<list|range>|<[A-Z][a-z]+>", out), command  # <path>, <int> [x>=1]
        assert command != ["prepare"] or "--force" in out and "--no-unsupervised" in out


def test_an_error_message_of_several_lines_is_said_in_one(monkeypatch, capsys):
    from imdbsent import cli

    def chosen(_run: object) -> None:
        raise UserError("a library's message:\n- first reason\n\n- second reason")

    monkeypatch.setattr(cli, "_chosen_run", chosen)
    assert run_cli(["predict", "hi"]) == 1
    assert capsys.readouterr().err == ("imdbsent: error: a library's message: - first reason "
                                       "- second reason\n")


def test_read_lines_drops_a_byte_order_mark_that_starts_any_line():
    from imdbsent.cli import read_lines
    joined = "\ufeffgreat film\n".encode() + "\ufeffawful mess\n".encode()  # cat a.txt b.txt
    assert list(read_lines(io.BytesIO(joined))) == ["great film", "awful mess"]


def _fails_on_read(path: str) -> bool:
    """Whether `path` opens and its first read fails with EIO (/proc/self/mem on Linux)."""
    import errno
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        return exc.errno == errno.EIO
    return False


@pytest.mark.skipif(not _fails_on_read("/proc/self/mem"), reason="needs Linux's /proc")
def test_a_file_that_fails_while_it_is_read_is_one_line(trained_run, capsys):
    # /proc/self/mem opens, and its first read fails with EIO (address 0 is not mapped)
    assert run_cli(["predict", "--run", str(trained_run), "--file", "/proc/self/mem"]) == 1
    out, err = capsys.readouterr()
    assert err == "imdbsent: error: /proc/self/mem: cannot read: Input/output error\n"
    assert out == ""


@pytest.mark.parametrize("stop, code, said", [(KeyboardInterrupt, 130, "interrupted"),
                                              (Terminated, 143, "terminated")])
def test_an_interrupted_prepare_says_what_it_kept(source_dir, tmp_path, monkeypatch, capsys,
                                                  stop, code, said):
    from imdbsent import data
    args = ["prepare", "--source", str(source_dir), "--vectors-dim", "0", "--out"]
    assert run_cli([*args, str(tmp_path / "kept")]) == 0

    def stopped(*_args: object) -> None:
        raise stop()

    monkeypatch.setattr(data, "_build_into", stopped)
    capsys.readouterr()
    assert run_cli([*args, str(tmp_path / "new")]) == code
    assert capsys.readouterr().err.endswith(f"{said}: no dataset was made in {tmp_path / 'new'}\n")
    assert not (tmp_path / "new").exists()
    assert run_cli([*args, str(tmp_path / "kept"), "--force"]) == code
    assert capsys.readouterr().err.endswith(f"{said}: {tmp_path / 'kept'} holds the dataset "
                                            "prepared before, as it was\n")
    assert data.load_prepared(tmp_path / "kept").split("test").labels.size


def test_a_run_named_that_has_not_finished_is_said_so(trained_run, tmp_path, capsys):
    run = shutil.copytree(trained_run, tmp_path / "stopped")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(x for x in lines if '"split": "test"' not in x))
    for args in (["evaluate", str(run)], ["predict", "--run", str(run), "great film"],
                 ["explain", "--run", str(run), "great film"]):
        assert run_cli(args) == 0
        assert capsys.readouterr().err == (f"{run} has not finished (interrupted): using its "
                                           "best checkpoint so far, neither calibrated nor "
                                           "tested\n"), args
    assert run_cli(["evaluate", str(trained_run)]) == 0
    assert capsys.readouterr().err == ""


def test_read_lines_leaves_its_stream_open_and_finds_a_mark_written_a_byte_at_a_time():
    import os
    import threading
    import time

    from imdbsent.cli import read_lines
    stream = io.BytesIO(b"great\nfilm\n")  # no buffer of its own: read through one of ours
    assert list(read_lines(stream)) == ["great", "film"] and not stream.closed
    r, w = os.pipe()

    def write() -> None:  # the mark's two bytes in two writes: one read sees one byte
        os.write(w, b"\xff")
        time.sleep(0.2)
        os.write(w, b"\xfe" + "hi\r\nyo\n".encode("utf-16-le"))
        os.close(w)

    threading.Thread(target=write).start()
    with os.fdopen(r, "rb") as fh:
        assert list(read_lines(fh)) == ["hi", "yo"]
