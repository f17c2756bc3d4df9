"""Moving averages of the weights (`train.averages`): kept after every step, validated and
written at their best, resumed exactly, and stacked by an ensemble as inputs of their own."""

import json

import pytest
import torch
from torch import nn

from conftest import SMALL_GRU, run_cli
from imdbsent import config, data, engine, runs
from imdbsent.averages import Averages
from imdbsent.data import Batches

AVERAGED = SMALL_GRU.replace('lr = 0.01', 'lr = 0.01\naverages = [0.5, 0.9]')


def _train(prepared_dir, folder, recipe: str, *flags: str) -> int:
    (folder / "recipe.toml").write_text(recipe.format(data=prepared_dir))
    return run_cli(["train", "--config", str(folder / "recipe.toml"), "--run-dir",
                    str(folder / "run"), *flags])


@pytest.fixture(scope="module")
def averaged_run(prepared_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("averaged")
    assert _train(prepared_dir, folder, AVERAGED) == 0
    return folder / "run"


def test_an_average_follows_every_step_with_its_decay():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    averages = Averages(model, [0.9], optimizer)
    expected = None
    for step in range(5):
        optimizer.zero_grad()
        model(torch.full((1, 2), float(step + 1))).sum().backward()
        optimizer.step()
        now = model.weight.detach().clone()
        expected = now if expected is None else 0.9 * expected + 0.1 * now
    assert torch.allclose(averages.weights("0.9")["weight"], expected)
    assert not torch.allclose(expected, model.weight)


def test_each_average_is_validated_and_written_at_its_best(averaged_run, prepared_dir, capsys):
    records = runs.epoch_records(averaged_run)
    assert all(set(r["averages"]) == {"0.5", "0.9"} for r in records)
    prepared = data.load_prepared(prepared_dir)
    cfg = runs.load_config(averaged_run)
    model = engine.load_best(averaged_run, cfg, prepared.tokenizer.get_vocab_size(),
                             runs.average_file("0.9"))
    ckpt = runs.load_checkpoint(averaged_run / runs.average_file("0.9"))
    best = min(records, key=lambda r: r["averages"]["0.9"]["valid_loss"])
    assert ckpt.meta["average"] == "0.9" and ckpt.meta["epoch"] == best["epoch"]
    assert "temperature" in ckpt.meta  # calibrated on validation, as `best` is
    # the file holds the weights that were validated: unscaled, they score that loss again
    valid = Batches(prepared.split("valid"), 16)
    loss, _ = engine.evaluate(model.model, valid, nn.BCEWithLogitsLoss())
    assert loss == pytest.approx(best["averages"]["0.9"]["valid_loss"], rel=1e-5)
    trained = runs.load_checkpoint(averaged_run / runs.BEST).weights
    assert any(not torch.equal(ckpt.weights[k], trained[k]) for k in trained)
    assert runs.read_metrics(averaged_run)[-1]["split"] == "test"  # the best model's test


def test_training_prints_each_average_beside_the_epoch(prepared_dir, tmp_path, capsys):
    assert _train(prepared_dir, tmp_path, AVERAGED.replace("epochs = 3", "epochs = 1")) == 0
    out = capsys.readouterr().out
    assert out.count("\t Avg. 0.5: Val. Loss: ") == 1 and out.count("\t Avg. 0.9: ") == 1


def test_a_resumed_run_continues_its_averages_exactly(averaged_run, prepared_dir, tmp_path):
    assert _train(prepared_dir, tmp_path, AVERAGED, "--epochs", "2") == 0
    assert run_cli(["train", "--resume", str(tmp_path / "run"), "--epochs", "3"]) == 0

    def epochs(run):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in runs.epoch_records(run)]

    assert epochs(tmp_path / "run") == epochs(averaged_run)
    for name in ("0.5", "0.9"):
        resumed, straight = (runs.load_checkpoint(r / runs.average_file(name)).weights
                             for r in (tmp_path / "run", averaged_run))
        assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_a_last_checkpoint_without_the_averages_cannot_be_resumed(averaged_run, tmp_path,
                                                                  capsys):
    run = tmp_path / "copy"
    run.mkdir()
    for name in (runs.CONFIG, "tokenizer.json", runs.METRICS, runs.BEST):
        (run / name).write_bytes((averaged_run / name).read_bytes())
    last = runs.load_checkpoint(averaged_run / runs.LAST)
    last.averages = None
    runs.save_checkpoint(run / runs.LAST, last)
    before = (run / runs.METRICS).read_bytes()
    capsys.readouterr()
    assert run_cli(["train", "--resume", str(run), "--epochs", "4"]) == 1
    err = capsys.readouterr().err
    assert err == (f"imdbsent: error: {run / runs.LAST}: holds no moving average of decay 0.5, "
                   "which the run's config keeps; it cannot be resumed\n")
    assert (run / runs.METRICS).read_bytes() == before


