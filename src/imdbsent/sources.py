"""Where IMDB comes from: the Hugging Face Hub, a folder of Parquet/CSV/JSONL files named by
split, or the original Stanford `aclImdb/` folder or `aclImdb_v1.tar.gz` archive.

Every source yields the same thing: `datasets.Dataset` splits with a `text` string column and an
int `label` column (0 = negative, 1 = positive; -1 for the unlabeled `unsupervised` split).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets

from imdbsent.config import HUB_DEFAULT
from imdbsent.errors import UserError

SPLITS = ("train", "test", "unsupervised")
LOCAL_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
LABEL_NAMES = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1}
_ACL_MEMBER = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg|unsup)/[^/]+\.txt$")

datasets.logging.set_verbosity_error()
datasets.disable_progress_bars()


@dataclass
class Source:
    """A loaded source: its splits (train, test, maybe unsupervised) and a fingerprint of its bytes."""

    name: str
    splits: dict[str, datasets.Dataset]
    fingerprint: str


def load_source(
    source: str = HUB_DEFAULT,
    *,
    text_column: str = "text",
    label_column: str = "label",
    unsupervised: bool = True,
) -> Source:
    """Load IMDB from `source` (a Hub name, a folder, or an aclImdb tarball) and check its labels."""
    path = Path(source).expanduser()
    if path.exists():
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
            splits, fingerprint = _from_tarball(path, unsupervised)
        elif path.is_dir() and _acl_root(path) is not None:
            splits, fingerprint = _from_acl_folder(_acl_root(path), unsupervised)
        elif path.is_dir():
            splits, fingerprint = _from_folder(path, text_column, label_column, unsupervised)
        else:
            raise UserError(
                f"{path}: not a source imdbsent reads (a folder of Parquet/CSV/JSONL files named "
                "by split, an aclImdb/ folder, or aclImdb_v1.tar.gz)"
            )
    elif _looks_like_path(source):
        raise UserError(f"{source}: no such file or folder")
    else:
        splits, fingerprint = _from_hub(source, unsupervised)
    for required in ("train", "test"):
        if required not in splits:
            raise UserError(f"{source}: no {required!r} split found")
    return Source(name=source, splits=splits, fingerprint=fingerprint)


def normalise_labels(raw: list, where: str, row_offset: int = 1) -> list[int]:
    """Map 0/1/neg/pos labels (as ints or strings) to 0/1; anything else names file and row."""
    out: list[int] = []
    for i, value in enumerate(raw):
        key = str(value).strip().lower() if value is not None else ""
        if isinstance(value, float) and value.is_integer():
            key = str(int(value))
        if key not in LABEL_NAMES:
            raise UserError(
                f"{where}, row {i + row_offset}: label {value!r} is not one of 0, 1, neg, pos"
            )
        out.append(LABEL_NAMES[key])
    return out


def read_labeled_file(path: Path, text_column: str = "text", label_column: str = "label"
                      ) -> datasets.Dataset:
    """One labeled CSV/JSONL/Parquet file as a Dataset of text and 0/1 label (for evaluate)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    fmt = LOCAL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown format (use .parquet, .csv or .jsonl)")
    return _labeled(_read_files(fmt, [path]), str(path), text_column, label_column)


def duplicate_rows(ds: datasets.Dataset) -> list[int]:
    """Row numbers (1-based) of texts already seen earlier in the same split."""
    seen: set[str] = set()
    dups = []
    for i, text in enumerate(ds["text"]):
        if text in seen:
            dups.append(i + 1)
        seen.add(text)
    return dups


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") != 1


def _from_hub(name: str, unsupervised: bool) -> tuple[dict[str, datasets.Dataset], str]:
    hint = "use --source PATH for a local copy (Parquet/CSV/JSONL folder, aclImdb/ or its tarball)"
    if not os.environ.get("HF_HUB_OFFLINE") and not os.environ.get("HF_DATASETS_OFFLINE"):
        try:
            socket.create_connection(("huggingface.co", 443), timeout=5).close()
        except OSError:
            raise UserError(f"cannot reach the Hugging Face Hub for {name!r}; {hint}") from None
    try:
        loaded = datasets.load_dataset(name)
    except Exception as exc:  # the Hub raises many types: network, auth, missing repo
        raise UserError(f"cannot load {name!r} from the Hugging Face Hub ({exc}); {hint}") from None
    splits = {s: _labeled(loaded[s], f"{name}[{s}]", "text", "label", s == "unsupervised")
              for s in SPLITS if s in loaded and (unsupervised or s != "unsupervised")}
    fingerprint = "hub:" + ",".join(f"{s}={d._fingerprint}" for s, d in sorted(splits.items()))
    return splits, fingerprint


