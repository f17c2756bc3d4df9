import dataclasses
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import hold_lock
from imdbsent import data
from imdbsent.config import HUB_DEFAULT
from imdbsent.errors import BadValue, UserError


def test_split_is_stratified_seeded_and_sized(source_dir):
    import datasets

    from imdbsent.sources import load_source
    train = load_source(str(source_dir)).splits["train"].dataset()
    a_train, a_valid, moved = data.split(train, 0.7, 1234)
    b_train, b_valid, _ = data.split(train, 0.7, 1234)
    assert (len(a_train), len(a_valid), moved) == (280, 120, 0)
    assert a_valid["text"] == b_valid["text"]
    assert sorted(a_valid["label"]).count(1) == 60  # half positive, as the whole
    _, c_valid, _ = data.split(train, 0.7, 99)
    assert c_valid["text"] != a_valid["text"]
    assert len(set(train["text"])) == len(train)  # so no review can sit on both sides:
    assert not set(a_train["text"]) & set(a_valid["text"])
    # without duplicates, exactly datasets' seeded stratified split, rows in its order
    labeled = train.cast_column("label", datasets.ClassLabel(names=["neg", "pos"]))
    plain = labeled.train_test_split(train_size=0.7, seed=1234, stratify_by_column="label")
    assert a_train["text"] == plain["train"]["text"] and a_valid["text"] == plain["test"]["text"]
    assert a_train["label"] == plain["train"]["label"]


def _with_duplicates():
    """60 distinct reviews, then copies: 10 reviews twice more, 5 of them with the other label
    (IMDB's duplicates are not always labeled alike), 4 reviews five times more."""
    import datasets

    from conftest import make_reviews
    texts, labels = make_reviews(60, seed=11)
    for i in range(10):
        texts += [texts[i]] * 2
        labels += [labels[i], 1 - labels[i] if i < 5 else labels[i]]
    for i in range(10, 14):
        texts += [texts[i]] * 5
        labels += [labels[i]] * 5
    return datasets.Dataset.from_dict({"text": texts, "label": labels})


@pytest.mark.parametrize("seed", [1234, 7, 99])
def test_duplicate_reviews_never_sit_on_both_sides_of_the_split(seed):
    import datasets
    ds = _with_duplicates()
    labeled = ds.cast_column("label", datasets.ClassLabel(names=["neg", "pos"]))
    plain = labeled.train_test_split(train_size=0.7, seed=seed, stratify_by_column="label")
    leaked = set(plain["train"]["text"]) & set(plain["test"]["text"])
    assert leaked  # the plain seeded split does put copies on both sides

    parts = data.split(ds, 0.7, seed)
    train, valid = parts[0], parts[1]
    assert not set(train["text"]) & set(valid["text"])
    moved = parts.moved
    assert sorted(zip([*train["text"], *valid["text"]], [*train["label"], *valid["label"]])) == \
        sorted(zip(ds["text"], ds["label"]))  # every row kept, with its label
    copies = [t for t in plain["test"]["text"] if t in leaked]
    assert moved == len(copies) and len(valid) == len(plain["test"]) - moved
    assert train["text"][:len(plain["train"])] == plain["train"]["text"]  # train: as before,
    assert train["text"][len(plain["train"]):] == copies  # then the valid copies moved to it
    assert valid["text"] == [t for t in plain["test"]["text"] if t not in leaked]
    again = data.split(ds, 0.7, seed)
    assert (again.train["text"], again.valid["text"], again.moved) == \
        (train["text"], valid["text"], moved)


def test_prepare_warns_of_reviews_with_no_text(tmp_path):
    from conftest import make_reviews, write_parquet
    folder = tmp_path / "src"
    folder.mkdir()
    texts, labels = make_reviews(40, seed=21)
    texts[4], texts[30] = "", " \n "  # a model would read them as empty; predict skips them
    write_parquet(folder / "train.parquet", texts, labels)
    write_parquet(folder / "test.parquet", *make_reviews(10, seed=22))
    lines = []
    manifest, _ = data.prepare(data.PrepareArgs(source=str(folder), vectors_dim=0),
                               tmp_path / "out", report=lines.append)
    said = (f"{folder} [train]: 2 review(s) with no text, kept as in the source (first at row "
            "5); predict and evaluate skip such texts")
    assert said in manifest["warnings"] and f"warning: {said}" in lines
    assert manifest["splits"]["train"]["total"] + manifest["splits"]["valid"]["total"] == 40


