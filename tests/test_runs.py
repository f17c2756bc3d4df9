import json
import os
import pickle

import pytest
import torch

from conftest import hold_lock
from imdbsent import runs, text
from imdbsent.errors import UserError


def _ckpt(with_optimizer=False):
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    return model, runs.Checkpoint(
        model.state_dict(), {"epoch": 2, "vocab_size": 3, "metrics": {"valid_loss": 0.5}},
        optimizer=opt.state_dict() if with_optimizer else None,
        rng=torch.get_rng_state() if with_optimizer else None)


def test_checkpoint_round_trip_with_optimizer_and_rng(tmp_path):
    model, ckpt = _ckpt(with_optimizer=True)
    runs.save_checkpoint(tmp_path / "last.safetensors", ckpt)
    back = runs.load_checkpoint(tmp_path / "last.safetensors")
    assert back.meta["epoch"] == 2 and back.meta["metrics"] == {"valid_loss": 0.5}
    assert all(torch.equal(back.weights[k], v) for k, v in model.state_dict().items())
    assert torch.equal(back.rng, ckpt.rng)
    fresh = torch.optim.Adam(model.parameters())
    fresh.load_state_dict(back.optimizer)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(fresh.state_dict()["state"][0][key], ckpt.optimizer["state"][0][key])


def test_checkpoint_weights_only_has_no_optimizer(tmp_path):
    _, ckpt = _ckpt()
    runs.save_checkpoint(tmp_path / "best.safetensors", ckpt)
    back = runs.load_checkpoint(tmp_path / "best.safetensors")
    assert back.optimizer is None and set(back.weights) == {"weight", "bias"}


def test_truncated_checkpoint_is_a_clear_error_and_left_alone(tmp_path):
    _, ckpt = _ckpt()
    path = tmp_path / "best.safetensors"
    runs.save_checkpoint(path, ckpt)
    path.write_bytes(path.read_bytes()[:-20])
    before = path.read_bytes()
    with pytest.raises(UserError, match="truncated or corrupted"):
        runs.load_checkpoint(path)
    assert path.read_bytes() == before


def test_checkpoint_from_a_newer_format_is_refused(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "best.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"imdbsent": json.dumps({"format": 99})})
    with pytest.raises(UserError, match="newer than this imdbsent"):
        runs.load_checkpoint(path)


def test_a_pickle_planted_as_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "best.safetensors"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UserError):
        runs.load_checkpoint(path)
    assert not marker.exists()
    torch.save({"x": Payload()}, tmp_path / "best.pt")  # a torch.load-style payload as well
    path.write_bytes((tmp_path / "best.pt").read_bytes())
    with pytest.raises(UserError):
        runs.load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("header", ["[1, 2]", '"text"', "7"])
def test_checkpoint_whose_metadata_is_not_an_object_is_a_clear_error(tmp_path, header):
    from safetensors.torch import save_file
    path = tmp_path / "best.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"imdbsent": header})
    with pytest.raises(UserError, match="not an imdbsent checkpoint"):
        runs.load_checkpoint(path)


@pytest.mark.parametrize("breakage", [
    lambda m: m.pop("param_groups"),
    lambda m: m.update(param_groups="adam"),
    lambda m: m.update(scalars=[1, 2]),
    lambda m: m["scalars"].update({"x": 1}),
], ids=["no-groups", "groups-not-a-list", "scalars-not-an-object", "bad-scalar-name"])
def test_checkpoint_with_malformed_optimizer_metadata_is_a_clear_error(tmp_path, breakage):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    _, ckpt = _ckpt(with_optimizer=True)
    path = tmp_path / "last.safetensors"
    runs.save_checkpoint(path, ckpt)
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["imdbsent"])
    breakage(meta["optimizer"])
    save_file(load_file(str(path)), str(path), metadata={"imdbsent": json.dumps(meta)})
    with pytest.raises(UserError, match="malformed optimizer state"):
        runs.load_checkpoint(path)


def test_reconcile_metrics_follows_the_last_checkpoint(tmp_path):
    records = [{"epoch": 1, "valid_loss": 0.6}, {"epoch": 2, "valid_loss": 0.5}]
    runs.append_metrics(tmp_path, records[0])
    runs.reconcile_metrics(tmp_path, records[1])  # killed after `last` of epoch 2, before its line
    assert runs.read_metrics(tmp_path) == records
    runs.reconcile_metrics(tmp_path, records[1])  # agreeing already: unchanged
    assert runs.read_metrics(tmp_path) == records
    runs.append_metrics(tmp_path, {"epoch": 3})  # a line ahead of the checkpoint is dropped
    runs.reconcile_metrics(tmp_path, records[1])
    assert runs.read_metrics(tmp_path) == records