def _from_folder(folder: Path, text_column: str, label_column: str, unsupervised: bool
                 ) -> tuple[dict[str, datasets.Dataset], str]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in LOCAL_FORMATS and p.is_file())
    splits = {}
    used: list[Path] = []
    for split in SPLITS:
        if split == "unsupervised" and not unsupervised:
            continue
        mine = [p for p in files if re.match(rf"{split}([-_.]|$)", p.stem)]
        if not mine:
            continue
        formats = {LOCAL_FORMATS[p.suffix.lower()] for p in mine}
        if len(formats) > 1:
            raise UserError(f"{folder}: {split} split has files of several formats: "
                            + ", ".join(p.name for p in mine))
        ds = _read_files(formats.pop(), mine)
        where = str(mine[0]) if len(mine) == 1 else f"{folder}/{split}*"
        splits[split] = _labeled(ds, where, text_column, label_column, split == "unsupervised")
        used += mine
    if not splits:
        raise UserError(f"{folder}: no train/test files (.parquet, .csv or .jsonl) and no aclImdb/")
    return splits, _hash_files(used)


def _read_files(fmt: str, paths: list[Path]) -> datasets.Dataset:
    for p in paths:
        if p.stat().st_size == 0:
            raise UserError(f"{p}: empty file")
    try:
        return datasets.load_dataset(fmt, data_files=[str(p) for p in paths], split="train")
    except Exception as exc:  # parser errors come in many types; name the file, not a traceback
        names = ", ".join(str(p) for p in paths)
        if "corresponds to no data" in str(exc):  # a header and nothing else
            raise UserError(f"{names}: no rows") from None
        raise UserError(f"{names}: cannot read as {fmt}: {str(exc).splitlines()[0]}") from None


def _labeled(ds: datasets.Dataset, where: str, text_column: str, label_column: str,
             unlabeled: bool = False) -> datasets.Dataset:
    """Keep `text` and `label` columns, labels checked and mapped to 0/1 (-1 when unlabeled)."""
    if len(ds) == 0:
        raise UserError(f"{where}: no rows")
    for column in (text_column, label_column) if not unlabeled else (text_column,):
        if column not in ds.column_names:
            raise UserError(f"{where}: no {column!r} column (columns: {', '.join(ds.column_names)})")
    texts = ds[text_column]
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise UserError(f"{where}, row {i + 1}: text is {t!r}, not a string")
    if unlabeled:
        labels = [-1] * len(texts)
    else:
        labels = normalise_labels(ds[label_column], where)
    return datasets.Dataset.from_dict(
        {"text": texts, "label": labels},
        features=datasets.Features({"text": datasets.Value("string"),
                                    "label": datasets.Value("int64")}),
    )


def _acl_root(folder: Path) -> Path | None:
    for root in (folder, folder / "aclImdb"):
        if (root / "train" / "pos").is_dir() and (root / "train" / "neg").is_dir():
            return root
    return None


def _from_acl_folder(root: Path, unsupervised: bool) -> tuple[dict[str, datasets.Dataset], str]:
    def members() -> Iterator[tuple[str, bytes]]:
        for path in sorted(root.glob("*/*/*.txt")):
            yield f"aclImdb/{path.relative_to(root).as_posix()}", path.read_bytes()

    return _acl_splits(members(), str(root), unsupervised)


def _from_tarball(path: Path, unsupervised: bool) -> tuple[dict[str, datasets.Dataset], str]:
    def members() -> Iterator[tuple[str, bytes]]:
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile() and _ACL_MEMBER.search(member.name):
                        yield member.name, tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UserError(f"{path}: not a readable tar archive ({exc})") from None

    return _acl_splits(members(), str(path), unsupervised)


def _acl_splits(members: Iterator[tuple[str, bytes]], where: str, unsupervised: bool
                ) -> tuple[dict[str, datasets.Dataset], str]:
    """Group aclImdb review files into splits by their folder: train/pos, test/neg, train/unsup."""
    rows: dict[str, tuple[list[str], list[int]]] = {}
    digest = hashlib.sha256()
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
        texts, labels = rows.setdefault(split, ([], []))
        texts.append(text)
        labels.append({"pos": 1, "neg": 0, "unsup": -1}[kind])
    if "train" not in rows:
        raise UserError(f"{where}: not an aclImdb archive (no aclImdb/train/pos/*.txt inside)")
    splits = {s: datasets.Dataset.from_dict({"text": t, "label": lab}) for s, (t, lab) in rows.items()}
    return splits, "sha256:" + digest.hexdigest()


def _hash_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in sorted(paths):
        digest.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()
