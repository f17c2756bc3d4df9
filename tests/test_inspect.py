"""Looking at runs: `imdbsent runs`, `imdbsent report` and `imdbsent explain`."""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import shutil
import struct
import sys
import unicodedata
from datetime import datetime
from pathlib import Path

import pytest
import torch

from conftest import hold_lock, run_cli, set_started, small_recipe
from imdbsent import explain, runs
from imdbsent.errors import Terminated
from imdbsent.predict import Predictor
from imdbsent.text import MAX_CHARS

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def small_runs(prepared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small run of each kind of model that explain treats its own way."""
    folder = tmp_path_factory.mktemp("kinds")
    recipes = {
        "nblr": small_recipe("nblr", "ngram_buckets = 5000\nngrams = 2"),
        "nbow": small_recipe("nbow", "ngram_buckets = 5000\nngrams = 3\nprior_tokens = 2.0"),
        "cnn": small_recipe("cnn", "filter_sizes = [2, 3]\nnum_filters = 8")
        .replace("batch_size = 16", "batch_size = 16\nmax_length = 6"),
        "rnn": small_recipe("rnn"),
    }
    made = {}
    for name, recipe in recipes.items():
        path = folder / f"{name}.toml"
        path.write_text(recipe.format(data=prepared_dir).replace("epochs = 3", "epochs = 2"))
        made[name] = folder / name
        assert run_cli(["train", "--config", str(path), "--run-dir", str(made[name])]) == 0
    ensemble = folder / "ensemble.toml"
    ensemble.write_text(f'version = 1\ndata = "{prepared_dir}"\n[model]\nname = "ensemble"\n'
                        'members = ["cnn.toml", "nblr.toml"]\n')
    made["ensemble"] = folder / "ensemble"
    assert run_cli(["train", "--config", str(ensemble), "--run-dir", str(made["ensemble"])]) == 0
    return made


# --- imdbsent runs ---------------------------------------------------------------------------

def _copy(run: Path, folder: Path, name: str, started: float) -> Path:
    copy = folder / name
    shutil.copytree(run, copy)  # every file's time now: the recorded start decides
    set_started(copy, started)
    return copy


@pytest.mark.parametrize("damage", [b'{"epoch": 9, "train_lo', b"1", b"\xff\xfe"])
def test_a_damaged_metrics_file_is_named_in_one_line_by_every_command(trained_run, tmp_path,
                                                                      capsys, damage):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    metrics = run / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines()
    metrics.write_bytes(b"\n".join([*lines[:1], damage, *lines[1:]]) + b"\n")
    before = metrics.read_bytes()
    said = f"{metrics}, line 2: not a metrics record (a JSON object); the file is damaged"
    for argv in (["train", "--resume", str(run), "--epochs", "9"], ["report", str(run),
                 "--out", str(tmp_path / "figures")], ["runs", str(run)]):
        code = run_cli(argv)
        out, err = capsys.readouterr()
        if argv[0] == "runs":  # the listing goes on, the run's row says it
            assert code == 0 and "broken: metrics.jsonl, line 2: not a metrics record" in out
        else:
            assert code == 1 and err == f"imdbsent: error: {said}\n"
    assert metrics.read_bytes() == before  # refused, never rewritten


def test_a_run_listed_as_dot_or_dotdot_is_named_by_its_folder(trained_run, tmp_path,
                                                            monkeypatch):
    run = shutil.copytree(trained_run, tmp_path / "mine")
    monkeypatch.chdir(run)
    assert [r["name"] for r in runs.list_runs(Path("."))] == ["mine"]
    (run / "sub").mkdir()
    assert runs.describe(Path("sub/.."))["name"] == "mine"


def test_runs_and_the_latest_run_agree_on_runs_started_within_one_second(trained_run,
                                                                         tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    _copy(trained_run, folder, "b-earlier", 1_000_000.25)  # the row shows whole seconds: its
    _copy(trained_run, folder, "a-later", 1_000_000.75)  # name would break the tie otherwise
    assert [r["name"] for r in runs.list_runs(folder)] == ["a-later", "b-earlier"]
    assert runs.latest_run(folder).name == "a-later"


def test_runs_lists_every_state_newest_first_and_survives_a_broken_one(trained_run, tmp_path,
                                                                       prepared_dir, capsys):
    folder = tmp_path / "runs"
    folder.mkdir()
    shutil.copytree(prepared_dir, folder / "data")  # a tokenizer, but a dataset's: not listed
    _copy(trained_run, folder, "finished", 1_000_000)
    interrupted = _copy(trained_run, folder, "interrupted", 2_000_000)
    lines = (interrupted / "metrics.jsonl").read_text().splitlines()
    (interrupted / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # no test line
    training = _copy(trained_run, folder, "training", 3_000_000)
    unstarted = folder / "unstarted"  # killed before its first epoch ended
    unstarted.mkdir()
    for name in ("config.toml", "tokenizer.json"):
        shutil.copy(trained_run / name, unstarted / name)
    set_started(unstarted, 4_000_000)
    broken = _copy(trained_run, folder, "broken", 5_000_000)
    (broken / "metrics.jsonl").write_text('{"epoch": 1, "valid_')  # cut off mid-line
    odd = _copy(trained_run, folder, "odd\tname\n[bold]", 500_000)  # the oldest
    (odd / "metrics.jsonl").write_text("[]\n")  # valid JSON, but not a record
    (folder / "compare").mkdir()  # `imdbsent report A B --out runs/compare`: not listed
    (folder / "compare" / "report.html").write_text("<html></html>")

    holder = hold_lock(training)
    try:
        assert run_cli(["runs", str(folder), "--json"]) == 0
    finally:
        holder.kill()
        holder.wait()
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["broken", "unstarted", "training", "interrupted",
                                         "finished", "odd\tname\n[bold]"]
    assert rows[-1]["status"].startswith("broken: ")
    rows = rows[:-1]
    status = {r["name"]: r["status"] for r in rows}
    assert status["finished"] == "finished" and status["interrupted"] == "interrupted"
    assert status["training"] == "training" and status["unstarted"] == "failed before epoch 1"
    assert status["broken"] == ("broken: metrics.jsonl, line 1: not a metrics record (a JSON "
                                "object); the file is damaged")  # named within its run
    finished = rows[-1]
    assert datetime.fromisoformat(finished["started"]).timestamp() == 1_000_000  # as recorded
    records = runs.read_metrics(trained_run)
    model = Predictor(trained_run).model
    assert finished["parameters"] == sum(p.numel() for p in model.parameters() if
                                         p.requires_grad)
    assert finished["model"] == "gru" and finished["epochs"] == 3
    assert finished["test_acc"] == round(records[-1]["test_acc"], 6)
    best = [r for r in records if r.get("best")][-1]
    assert (finished["best_epoch"], finished["best_valid_acc"]) == (best["epoch"],
                                                                    round(best["valid_acc"], 6))
    assert rows[3]["test_acc"] is None and rows[3]["epochs"] == 3

    assert run_cli(["runs", str(folder)]) == 0  # piped: a header and a TSV row each
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("\t") == list(runs.LISTED) and len(out) == 7  # the odd name: one line
    assert all(len(line.split("\t")) == len(runs.LISTED) for line in out)


def test_runs_before_any_training_lists_none_without_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/ yet
    assert run_cli(["runs", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == [] and err == "no runs yet: imdbsent train writes them under runs/\n"


def test_runs_of_a_folder_without_runs_says_so(prepared_dir, capsys):
    assert run_cli(["runs", str(prepared_dir)]) == 0  # a prepared dataset: no run in it
    out, err = capsys.readouterr()
    assert out.splitlines() == ["\t".join(runs.LISTED)] and err == f"no runs in {prepared_dir}\n"


def test_runs_of_a_missing_folder_is_one_line(tmp_path, capsys):
    assert run_cli(["runs", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"imdbsent: error: {tmp_path / 'nowhere'}: no such folder of runs"
    (tmp_path / "eval.csv").write_text("text,label\n")
    assert run_cli(["runs", str(tmp_path / "eval.csv")]) == 1
    assert capsys.readouterr().err.strip() == (f"imdbsent: error: {tmp_path / 'eval.csv'}: not a "
                                               "folder of runs")


@pytest.mark.parametrize("damage", ["none", "best removed", "best cut short",
                                    "tokenizer removed", "tokenizer not json"])
def test_runs_of_one_run_and_a_finished_run_that_cannot_predict(trained_run, tmp_path, capsys,
                                                                damage):
    run = shutil.copytree(trained_run, tmp_path / "run")
    if damage == "best removed":
        (run / runs.BEST).unlink()
    elif damage == "best cut short":
        os.truncate(run / runs.BEST, (run / runs.BEST).stat().st_size // 2)
    elif damage == "tokenizer removed":
        (run / "tokenizer.json").unlink()
    elif damage == "tokenizer not json":
        (run / "tokenizer.json").write_text("not json\n")
    assert run_cli(["runs", str(run), "--json"]) == 0  # a run itself: its own row
    [row] = json.loads(capsys.readouterr().out)
    assert row["name"] == "run" and row["test_acc"] is not None
    if damage == "none":
        assert row["status"] == "finished"
        return
    assert row["status"].startswith("broken: ") and str(run) not in row["status"]
    assert run_cli(["predict", "--run", str(run), "great film"]) == 1


def test_an_ensemble_without_one_of_its_members_is_broken_and_passed_over(small_runs, tmp_path,
                                                                          capsys):
    """A finished ensemble whose member folder is gone cannot predict: `runs` says so, and
    the default run choice passes over it (members/ still holds the other member)."""
    folder = tmp_path / "runs"
    _copy(small_runs["nblr"], folder, "older", 1_000_000)
    ensemble = _copy(small_runs["ensemble"], folder, "ensemble", 2_000_000)
    shutil.rmtree(ensemble / "members" / "nblr")
    assert run_cli(["runs", str(folder), "--json"]) == 0
    status = {r["name"]: r["status"] for r in json.loads(capsys.readouterr().out)}
    assert status == {"ensemble": "broken: members/nblr/best.safetensors: missing",
                      "older": "finished"}
    assert runs.latest_run(folder) == folder / "older"


def _relative_run(trained_run: Path, prepared_dir: Path, project: Path) -> Path:
    """A copy of `trained_run` in `project`, its data recorded as a path relative to it."""
    run = shutil.copytree(trained_run, project / "run")
    shutil.copytree(prepared_dir, project / "data")
    cfg = run / "config.toml"
    cfg.write_text(re.sub(r"(?m)^data = .*$", 'data = "data"', cfg.read_text()))
    return run


def test_a_run_on_relative_data_from_another_folder_says_how_to_score_it(
        trained_run, prepared_dir, tmp_path, monkeypatch, capsys):
    _relative_run(trained_run, prepared_dir, tmp_path / "project")
    monkeypatch.chdir(tmp_path / "project")
    assert run_cli(["evaluate", "run", "--json"]) == 0
    accuracy = json.loads(capsys.readouterr().out)["accuracy"]
    monkeypatch.chdir(tmp_path)
    assert run_cli(["evaluate", "project/run", "--json"]) == 1
    assert capsys.readouterr().err == (
        "imdbsent: error: project/run was trained on data, a path relative to the folder its "
        "training started in, and it is not here: run this from that folder, or give --data "
        "with the prepared dataset\n")
    assert run_cli(["evaluate", "project/run", "--json", "--data", "project/data"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == accuracy


def test_resuming_a_run_on_relative_data_from_another_folder(trained_run, prepared_dir, tmp_path,
                                                             monkeypatch, capsys):
    from imdbsent import config
    run = _relative_run(trained_run, prepared_dir, tmp_path / "project")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:-1]))  # killed in its final test
    monkeypatch.chdir(tmp_path)
    assert run_cli(["train", "--resume", "project/run"]) == 1
    assert capsys.readouterr().err.startswith(  # not "run imdbsent prepare", which would
        "imdbsent: error: project/run was trained on data, a path relative to the folder its "
        "training started in, and it is not here")  # make other data, refused afterwards
    assert run_cli(["train", "--resume", "project/run", "--data", "project/data"]) == 0
    assert config.load(run / "config.toml").data == str(tmp_path / "project" / "data")
    monkeypatch.chdir(tmp_path / "project")  # recorded whole, so it holds from anywhere
    assert run_cli(["evaluate", "run", "--json"]) == 0


@pytest.mark.parametrize("extra, flag", [(["--split", "valid"], "--split"),
                                         (["--data", "anywhere"], "--data")])
def test_evaluate_refuses_a_data_file_with_options_it_would_ignore(trained_run, tmp_path, capsys,
                                                                  extra, flag):
    (tmp_path / "f.csv").write_text("text,label\ngreat film,1\n")
    assert run_cli(["evaluate", str(trained_run), "--data-file", str(tmp_path / "f.csv"),
                    *extra]) == 2  # a usage error, as conflicting flags are
    assert capsys.readouterr().err == (f"imdbsent: error: --data-file scores a file of its own: "
                                       f"give it without {flag} (see imdbsent evaluate --help)\n")


# --- imdbsent report -------------------------------------------------------------------------

def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert data[-12:-4] == b"\x00\x00\x00\x00IEND"  # whole: it ends with its last chunk
    return struct.unpack(">II", data[16:24])


def test_report_writes_every_figure_and_a_page_that_needs_nothing_else(trained_run, small_runs,
                                                                       tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from imdbsent import report

    hostile = shutil.copytree(trained_run, tmp_path / HOSTILE)
    out = tmp_path / "out"
    assert run_cli(["report", str(hostile), str(small_runs["ensemble"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / f"{k}.png") for k in report.TITLES] + [str(out / "report.html")]
    for key in report.TITLES:
        assert _png_size(out / f"{key}.png") == (report.SIZE[0] * report.DPI,
                                                 report.SIZE[1] * report.DPI)
    page = (out / "report.html").read_text()
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script" not in page and "<link" not in page and "url(" not in page
    assert "href=" not in page
    sources = page.split('src="')[1:]
    assert len(sources) == len(report.TITLES)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert 'name = &quot;gru&quot;' in page and 'name = &quot;ensemble&quot;' in page  # configs
    assert "hidden_dim = " in page and "filter_sizes" not in page  # only what gru reads
    assert page.count("<td>finished</td>") == 2  # each run's status, as imdbsent runs says it
    assert page.count("<p>scored on ") == 2 and "[test]</p>" in page  # what the figures are of
    assert 'name="viewport"' in page and "ECE: expected calibration error" in page  # read on a
    # phone, and the columns said


def test_report_takes_the_prepared_data_from_data(trained_run, prepared_dir, tmp_path,
                                                  monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    _relative_run(trained_run, prepared_dir, tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    assert run_cli(["report", "project/run", "--out", "out"]) == 1
    assert "give --data with the prepared dataset" in capsys.readouterr().err
    assert run_cli(["report", "project/run", "--out", "out", "--data", "project/data"]) == 0
    assert (tmp_path / "out" / "report.html").is_file()


def test_a_report_of_runs_scored_on_different_test_sets_says_so(trained_run, prepared_dir,
                                                                 tmp_path, capsys):
    """Their figures share axes: a line on standard error and a note on the page say which
    run was scored on what; a copy of the same dataset is the same test set."""
    pytest.importorskip("matplotlib")
    from imdbsent.data import fingerprint_of

    folder = shutil.copytree(prepared_dir, tmp_path / "copy")
    run = shutil.copytree(trained_run, tmp_path / "run")
    (run / "config.toml").write_text(re.sub(r'(?m)^data = .*$', f'data = "{folder}"',
                                            (run / "config.toml").read_text()))
    assert run_cli(["report", str(trained_run), str(run), "--out", str(tmp_path / "a")]) == 0
    assert "different test sets" not in capsys.readouterr().err
    assert "Note:" not in (tmp_path / "a" / "report.html").read_text()
    manifest = folder / "manifest.json"  # the copy prepared again, and the run trained on it
    manifest.write_text(manifest.read_text().replace("{", '{"again": 1, ', 1))
    best = runs.load_checkpoint(run / runs.BEST)
    best.meta["data_fingerprint"] = fingerprint_of(folder)
    runs.save_checkpoint(run / runs.BEST, best)
    assert run_cli(["report", str(trained_run), str(run), "--out", str(tmp_path / "b")]) == 0
    said = (f"the runs were scored on different test sets, so their figures do not compare: "
            f"gru on {prepared_dir} [test]; run on {folder} [test] (--data DIR scores them all "
            "on one)")
    assert capsys.readouterr().err == f"{said}\n"
    assert f"Note: {html.escape(said)}." in (tmp_path / "b" / "report.html").read_text()


def test_report_on_one_run_writes_into_the_run(trained_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = shutil.copytree(trained_run, tmp_path / "run")
    assert run_cli(["report", str(run)]) == 0
    assert (run / "report" / "report.html").is_file()
    assert runs.describe(run)["status"] == "finished"  # the run itself untouched


@pytest.mark.parametrize("stop, status, word", [(KeyboardInterrupt, 130, "interrupted"),
                                               (Terminated, 143, "terminated")])
def test_a_report_stopped_part_way_says_what_it_left(trained_run, tmp_path, monkeypatch, capsys,
                                                     stop, status, word):
    pytest.importorskip("matplotlib")
    from imdbsent import report

    second = list(report.TITLES)[1]

    def stopped(*_args: object) -> None:
        raise stop()

    monkeypatch.setitem(report.DRAW, second, stopped)
    out = tmp_path / "r"
    assert run_cli(["report", str(trained_run), "--out", str(out)]) == status
    captured = capsys.readouterr()
    first = out / f"{list(report.TITLES)[0]}.png"
    assert captured.out.split() == [str(first)] and first.is_file()
    assert captured.err == (f"{word}: 1 of {len(report.TITLES)} figures written (above), "
                            f"no {out / 'report.html'}\n")
    assert sorted(p.name for p in out.iterdir()) == [first.name]  # no half-written file
    (out / "report.html").write_text("an earlier report")  # stopped again: that page stays
    assert run_cli(["report", str(trained_run), "--out", str(out)]) == status
    assert capsys.readouterr().err.endswith(f"{out / 'report.html'} as an earlier report left "
                                            "it\n")
    assert (out / "report.html").read_text() == "an earlier report"


def test_a_report_stopped_before_its_first_figure_leaves_no_folder_it_made(
        trained_run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from imdbsent import report

    def stopped(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setitem(report.DRAW, list(report.TITLES)[0], stopped)
    out = tmp_path / "new" / "r"
    assert run_cli(["report", str(trained_run), "--out", str(out)]) == 130
    assert not (tmp_path / "new").exists() and capsys.readouterr().out == ""
    (tmp_path / "mine").mkdir()  # a folder that was there stays, empty or not
    assert run_cli(["report", str(trained_run), "--out", str(tmp_path / "mine")]) == 130
    assert (tmp_path / "mine").is_dir()


def test_report_refuses_a_run_given_twice(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(trained_run.parent)
    assert run_cli(["report", str(trained_run), f"./{trained_run.name}", "--out",
                    str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err == (f"imdbsent: error: {trained_run}: given twice; each run "
                                       "is drawn once\n")
    assert not (tmp_path / "r").exists()


def test_report_refuses_an_out_folder_of_a_run_or_a_dataset(trained_run, prepared_dir, tmp_path,
                                                            capsys):
    for other in (trained_run, prepared_dir):
        before = sorted(p.name for p in other.iterdir())
        assert run_cli(["report", str(trained_run), "--out", str(other)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"imdbsent: error: --out {other} holds ") and err.endswith(
            "(a run or a prepared dataset): choose another --out\n")
        assert sorted(p.name for p in other.iterdir()) == before


def test_report_of_a_run_without_a_model_is_one_line(trained_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "unstarted"
    run.mkdir()
    shutil.copy(trained_run / "config.toml", run / "config.toml")
    assert run_cli(["report", str(run), "--out", str(tmp_path / "r")]) == 1
    assert "no trained model yet" in capsys.readouterr().err


def test_report_without_matplotlib_says_how_to_get_it(trained_run, tmp_path, monkeypatch,
                                                      capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert run_cli(["report", str(trained_run), "--out", str(tmp_path / "r")]) == 1
    assert "pip install 'imdbsent[report]'" in capsys.readouterr().err


def test_the_reliability_diagram_sizes_each_bin_by_its_reviews():
    pytest.importorskip("matplotlib")
    import numpy as np

    from imdbsent import engine, report
    probs = torch.tensor([0.05] * 90 + [0.55] * 9 + [0.95])
    labels = torch.tensor([0.0] * 90 + [1.0] * 5 + [0.0] * 4 + [1.0])
    metrics = engine.classification_metrics(torch.logit(probs), labels)
    scores = report.Scores("r", Path("r"), {}, probs.numpy(), labels.numpy(), metrics, "", "", "",
                           "lstm", "finished")
    fig = report._reliability(report._pyplot(), [scores], "t")
    (points,) = fig.axes[0].collections
    assert np.allclose(points.get_offsets(), [[0.05, 0.0], [0.55, 5 / 9], [0.95, 1.0]])
    areas = points.get_sizes() - 4
    assert np.allclose(areas / areas.sum(), [0.9, 0.09, 0.01])  # the bins' shares


def test_roc_and_pr_of_a_perfect_and_a_useless_ranking():
    from imdbsent import report

    labels = torch.tensor([0, 0, 1, 1], dtype=torch.float64).numpy()
    fpr, tpr = report.roc(torch.tensor([0.1, 0.2, 0.8, 0.9]).numpy(), labels)
    assert list(fpr) == [0, 0, 0, 0.5, 1] and list(tpr) == [0, 0.5, 1, 1, 1]
    fpr, tpr = report.roc(torch.tensor([0.5, 0.5, 0.5, 0.5]).numpy(), labels)
    assert list(fpr) == [0, 1] and list(tpr) == [0, 1]  # ties move together
    recall, precision = report.pr(torch.tensor([0.9, 0.8, 0.2, 0.1]).numpy(), labels)
    assert list(recall) == [0, 0, 0.5, 1] and list(precision) == [0, 0, 1 / 3, 0.5]


# --- imdbsent explain ------------------------------------------------------------------------

TEXT = "Café was great, a wonderful — naïve — film; the plot? Boring!"


def _explained(run: Path, text: str = TEXT) -> explain.Explanation:
    return explain.Explainer(Predictor(run)).explain(text)


def test_nblr_scores_are_its_logits_terms(small_runs):
    e = _explained(small_runs["nblr"], "great boring film great")
    predictor = Predictor(small_runs["nblr"])
    calibrated = predictor.model
    model = calibrated.model
    assert e.method.startswith("exact")
    assert e.reference + sum(t.score for t in e.tokens) == pytest.approx(e.logit, abs=1e-5)
    assert e.gap == pytest.approx(0.0, abs=1e-5)
    # by hand: each distinct n-gram's term (weight + W_ADJ) * ratio / R_ADJ, scaled by 1/T,
    # shared by its words and, for the repeated "great", by its two occurrences
    ids = predictor.tokenizer.encode("great boring film great").ids
    features = [(ids[i],) for i in range(4)] + [tuple(ids[i:i + 2]) for i in range(3)]
    hashed = explain.models.ngram_ids(torch.tensor([ids]), model.vocab_size, model.buckets,
                                      model.n)[0].tolist()
    term = {f: ((model.weight.weight[h, 0] + model.W_ADJ) * model.ratio[h] / model.R_ADJ).item()
            / calibrated.temperature for f, h in zip(features, hashed)}
    expected = [term[features[0]] / 2 + term[features[4]] / 2,  # great (1 of 2) + "great boring"
                term[features[1]] + term[features[4]] / 2 + term[features[5]] / 2,
                term[features[2]] + term[features[5]] / 2 + term[features[6]] / 2,
                term[features[3]] / 2 + term[features[6]] / 2]
    assert [t.score for t in e.tokens] == pytest.approx(expected, abs=1e-6)


def test_nbow_scores_are_its_mean_embeddings_terms(small_runs):
    predictor = Predictor(small_runs["nbow"])
    calibrated, text = predictor.model, "great boring film"
    model = calibrated.model
    e = explain.Explainer(predictor).explain(text)
    ids = torch.tensor([predictor.tokenizer.encode(text).ids])
    hashed = explain.models.ngram_ids(ids, model.vocab_size, model.buckets, model.n)[0]
    assert len(hashed) == 3 + 2 + 1  # words, then 2-grams, then the 3-gram
    with torch.no_grad():
        term = (model.embedding.weight[hashed] @ model.fc.weight[0]).double() / (6 + 2)
    term = (term / calibrated.temperature).tolist()
    w0, w1, w2, b01, b12, t012 = term
    expected = [w0 + b01 / 2 + t012 / 3, w1 + b01 / 2 + b12 / 2 + t012 / 3,
                w2 + b12 / 2 + t012 / 3]
    assert [t.score for t in e.tokens] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kind", ["gru", "cnn"])
def test_integrated_gradients_blame_the_cue_words(small_runs, trained_run, kind):
    e = _explained(trained_run if kind == "gru" else small_runs[kind], "great boring film")
    score = {t.token: t.score for t in e.tokens}
    # from a reference of every word `<unk>`, which the synthetic reviews never hold (its
    # embedding as initialised): where the cue words sit against it is the reference's doing,
    # their order the model's
    assert score["great"] > score["film"] > score["boring"]


@pytest.mark.parametrize("kind", ["cnn", "rnn", "gru"])
def test_integrated_gradients_start_from_the_same_text_all_unknown(small_runs, trained_run,
                                                                    kind):
    run = trained_run if kind == "gru" else small_runs[kind]
    e = _explained(run, "great qzxv boring film")
    unknown = Predictor(run).predict(["qzxa qzxb qzxc qzxd"])[0].prob_pos  # 4 unknown words
    assert e.reference == pytest.approx(math.log(unknown / (1 - unknown)), abs=1e-4)
    assert [t.unknown for t in e.tokens] == [False, True, False, False]
    assert e.tokens[1].score == 0.0 and all(t.score != 0.0 for t in e.tokens if not t.unknown)
    # one word, shorter than the CNN's widest filter (3): padded for it, its length its own
    e = _explained(run, "great")
    unknown = Predictor(run).predict(["qzxa"])[0].prob_pos
    assert e.reference == pytest.approx(math.log(unknown / (1 - unknown)), abs=1e-4)
    assert e.complete


class _Step(torch.nn.Module):
    """A logit that climbs by 8 as z = x1 + 2 x2, summed over the tokens, passes 1.5039: on the
    path to ids [2, 3] (x = [1, 0] and [0, 1], from <unk>'s [0, 0]) within a few thousandths
    of alpha = 0.5013 at `steepness` 2,000, between two float32 points at 1e9."""

    def __init__(self, steepness: float = 2000.0) -> None:
        super().__init__()
        self.steepness = steepness
        self.embedding = torch.nn.Embedding(4, 2, padding_idx=0)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.tensor([[0.0, 0], [0, 0], [1, 0], [0, 1]]))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        z = (self.embedding(ids) @ torch.tensor([1.0, 2.0])).sum(dim=1)
        return 8 * torch.sigmoid(self.steepness * (z - 1.5039))


def test_integrated_gradients_halve_the_path_where_equal_steps_miss():
    ids, lengths = torch.tensor([[2, 3]]), torch.tensor([2])
    change = _Step()(ids, lengths).item() - _Step()(torch.tensor([[1, 1]]), lengths).item()
    scores, reference, used = explain.integrated_gradients(_Step(), ids, steps=64, budget=64)
    assert used == 64 and abs(change - scores.sum().item()) > 1.0  # equal steps miss the climb
    scores, reference, used = explain.integrated_gradients(_Step(), ids, steps=64, budget=512)
    assert 64 < used <= 512
    # z depends on the tokens through x1 + 2 x2 alone: a third of the change is the first's
    assert scores.tolist() == pytest.approx([change / 3, 2 * change / 3],
                                            abs=explain.COMPLETENESS_TOLERANCE * 8)


def test_integrated_gradients_stop_halving_what_float32_cannot_resolve():
    ids = torch.tensor([[2, 3]])
    scores, _, used = explain.integrated_gradients(_Step(1e9), ids, steps=64, budget=512)
    assert used < 64 + 2 * 25  # about 14 halvings of the one interval, then it gives up
    assert abs(scores.sum().item()) < 8 - 1  # and says so through the gap it leaves
    with pytest.raises(ValueError, match="steps >= 2 and budget >= steps"):
        explain.integrated_gradients(_Step(), ids, steps=64, budget=32)


def test_words_past_max_length_score_nothing(small_runs):
    long_text = "great " * 4 + "boring " * 6
    e = _explained(small_runs["cnn"], long_text)  # max_length 6
    assert len(e.tokens) == 10 and all(t.score == 0.0 for t in e.tokens[6:])
    assert any(t.score != 0.0 for t in e.tokens[:6])
    assert [t.read for t in e.tokens] == [True] * 6 + [False] * 4 and e.unread == 4
    assert [t["read"] for t in explain.as_dict(e)["tokens"]][5:7] == [True, False]
    page = explain.to_html([e], "t")
    assert "the model read the first 6 of its 10 tokens" in page
    assert page.count("[the model read no further]") == 1  # before the first unread word
    assert page.index("[the model read no further]") > page.rindex("great")
    ensemble = _explained(small_runs["ensemble"], long_text)  # nblr reads all of it
    assert any(t.score != 0.0 for t in ensemble.tokens[6:])
    assert ensemble.complete and ensemble.unread == 0


@pytest.mark.parametrize("kind", ["nbow", "cnn", "rnn", "gru", "ensemble"])
def test_scores_add_up_to_the_logit(small_runs, trained_run, kind):
    run = trained_run if kind == "gru" else small_runs[kind]
    for text in (TEXT, "great", "boring dull film"):
        e = _explained(run, text)
        assert e.prob_pos == pytest.approx(Predictor(run).predict([text])[0].prob_pos,
                                           abs=1e-6)  # as predict scores it
        total = e.reference + sum(t.score for t in e.tokens)
        exact = kind == "nbow"
        bound = 1e-5 if exact else explain.COMPLETENESS_TOLERANCE * max(
            1.0, abs(e.logit - e.reference))
        assert abs(total - e.logit) <= bound and abs(e.gap) <= bound


def test_offsets_point_into_the_original_text(trained_run):
    e = _explained(trained_run)
    assert [TEXT[t.start:t.end] for t in e.tokens][:3] == ["Café", "was", "great"]
    for t in e.tokens:  # the vocabulary's spelling, or <unk> for a word out of it
        assert t.token == ("<unk>" if t.unknown else
                           unicodedata.normalize("NFKC", TEXT[t.start:t.end]).lower())
    unknown = {TEXT[t.start:t.end]: t.unknown for t in e.tokens}
    assert unknown["Café"] and unknown["naïve"] and not unknown["great"] and not unknown["plot"]
    assert "".join(p for p, _ in explain.pieces(e)) == TEXT


def test_the_terminal_sums_a_words_scores_and_the_page_warns_of_a_gap(capsys):
    from imdbsent import console
    text = "poor film, poor plot"
    tokens = [explain.Token(w, s, s + len(w), score) for w, s, score in
              [("poor", 0, -1.1), ("film", 5, 0.001), (",", 9, 0.3), ("poor", 11, -1.07),
               ("plot", 16, 0.5)]]
    e = explain.Explanation(text, 0.2, "neg", logit=-2.0, reference=-0.63, method="m",
                            gap=0.0, tokens=tokens)
    console.explanation(e)
    said = capsys.readouterr().out
    assert "towards pos: plot +0.50, \",\" +0.30; towards neg: poor -2.17 (2x) (from a reference " \
           "of -0.63; m)" in " ".join(said.split())  # film's +0.001 shows as nothing
    assert "These scores miss the logit" not in explain.to_html([e], "t")
    e.gap = 1.5
    assert not e.complete
    assert "These scores miss the logit by +1.500" in explain.to_html([e], "t")
    # a word's occurrences past max_length were never read: not counted; a reference that
    # rounds to zero shows no sign of its own
    e.tokens[3].read, e.tokens[4].read, e.reference = False, False, -0.001
    console.explanation(e)
    said = " ".join(capsys.readouterr().out.split())
    assert "towards neg: poor -1.10 (from a reference of +0.00; m;" in said
    assert explain.Explanation("", None, None).complete is None  # skipped: as JSON lines say


@pytest.mark.parametrize("colours", ["standard", "256", "truecolor"])
def test_explained_words_are_never_black_and_the_faint_keep_the_terminals_colour(
        monkeypatch, colours):
    """The weakest shade read as bold black on a 16-colour terminal: invisible on a dark one."""
    from rich.console import Console

    from imdbsent import console
    buffer = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buffer, force_terminal=True, width=200,
                                                color_system=colours))
    text = "great dull film"
    tokens = [explain.Token(w, s, s + len(w), score) for w, s, score in
              [("great", 0, 2.0), ("dull", 6, -0.2), ("film", 11, 0.05)]]
    console.explanation(explain.Explanation(text, 0.8, "pos", logit=1.5, reference=-0.3,
                                            method="m", gap=0.0, tokens=tokens))
    shown = buffer.getvalue()
    codes = re.findall(r"\x1b\[([0-9;]*)m(\w+)", shown.split("\n")[0])
    styled = {word: code for code, word in codes if code != "0"}
    assert set(styled) == {"great", "dull"}  # film moved it by 2.5% of great: unstyled
    assert not any(re.search(r"(^|;)30(;|$)|38;5;(0|16|22|52)(;|$)", c) for c in styled.values())


def test_an_explanation_leaves_other_threads_predictions_on_its_predictor_alone(trained_run):
    """Integrated gradients replace the embedding's output by a forward hook; on a Predictor
    shared by a server's threads, it replaced every thread's (wrong scores, or shape errors)."""
    import threading

    from imdbsent import models
    predictor = Predictor(trained_run)
    embedding = next(m for m in predictor.model.modules() if isinstance(m, torch.nn.Embedding))
    texts = ["great film", "awful boring mess of a film"]
    before = [p.prob_pos for p in predictor.predict(texts)]
    inside, leave, own = threading.Event(), threading.Event(), []

    def explaining() -> None:
        with models.output_hooked(embedding, torch.zeros_like):
            own.extend(p.prob_pos for p in predictor.predict(texts))  # the hook's thread: hooked
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=explaining)
    thread.start()
    try:
        assert inside.wait(30)
        assert [p.prob_pos for p in predictor.predict(texts)] == before
    finally:
        leave.set()
        thread.join()
    assert own[0] != before[0] and own[1] != before[1]  # zero embeddings score otherwise


def test_a_text_longer_than_predict_reads_is_said_cut(trained_run):
    long_text = "great film " * 10_000  # 110,000 characters, 20,000 tokens
    e = _explained(trained_run, long_text)
    assert e.tokens[-1].end <= MAX_CHARS < len(long_text)
    assert explain.unread_note(e).endswith(
        f"; only its first {MAX_CHARS:,} characters were tokenized, as predict's are")
    assert e.prob_pos == pytest.approx(Predictor(trained_run).predict([long_text])[0].prob_pos,
                                       abs=1e-6)


def test_an_ensemble_says_how_each_member_was_scored(small_runs):
    e = _explained(small_runs["ensemble"], "great " * 4 + "boring " * 6)  # cnn reads 6
    assert re.fullmatch(r"ensemble, members weighted by the stacker: integrated gradients "
                        r"\(\d+ points\) on its first 6 tokens; exact \(linear in its n-grams\)",
                        e.method), e.method


def test_an_interrupted_page_keeps_the_texts_explained(trained_run, monkeypatch, capsys):
    explained = explain.Explainer.explain

    def explain_until_the_third(self, raw):
        if raw == "third":
            raise KeyboardInterrupt  # Ctrl-C while the third text is explained
        return explained(self, raw)

    monkeypatch.setattr(explain.Explainer, "explain", explain_until_the_third)
    assert run_cli(["explain", "--run", str(trained_run), "--format", "html", "great film",
                    "dull", "third", "fourth"]) == 130
    page = capsys.readouterr().out
    assert page.count("<section>") == 2 and "fourth" not in page
    assert "Stopped early: the texts after the 2 above were not explained." in page
    assert page.rstrip().endswith("</body></html>")


def test_explain_takes_one_text_as_str(trained_run):
    explainer = explain.Explainer(Predictor(trained_run))
    with pytest.raises(TypeError, match="^Explainer.explain takes one text as str, not bytes: "
                                        "decode it first$"):
        explainer.explain(b"great film")
    with pytest.raises(TypeError, match="^Explainer.explain takes one text as str, not list$"):
        explainer.explain(["great film"])


def test_explainer_takes_a_predictor_and_says_so_when_given_a_path(trained_run):
    with pytest.raises(TypeError, match=r"^Explainer takes a Predictor, not PosixPath: "
                       r"Explainer\(Predictor\(run\)\)$"):
        explain.Explainer(trained_run)


def test_explain_cli_formats_and_escaping(trained_run, tmp_path, capsys):
    hostile = "great film <script>alert('x')</script>"
    assert run_cli(["explain", "--run", str(trained_run), hostile, "  ", TEXT]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # piped: jsonl
    assert [r["text"] for r in rows] == [hostile, "  ", TEXT]
    assert rows[1]["prob_pos"] is None and rows[1]["tokens"] == []  # blank: skipped
    assert all(hostile[t["start"]:t["end"]].lower() == t["token"] or t["unknown"]
               for t in rows[0]["tokens"])
    assert rows[0]["complete"] and rows[1]["complete"] is None
    assert rows[1]["skipped"] == "no words" and "skipped" not in rows[0]  # as predict marks it
    assert rows[0]["prob_pos"] == round(rows[0]["prob_pos"], 6)

    assert run_cli(["explain", "--run", str(trained_run), hostile, "--format", "html"]) == 0
    page = capsys.readouterr().out
    assert "<script" not in page and page.startswith("<!DOCTYPE")
    assert hostile in html.unescape(re.sub(r"<[^>]*>", "", page))  # shown, as text

    assert run_cli(["explain", "--run", str(trained_run), hostile, "--format", "terminal"]) == 0
    shown = capsys.readouterr().out
    assert hostile in shown and "towards pos" in shown

    assert run_cli(["explain", "--run", str(trained_run)]) == 2  # a usage error
    assert "nothing to explain" in capsys.readouterr().err
