"""The ensemble recipe end to end: members train into members/, stacking on validation,
and the run scores like any other."""

import json
import shutil

import pytest
import torch

from conftest import SMALL_GRU, run_cli, small_recipe
from imdbsent import runs

SMALL_NBLR = """
version = 1
data = "{data}"
[model]
name = "nblr"
ngram_buckets = 1000
ngrams = 2
[train]
epochs = 2
batch_size = 16
optimizer = "adam"
lr = 0.02
"""


@pytest.fixture(scope="module")
def ensemble_run(prepared_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ensemble")
    (folder / "gru.toml").write_text(SMALL_GRU.format(data=prepared_dir))
    (folder / "nblr.toml").write_text(SMALL_NBLR.format(data=prepared_dir))
    (folder / "ens.toml").write_text(
        f'data = "{prepared_dir}"\n[model]\nname = "ensemble"\n'
        f'members = ["{folder / "gru.toml"}", "{folder / "nblr.toml"}"]\n')
    run = folder / "run"
    assert run_cli(["train", "--config", str(folder / "ens.toml"), "--run-dir", str(run)]) == 0
    return run


def test_members_are_runs_of_their_own_and_the_ensemble_keeps_only_its_weights(ensemble_run):
    for name in ("gru", "nblr"):
        member = ensemble_run / "members" / name
        assert (member / "best.safetensors").is_file() and (member / "tokenizer.json").is_file()
        assert runs.read_metrics(member)[-1]["split"] == "test"
    ckpt = runs.load_checkpoint(ensemble_run / "best.safetensors")
    assert set(ckpt.weights) == {"weight", "bias"} and ckpt.meta["members"] == ["gru", "nblr"]
    stacking, test = runs.read_metrics(ensemble_run)
    assert stacking["members"] == ["gru", "nblr"] and len(stacking["weights"]) == 2
    # the members separate the synthetic validation split: Platt's targets keep the stacker
    # from sharpening their (already calibrated) logits without end
    assert sum(stacking["weights"]) > 0 and max(map(abs, stacking["weights"])) < 2
    assert test["split"] == "test" and test["test_acc"] > 0.9  # the synthetic data is easy
    best_member = max(runs.read_metrics(ensemble_run / "members" / n)[-1]["test_acc"]
                      for n in ("gru", "nblr"))
    assert test["test_acc"] >= best_member - 0.02


def test_evaluate_and_predict_use_the_ensemble(ensemble_run, capsys):
    test = runs.read_metrics(ensemble_run)[-1]
    capsys.readouterr()
    assert run_cli(["evaluate", str(ensemble_run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(test["test_acc"], abs=1e-6)
    assert run_cli(["predict", "--run", str(ensemble_run), "--format", "tsv",
                    "great superb wonderful", "awful boring terrible"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == ["pos", "neg"]


def _copy(run, tmp_path):
    """A copy of the shared run, for a test that changes it (so tests run in any order)."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_resume_keeps_finished_members(ensemble_run, tmp_path):
    run = _copy(ensemble_run, tmp_path)
    before = {n: (run / "members" / n / "metrics.jsonl").read_bytes() for n in ("gru", "nblr")}
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["split"] == "test"
    (run / "metrics.jsonl").write_text("".join(lines[:-1]))  # as if killed in its own test
    assert run_cli(["train", "--resume", str(run)]) == 0
    assert runs.tested(run)
    for name, metrics in before.items():
        assert (run / "members" / name / "metrics.jsonl").read_bytes() == metrics


def test_training_overrides_and_a_second_run_into_it_are_refused(ensemble_run, capsys):
    cfg = str(ensemble_run.parent / "ens.toml")
    assert run_cli(["train", "--config", cfg, "--epochs", "3", "--lr", "0.1",
                    "--model", "ensemble"]) == 2  # flags that conflict with the recipe
    assert "--epochs, --lr, --model: an ensemble trains each member by its own recipe" in \
        capsys.readouterr().err
    assert run_cli(["train", "--config", cfg, "--run-dir", str(ensemble_run)]) == 1
    assert "already holds a finished run: choose another --run-dir\n" in capsys.readouterr().err


def test_a_seed_given_to_an_ensemble_trains_every_member_with_it(ensemble_run, tmp_path,
                                                                  capsys):
    from imdbsent import runs
    run = tmp_path / "seeded"
    assert run_cli(["train", "--config", str(ensemble_run.parent / "ens.toml"), "--seed", "7",
                    "--run-dir", str(run)]) == 0
    labels = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith(("Member: ", "Ensemble: ", "Test Loss: "))]
    assert [line.split(":")[0] for line in labels] == [  # whose each test line is, piped too
        "Member", "Test Loss", "Member", "Test Loss", "Ensemble", "Test Loss"]
    assert labels[0] == "Member: gru" and labels[2] == "Member: nblr"
    assert runs.load_config(run).train.seed == 7
    for name in ("gru", "nblr"):
        assert runs.load_config(run / "members" / name).train.seed == 7
        assert runs.load_config(ensemble_run / "members" / name).train.seed == 1234
    seeded = (run / "members" / "gru" / "metrics.jsonl").read_text()
    assert seeded != (ensemble_run / "members" / "gru" / "metrics.jsonl").read_text()


def test_predict_on_an_ensemble_stopped_among_its_members_says_to_resume(ensemble_run, tmp_path,
                                                                         capsys):
    run = _copy(ensemble_run, tmp_path)
    (run / "best.safetensors").unlink()  # as when stopped before its stacker was fitted,
    (run / "metrics.jsonl").unlink()  # which writes the ensemble's own lines
    assert run_cli(["predict", "--run", str(run), "great film"]) == 1
    assert capsys.readouterr().err == (f"imdbsent: error: {run} has not finished training: it "
                                       "has no best model yet; resume it with imdbsent train "
                                       f"--resume {run}\n")


def test_resume_finishes_an_unfinished_member_and_only_it(ensemble_run, tmp_path):
    run = _copy(ensemble_run, tmp_path)
    gru, nblr = (run / "members" / n / "metrics.jsonl" for n in ("gru", "nblr"))
    gru_before = gru.read_bytes()
    lines = nblr.read_text().splitlines()
    nblr.write_text("\n".join(lines[:-1]) + "\n")  # as if stopped before its test pass
    config_before = (run / "config.toml").read_bytes()
    assert run_cli(["train", "--resume", str(run), "--seed", "99"]) == 2  # its members' seed
    assert (run / "config.toml").read_bytes() == config_before
    assert run_cli(["train", "--resume", str(run)]) == 0
    assert gru.read_bytes() == gru_before
    again = nblr.read_text().splitlines()
    assert len(again) == len(lines) and json.loads(again[-1])["split"] == "test"


def test_resume_trains_a_member_whose_run_was_removed_and_stacks_again(ensemble_run, tmp_path):
    run = _copy(ensemble_run, tmp_path)
    gru_before = (run / "members" / "gru" / "metrics.jsonl").read_bytes()
    shutil.rmtree(run / "members" / "nblr")  # to train it anew, e.g. after its recipe changed
    assert run_cli(["train", "--resume", str(run)]) == 0
    assert (run / "members" / "gru" / "metrics.jsonl").read_bytes() == gru_before
    assert runs.tested(run / "members" / "nblr")
    stacked = [r for r in runs.read_metrics(run) if "members" in r]
    assert len(stacked) == 2 and stacked[-1]["members"] == ["gru", "nblr"]
    assert runs.tested(run)


def test_resuming_a_finished_ensemble_is_refused(ensemble_run, tmp_path, capsys):
    run = _copy(ensemble_run, tmp_path)
    before = (run / "metrics.jsonl").read_bytes()
    assert run_cli(["train", "--resume", str(run)]) == 1
    assert capsys.readouterr().err == (f"imdbsent: error: {run} has finished: its members were "
                                       "trained and it was tested\n")
    assert (run / "metrics.jsonl").read_bytes() == before


def test_members_with_alike_region_embeddings_learn_them_once(prepared_dir, tmp_path, capsys):
    """A region CNN beside a GRU with the same region embeddings (size, dimensions, passes,
    seed) takes the GRU's instead of spending the same pass again; one of other dimensions
    learns its own."""
    regions = "region_size = 3\nregion_dim = 8\n"
    recipes = {"gru": SMALL_GRU.replace('pooling = "max"', 'pooling = "max"\n' + regions),
               "rcnn": small_recipe("rcnn", regions + "dropout = 0.5"),
               "wide": small_recipe("rcnn", regions.replace("8", "6"))}
    for name, text in recipes.items():
        (tmp_path / f"{name}.toml").write_text(text.format(data=prepared_dir)
                                               .replace("epochs = 3", "epochs = 1"))
    members = ", ".join(f'"{tmp_path / name}.toml"' for name in recipes)
    (tmp_path / "ens.toml").write_text(
        f'data = "{prepared_dir}"\n[model]\nname = "ensemble"\nmembers = [{members}]\n')
    run = tmp_path / "run"
    capsys.readouterr()
    assert run_cli(["train", "--config", str(tmp_path / "ens.toml"), "--run-dir", str(run)]) == 0
    assert capsys.readouterr().err.count("region embeddings learned in") == 2  # gru's, wide's
    table = {n: runs.load_checkpoint(run / "members" / n / runs.BEST).weights["regions.table"]
             for n in recipes}
    assert torch.equal(table["rcnn"], table["gru"]) and table["gru"].abs().sum() > 0
    assert table["wide"].shape[1] == 6
    for name, learned in (("gru", True), ("rcnn", False), ("wide", True)):
        first = runs.epoch_records(run / "members" / name)[0]
        assert ("regions_seconds" in first) == learned  # counted once, where they were learned
    capsys.readouterr()
    assert run_cli(["explain", "--run", str(run / "members" / "rcnn"), "a great film"]) == 0
    assert json.loads(capsys.readouterr().out)["complete"]  # the region CNN explained, in full
    # the region CNN trained as it would alone, where it learns them itself: learning them
    # draws nothing from torch's global generator, which dropout and the batches' order use
    alone = tmp_path / "alone"
    assert run_cli(["train", "--config", str(tmp_path / "rcnn.toml"), "--run-dir", str(alone)]) == 0
    shared, own = (runs.epoch_records(r)[0] for r in (run / "members" / "rcnn", alone))
    assert "regions_seconds" in own and shared["train_loss"] == own["train_loss"]
    assert shared["valid_loss"] == own["valid_loss"]
    records = runs.epoch_records(run)  # the training's time counts each pass once
    assert runs.training_seconds(run) == sum(r["seconds"] + r.get("regions_seconds", 0.0)
                                             for r in records)
    shutil.rmtree(run / "members" / "gru")  # trained again on the region CNN's embeddings
    assert run_cli(["train", "--resume", str(run)]) == 0
    assert "regions_seconds" not in runs.epoch_records(run / "members" / "gru")[0]
    assert runs.training_seconds(run) is None  # the pass that learned them is in no record
    assert runs.list_runs(run)[0]["train_seconds"] is None
