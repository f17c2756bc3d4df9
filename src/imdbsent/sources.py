"""Where IMDB comes from: the Hugging Face Hub, a folder of Parquet/CSV/JSONL files named by
split, or the original Stanford `aclImdb/` folder or `aclImdb_v1.tar.gz` archive.

Every source gives the same thing: splits (train, test, maybe unsupervised), each read in
chunks of `text` strings and int labels (0 = negative, 1 = positive; -1 for the unlabeled
`unsupervised` split), as often as needed and never held whole, so that a corpus larger than
memory can be prepared. Parquet is read by row groups, CSV by blocks, JSONL by lines; the Hub's
splits are `datasets`' memory-mapped Arrow files; an aclImdb folder or archive is read once into
Parquet files in a scratch folder (one member at a time), then read as Parquet.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
import socket
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from imdbsent.config import HUB_DEFAULT
from imdbsent.errors import BadValue, UserError

if TYPE_CHECKING:  # not at run time: see hf_datasets
    import datasets

SPLITS = ("train", "test", "unsupervised")
LOCAL_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
LABEL_NAMES = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1}
CHUNK_ROWS = 4096  # reviews a chunk: what prepare holds (and tokenizes) at once
_CSV_BLOCK = 8 << 20  # bytes of CSV parsed at once
_ACL_MEMBER = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg|unsup)/[^/]+\.txt$")
_SCHEMA = pa.schema([("text", pa.string()), ("label", pa.int64())])


def hf_datasets() -> ModuleType:
    """The `datasets` library, imported when first needed: it takes over a second to import,
    and predict, or evaluate on a prepared split, never needs it."""
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    return datasets


# A reader yields (where, column names, table) pieces: `where` names the file for messages.
Reader = Callable[[int], Iterator[tuple[str, list[str], pa.Table | pa.RecordBatch]]]


@dataclass
class Chunk:
    """Consecutive rows of a split: their texts, labels (int64) and the first one's row
    number (0-based, within the split)."""

    texts: list[str]
    labels: np.ndarray
    start: int


@dataclass
class Split:
    """One split of a source, read chunk by chunk as often as needed. Texts are checked to be
    strings and labels mapped to 0/1 (-1 when `unlabeled`) as they are read, so a bad row is
    a UserError that names the file and row."""

    where: str
    reader: Reader
    text_column: str = "text"
    label_column: str = "label"
    unlabeled: bool = False

    def chunks(self, size: int | None = None) -> Iterator[Chunk]:
        size = size or CHUNK_ROWS
        start = row = 0  # row: within the current file, for messages
        last = None
        for where, names, table in self.reader(size):
            row, last = (row if where == last else 0), where
            for column in (self.text_column,) if self.unlabeled else (self.text_column,
                                                                          self.label_column):
                if column not in names:
                    raise UserError(f"{where}: no {column!r} column (columns: {', '.join(names)})")
                if names.count(column) > 1:  # which one would be read is anyone's guess
                    raise UserError(f"{where}: {names.count(column)} columns are named {column!r}")
            texts = table.column(self.text_column).to_pylist()
            check_texts(texts, where, row + 1)
            if self.unlabeled:
                labels = np.full(len(texts), -1, dtype=np.int64)
            else:
                labels = np.asarray(normalise_labels(table.column(self.label_column).to_pylist(),
                                                     where, row + 1), dtype=np.int64)
            if texts:
                yield Chunk(texts, labels, start)
            start += len(texts)
            row += len(texts)
        if start == 0:
            raise UserError(f"{self.where}: no rows")

    def dataset(self) -> datasets.Dataset:
        """The whole split in memory, as a `datasets.Dataset` of text and label (for small
        files: an evaluation file, tests, benchmarks)."""
        texts: list[str] = []
        labels: list[np.ndarray] = []
        for chunk in self.chunks():
            texts += chunk.texts
            labels.append(chunk.labels)
        datasets = hf_datasets()
        return datasets.Dataset.from_dict(
            {"text": texts, "label": np.concatenate(labels)},
            features=datasets.Features({"text": datasets.Value("string"),
                                        "label": datasets.Value("int64")}))


@dataclass
class Source:
    """A loaded source: its splits (train, test, maybe unsupervised) and a fingerprint of its
    bytes. A context manager: leaving it removes its scratch folder, if it made one."""

    name: str
    splits: dict[str, Split]
    fingerprint: str
    scratch: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    ignored: list[str] = field(default_factory=list)  # a folder's data files no split names

    def close(self) -> None:
        if self.scratch is not None:
            self.scratch.cleanup()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_source(
    source: str = HUB_DEFAULT,
    *,
    text_column: str = "text",
    label_column: str = "label",
    unsupervised: bool = True,
    scratch: Path | None = None,
) -> Source:
    """Open IMDB at `source` (a Hub name, a folder, or an aclImdb tarball). Each split's first
    chunk is read at once, so a missing column or an empty file is found here; later rows are
    checked as they are read. An aclImdb archive or folder is converted into a temporary folder
    in `scratch` (default: the system's)."""
    path = Path(source).expanduser()
    tmp, ignored = None, []
    check(source, text_column, label_column)
    if path.exists():
        if is_acl(path):
            tmp = tempfile.TemporaryDirectory(prefix=".source-", dir=scratch)
            try:
                members = _acl_folder(_acl_root(path)) if path.is_dir() else _tar_members(path)
                splits, fingerprint = _spool_acl(members, str(path), unsupervised, Path(tmp.name))
            except BaseException:
                tmp.cleanup()
                raise
        elif path.is_dir():
            splits, fingerprint, ignored = _from_folder(path, text_column, label_column,
                                                        unsupervised)
        else:
            raise UserError(
                f"{path}: not a source imdbsent reads (a folder of Parquet/CSV/JSONL files named "
                "by split, an aclImdb/ folder, or aclImdb_v1.tar.gz)"
            )
    else:
        splits, fingerprint = _from_hub(source, text_column, label_column, unsupervised)
    src = Source(name=source, splits=splits, fingerprint=fingerprint, scratch=tmp,
                 ignored=ignored)
    try:
        for required in ("train", "test"):
            if required not in splits:
                raise UserError(f"{source}: no {required!r} split found")
        for split in splits.values():
            next(split.chunks(), None)
    except BaseException:
        src.close()
        raise
    return src


def check(source: str, text_column: str, label_column: str) -> None:
    """Refuse, before any work (so that `prepare` says nothing of the folder it would build),
    a source written as a path that is not there (a Hub name is looked for on the Hub), and
    columns named for a source that has none (`check_columns`)."""
    if _looks_like_path(source) and not Path(source).expanduser().exists():
        hub = "" if "/" in source else f" (a Hub dataset is named owner/name: {HUB_DEFAULT})"
        raise UserError(f"{source}: no such file or folder{hub}")
    check_columns(source, text_column, label_column)


def is_acl(path: Path) -> bool:
    """Whether `path` is an aclImdb folder (or holds one) or a tarball of it."""
    return (path.is_dir() and _acl_root(path) is not None
            or path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")))


def check_columns(source: str, text_column: str, label_column: str) -> None:
    """Refuse columns named for a source that has none (aclImdb: files of text in folders of
    labels), where they would be ignored; before any work, as a usage error."""
    named = [name for name, value, default in (("text_column", text_column, "text"),
                                               ("label_column", label_column, "label"))
             if value != default]
    if named and is_acl(Path(source).expanduser()):
        raise BadValue(named[0], f"names a column of Parquet/CSV/JSONL files or a Hub dataset; "
                                 f"{source} is an aclImdb source, which has none")


def check_texts(texts: Sequence[object], where: str, first_row: int) -> None:
    """Refuse a text that is not a string, naming its file and row (`first_row`: the first's)."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise UserError(f"{where}, row {first_row + i}: text is {_as_written(t)}, not a "
                            "string")


def _as_written(value: object) -> str:
    """A value of a row as its file wrote it: a missing one or a boolean as JSON does (null,
    false), anything else as Python's repr ('maybe', 2)."""
    return json.dumps(value) if value is None or isinstance(value, bool) else repr(value)


def normalise_labels(raw: list, where: str, row_offset: int = 1) -> list[int]:
    """Map 0/1, neg/pos or negative/positive labels (ints or strings, any case) to 0/1;
    anything else names file and row."""
    out: list[int] = []
    for i, value in enumerate(raw):
        key = str(value).strip().lower() if value is not None else ""
        if isinstance(value, float) and value.is_integer():
            key = str(int(value))
        if key not in LABEL_NAMES:
            raise UserError(f"{where}, row {i + row_offset}: label {_as_written(value)} is not "
                            "one of 0, 1, neg, pos (or negative, positive)")
        out.append(LABEL_NAMES[key])
    return out


def read_labeled_file(path: Path, text_column: str = "text", label_column: str = "label"
                      ) -> datasets.Dataset:
    """One labeled CSV/JSONL/Parquet file as a Dataset of text and 0/1 label (for evaluate)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    fmt = LOCAL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown format (use .parquet, .csv, .jsonl or .json)")
    return _file_split(fmt, [path], str(path), text_column, label_column).dataset()


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") != 1


def _from_hub(name: str, text_column: str, label_column: str, unsupervised: bool
              ) -> tuple[dict[str, Split], str]:
    hint = "use --source PATH for a local copy (Parquet/CSV/JSONL folder, aclImdb/ or its tarball)"
    if name != HUB_DEFAULT:  # `owner/name` on the Hub, or a mistyped relative folder
        hint = f"no local folder {name} here either; {hint}"
    if not os.environ.get("HF_HUB_OFFLINE") and not os.environ.get("HF_DATASETS_OFFLINE"):
        try:
            socket.create_connection(("huggingface.co", 443), timeout=5).close()
        except OSError:
            raise UserError(f"cannot reach the Hugging Face Hub for {name!r}; {hint}") from None
    try:
        loaded = hf_datasets().load_dataset(name)
    except Exception as exc:  # the Hub raises many types: network, auth, missing repo
        raise UserError(f"cannot load {name!r} from the Hugging Face Hub ({exc}); {hint}") from None

    def reader(ds: datasets.Dataset, where: str) -> Reader:
        def read(size: int) -> Iterator[tuple[str, list[str], pa.Table]]:
            for table in ds.with_format("arrow").iter(batch_size=size):
                yield where, table.column_names, table
        return read

    splits = {s: Split(f"{name}[{s}]", reader(loaded[s], f"{name}[{s}]"), text_column,
                       label_column, unlabeled=s == "unsupervised")
              for s in SPLITS if s in loaded and (unsupervised or s != "unsupervised")}
    fingerprint = "hub:" + ",".join(f"{s}={loaded[s]._fingerprint}" for s in sorted(splits))
    return splits, fingerprint


def _from_folder(folder: Path, text_column: str, label_column: str, unsupervised: bool
                 ) -> tuple[dict[str, Split], str, list[str]]:
    """The splits of a folder of files named by split (`train.csv`, or shards as the Hub names
    them: `train-00000-of-00002.parquet`, `train-1.csv`; in any case), their fingerprint, and
    the data files that no split names (a `valid.parquet`: imdbsent makes its own; a
    `train_old.csv`), to be said. A split's files in two folders (a backup copy in a
    subfolder) are refused rather than read twice."""
    files, named, read = _split_files(folder, unsupervised)
    splits = {}
    used: list[Path] = []
    for split, mine in read.items():
        places = sorted({str(p.parent.relative_to(folder)) for p in mine})
        if len(places) > 1:
            raise UserError(f"{folder}: {split} files in {len(places)} folders ("
                            + ", ".join(str(p.relative_to(folder)) for p in mine)
                            + "): keep one split's files in one folder")
        formats = {LOCAL_FORMATS[p.suffix.lower()] for p in mine}
        if len(formats) > 1:
            raise UserError(f"{folder}: {split} split has files of several formats: "
                            + ", ".join(p.name for p in mine))
        where = str(mine[0]) if len(mine) == 1 else f"{folder}/{split}*"
        splits[split] = _file_split(formats.pop(), mine, where, text_column, label_column,
                                    split == "unsupervised")
        used += mine
    if not splits:
        raise UserError(f"{folder}: no train/test files (.parquet, .csv, .jsonl or .json) and "
                        "no aclImdb/")
    unnamed = [str(p.relative_to(folder)) for p in files if not any(p in m for m in named.values())]
    return splits, _hash_files(used), unnamed


def _split_files(folder: Path, unsupervised: bool
                 ) -> tuple[list[Path], dict[str, list[Path]], dict[str, list[Path]]]:
    """A folder source's data files, each split's among them by name, and those of the splits
    a load reads (not the unlabeled one unless `unsupervised`; none without files)."""
    files = _data_files(folder.rglob("*"))
    named = _by_split(files)
    read = {s: mine for s, mine in named.items()
            if mine and (unsupervised or s != "unsupervised")}
    return files, named, read


def _data_files(paths: Iterable[Path]) -> list[Path]:
    """The files among `paths` in a format a source may hold (.parquet, .csv, .jsonl, .json)."""
    return sorted(p for p in paths if p.suffix.lower() in LOCAL_FORMATS and p.is_file())


def _by_split(files: list[Path]) -> dict[str, list[Path]]:
    """Each split's files among `files`, by name (`train.csv`, `train-00000-of-00002.parquet`)."""
    return {s: [p for p in files if re.fullmatch(rf"{s}(-\d+(-of-\d+)?)?", p.stem, re.I)]
            for s in SPLITS}


def _file_split(fmt: str, paths: list[Path], where: str, text_column: str, label_column: str,
                unlabeled: bool = False) -> Split:
    for p in paths:
        if p.stat().st_size == 0:
            raise UserError(f"{p}: empty file")
    read_one = {"parquet": _parquet_pieces, "csv": _csv_pieces,
                "json": partial(_json_pieces, text_column=text_column)}[fmt]

    def read(size: int) -> Iterator[tuple[str, list[str], pa.Table | pa.RecordBatch]]:
        for p in paths:
            try:
                for names, piece in read_one(p, size):
                    yield str(p), names, piece
            except (pa.ArrowException, OSError, ValueError) as exc:
                why = (str(exc).splitlines() or [type(exc).__name__])[0]
                hint = " (imdbsent reads UTF-8 text)" if re.search("utf-?8", why, re.I) else ""
                raise UserError(f"{p}: cannot read as {fmt}: {why}{hint}") from None

    return Split(where, read, text_column, label_column, unlabeled)


def _parquet_pieces(path: Path, size: int) -> Iterator[tuple[list[str], pa.RecordBatch]]:
    """Record batches of `size` rows; memory is bounded by the file's row groups. Without
    pre-buffering: with it, pyarrow keeps every row group read so far until the file ends
    (memory grew by the size of the text read)."""
    pf = pq.ParquetFile(path, pre_buffer=False)
    names = pf.schema_arrow.names
    yield from ((names, b) for b in pf.iter_batches(batch_size=size))


def _csv_pieces(path: Path, size: int) -> Iterator[tuple[list[str], pa.RecordBatch]]:
    """Blocks of a CSV file, every column read as text (labels are mapped afterwards);
    quoted values may hold line breaks."""
    with open(path, "rb") as fh:
        header = fh.readline()
    names = next(csv.reader([header.decode("utf-8-sig")]), [])
    reader = pa_csv.open_csv(
        path, read_options=pa_csv.ReadOptions(block_size=_CSV_BLOCK),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in names},
                                              strings_can_be_null=False))
    for batch in reader:
        for start in range(0, batch.num_rows, size):
            yield batch.schema.names, batch.slice(start, size)


