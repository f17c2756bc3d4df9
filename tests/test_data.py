import json

import numpy as np
import pytest

from imdbsent import data
from imdbsent.errors import UserError


def test_split_is_stratified_seeded_and_sized(source_dir):
    from imdbsent.sources import load_source
    train = load_source(str(source_dir)).splits["train"]
    a_train, a_valid = data.split(train, 0.7, 1234)
    b_train, b_valid = data.split(train, 0.7, 1234)
    assert (len(a_train), len(a_valid)) == (280, 120)
    assert a_valid["text"] == b_valid["text"]
    assert sorted(a_valid["label"]).count(1) == 60  # half positive, as the whole
    _, c_valid = data.split(train, 0.7, 99)
    assert c_valid["text"] != a_valid["text"]
    assert len(set(train["text"])) == len(train)  # so no review can sit on both sides:
    assert not set(a_train["text"]) & set(a_valid["text"])


def test_prepared_folder_has_splits_tokenizer_and_manifest(prepared_dir):
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    assert manifest["splits"]["train"] == {"total": 280, "neg": 140, "pos": 140}
    assert manifest["splits"]["valid"]["total"] == 120
    assert manifest["splits"]["test"]["total"] == 200
    assert manifest["splits"]["unsupervised"] == {"total": 100, "unlabeled": 100}
    assert manifest["args"]["seed"] == 1234 and manifest["args"]["split_ratio"] == 0.7
    assert manifest["source_fingerprint"].startswith("sha256:")
    for key in ("version", "created", "vocab_size"):
        assert key in manifest
    p = data.load_prepared(prepared_dir)
    assert p.tokenizer.get_vocab_size() == manifest["vocab_size"]
    train = p.split("train")
    assert len(train) == 280 and train.offsets[-1] == len(train.flat)


def test_vocabulary_comes_from_train_only(source_dir, tmp_path):
    # A word only in the test split must not enter the vocabulary.
    import pyarrow.parquet as pq

    from conftest import write_parquet
    folder = tmp_path / "src"
    folder.mkdir()
    train = pq.read_table(source_dir / "train.parquet").to_pydict()
    write_parquet(folder / "train.parquet", train["text"], train["label"])
    write_parquet(folder / "test.parquet", ["zyzzyva appears only here"], [1])
    data.prepare(data.PrepareArgs(source=str(folder)), tmp_path / "out")
    assert "zyzzyva" not in data.load_prepared(tmp_path / "out").tokenizer.get_vocab()


def test_prepare_reuses_then_rebuilds_on_changed_arguments(source_dir, tmp_path):
    out = tmp_path / "p"
    args = data.PrepareArgs(source=str(source_dir), unsupervised=False)
    first, built = data.prepare(args, out)
    assert built
    again, built = data.prepare(args, out)
    assert not built and again == first
    _, built = data.prepare(args, out, force=True)
    assert built
    changed, built = data.prepare(data.PrepareArgs(source=str(source_dir), unsupervised=False,
                                                   max_vocab=5), out)
    assert built and changed["vocab_size"] == 7


@pytest.mark.parametrize("field, value", [("split_ratio", 1.0), ("max_vocab", 0), ("min_freq", 0)])
def test_prepare_rejects_bad_arguments(tmp_path, field, value):
    with pytest.raises(UserError, match=field.replace("_", "-")):
        data.prepare(data.PrepareArgs(source="x", **{field: value}), tmp_path)


def test_missing_prepared_dataset_says_run_prepare(tmp_path):
    with pytest.raises(UserError, match="run imdbsent prepare"):
        data.load_prepared(tmp_path)


def _toy(lengths):
    ids = [list(range(2, 2 + n)) for n in lengths]
    return data.Encoded.from_lists(ids, [i % 2 for i in range(len(lengths))])


def test_make_batch_pads_with_zero_and_keeps_true_lengths():
    enc = _toy([3, 1, 0])
    b = data.make_batch(enc, np.array([0, 1, 2]))
    assert b.text.tolist() == [[2, 3, 4], [2, 0, 0], [0, 0, 0]]
    assert b.lengths.tolist() == [3, 1, 1]  # an empty review is one <pad>
    assert b.label.tolist() == [0.0, 1.0, 0.0]
    cut = data.make_batch(enc, np.array([0]), max_length=2)
    assert cut.text.tolist() == [[2, 3]] and cut.lengths.tolist() == [2]


def test_training_batches_cover_every_example_once_bucketed_and_seeded():
    rng = np.random.default_rng(0)
    enc = _toy(rng.integers(1, 200, size=1000).tolist())
    batches = data.Batches(enc, 10, shuffle=True, seed=7)
    order = batches.order()
    assert sorted(np.concatenate(order).tolist()) == list(range(1000))
    assert len(order) == len(batches) == 100
    padded = sum(len(idx) * enc.lengths[idx].max() for idx in order)
    assert padded < 1.1 * enc.lengths.sum()  # bucketing keeps padding small
    again = data.Batches(enc, 10, shuffle=True, seed=7)
    assert all((a == b).all() for a, b in zip(order, again.order()))
    again.epoch = 1
    assert any((a != b).any() for a, b in zip(order, again.order()))


def test_eval_batches_are_sorted_by_length():
    enc = _toy([5, 1, 3, 2])
    lens = [enc.lengths[idx].tolist() for idx in data.Batches(enc, 2).order()]
    assert lens == [[1, 2], [3, 5]]
