"""Every source format gives the same splits; bad sources give errors naming file and row."""

import json
import socket
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_reviews, write_parquet
from imdbsent import sources
from imdbsent.errors import BadValue, UserError

TRAIN = make_reviews(20, seed=5)
TEST = make_reviews(10, seed=6)


def _as_acl(root: Path) -> Path:
    for split, (texts, labels) in (("train", TRAIN), ("test", TEST)):
        for i, (t, lab) in enumerate(zip(texts, labels)):
            folder = root / "aclImdb" / split / ("pos" if lab else "neg")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}_7.txt").write_text(t, encoding="utf-8")
    unsup = root / "aclImdb" / "train" / "unsup"
    unsup.mkdir()
    (unsup / "0_0.txt").write_text("unlabeled words", encoding="utf-8")
    return root / "aclImdb"


def _write(folder: Path, fmt: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, (texts, labels) in (("train", TRAIN), ("test", TEST)):
        named = ["pos" if lab else "neg" for lab in labels]  # label names must work too
        if fmt == "parquet":
            write_parquet(folder / f"{split}.parquet", texts, labels)
        elif fmt == "csv":
            import csv
            with open(folder / f"{split}.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["text", "label"])
                w.writerows(zip(texts, named))
        else:
            with open(folder / f"{split}.jsonl", "w") as fh:
                for t, lab in zip(texts, named):
                    fh.write(json.dumps({"text": t, "label": lab}) + "\n")
    return folder


def _sorted_rows(split):
    ds = split.dataset()
    return sorted(zip(ds["text"], ds["label"]))


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl", "acl-folder", "acl-tarball"])
def test_every_format_loads_the_same_reviews(tmp_path, kind):
    if kind.startswith("acl"):
        root = _as_acl(tmp_path)
        path = root
        if kind == "acl-tarball":
            path = tmp_path / "aclImdb_v1.tar.gz"
            with tarfile.open(path, "w:gz") as tar:
                tar.add(root, arcname="aclImdb")
    else:
        path = _write(tmp_path / kind, kind)
    src = sources.load_source(str(path))
    assert _sorted_rows(src.splits["train"]) == sorted(zip(*TRAIN))
    assert _sorted_rows(src.splits["test"]) == sorted(zip(*TEST))
    assert src.fingerprint.startswith("sha256:")
    if kind.startswith("acl"):
        assert src.splits["unsupervised"].dataset()["label"] == [-1]
    assert "unsupervised" not in sources.load_source(str(path), unsupervised=False).splits


def test_aclimdb_reviews_come_in_the_hubs_order_whatever_the_archives_order(tmp_path):
    """The seeded train/valid split goes by row order: the Hub's (and the offline Parquet
    copy's) is negative first, then positive, each by file number. A folder read by name puts
    10_7.txt before 2_7.txt, and an archive keeps whatever order it was packed in."""
    root = _as_acl(tmp_path / "acl")
    texts, labels = TRAIN
    hub = [t for t, lab in zip(texts, labels) if not lab] + [t for t, lab in zip(texts, labels)
                                                              if lab]
    files = sorted(root.glob("*/*/*.txt"), key=lambda p: hash(p.name) % 97)  # shuffled
    tarball = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for path in files:
            tar.add(path, arcname=f"aclImdb/{path.relative_to(root).as_posix()}")
    for path in (root, tarball):
        source = sources.load_source(str(path))  # held: its scratch folder lives as long
        assert source.splits["train"].dataset()["text"] == hub


def test_a_folder_reads_only_files_named_by_split_and_one_folder_a_split(tmp_path):
    """`Train.parquet` and the Hub's shards in a subfolder are a split's; `train_old.parquet`
    is not (said, not read); a split's files in two folders are refused, not read twice."""
    folder = tmp_path / "imdb"
    (folder / "plain_text").mkdir(parents=True)
    write_parquet(folder / "plain_text" / "Train-00000-of-00001.parquet", *TRAIN)
    write_parquet(folder / "plain_text" / "TEST.parquet", *TEST)
    write_parquet(folder / "plain_text" / "train_old.parquet", *TEST)
    source = sources.load_source(str(folder))
    assert _sorted_rows(source.splits["train"]) == sorted(zip(*TRAIN))
    assert source.ignored == ["plain_text/train_old.parquet"]
    write_parquet(folder / "train.parquet", *TRAIN)  # a second copy, beside the first
    with pytest.raises(UserError, match=r"imdb: train files in 2 folders \(plain_text/"
                       r"Train-00000-of-00001.parquet, train.parquet\): keep one split's files "
                       r"in one folder$"):
        sources.load_source(str(folder))


def test_custom_column_names(tmp_path):
    folder = tmp_path / "cols"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text(
            json.dumps({"review": "nice", "sentiment": "pos"}) + "\n")
    src = sources.load_source(str(folder), text_column="review", label_column="sentiment")
    train = src.splits["train"].dataset()
    assert train["text"] == ["nice"] and train["label"] == [1]


@pytest.mark.parametrize("value, shown", [(None, "null"), (False, "false"), (2, "2"),
                                          ("maybe", "'maybe'")])
def test_a_bad_label_is_shown_as_its_file_wrote_it(value, shown):
    with pytest.raises(UserError, match=rf"^f.json, row 2: label {shown} is not one of 0, 1"):
        sources.normalise_labels([1, value], "f.json")


@pytest.mark.parametrize("fmt, train, test, message", [
    ("csv", "text,label\ngood,pos\nmeh,neutral\n", "text,label\ngood,1\n",
     r"train\.csv, row 2: label 'neutral' is not one of"),
    ("jsonl", '{"text": "fine", "label": 1}\n{"text": null, "label": 0}\n',
     '{"text": "good", "label": 1}\n', r"train\.jsonl, row 2: text is null, not a string$"),
])
def test_a_bad_row_names_file_and_row_and_its_value_as_written(tmp_path, fmt, train, test,
                                                               message):
    (tmp_path / f"train.{fmt}").write_text(train)
    (tmp_path / f"test.{fmt}").write_text(test)
    with pytest.raises(UserError, match=message):
        sources.load_source(str(tmp_path))


def test_a_jsonl_parse_error_names_the_files_row_past_the_first_chunk(tmp_path):
    """pyarrow counts from 0 within the chunk it parses; the message counts the file's rows
    from 1, as a bad label's does (blank lines are not rows)."""
    rows = [json.dumps({"text": "fine", "label": 1})] * 5 + ["", '{"text": "oops" "label": 0}']
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    split = sources._file_split("json", [tmp_path / "train.jsonl"], "train.jsonl", "text", "label")
    with pytest.raises(UserError, match=r"train\.jsonl: cannot read as json: .* in row 6$"):
        list(split.chunks(size=2))


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_json_labels_of_several_types_are_read_alike_and_a_bad_one_is_named(tmp_path, fmt):
    """pyarrow refused a column whose values change type ("changed from string to number")."""
    rows = [{"t": "great film", "y": "pos"}, {"t": "awful", "y": "NEG"}, {"t": "ok", "y": 1},
            {"t": "fine", "y": True}]
    path = tmp_path / f"s.{fmt}"

    def write(rows: list[dict]) -> None:
        path.write_text(json.dumps(rows) if fmt == "json" else
                        "\n\n".join(json.dumps(r) for r in rows) + "\n")

    write(rows[:3])
    assert sources.read_labeled_file(path, "t", "y")["label"] == [1, 0, 1]
    write(rows)
    with pytest.raises(UserError, match=r"s\.jsonl?, row 4: label 'true' is not one of 0, 1"):
        sources.read_labeled_file(path, "t", "y")


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_json_labels_of_several_types_still_check_each_text(tmp_path, fmt):
    # the fallback for mixed labels wrote every value of a mixed column as JSON text: a text
    # of 5 among strings was read as the review "5"
    rows = [{"t": "great film", "y": "pos"}, {"t": "awful", "y": 0}, {"t": 5, "y": 1}]
    path = tmp_path / f"s.{fmt}"
    path.write_text(json.dumps(rows) if fmt == "json" else
                    "\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(UserError, match=rf"s\.{fmt}, row 3: text is 5, not a string$"):
        sources.read_labeled_file(path, "t", "y")


def test_a_jsonl_parse_error_after_mixed_labels_names_its_row(tmp_path):
    # pyarrow stops at the labels' change of type; the lines were then parsed again without
    # a row number ("Expecting ',' delimiter: line 1 column 17 (char 16)")
    rows = [json.dumps({"text": "fine", "label": 1}), json.dumps({"text": "ok", "label": "pos"}),
            '{"text": "oops" "label": 0}']
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"train\.jsonl: cannot read as json: row 3: Expecting "):
        sources.read_labeled_file(tmp_path / "train.jsonl")


def test_missing_text_column_is_named(tmp_path):
    folder = tmp_path / "nocol"
    folder.mkdir()
    (folder / "train.csv").write_text("review,label\ngood,1\n")
    (folder / "test.csv").write_text("review,label\ngood,1\n")
    with pytest.raises(UserError, match=r"train\.csv: no 'text' column \(columns: review, label\)"):
        sources.load_source(str(folder))


def test_a_jsonl_line_longer_than_pyarrows_block_is_read(tmp_path):
    path = tmp_path / "long.jsonl"
    long = "great " * 400_000  # 2.4 MB: pyarrow's 1 MiB block refused it ("straddling")
    path.write_text(json.dumps({"text": long, "label": 1}) + "\n"
                    + json.dumps({"text": "bad", "label": 0}) + "\n")
    ds = sources.read_labeled_file(path)
    assert ds["text"] == [long, "bad"] and ds["label"] == [1, 0]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_column_named_twice_is_refused_in_one_line(tmp_path, fmt):
    path = tmp_path / f"d.{fmt}"
    if fmt == "csv":
        path.write_text("text,text,label\ngreat,x,pos\nawful,y,neg\n")
    else:  # pyarrow's column() raised a KeyError: a traceback
        pq.write_table(pa.Table.from_arrays([pa.array(["a", "b"]), pa.array([1, 0]),
                                             pa.array([0, 1])], names=["text", "label", "label"]),
                       path)
    column = "text" if fmt == "csv" else "label"
    with pytest.raises(UserError, match=rf"d\.{fmt}: 2 columns are named '{column}'$"):
        sources.read_labeled_file(path)


def test_empty_file_is_named(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "train.csv").write_text("")
    (folder / "test.csv").write_text("text,label\ngood,1\n")
    with pytest.raises(UserError, match=r"train\.csv: empty file"):
        sources.load_source(str(folder))


def test_header_only_file_has_no_rows(tmp_path):
    folder = tmp_path / "header"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n")
    (folder / "test.csv").write_text("text,label\ngood,1\n")
    with pytest.raises(UserError, match=r"train\.csv: (no rows|empty)"):
        sources.load_source(str(folder))


def test_tarball_that_is_not_aclimdb(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    path = tmp_path / "other.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(other, arcname="notes.txt")
    with pytest.raises(UserError, match="not an aclImdb archive"):
        sources.load_source(str(path))


def test_corrupt_tarball(tmp_path):
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(b"not a tarball at all")
    with pytest.raises(UserError, match="not a readable tar archive") as raised:
        sources.load_source(str(path))
    assert "\n" not in str(raised.value)  # tarfile's message lists each method it tried


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        sources.load_source(str(tmp_path / "nowhere"))


def test_a_folder_says_which_data_files_no_split_names(tmp_path):
    folder = _write(tmp_path / "src", "parquet")
    write_parquet(folder / "valid.parquet", *TRAIN)  # imdbsent makes its own validation split
    (folder / "notes.txt").write_text("not a data file")
    with sources.load_source(str(folder)) as source:
        assert source.ignored == ["valid.parquet"] and set(source.splits) == {"train", "test"}
    with sources.load_source(str(_write(tmp_path / "plain", "csv"))) as source:
        assert source.ignored == []


def test_folder_without_splits(tmp_path):
    with pytest.raises(UserError, match="no train/test files"):
        sources.load_source(str(tmp_path))


def test_unreachable_hub_names_the_local_source_option(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(UserError, match="cannot reach the Hugging Face Hub.*--source PATH"
                       ) as refused:
        sources.load_source("stanfordnlp/imdb")
    assert "local folder" not in str(refused.value)
    with pytest.raises(UserError, match="Hub for 'shared/imdb'; no local folder shared/imdb "
                       "here either; use --source PATH"):
        sources.load_source("shared/imdb")  # a relative folder mistyped


def test_a_hub_dataset_is_read_by_the_columns_given(monkeypatch):
    import datasets

    fake = {"train": datasets.Dataset.from_dict({"review": ["good", "bad"], "stars": [1, 0]}),
            "test": datasets.Dataset.from_dict({"review": ["fine"], "stars": ["pos"]})}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no connection check
    monkeypatch.setattr(datasets, "load_dataset", lambda name: fake)
    with sources.load_source("someone/reviews", text_column="review",
                             label_column="stars") as source:
        train = source.splits["train"].dataset()
    assert train["text"] == ["good", "bad"] and train["label"] == [1, 0]


def test_columns_of_an_aclimdb_source_are_refused(tmp_path):
    root = _as_acl(tmp_path / "acl")
    tarball = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(root, arcname="aclImdb")
    for source in (root, tarball):
        with pytest.raises(BadValue, match="^label_column names a column of Parquet/CSV/JSONL "
                                           "files or a Hub dataset; .* is an aclImdb source, "
                                           "which has none$"):
            sources.load_source(str(source), label_column="sentiment")
    sources.check_columns(str(root), "text", "label")  # the defaults: nothing named
    sources.check_columns(str(_write(tmp_path / "files", "csv")), "review", "stars")


def test_a_bare_name_that_is_no_folder_says_how_hub_names_look(tmp_path):
    with pytest.raises(UserError, match=r"^imdb: no such file or folder \(a Hub dataset is named "
                                        r"owner/name: stanfordnlp/imdb\)$"):
        sources.load_source("imdb")


def test_duplicate_rows_are_reported_by_row():
    from imdbsent.data import duplicate_rows, text_digests
    assert duplicate_rows(text_digests(["a", "b", "a", "a", "b"])).tolist() == [3, 4, 5]


def test_csv_with_line_breaks_in_quoted_texts_and_json_arrays(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "train.csv").write_text('text,label\n"two\nlines, and a comma",pos\nplain,0\n')
    (folder / "test.json").write_text(json.dumps([{"text": "a", "label": "pos"},  # with a BOM
                                                  {"text": "b", "label": "neg"}]),
                                      encoding="utf-8-sig")
    (folder / "unsupervised.jsonl").write_text('{"text": "x"}\n\n{"text": "y"}\n')
    src = sources.load_source(str(folder))
    train = src.splits["train"].dataset()
    assert train["text"] == ["two\nlines, and a comma", "plain"] and train["label"] == [1, 0]
    assert src.splits["test"].dataset()["label"] == [1, 0]
    assert src.splits["unsupervised"].dataset()["text"] == ["x", "y"]


def test_a_bad_row_past_the_first_chunk_names_its_file_and_row(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_ROWS", 3)
    folder = tmp_path / "late"
    folder.mkdir()
    rows = "".join(f"review {i},{i % 2}\n" for i in range(7))
    (folder / "train-1.csv").write_text("text,label\n" + rows)
    (folder / "train-2.csv").write_text("text,label\n" + rows + "odd one,maybe\n")
    (folder / "test.csv").write_text("text,label\ngood,1\n")
    src = sources.load_source(str(folder))  # the first chunk is fine
    chunks = src.splits["train"].chunks()
    assert [c.start for c in (next(chunks), next(chunks))] == [0, 3]
    with pytest.raises(UserError, match=r"train-2\.csv, row 8: label 'maybe'"):
        list(chunks)


def test_an_acl_archive_is_read_through_a_scratch_folder_that_goes_away(tmp_path):
    root = _as_acl(tmp_path / "acl")
    with sources.load_source(str(root), scratch=tmp_path) as src:
        scratch = Path(src.scratch.name)
        assert scratch.parent == tmp_path and scratch.exists()
        assert len(src.splits["train"].dataset()) == len(TRAIN[0])
    assert not scratch.exists()


def test_parquet_is_read_a_row_group_at_a_time_in_bounded_memory(tmp_path):
    """Arrow memory while reading stays near one row group (~1 MB of text here), not the
    30 MB file: pyarrow's pre-buffering would keep every row group read so far."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder = tmp_path / "big"
    folder.mkdir()
    schema = pa.schema([("text", pa.string()), ("label", pa.int64())])
    with pq.ParquetWriter(folder / "train.parquet", schema, compression="none") as writer:
        for group in range(30):
            texts = [f"review {group} {i} " + "word " * 200 for i in range(1000)]
            writer.write_table(pa.table({"text": texts, "label": [i % 2 for i in range(1000)]},
                                        schema=schema))
    write_parquet(folder / "test.parquet", ["fine"], [1])
    split = sources.load_source(str(folder)).splits["train"]
    peak, rows = 0, 0
    for chunk in split.chunks(500):
        peak = max(peak, pa.total_allocated_bytes())
        rows += len(chunk.texts)
    assert rows == 30_000 and peak < 8 * 2**20


def test_a_labeled_csv_that_is_not_utf8_says_so(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\xe9 bien,1\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.csv: cannot read as csv: .*\(imdbsent reads "
                       r"UTF-8 text\)$"):
        sources.read_labeled_file(path).to_list()