def _json_pieces(path: Path, size: int, text_column: str
                 ) -> Iterator[tuple[list[str], pa.Table]]:
    """`size` lines at a time of a JSON Lines file (blank lines skipped); a file holding one
    JSON array is read whole. `text_column` is checked where `_json_table` reads."""
    with open(path, "rb") as fh:
        if fh.read(64).removeprefix(codecs.BOM_UTF8).lstrip()[:1] == b"[":
            fh.seek(0)
            rows = json.load(fh)
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError("not a JSON array of objects")
            for start in range(0, len(rows), size):
                table = _json_table(rows[start:start + size], text_column, str(path), start + 1)
                yield table.column_names, table
            return
        fh.seek(0)
        block: list[bytes] = []
        done = 0  # rows in the blocks before this one
        for line in fh:
            if line.strip():
                block.append(line)
            if len(block) == size:
                yield _json_block(block, done, text_column, str(path))
                done += len(block)
                block = []
        if block:
            yield _json_block(block, done, text_column, str(path))


def _json_block(lines: list[bytes], done: int, text_column: str, where: str
                ) -> tuple[list[str], pa.Table]:
    """The table of a block of JSON lines that follows `done` rows of its file; pyarrow's
    "in row K" (from 0, within the block) is made the file's row, from 1, as a bad label's is.
    A column whose values change type (labels 1 and "pos") is read by `_json_table`. pyarrow
    parses in blocks that must each hold whole lines: one as long as the longest (its default,
    1 MiB, refused a review of 4 MB: "straddling object straddles two block boundaries")."""
    block_size = max(1 << 20, max(map(len, lines)) + 1)
    try:
        table = pa_json.read_json(io.BytesIO(b"".join(lines)),
                                  read_options=pa_json.ReadOptions(block_size=block_size))
    except pa.ArrowInvalid as exc:
        why = re.sub(r"in row (\d+)", lambda m: f"in row {done + int(m[1]) + 1}", str(exc))
        if "changed from" not in why:
            raise ValueError(why) from None
        rows = []  # pyarrow stopped at the change of type: the rest is parsed here
        for i, line in enumerate(lines, done + 1):
            try:
                rows.append(json.loads(line))
            except ValueError as bad:
                raise ValueError(f"row {i}: {bad}") from None
            if not isinstance(rows[-1], dict):
                raise ValueError(f"row {i}: not a JSON object") from None
        table = _json_table(rows, text_column, where, done + 1)
    return table.column_names, table