@pytest.mark.parametrize("averages", ["[1.0]", "[0.0]", "[0.9, 0.9]"])
def test_decays_out_of_range_or_twice_are_refused(tmp_path, averages):
    path = tmp_path / "bad.toml"
    path.write_text(f"[train]\naverages = {averages}\n")
    with pytest.raises(config.UserError) as caught:
        config.load(path)
    assert str(caught.value) == (f"{path}: train.averages: each decay must be in (0, 1), and "
                                 "named once")


def test_an_ensemble_stacks_a_members_averages_in_its_place(prepared_dir, tmp_path, capsys):
    (tmp_path / "gru.toml").write_text(AVERAGED.format(data=prepared_dir)
                                       .replace("epochs = 3", "epochs = 2"))
    (tmp_path / "nbow.toml").write_text(
        SMALL_GRU.format(data=prepared_dir).replace('name = "gru"', 'name = "nbow"')
        .replace("hidden_dim = 16\nbidirectional = true\npooling = \"max\"\n", ""))
    (tmp_path / "ens.toml").write_text(
        f'data = "{prepared_dir}"\n[model]\nname = "ensemble"\n'
        f'members = ["{tmp_path / "gru.toml"}", "{tmp_path / "nbow.toml"}"]\n')
    run = tmp_path / "run"
    assert run_cli(["train", "--config", str(tmp_path / "ens.toml"), "--run-dir", str(run)]) == 0
    columns = ["gru@0.5", "gru@0.9", "nbow"]  # the averages in the GRU's place
    assert runs.checkpoint_meta(run / runs.BEST)["members"] == columns
    assert len(runs.read_metrics(run)[0]["weights"]) == 3
    capsys.readouterr()
    assert run_cli(["predict", "--run", str(run), "a great film", "an awful mess"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert run_cli(["explain", "--run", str(run), "a great film"]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert explained["method"].count("integrated gradients") == 2  # the GRU's two averages
    assert run_cli(["runs", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "finished"
    (run / "members" / "gru" / runs.average_file("0.9")).unlink()  # a stacked input lost
    assert run_cli(["runs", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)[0]["status"]
    assert status.startswith("broken: ") and runs.average_file("0.9") in status
    assert run_cli(["predict", "--run", str(run), "a great film"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and runs.average_file("0.9") in err


def test_a_member_named_with_an_at_sign_is_refused(prepared_dir, tmp_path):
    (tmp_path / "a@b.toml").write_text(SMALL_GRU.format(data=prepared_dir))
    (tmp_path / "ens.toml").write_text(
        f'data = "{prepared_dir}"\n[model]\nname = "ensemble"\n'
        f'members = ["{tmp_path / "a@b.toml"}", "nblr"]\n')
    with pytest.raises(config.UserError, match="a member's name has no '@'"):
        config.member_names(config.load(tmp_path / "ens.toml"))