def test_prepare_records_moved_duplicates_and_overlap_with_train(tmp_path):
    """Reviews of valid, test and unsupervised that also occur in train are counted in the
    manifest, with a warning each; valid's count is 0, its copies having moved to train."""
    from conftest import make_reviews, write_parquet
    ds = _with_duplicates()
    in_train, only_valid, moved = data.split(ds, 0.7, 1234)
    assert moved and set(only_valid["text"]).isdisjoint(in_train["text"])
    folder = tmp_path / "src"
    folder.mkdir()
    write_parquet(folder / "train.parquet", ds["text"], ds["label"])
    test_texts, test_labels = make_reviews(20, seed=12)
    # 3 training reviews, one twice, and a valid one (not in train: not counted)
    test_texts += in_train["text"][:3] + in_train["text"][:1] + only_valid["text"][:1]
    write_parquet(folder / "test.parquet", test_texts, test_labels + [1, 0, 1, 1, 0])
    unsup, _ = make_reviews(10, seed=13, labeled=False)
    write_parquet(folder / "unsupervised.parquet", unsup + in_train["text"][5:7], [-1] * 12)
    write_parquet(folder / "validation.parquet", test_texts, test_labels + [1, 0, 1, 1, 0])
    lines = []
    manifest, _ = data.prepare(data.PrepareArgs(source=str(folder), vectors_dim=0),
                               tmp_path / "out", report=lines.append)
    assert manifest["overlap_with_train"] == {"valid": 0, "test": 4, "unsupervised": 2}
    assert manifest["duplicates_moved_to_train"] == moved
    assert manifest["splits"]["train"]["total"] == len(in_train)
    assert manifest["splits"]["valid"]["total"] == len(only_valid)
    overlap = [w for w in manifest["warnings"] if "also in the train split" in w]
    assert len(overlap) == 2
    assert "[test]: 4 review(s) also in the train split" in overlap[0]
    assert "[unsupervised]: 2 review(s)" in overlap[1]
    assert manifest["warnings"][0] == (
        f"{folder}: ignored validation.parquet: files are read by split name (train, test, "
        "unsupervised), and the validation split is made from train (--split-ratio)")
    assert [f"warning: {w}" for w in manifest["warnings"]] == \
        [line for line in lines if line.startswith("warning: ")]
    assert any(f"moved {moved} valid review(s) to train" in line for line in lines)


def test_prepare_of_data_without_overlap_warns_of_none(prepared_dir):
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    assert manifest["overlap_with_train"] == {"valid": 0, "test": 0, "unsupervised": 0}
    assert manifest["duplicates_moved_to_train"] == 0
    # no warning of duplicates or overlap (word vectors from the tests' few thousand tokens of
    # random words learn nothing, which is said)
    assert all("word vectors barely learned" in w for w in manifest["warnings"])


def _tiny(labels):
    import datasets
    return datasets.Dataset.from_dict({"text": [f"review {i}" for i in range(len(labels))],
                                       "label": labels})


@pytest.mark.parametrize("labels, ratio, says", [
    ([1], 0.7, r"\(1 pos\) .*: there is no neg review, and a classifier learns from both"),
    ([0] * 20, 0.7, r"\(20 neg\) .*: there is no pos review"),
    ([0, 1], 0.7, "each label needs 2 reviews or more.* neg and pos have 1"),
    ([0] * 19 + [1], 0.7, "pos has 1"),
    ([0, 1] * 10, 0.99, "leaves 19 for train and 1 for valid"),
    ([0, 1] * 10, 0.01, "leaves 0 for train and 20 for valid"),
], ids=["one-review", "one-label", "two-reviews", "one-of-a-label", "valid-empty",
        "train-empty"])
def test_a_train_split_too_small_to_split_is_one_clear_line(labels, ratio, says):
    with pytest.raises(UserError, match=says) as info:
        data.split(_tiny(labels), ratio, 1234)
    message = str(info.value)
    assert message.startswith("cannot split") and "\n" not in message