def _json_table(rows: list[dict[str, Any]], text_column: str, where: str, first_row: int
                ) -> pa.Table:
    """JSON objects as a table; a column whose values are of several types (labels 1 and
    "pos", read alike by `normalise_labels`) holds each as its JSON text, nulls kept; but
    texts are checked first, as that would make a text 5 the string "5" (a column of one
    type is checked by the split)."""
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        names = list(dict.fromkeys(key for row in rows for key in row))
        columns = {}
        for name in names:
            values = [row.get(name) for row in rows]
            try:
                columns[name] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                if name == text_column:
                    check_texts(values, where, first_row)
                columns[name] = pa.array([v if v is None or isinstance(v, str)
                                          else json.dumps(v) for v in values], pa.string())
        return pa.table(columns)


def source_files(folder: Path) -> list[str]:
    """The files that make `folder` look like a source imdbsent reads (split files in it or
    in a folder in it, as the Hub's `data/`; an aclImdb folder's label folders), relative to
    it; none for a folder that holds neither. Not deeper: a message asks, not a load."""
    if not folder.is_dir():
        return []
    root = _acl_root(folder)
    if root is not None:
        return [f"{(root / 'train' / label).relative_to(folder)}/" for label in ("neg", "pos")]
    files = _data_files(p for p in [*folder.glob("*"), *folder.glob("*/*")]
                        if not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return sorted(str(p.relative_to(folder)) for split in _by_split(files).values()
                  for p in split)


def _acl_root(folder: Path) -> Path | None:
    for root in (folder, folder / "aclImdb"):
        if (root / "train" / "pos").is_dir() and (root / "train" / "neg").is_dir():
            return root
    return None


def _acl_folder(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(root.glob("*/*/*.txt")):
        yield f"aclImdb/{path.relative_to(root).as_posix()}", path.read_bytes()


def _tar_members(path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and _ACL_MEMBER.search(member.name):
                    yield member.name, tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        why = next(iter(str(exc).splitlines()), type(exc).__name__).rstrip(":")  # tarfile
        # lists each compression it tried, a line each
        raise UserError(f"{path}: not a readable tar archive ({why})") from None


def _spool_acl(members: Iterator[tuple[str, bytes]], where: str, unsupervised: bool,
               folder: Path) -> tuple[dict[str, Split], str]:
    """Write aclImdb review files, grouped into splits by their folder (train/pos, test/neg,
    train/unsup), to one Parquet file a split in `folder`, a chunk at a time; then put each
    split in the Hub's order (`_acl_order`), so that the seeded split of the same reviews is
    the same whichever copy of IMDB they came from."""
    writers: dict[str, pq.ParquetWriter] = {}
    pending: dict[str, tuple[list[str], list[int]]] = {}
    keys: dict[str, list[tuple[int, int, str]]] = {}
    digest = hashlib.sha256()

    def flush(split: str) -> None:
        texts, labels = pending.pop(split)
        if split not in writers:
            writers[split] = pq.ParquetWriter(folder / f"{split}.parquet", _SCHEMA)
        writers[split].write_table(pa.table({"text": texts, "label": labels}, schema=_SCHEMA))

    try:
        for name, data in members:
            split, kind = _ACL_MEMBER.search(name).groups()
            if kind == "unsup":
                if not unsupervised:
                    continue
                split = "unsupervised"
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{where}: {name} is not UTF-8 text") from None
            digest.update(name.encode() + b"\0" + data)
            texts, labels = pending.setdefault(split, ([], []))
            texts.append(text)
            labels.append({"pos": 1, "neg": 0, "unsup": -1}[kind])
            keys.setdefault(split, []).append(_acl_order(name, labels[-1]))
            if len(texts) >= CHUNK_ROWS:
                flush(split)
        for split in list(pending):
            flush(split)
    finally:
        for writer in writers.values():
            writer.close()
    if "train" not in writers:
        raise UserError(f"{where}: not an aclImdb archive (no aclImdb/train/pos/*.txt inside)")
    for split, order in keys.items():
        if order != sorted(order):  # an archive's members, or a folder's files, in name order
            path = folder / f"{split}.parquet"
            table = pq.read_table(path)  # one split of IMDB: some 30-70 MB of text
            pq.write_table(table.take(sorted(range(len(order)), key=order.__getitem__)), path)
    splits = {s: _file_split("parquet", [folder / f"{s}.parquet"], f"{where} [{s}]", "text",
                             "label", s == "unsupervised") for s in writers}
    return splits, "sha256:" + digest.hexdigest()


def _acl_order(name: str, label: int) -> tuple[int, int, str]:
    """Where a review file goes in its split, as the Hub's copy of IMDB orders them: negative
    before positive, then by the file's number (`123_4.txt`: 123), not by name (where 10_2
    comes before 9_1)."""
    number = Path(name).stem.split("_")[0]
    return label, int(number) if number.isdigit() else -1, name


def local_path(source: str) -> str | None:
    """A local source's absolute path, however it was spelled; None for the Hub."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else None


def local_stamp(source: str) -> str | None:
    """The names, sizes and modification times of a local source's files (a folder's: every
    file under it), hashed: cheap to take, and another once a file is edited, added or
    removed. None for a source that is not on this machine (the Hub)."""
    path = Path(source).expanduser()
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for p in files:
        st = p.stat()
        digest.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "stat:" + digest.hexdigest()


def local_fingerprint(source: str, unsupervised: bool) -> str | None:
    """The fingerprint that loading a local folder of split files records (their contents,
    hashed), without parsing them: well under a second for IMDB, where `local_stamp` changes
    whenever the files are copied or touched. None for another source (the Hub, aclImdb)."""
    path = Path(source).expanduser()
    if not path.is_dir() or is_acl(path):
        return None
    read = _split_files(path, unsupervised)[2]
    return _hash_files([p for mine in read.values() for p in mine])


def _hash_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in sorted(paths):
        digest.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()