def test_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path):
    with runs.RunLock(tmp_path):
        with pytest.raises(UserError, match="in use by another imdbsent train"):
            with runs.RunLock(tmp_path):
                pass
    with runs.RunLock(tmp_path):  # released: can be taken again
        pass


def test_lock_of_a_killed_process_is_not_held_forever(tmp_path):
    proc = hold_lock(tmp_path)
    with pytest.raises(UserError):
        runs.RunLock(tmp_path).__enter__()
    proc.kill()
    proc.wait()
    with runs.RunLock(tmp_path):
        pass


def test_latest_run_passes_over_a_run_still_training_interrupted_or_broken_and_says_so(
        tmp_path):
    tokenizer = text.fit_tokenizer(["a few words"])
    for name in ("old", "new"):
        (tmp_path / name).mkdir()
        (tmp_path / name / runs.CONFIG).write_text("version = 1\n")
        runs.save_checkpoint(tmp_path / name / runs.BEST, _ckpt()[1])  # a readable header
        (tmp_path / name / runs.METRICS).write_text('{"split": "test", "test_acc": 0.9}\n')
        text.save(tokenizer, tmp_path / name / runs.TOKENIZER)
    os.utime(tmp_path / "old" / runs.CONFIG, (1, 1))
    said = []
    assert runs.latest_run(tmp_path, report=said.append).name == "new"
    assert said == []
    (tmp_path / "new" / runs.TOKENIZER).write_text("not json")  # `imdbsent runs`: broken
    assert runs.latest_run(tmp_path, report=said.append).name == "old"
    assert said == [f"passing over {tmp_path / 'new'} (broken); using {tmp_path / 'old'}"]
    text.save(tokenizer, tmp_path / "new" / runs.TOKENIZER)
    said.clear()
    (tmp_path / "new" / runs.METRICS).write_text('{"epoch": 1, "valid_loss": 0.5}\n')
    assert runs.latest_run(tmp_path, report=said.append).name == "old"  # new: interrupted
    assert said == [f"passing over {tmp_path / 'new'} (interrupted); using {tmp_path / 'old'}"]
    (tmp_path / "old" / runs.METRICS).unlink()  # neither finished: the newest, with a word
    assert runs.latest_run(tmp_path, report=said.append).name == "new"
    assert said[-1] == (f"{tmp_path / 'new'} has not finished (interrupted): using its best "
                        "checkpoint so far, neither calibrated nor tested")
    (tmp_path / "old" / runs.METRICS).write_text('{"split": "test", "test_acc": 0.9}\n')
    said.clear()
    proc = hold_lock(tmp_path / "new")
    try:
        assert runs.latest_run(tmp_path, report=said.append).name == "old"
        assert said == [f"passing over {tmp_path / 'new'} (still training); using "
                        f"{tmp_path / 'old'}"]
        blocker = hold_lock(tmp_path / "old")
        try:  # every run busy: the newest, with a word
            assert runs.latest_run(tmp_path, report=said.append).name == "new"
            assert "still training: using its best checkpoint so far" in said[-1]
        finally:
            blocker.kill()
            blocker.wait()
    finally:
        proc.kill()
        proc.wait()


def test_latest_run_and_missing_runs(tmp_path):
    with pytest.raises(UserError, match="no runs in"):
        runs.latest_run(tmp_path)
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / runs.CONFIG).write_text("version = 1\n")
    for name in ("a", "b"):
        (tmp_path / name / "best.safetensors").write_bytes(b"")
    os.utime(tmp_path / "a" / runs.CONFIG, (1, 1))
    assert runs.latest_run(tmp_path).name == "b"  # c is newer but has no model (failed early)
    with pytest.raises(UserError, match="no such run directory"):
        runs.check_run(tmp_path / "zzz")


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "cnn", "nbow", "nblr"])
def test_every_model_round_trips_through_a_checkpoint(tmp_path, name):
    from imdbsent import models
    from imdbsent.config import ModelConfig
    cfg = ModelConfig(name=name, embedding_dim=4, hidden_dim=3, num_filters=2, ngram_buckets=20,
                      bidirectional=True)
    model = models.build(cfg, 30)
    runs.save_checkpoint(tmp_path / "m.safetensors", runs.Checkpoint(model.state_dict(), {}))
    again = models.build(cfg, 30)
    again.load_state_dict(runs.load_checkpoint(tmp_path / "m.safetensors").weights)
    text = torch.tensor([[3, 4, 5, 6, 7]])
    torch.testing.assert_close(again.eval()(text, torch.tensor([5])),
                               model.eval()(text, torch.tensor([5])))