def test_the_smallest_splits_that_can_be_made_are_made():
    assert [len(part) for part in data.split(_tiny([0, 1] * 2), 0.5, 1)[:2]] == [2, 2]
    assert [len(part) for part in data.split(_tiny([0, 0, 1, 1, 1]), 0.7, 1)[:2]] == [3, 2]


def test_a_split_whose_valid_side_would_hold_only_copies_is_refused():
    import datasets
    ds = datasets.Dataset.from_dict({"text": ["same words"] * 6, "label": [0, 1] * 3})
    with pytest.raises(UserError, match="every valid review is a copy of one in train"):
        data.split(ds, 0.5, 1234)


def test_prepare_says_in_one_line_when_train_is_too_small(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\ngood,1\nbad,0\n")
    (folder / "test.csv").write_text("text,label\ngood,1\n")
    with pytest.raises(UserError, match=r"cannot split 2 training review\(s\) \(1 neg, 1 pos\)"):
        data.prepare(data.PrepareArgs(source=str(folder), vectors_dim=0), tmp_path / "out")


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


def test_prepare_rebuilds_when_the_source_files_change(source_dir, tmp_path):
    source = shutil.copytree(source_dir, tmp_path / "source")
    out, said = tmp_path / "p", []
    args = data.PrepareArgs(source=str(source), unsupervised=False, vectors_dim=0)
    first, _ = data.prepare(args, out)
    assert not data.prepare(args, out, report=said.append)[1] and said == []
    test = source / "test.parquet"
    table = pq.read_table(test)
    pq.write_table(table.slice(0, table.num_rows - 1), test)  # one test review fewer
    again, built = data.prepare(args, out, report=said.append)
    assert built and said[0] == f"{out}: {source} changed since it was prepared from it: preparing again"
    assert again["splits"]["test"]["total"] == first["splits"]["test"]["total"] - 1


def test_prepare_reuses_a_source_copied_or_touched_with_the_same_contents(source_dir, tmp_path):
    source = shutil.copytree(source_dir, tmp_path / "source")
    out, said = tmp_path / "p", []
    args = data.PrepareArgs(source=str(source), unsupervised=False, vectors_dim=0)
    data.prepare(args, out)
    fingerprint = data.load_prepared(out).fingerprint
    for path in source.iterdir():
        os.utime(path, (1, 1))  # as a copy without its times, or a fresh checkout, leaves them
    assert not data.prepare(args, out, report=said.append)[1] and said == []
    assert data.load_prepared(out).fingerprint == fingerprint  # runs trained on it still fit


def test_a_failed_rebuild_leaves_the_prepared_folder_whole(source_dir, tmp_path):
    out = tmp_path / "p"
    args = data.PrepareArgs(source=str(source_dir), unsupervised=False, vectors_dim=0)
    data.prepare(args, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for bad in (dataclasses.replace(args, text_column="review"),  # fails reading the source
                dataclasses.replace(args, source=str(tmp_path / "nowhere"))):
        said: list[str] = []
        with pytest.raises(UserError):
            data.prepare(bad, out, report=said.append)
        assert said == [] or bad.source == args.source  # nowhere: no "preparing again" first
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
        assert not list(out.glob(".build-*"))
    assert not data.prepare(args, out)[1]  # still reused: runs trained on it stay valid


def test_a_rebuild_replaces_the_files_and_drops_those_it_no_longer_makes(source_dir, tmp_path):
    out, said = tmp_path / "p", []
    data.prepare(data.PrepareArgs(source=str(source_dir), vectors_dim=8), out)
    assert (out / "vectors.txt").exists() and (out / "unsupervised.parquet").exists()
    manifest, built = data.prepare(data.PrepareArgs(source=str(source_dir), unsupervised=False,
                                                    vectors_dim=0), out, report=said.append)
    assert built and said[0] == (f"{out}: prepared with --unsupervised True, now False; "
                                 "--vectors-dim 8, now 0: preparing again")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "manifest.json", "test.parquet", "tokenizer.json", "train.parquet", "valid.parquet"]
    assert data.load_prepared(out).split("test").labels.size == manifest["splits"]["test"]["total"]


def test_prepare_takes_the_source_however_its_path_is_spelled(source_dir, tmp_path, monkeypatch):
    out = tmp_path / "p"
    data.prepare(data.PrepareArgs(source=str(source_dir), vectors_dim=0), out)
    monkeypatch.chdir(source_dir.parent)
    for spelled in (source_dir.name, f"./{source_dir.name}/", f"{source_dir}/"):
        assert not data.prepare(data.PrepareArgs(source=spelled, vectors_dim=0), out)[1]


def test_prepare_refuses_an_out_that_would_write_over_its_source(source_dir, tmp_path):
    source = shutil.copytree(source_dir, tmp_path / "source")
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    for out in (source, source / "prepared"):
        with pytest.raises(UserError, match="is (inside )?the source"):
            data.prepare(data.PrepareArgs(source=str(source), vectors_dim=0), out)
    single = source / "train.parquet"
    with pytest.raises(UserError, match="which prepare would overwrite"):
        data.prepare(data.PrepareArgs(source=str(single), vectors_dim=0), source)
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def test_prepare_refuses_an_out_whose_files_are_someone_elses(source_dir, tmp_path):
    """A copy of a source folder, a run, or any folder with a file named as prepare's own but
    no prepared dataset in it: refused, every file kept. A prepared dataset (its manifest), or
    one whose rebuild was killed before its manifest was written (prepare's files and lock
    alone), is not."""
    copy = shutil.copytree(source_dir, tmp_path / "copy")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.parquet").write_text("precious")
    (mine / "manifest.json").write_text("{}")
    run = tmp_path / "run"  # a run directory: imdbsent's lock, and its own files
    run.mkdir()
    for name in (".lock", "config.toml", "tokenizer.json", "best.safetensors"):
        (run / name).write_text("a run's")
    for out in (copy, mine, run):
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        with pytest.raises(UserError, match=f"^--out {out} holds .*(train.parquet|tokenizer.json)"
                           ".* but is not a prepared dataset: prepare would overwrite (them|it); "
                           "give another --out$"):
            data.prepare(data.PrepareArgs(source=str(source_dir), vectors_dim=0), out)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    out = tmp_path / "p"
    data.prepare(data.PrepareArgs(source=str(source_dir), vectors_dim=0), out)
    (out / "manifest.json").unlink()  # killed between its files and its manifest
    assert data.prepare(data.PrepareArgs(source=str(source_dir), vectors_dim=0), out)[1]


def test_a_failed_prepare_leaves_no_folder_it_made(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "train.csv").write_text("text,label\n" + "".join(f"review {i},{i % 2}\n" for i in
                                                                range(20)) + "fine,good\n")
    (source / "test.csv").write_text("text,label\nok,1\n")
    out = tmp_path / "new" / "p"
    with pytest.raises(UserError, match="label 'good'"):
        data.prepare(data.PrepareArgs(source=str(source), vectors_dim=0), out)
    assert not out.parent.exists()  # new/ too, as data/ of a first prepare's data/imdb
    (tmp_path / "mine").mkdir()  # a folder the user had is kept
    with pytest.raises(UserError, match="label 'good'"):
        data.prepare(data.PrepareArgs(source=str(source), vectors_dim=0), tmp_path / "mine" / "p")
    assert list((tmp_path / "mine").iterdir()) == []


def test_prepare_locks_its_folder_and_sweeps_only_its_own_temporaries(source_dir, tmp_path):
    from imdbsent import fsutil
    out = tmp_path / "p"
    out.mkdir()
    stale = out / fsutil.temporary_name("train.parquet")
    (out / ".notes.tmp").write_text("another program's")
    args = data.PrepareArgs(source=str(source_dir), unsupervised=False, vectors_dim=0)
    with fsutil.FolderLock(out, "prepare"):
        stale.write_text("being written by the holder")  # a refused prepare leaves it alone
        with pytest.raises(UserError, match=rf"^{out} is in use by another imdbsent prepare "
                           r"process \(pid \d+\); wait for it to finish or use another --out$"):
            data.prepare(args, out)
    assert sorted(p.name for p in out.iterdir()) == sorted([".lock", ".notes.tmp", stale.name])
    _, built = data.prepare(args, out)
    assert built and not stale.exists() and (out / ".notes.tmp").exists()
    assert not fsutil.is_locked(out)  # released


def test_prepare_refuses_to_reuse_a_folder_another_prepare_is_rebuilding(source_dir, tmp_path):
    out = tmp_path / "p"
    args = data.PrepareArgs(source=str(source_dir), unsupervised=False, vectors_dim=0)
    data.prepare(args, out)
    proc = hold_lock(out, "prepare")
    try:
        with pytest.raises(UserError, match=rf"prepare process \(pid {proc.pid}\)"):
            data.prepare(args, out)  # its manifest may be about to go: not reused
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert not data.prepare(args, out)[1]


def test_fingerprint_is_the_manifests_hash_and_every_rebuild_changes_it(source_dir, tmp_path):
    import hashlib
    out = tmp_path / "p"
    args = data.PrepareArgs(source=str(source_dir), unsupervised=False, vectors_dim=0)
    data.prepare(args, out)
    first = data.load_prepared(out)
    raw = (out / "manifest.json").read_bytes()
    assert first.fingerprint == "sha256:" + hashlib.sha256(raw).hexdigest()
    data.prepare(args, out)  # reused: the same data
    assert data.load_prepared(out).fingerprint == first.fingerprint
    data.prepare(args, out, force=True)  # rebuilt within the same second, same content
    rebuilt = data.load_prepared(out)
    assert rebuilt.fingerprint != first.fingerprint
    assert first.fingerprint == "sha256:" + hashlib.sha256(raw).hexdigest()  # as loaded


def test_prepare_rebuilds_a_folder_of_an_older_format(source_dir, tmp_path):
    out = tmp_path / "p"
    args = data.PrepareArgs(source=str(source_dir), unsupervised=False, vectors_dim=0)
    manifest, _ = data.prepare(args, out)
    del manifest["format"]  # as imdbsent 0.x wrote it, splitting duplicates apart
    (out / "manifest.json").write_text(json.dumps(manifest))
    rebuilt, built = data.prepare(args, out)
    assert built and rebuilt["format"] == data.PREPARE_FORMAT


@pytest.mark.parametrize("field, value", [("split_ratio", 1.0), ("max_vocab", 0), ("min_freq", 0),
                                          ("vectors_tokens", 0), ("seed", -1), ("seed", 2**32)])
def test_prepare_rejects_bad_arguments(tmp_path, field, value):
    with pytest.raises(BadValue, match=f"^{field} must be .*, not {value}$") as refused:
        data.prepare(data.PrepareArgs(source="x", **{field: value}), tmp_path)
    assert refused.value.name == field
    assert not any(tmp_path.iterdir())


def test_prepare_refuses_a_vocabulary_of_no_words_and_keeps_what_was_there(source_dir,
                                                                            prepared_dir, tmp_path):
    out = shutil.copytree(prepared_dir, tmp_path / "out")
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(UserError, match=r"^no word occurs 1,000,000 times in the [\d,]+ training "
                                        r"reviews, so the vocabulary would be empty: lower "
                                        r"--min-freq$"):
        data.prepare(data.PrepareArgs(str(source_dir), min_freq=1_000_000, vectors_dim=0), out)
    assert (out / "manifest.json").read_bytes() == before


def test_prepare_into_a_file_says_so_and_leaves_it(source_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "imdb"):
        with pytest.raises(UserError, match=f"^--out {out}: {tmp_path / 'notes.txt'} exists and "
                                            "is not a folder$"):
            data.prepare(data.PrepareArgs(str(source_dir), vectors_dim=0), out)
    assert (tmp_path / "notes.txt").read_text() == "mine"


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


def _sentences_encoded():
    """Three reviews of numbered words; id 9 ends a sentence. Review 0: 4 sentences, review 1:
    one sentence without an end mark, review 2: two sentences."""
    reviews = [[10, 11, 9, 12, 9, 13, 14, 15, 9, 16, 9], [20, 21, 22], [30, 9, 31, 32, 9]]
    return data.Encoded.from_lists(reviews, [1, 0, 1]), reviews


def _sentences(review):
    out, current = [], []
    for t in review:
        current.append(t)
        if t == 9:
            out.append(current)
            current = []
    return out + ([current] if current else [])


def test_sentence_crops_are_runs_of_one_to_three_whole_sentences():
    enc, reviews = _sentences_encoded()
    batches = data.Batches(enc, 3, shuffle=True, crop=1.0, sentence_ends=[9])
    seen = set()
    for epoch in range(200):
        batches.epoch = epoch
        starts, lengths = batches.spans()
        for i, review in enumerate(reviews):
            crop = enc.flat[starts[i]:starts[i] + lengths[i]].tolist()
            sentences = _sentences(review)
            runs = [sum(sentences[a:a + c], []) for a in range(len(sentences))
                    for c in (1, 2, 3) if a + c <= len(sentences)]
            assert crop in runs, (i, crop)
            seen.add((i, tuple(crop)))
    assert len({c for i, c in seen if i == 0}) == 9  # every run of review 0 comes up
    assert {c for i, c in seen if i == 1} == {(20, 21, 22)}  # one sentence: itself
    batches.epoch = 7
    again = data.Batches(enc, 3, shuffle=True, crop=1.0, sentence_ends=[9])
    again.epoch = 7
    assert all(np.array_equal(a, b) for a, b in zip(batches.spans(), again.spans()))


def test_crop_fraction_and_batches_of_crops():
    enc, _ = _sentences_encoded()
    whole = data.Batches(enc, 3, shuffle=True, crop=0.0, sentence_ends=[9])
    assert np.array_equal(whole.spans()[1], enc.lengths)
    big = data.Encoded.from_lists([[1, 9, 2, 9, 3, 9, 4, 9, 5, 9]] * 2000, [1] * 2000)
    half = data.Batches(big, 50, shuffle=True, crop=0.5, sentence_ends=[9])
    cut = (half.spans()[1] < 10).mean()
    assert 0.45 < cut < 0.55
    batch = next(iter(data.Batches(enc, 3, crop=1.0, sentence_ends=[9])))
    assert int(batch.lengths.max()) < 11 and batch.text.shape[1] == int(batch.lengths.max())


def _split_files(folder):
    return {name: data.read_encoded(folder / f"{name}.parquet")
            for name in ("train", "valid", "test", "unsupervised")}


def test_prepare_in_small_chunks_writes_what_one_chunk_would(source_dir, tmp_path, monkeypatch):
    """Chunk boundaries change nothing: 7-review chunks (so every split spans many, and the
    seeded split's rows are gathered across them) give the same splits, vocabulary and
    counts as one chunk, written as many Parquet row groups."""
    import pyarrow.parquet as pq

    from imdbsent import sources
    args = data.PrepareArgs(source=str(source_dir), vectors_dim=0)
    whole, _ = data.prepare(args, tmp_path / "whole")
    monkeypatch.setattr(sources, "CHUNK_ROWS", 7)
    stages = {}
    small, _ = data.prepare(args, tmp_path / "small",
                            progress=lambda stage, done, total=None: stages.update(
                                {stage: (done, total)}))
    for name, enc in _split_files(tmp_path / "whole").items():
        other = _split_files(tmp_path / "small")[name]
        assert np.array_equal(enc.flat, other.flat) and np.array_equal(enc.offsets, other.offsets)
        assert np.array_equal(enc.labels, other.labels)
    assert (tmp_path / "whole" / "tokenizer.json").read_text() == \
        (tmp_path / "small" / "tokenizer.json").read_text()
    assert small["splits"] == whole["splits"] and small["tokens"] == whole["tokens"]
    assert pq.ParquetFile(tmp_path / "small" / "train.parquet").num_row_groups == -(-280 // 7)
    assert stages["vocabulary"] == (280, 280)
    assert stages["encoding train and valid"] == (400, 400)
    assert stages["reading unsupervised"][0] == stages["encoding unsupervised"][0] == 100
    assert not list((tmp_path / "small").glob(".*-*"))  # scratch folders removed


def test_word_vectors_sample_reviews_beyond_the_token_budget(source_dir, tmp_path):
    manifest, _ = data.prepare(data.PrepareArgs(source=str(source_dir), vectors_dim=0),
                               tmp_path / "p")
    paths = [tmp_path / "p" / "train.parquet", tmp_path / "p" / "unsupervised.parquet"]
    everything = data.sample_ids(paths, 1.0, 1234)
    splits = _split_files(tmp_path / "p")
    assert np.array_equal(everything, np.concatenate([splits["train"].flat,
                                                      splits["unsupervised"].flat]))
    assert len(everything) == manifest["tokens"]["train"] + manifest["tokens"]["unsupervised"]
    half = data.sample_ids(paths, 0.5, 1234)
    assert 0.35 * len(everything) < len(half) < 0.65 * len(everything)
    assert np.array_equal(half, data.sample_ids(paths, 0.5, 1234))  # seeded
    lines = []
    data.prepare(data.PrepareArgs(source=str(source_dir), vectors_dim=8, vectors_tokens=1000),
                 tmp_path / "v", report=lines.append)
    said = next(line for line in lines if line.startswith("learning 8-dimensional"))
    assert "a sample of" in said and (tmp_path / "v" / "vectors.txt").exists()


def test_encoded_take_gathers_rows_in_order():
    enc = data.Encoded.from_lists([[5, 6], [], [7, 8, 9], [4]], [0, 1, 0, 1])
    part = enc.take(np.array([2, 0, 1]))
    assert part.flat.tolist() == [7, 8, 9, 5, 6] and part.offsets.tolist() == [0, 3, 5, 5]
    assert part.labels.tolist() == [0, 0, 1]


def test_a_split_of_many_row_groups_reads_back_whole(tmp_path):
    enc = data.Encoded.from_lists([[5, 6], [], [7], [], []], [0, 1, 0, 1, 1])
    data.write_encoded(tmp_path / "s.parquet", [enc, enc.take(np.array([1, 2])), enc.take(
        np.array([], dtype=np.int64))])
    back = data.read_encoded(tmp_path / "s.parquet")
    assert back.flat.tolist() == [5, 6, 7, 7]
    assert back.offsets.tolist() == [0, 2, 2, 3, 3, 3, 3, 4]
    assert back.labels.tolist() == [0, 1, 0, 1, 1, 1, 0]
    assert [len(part) for part in data.iter_encoded(tmp_path / "s.parquet")] == [5, 2, 0]


def test_prepare_says_when_the_source_has_no_unlabeled_reviews(source_dir, tmp_path):
    source = tmp_path / "labeled"
    source.mkdir()
    for split in ("train", "test"):
        shutil.copy(source_dir / f"{split}.parquet", source)
    said: list[str] = []
    manifest, _ = data.prepare(data.PrepareArgs(source=str(source), vectors_dim=0),
                               tmp_path / "p", report=said.append)
    assert f"{source} has no unsupervised split: prepared without unlabeled reviews" in said
    assert "unsupervised" not in manifest["splits"]
    said.clear()
    data.prepare(data.PrepareArgs(source=str(source), vectors_dim=0, unsupervised=False),
                 tmp_path / "q", report=said.append)
    assert not any("no unsupervised split" in line for line in said)  # not asked for


def test_prepare_args_say_the_flags_that_make_them(prepared_dir, source_dir):
    args = data.PrepareArgs("my reviews/", vectors_dim=0, unsupervised=False, seed=7)
    assert args.flags() == "--source 'my reviews/' --seed 7 --no-unsupervised --vectors-dim 0"
    assert data.PrepareArgs(HUB_DEFAULT).flags() == ""
    assert data.prepared_args(prepared_dir) == data.PrepareArgs(str(source_dir))
    assert data.prepared_args(source_dir) is None  # not a prepared dataset


def test_the_unlabeled_stream_is_train_and_unsupervised_never_valid_or_test(prepared_dir,
                                                                             source_dir, tmp_path):
    prepared = data.load_prepared(prepared_dir)
    stream = prepared.unlabeled_stream()
    train, unsup = prepared.split("train").flat, prepared.split("unsupervised").flat
    assert np.array_equal(stream, np.concatenate([train, unsup]))
    data.prepare(data.PrepareArgs(source=str(source_dir), unsupervised=False, vectors_dim=0),
                 tmp_path / "p")
    alone = data.load_prepared(tmp_path / "p")
    assert not alone.has("unsupervised")
    assert np.array_equal(alone.unlabeled_stream(), alone.split("train").flat)
