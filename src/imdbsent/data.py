"""The prepared dataset: seeded stratified split, vocabulary, encoded splits on disk, and
length-bucketed batches built without per-example Python work.

On disk (`--out`, default data/imdb): `train/valid/test[/unsupervised].parquet` (token ids and
label), `tokenizer.json`, `vectors.txt` (word vectors learned from the training and unlabeled
reviews, unless `vectors_dim` is 0), and `manifest.json`, written last, so a folder without a
manifest is never taken for a finished one. `prepare` holds the folder's lock (`.lock`) while it
builds, so two never write one folder at once.

Reviews that occur more than once in the source's train split (IMDB has 96) stay together: after
the seeded split, the valid copies of a review that also sits in train move to train, so no
review is on both sides. The manifest records how many moved, and how many reviews of valid,
test and unsupervised also occur, exactly, in train.

`prepare` streams (`_build`): it holds one chunk of reviews at a time (`sources.CHUNK_ROWS`)
and about 40 bytes a review (label, text digest, split order, token offset), so its memory does
not grow with the text: a corpus of ten million reviews needs about 400 MB beyond the chunk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer

from imdbsent import __version__, distributed, sources, text, vectors, word2vec
from imdbsent.config import DATA_DEFAULT, HUB_DEFAULT, SEED_LIMIT, flag
from imdbsent.errors import BadValue, UserError, briefly
from imdbsent.fsutil import LOCK_NAME, FolderLock, atomic_write, atomic_write_text, is_locked
from imdbsent.sources import Source, Split, load_source
from imdbsent.text import TOKENIZER

if TYPE_CHECKING:  # not at run time: see sources.hf_datasets
    import datasets

T = TypeVar("T")

MANIFEST = "manifest.json"
VECTORS = "vectors.txt"  # word vectors learned in prepare, GloVe text format
PREPARED_VECTORS = "prepared"  # a config's `vectors` value that names them
POOL_BATCHES = 100  # bucketing pool, as torchtext's BucketIterator: sort 100 batches by length
# What prepare makes from the same arguments: a folder of an older format is rebuilt, not reused.
# 2: duplicate reviews kept on one side of the train/valid split; overlap counts; a build id.
PREPARE_FORMAT = 2
IDLE_VECTORS = 0.98  # word vectors whose last epoch's loss is above this share of the untrained
Report = Callable[[str], None]
Tick = Callable[[int], None]  # rows done so far in a stage
Progress = Callable[..., None]  # (stage, done, total=None)


@dataclass(frozen=True)
class PrepareArgs:
    """Everything that decides a prepared dataset's content; a change to any of it rebuilds."""

    source: str
    split_ratio: float = 0.7
    seed: int = 1234
    max_vocab: int = 25_000
    min_freq: int = 1
    unsupervised: bool = True
    vectors_dim: int = 128
    vectors_tokens: int = 25_000_000
    text_column: str = "text"
    label_column: str = "label"

    def check(self) -> None:
        if not self.source:  # "" would read the current folder (`Path("")` is ".")
            raise BadValue("source", "must not be empty (. is this folder)")
        for name, ok, rule in [
                ("split_ratio", 0.0 < self.split_ratio < 1.0, "between 0 and 1"),
                ("seed", 0 <= self.seed < SEED_LIMIT, f"in 0..{SEED_LIMIT - 1}"),
                ("max_vocab", self.max_vocab >= 1, "at least 1"),
                ("min_freq", self.min_freq >= 1, "at least 1"),
                ("vectors_dim", self.vectors_dim >= 0, "0 (none) or more"),
                ("vectors_tokens", self.vectors_tokens >= 1, "at least 1")]:
            if not ok:
                raise BadValue(name, f"must be {rule}, not {getattr(self, name)}")

    def flags(self) -> str:
        """prepare's flags for these arguments (those off the defaults), to paste in a shell."""
        default = PrepareArgs(HUB_DEFAULT)
        parts = []
        for name in (f.name for f in dataclasses.fields(self)):
            value = getattr(self, name)
            if value == getattr(default, name):
                continue
            if isinstance(value, bool):
                parts.append(flag(name) if value else f"--no-{flag(name)[2:]}")
            else:
                parts += [flag(name), shlex.quote(str(value))]
        return " ".join(parts)


def prepared_args(folder: Path) -> PrepareArgs | None:
    """The arguments `folder`'s dataset was prepared with, where its manifest says them."""
    manifest = _parse_manifest(_read_manifest_bytes(Path(folder))) or {}
    args = manifest.get("args")
    if not isinstance(args, dict) or not isinstance(args.get("source"), str):
        return None
    known = {f.name for f in dataclasses.fields(PrepareArgs)}
    return PrepareArgs(**{k: v for k, v in args.items() if k in known})


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """Where each of a run of examples of these lengths starts, end to end, and where the last
    ends (one longer than `lengths`)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


@dataclass
class Encoded:
    """One encoded split: all token ids end to end (`flat`), each example's start (`offsets`,
    one longer than the split) and its label. Slicing never copies per example."""

    flat: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_lists(cls, ids: list[list[int]], labels: list[int] | np.ndarray) -> Encoded:
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        offsets = offsets_of(lengths)
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets, np.asarray(labels, dtype=np.int64))

    def take(self, rows: np.ndarray) -> Encoded:
        """The examples `rows`, in that order (no Python loop per example)."""
        lengths = self.lengths[rows]
        offsets = offsets_of(lengths)
        index = np.arange(offsets[-1]) + np.repeat(self.offsets[rows] - offsets[:-1], lengths)
        return Encoded(self.flat[index], offsets, self.labels[rows])


@dataclass
class Prepared:
    """A prepared dataset folder, loaded: its manifest, tokenizer, and splits on demand."""

    folder: Path
    manifest: dict
    tokenizer: Tokenizer
    _cache: dict[str, Encoded] = field(default_factory=dict)
    manifest_bytes: bytes | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        """"sha256:" and the hex digest of the manifest's bytes as loaded: which prepared data
        this is. Every rebuild changes it (the manifest holds a random id of its build), so a
        run can record the data it trained on and notice data rebuilt under it."""
        raw = self.manifest_bytes
        if raw is None:
            raw = (self.folder / MANIFEST).read_bytes()
        return _fingerprint(raw)

    def check_unchanged(self) -> None:
        """Refuse to go on if the folder was prepared again since it was loaded (a run trains
        on one dataset and tests on the same)."""
        now = _read_manifest_bytes(self.folder)
        if now is None or _fingerprint(now) != self.fingerprint:
            raise UserError(f"{self.folder} changed while in use (prepared again); the run's "
                            "checkpoints are kept, but it was not tested on the new data")

    def split(self, name: str, missing: str = "run imdbsent prepare again") -> Encoded:
        """The split's token ids; a missing one is a user error that says `missing` to do."""
        if name not in self._cache:
            self._cache[name] = read_encoded(self.require(name, missing))
        return self._cache[name]

    def unlabeled_stream(self) -> np.ndarray:
        """The token ids of the training split and the unlabeled reviews (when prepared), end
        to end: what may be learned from before training without labels, never valid or test
        reviews."""
        return np.concatenate([self.split(n).flat for n in ("train", "unsupervised")
                               if self.has(n)])

    def has(self, name: str) -> bool:
        """Whether the split was prepared (`unsupervised` may not be)."""
        return name in self._cache or (self.folder / f"{name}.parquet").exists()

    def require(self, name: str, missing: str = "run imdbsent prepare again") -> Path:
        """The split's file, refused now if missing (for a split read later: the test split,
        after every epoch has trained)."""
        path = self.folder / f"{name}.parquet"
        if name not in self._cache and not path.exists():
            raise UserError(f"{self.folder}: no {name!r} split ({missing})")
        return path

    def vectors_file(self, setting: str) -> Path:
        """The vectors file a config's `vectors` names: `prepared` is this dataset's own."""
        if setting != PREPARED_VECTORS:
            return Path(setting)
        if not self.manifest.get("vectors"):
            raise UserError(f"{self.folder} has no word vectors of its own (prepared with "
                            "--vectors-dim 0 or by an older imdbsent): prepare it again with "
                            f"--vectors-dim {PrepareArgs.vectors_dim} (or another size above "
                            "0), or train with --vectors none")
        return self.folder / VECTORS


class TrainValid(NamedTuple):
    """The source's train split divided: `moved` valid rows went to train, being copies of a
    review that the seeded split had put in train."""

    train: datasets.Dataset
    valid: datasets.Dataset
    moved: int


@dataclass
class Batch:
    """Padded token ids [batch, time] (pad id 0), true lengths (on the CPU), labels as floats."""

    text: torch.Tensor
    lengths: torch.Tensor
    label: torch.Tensor

    def pinned(self) -> Batch:
        """The batch in page-locked memory, so that `to(cuda)` copies it asynchronously."""
        return Batch(self.text.pin_memory(), self.lengths, self.label.pin_memory())

    def to(self, device: torch.device) -> Batch:
        return Batch(self.text.to(device, non_blocking=True), self.lengths,
                     self.label.to(device, non_blocking=True))


def prepare(args: PrepareArgs, out: Path, *, force: bool = False,
            report: Report = lambda _msg: None,
            progress: Progress = lambda _stage, _done, total=None: None) -> tuple[dict, bool]:
    """Build the prepared dataset in `out`, or reuse it when made with the same arguments.

    Returns the manifest and whether it was (re)built. `report` receives one line per step,
    `progress(stage, done, total)` the count of rows (or epochs) done in a stage so far.
    Building holds `out`'s lock: a second prepare into the same folder stops with a UserError.
    """
    args.check()
    sources.check(args.source, args.text_column, args.label_column)
    out = Path(out)
    _check_apart(args.source, out)
    wanted = {"args": dataclasses.asdict(args), "source_path": sources.local_path(args.source),
              "source_stamp": sources.local_stamp(args.source)}
    existing = _read_manifest(out)
    if not force and _reusable(out, existing, wanted) and not is_locked(out):
        return existing, False  # (no lock needed to read; a read-only copy stays usable)
    _check_foreign(out, existing)
    made = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)  # the
    try:  # first folder this makes (data/ for data/imdb in a fresh folder), if any
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocked = next((p for p in [out, *out.parents] if p.exists() and not p.is_dir()), None)
        raise UserError(f"--out {out}: {blocked} exists and is not a folder" if blocked
                        else f"cannot create {out}: {exc.strerror or exc}") from None
    try:
        with FolderLock(out, "prepare", advice="wait for it to finish or use another --out"):
            existing = _read_manifest(out)  # what the holder before us left
            if not force and _reusable(out, existing, wanted):
                return existing, False
            if existing and not force:
                report(f"{out}: {_why_rebuild(out, existing, wanted)}: preparing again")
            return _build(args, out, wanted, existing, report, progress), True
    except BaseException:
        if made:  # the folders this failed prepare made hold nothing of use
            shutil.rmtree(made, ignore_errors=True)
        raise


def _build(args: PrepareArgs, out: Path, wanted: dict, old: dict | None, report: Report,
           progress: Progress) -> dict:
    """Build in a folder of its own inside `out`, then move the result in: until the build is
    complete (a bad source, a full disk, Ctrl-C), the dataset already in `out` (`old`, its
    manifest) stays whole."""
    for scratch in out.glob(".build-*"):  # a killed build's
        shutil.rmtree(scratch, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    try:
        manifest = _build_into(args, stage, wanted, report, progress)
        (out / MANIFEST).unlink(missing_ok=True)  # from here on, a crash leaves "not prepared"
        for name in set(_files(old) if old else []) - set(_files(manifest)):
            (out / name).unlink(missing_ok=True)
        for name in _files(manifest):
            os.replace(stage / name, out / name)
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        return manifest
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _build_into(args: PrepareArgs, out: Path, wanted: dict, report: Report, progress: Progress
                ) -> dict:
    """Stream the source into `out`, holding a chunk of reviews at a time and a few bytes a
    review: scan (labels and text digests), split, vocabulary (the training reviews' words
    counted chunk by chunk), encoding (each split written as Parquet row groups as it goes),
    and the word vectors (within a token budget). Returns the manifest, which it leaves to
    the caller to write."""
    with load_source(args.source, text_column=args.text_column, label_column=args.label_column,
                     unsupervised=args.unsupervised, scratch=out) as source:
        scans = {name: scan(split, partial(progress, f"reading {name}"))
                 for name, split in source.splits.items()}
        report(f"read {args.source}: " + ", ".join(f"{len(sc.labels):,} {name}"
                                                  for name, sc in scans.items()))
        if args.unsupervised and "unsupervised" not in scans:
            report(f"{args.source} has no unsupervised split: prepared without unlabeled "
                   "reviews")
        warnings = _scan_warnings(source.name, scans)
        if source.ignored:
            warnings.insert(0, f"{source.name}: ignored {', '.join(source.ignored)}: files are "
                            "read by split name (train, test, unsupervised), and the validation "
                            "split is made from train (--split-ratio)")
        for w in warnings:
            report(f"warning: {w}")
        train_rows, valid_rows, moved, overlap = _split(args, scans, report)
        for name, count in overlap.items():
            if count:
                warnings.append(f"{source.name} [{name}]: {count:,} review(s) also in the train "
                                "split (exact copies)")
                report(f"warning: {warnings[-1]}")
        report(f"building the vocabulary from {len(train_rows):,} training reviews")
        is_train = np.zeros(len(scans["train"].labels), dtype=bool)
        is_train[train_rows] = True
        tok = text.fit_tokenizer(_texts(source.splits["train"], is_train,
                                        partial(progress, "vocabulary", total=len(train_rows))),
                                 args.max_vocab, args.min_freq, length=len(train_rows))
        if tok.get_vocab_size() <= 2:  # <pad> and <unk> alone: every review all <unk>
            why = (f"no word occurs {args.min_freq:,} times in" if args.min_freq > 1
                   else "there are no words in")
            raise UserError(f"{why} the {len(train_rows):,} training reviews, so the vocabulary "
                            "would be empty" + (": lower --min-freq" if args.min_freq > 1 else ""))
        atomic_write(out / TOKENIZER, lambda tmp: text.save(tok, tmp))
        counts, tokens = _encode(source, scans, {"train": train_rows, "valid": valid_rows}, tok,
                                 out, report, progress)
    if args.vectors_dim and (idle := _learn_vectors(args, tok, out, tokens, report, progress)):
        warnings.append(idle)
        report(f"warning: {idle}")
    return {
        "tool": "imdbsent",
        "version": __version__,
        "format": PREPARE_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build": secrets.token_hex(8),  # so that every rebuild has a fingerprint of its own
        "args": dataclasses.asdict(args),
        "source_fingerprint": source.fingerprint,
        "source_path": wanted["source_path"],
        "source_stamp": wanted["source_stamp"],
        "vocab_size": tok.get_vocab_size(),
        "splits": counts,
        "tokens": tokens,
        "duplicates_moved_to_train": moved,
        "overlap_with_train": overlap,
        "vectors": VECTORS if args.vectors_dim else None,
        "warnings": warnings,
    }


def _split(args: PrepareArgs, scans: dict[str, Scan], report: Report
           ) -> tuple[np.ndarray, np.ndarray, int, dict[str, int]]:
    """The source's train split divided into train and valid rows (`split_rows`), the copies
    moved, and how many reviews of each other split also occur, exactly, in train."""
    report(f"splitting train {args.split_ratio:g}/{1 - args.split_ratio:g} with seed "
           f"{args.seed}")
    source_train = scans["train"]
    train_rows, valid_rows, moved = split_rows(source_train.labels, source_train.digests,
                                               args.split_ratio, args.seed)
    if moved:
        report(f"moved {moved:,} valid review(s) to train: copies of reviews in train")
    in_train = source_train.digests[train_rows]
    overlap = {"valid": 0, **{name: int(np.isin(sc.digests, in_train).sum())
                              for name, sc in scans.items() if name != "train"}}
    return train_rows, valid_rows, moved, overlap


def _encode(source: Source, scans: dict[str, Scan], orders: dict[str, np.ndarray],
            tok: Tokenizer, out: Path, report: Report, progress: Progress
            ) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Encode and write every split: train and valid (`orders`: their rows of the source's
    train split, in order) gathered from a scratch file of that split's ids, the others as
    they are read. Returns each split's label counts and tokens."""
    labels = scans["train"].labels
    counts = {name: _label_counts(labels[rows]) for name, rows in orders.items()}
    tokens = {}
    report(f"encoding train and valid ({len(labels):,} reviews)")
    with tempfile.TemporaryDirectory(prefix=".encoded-", dir=out) as tmp:
        spool = Spool.encode(source.splits["train"], tok, Path(tmp) / "train.ids",
                             partial(progress, "encoding train and valid", total=len(labels)))
        for name, rows in orders.items():
            tokens[name] = write_encoded(out / f"{name}.parquet", spool.gather(rows))
    for name, sc in scans.items():
        if name == "train":
            continue
        report(f"encoding {name} ({len(sc.labels):,} reviews)")
        tokens[name] = write_encoded(out / f"{name}.parquet", _encode_chunks(
            source.splits[name], tok, partial(progress, f"encoding {name}",
                                              total=len(sc.labels))))
        counts[name] = _label_counts(sc.labels)
    return counts, tokens


@dataclass
class Scan:
    """What one pass over a source split finds: each review's label and text digest, and the
    row numbers (from 1) of the reviews with no text but spaces."""

    labels: np.ndarray
    digests: np.ndarray
    blank: list[int]


def scan(split: Split, tick: Tick = lambda _done: None) -> Scan:
    """Read a split once for its labels and text digests (`tick(rows read so far)`)."""
    labels, digests, blank = [], [], []
    done = 0
    for chunk in split.chunks():
        labels.append(chunk.labels)
        digests.append(text_digests(chunk.texts))
        blank += [done + i + 1 for i, t in enumerate(chunk.texts) if not t.strip()]
        done += len(chunk.texts)
        tick(done)
    return Scan(np.concatenate(labels), np.concatenate(digests), blank)


def _texts(split: Split, keep: np.ndarray, tick: Tick) -> Iterator[str]:
    """The texts of the split's rows where `keep` is true, in source order."""
    done = 0
    for chunk in split.chunks():
        mine = keep[chunk.start:chunk.start + len(chunk.texts)]
        for t, k in zip(chunk.texts, mine):
            if k:
                yield t
        done += int(mine.sum())
        tick(done)


def _encode_chunks(split: Split, tok: Tokenizer, tick: Tick) -> Iterator[Encoded]:
    """Each chunk of the split, encoded (by the tokenizer's batch encoder, in parallel)."""
    for chunk in split.chunks():
        yield Encoded.from_lists(text.encode(tok, chunk.texts), chunk.labels)
        tick(chunk.start + len(chunk.texts))


@dataclass
class Spool:
    """A split's token ids, encoded in source order into a scratch file, so that rows can be
    gathered in any order (a seeded split's) without holding them: only each review's offset
    and label stay in memory."""

    path: Path
    offsets: np.ndarray
    labels: np.ndarray

    @classmethod
    def encode(cls, split: Split, tok: Tokenizer, path: Path, tick: Tick) -> Spool:
        offsets, labels = [np.zeros(1, dtype=np.int64)], []
        end = 0
        with open(path, "wb") as fh:
            for enc in _encode_chunks(split, tok, tick):
                fh.write(enc.flat.astype(np.int32, copy=False).tobytes())
                offsets.append(enc.offsets[1:] + end)
                labels.append(enc.labels)
                end += len(enc.flat)
        return cls(path, np.concatenate(offsets), np.concatenate(labels))

    def gather(self, rows: np.ndarray) -> Iterator[Encoded]:
        """The rows, in the given order, a chunk at a time."""
        item, size = np.dtype(np.int32).itemsize, sources.CHUNK_ROWS
        with open(self.path, "rb") as fh:
            fd = fh.fileno()
            for first in range(0, len(rows), size):
                idx = rows[first:first + size]
                starts, ends = self.offsets[idx], self.offsets[idx + 1]
                flat = np.frombuffer(b"".join(os.pread(fd, int(e - s) * item, int(s) * item)
                                              for s, e in zip(starts, ends)), dtype=np.int32)
                yield Encoded(flat, offsets_of(ends - starts), self.labels[idx])


def _learn_vectors(args: PrepareArgs, tok: Tokenizer, out: Path, tokens: dict[str, int],
                   report: Report, progress: Progress) -> str | None:
    """Word vectors from the training split and the unlabeled reviews (never valid or test),
    or, beyond `args.vectors_tokens` tokens, from a seeded sample of their reviews of about
    that many tokens. Returns a warning when their loss barely fell (too few tokens)."""
    names = [n for n in ("train", "unsupervised") if n in tokens]
    total = sum(tokens[n] for n in names)
    keep = min(1.0, args.vectors_tokens / total) if total else 1.0
    stream = sample_ids([out / f"{n}.parquet" for n in names], keep, args.seed)
    sampled = f", a sample of {keep:.1%} of their reviews" if keep < 1.0 else ""
    report(f"learning {args.vectors_dim}-dimensional word vectors from {' and '.join(names)} "
           f"({len(stream):,} tokens{sampled})")
    w2v = word2vec.Word2VecArgs(dim=args.vectors_dim, seed=args.seed)
    losses: list[float] = []

    def epoch_done(epoch: int, loss: float) -> None:
        losses.append(loss)
        progress("word vectors", epoch, total=w2v.epochs)

    start = time.time()
    weights = word2vec.train_vectors(stream, tok.get_vocab_size(), w2v, report=epoch_done)
    report(f"word vectors: {time.time() - start:.0f} s, loss by epoch "
           + ", ".join(f"{x:.3f}" for x in losses))
    atomic_write(out / VECTORS, lambda tmp: vectors.write_text(tmp, tok, weights))
    untrained = word2vec.untrained_loss(w2v)
    if losses and losses[-1] > IDLE_VECTORS * untrained:  # on IMDB: 4.16 untrained, 2.16 at 5
        return (f"the word vectors barely learned from {len(stream):,} tokens (loss "
                f"{untrained:.3f} untrained, {losses[-1]:.3f} at the end): a recipe that starts "
                "from them (vectors = \"prepared\") may do as well with --vectors none")
    return None


def sample_ids(paths: list[Path], keep: float, seed: int) -> np.ndarray:
    """The token ids of the encoded splits in `paths`, end to end, of each review with
    probability `keep` (seeded; all of them at 1.0), read a row group at a time."""
    rng = np.random.default_rng([seed, 2])
    parts = []
    for path in paths:
        for enc in iter_encoded(path):
            if keep < 1.0:
                enc = enc.take(np.flatnonzero(rng.random(len(enc)) < keep))
            parts.append(enc.flat)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def load_prepared(folder: Path, flags: Callable[[], str] = str) -> Prepared:
    """Open a prepared dataset; a missing one says how to make it (with prepare's `flags`,
    worked out only then)."""
    folder = Path(folder)
    raw = _read_manifest_bytes(folder)
    manifest = _parse_manifest(raw)
    if manifest is None:
        raise _not_prepared(folder, flags)
    tok = text.load(folder / TOKENIZER, fix="run imdbsent prepare --force")
    return Prepared(folder, manifest, tok, manifest_bytes=raw)


def _not_prepared(folder: Path, flags: Callable[[], str]) -> UserError:
    """What to say of a folder that holds no prepared dataset: the command that prepares
    one there if it is missing, empty or prepare's own (a rebuild killed before its
    manifest); else the prepared datasets one level down (the folder above the one meant),
    or what it holds, a source's files first, with the command that prepares a source
    elsewhere (prepared into, its files would mix with a source's or someone's)."""
    prepare = (f"prepare it with imdbsent prepare --source {folder} --out OTHER_FOLDER, and "
               "give that folder")
    if folder.exists() and not folder.is_dir():  # prepare --out there would fail too
        if sources.is_acl(folder):  # by its name: .tar.gz, .tgz, .tar
            return UserError(f"{folder} is an archive, not a prepared dataset: if it is "
                             f"aclImdb's, {prepare}")
        return UserError(f"{folder} is a file, not a prepared dataset folder")
    try:
        held = _visible(folder) if folder.is_dir() else set()
    except OSError as exc:
        return UserError(f"{folder}: cannot read: {exc.strerror}")
    if held and not _prepares_own(folder, None, held):
        inside = sorted(str(folder / n) for n in held
                        if _made_by_prepare(_parse_manifest(_read_manifest_bytes(folder / n))))
        if inside:
            return UserError(f"no prepared dataset in {folder}, but in a folder in it: give "
                             f"--data {briefly(inside)}")
        theirs = sources.source_files(folder) or sorted(held)
        return UserError(f"no prepared dataset in {folder}, which holds {briefly(theirs)}: if "
                         f"it is a source, {prepare}")
    out = "" if folder == Path(DATA_DEFAULT) else f"--out {folder}"
    command = " ".join(part for part in ("imdbsent prepare", flags(), out) if part)
    return UserError(f"no prepared dataset in {folder}: run {command}")


def split(ds: datasets.Dataset, ratio: float, seed: int) -> TrainValid:
    """`split_rows` of an in-memory dataset (for small data: benchmarks, tests)."""
    train, valid, moved = split_rows(np.asarray(ds["label"]), text_digests(ds["text"]), ratio,
                                     seed)
    return TrainValid(ds.select(train), ds.select(valid), moved)


def split_rows(labels: np.ndarray, digests: np.ndarray, ratio: float, seed: int
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """Seeded split stratified by label, from labels alone: the rows of train and of valid,
    in order, and how many valid rows moved to train. The same seed gives the same split on
    every machine.

    It is `datasets`' seeded train_test_split, run on the labels and row numbers only (never
    the texts), so data without duplicates splits exactly as that does. Copies of one review
    (equal `digests`) never end on both sides: the valid copies of a review that also sits in
    train move to the end of train. A split that cannot be made or learned from (too few
    reviews, a ratio that leaves a side empty, a label with one review or none) is a
    UserError.
    """
    _check_splittable(labels, ratio)
    datasets = sources.hf_datasets()
    rows = datasets.Dataset.from_dict({"label": labels, "row": np.arange(len(labels))})
    rows = rows.cast_column("label", datasets.ClassLabel(names=["neg", "pos"]))
    try:
        parts = rows.train_test_split(train_size=ratio, seed=seed, stratify_by_column="label")
    except ValueError as exc:  # what _check_splittable did not foresee
        raise UserError(f"cannot split the training reviews {ratio:g}/{1 - ratio:g}: "
                        f"{str(exc).splitlines()[0]}") from None
    train = np.asarray(parts["train"].with_format("numpy")["row"][:], dtype=np.int64)
    valid = np.asarray(parts["test"].with_format("numpy")["row"][:], dtype=np.int64)
    move = np.isin(digests[valid], digests[train])
    if not move.any():
        return train, valid, 0
    if move.all():
        raise UserError(f"cannot split the training reviews {ratio:g}/{1 - ratio:g}: every "
                        "valid review is a copy of one in train, so valid would be empty")
    return np.concatenate([train, valid[move]]), valid[~move], int(move.sum())


def _check_splittable(labels: np.ndarray, ratio: float) -> None:
    """Refuse, in words, a split that datasets' stratified train_test_split cannot make."""
    n = len(labels)
    counts = {v: int((labels == v).sum()) for v in (0, 1)}
    n_train = math.floor(ratio * n)  # as train_test_split counts them
    n_valid = n - n_train
    labels_said = ", ".join(f"{counts[v]:,} {name}" for v, name in ((0, "neg"), (1, "pos"))
                            if counts[v])
    where = (f"cannot split {n:,} training review(s) ({labels_said}) into train and valid "
             f"{ratio:g}/{1 - ratio:g} by label")
    missing = [name for v, name in ((0, "neg"), (1, "pos")) if counts[v] == 0]
    if missing:  # a classifier needs both; the split alone would not mind
        raise UserError(f"{where}: there is no {missing[0]} review, and a classifier learns "
                        "from both labels; check the label column")
    single = [name for v, name in ((0, "neg"), (1, "pos")) if counts[v] == 1]
    if single:
        raise UserError(f"{where}: each label needs 2 reviews or more, one for each side, and "
                        f"{' and '.join(single)} {'have' if len(single) > 1 else 'has'} 1; add "
                        "reviews")
    if min(n_train, n_valid) < sum(1 for c in counts.values() if c):
        raise UserError(f"{where}: that leaves {n_train:,} for train and {n_valid:,} for valid, "
                        "too few for one of each label on each side; add reviews or change "
                        "--split-ratio")


def text_digests(texts: Iterable[str]) -> np.ndarray:
    """A 16-byte BLAKE2b digest of each text (numpy "S16"): equal texts, equal digests, so
    arrays of these stand in for sets of whole reviews (16 bytes a review: 160 MB for ten
    million)."""
    return np.array([hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest()
                     for t in texts], dtype="S16")


def duplicate_rows(digests: np.ndarray) -> np.ndarray:
    """Row numbers (1-based) of texts already seen earlier in the same split."""
    _, first = np.unique(digests, return_index=True)
    later = np.ones(len(digests), dtype=bool)
    later[first] = False
    return np.flatnonzero(later) + 1


def write_encoded(path: Path, pieces: Iterable[Encoded]) -> int:
    """One split as Parquet, a row group a piece as it comes: a list<int32> column of ids and
    an int8 label column. Returns the number of tokens written."""
    schema = pa.schema([("ids", pa.large_list(pa.int32())), ("label", pa.int8())])
    tokens = 0

    def write(tmp: Path) -> None:
        nonlocal tokens
        with pq.ParquetWriter(tmp, schema) as writer:
            for enc in pieces:
                ids = pa.LargeListArray.from_arrays(pa.array(enc.offsets), pa.array(enc.flat))
                writer.write_table(pa.table({"ids": ids, "label": enc.labels.astype(np.int8)},
                                            schema=schema))
                tokens += len(enc.flat)

    atomic_write(path, write)
    return tokens


def iter_encoded(path: Path) -> Iterator[Encoded]:
    """A split written by `write_encoded`, a row group at a time."""
    try:
        pf = pq.ParquetFile(path, pre_buffer=False)
        for i in range(pf.num_row_groups):
            yield _to_encoded(pf.read_row_group(i))
    except (OSError, KeyError, pa.ArrowException) as exc:
        raise UserError(f"{path}: unreadable prepared split ({exc}); "
                        "run imdbsent prepare --force") from None


def read_encoded(path: Path) -> Encoded:
    """Read a split written by `write_encoded` whole, a row group at a time into arrays sized
    from the file's metadata: token ids as int32 (4 bytes a token, no Python object a
    review), and no second copy of the split while reading it."""
    try:
        meta = pq.ParquetFile(path).metadata
        tokens = sum(meta.row_group(i).column(0).num_values for i in range(meta.num_row_groups))
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{path}: unreadable prepared split ({exc}); "
                        "run imdbsent prepare --force") from None
    flat = np.empty(tokens, dtype=np.int32)
    offsets = np.zeros(meta.num_rows + 1, dtype=np.int64)
    labels = np.empty(meta.num_rows, dtype=np.int64)
    row = token = 0
    for part in iter_encoded(path):
        n, m = len(part), len(part.flat)
        flat[token:token + m] = part.flat
        offsets[row + 1:row + n + 1] = part.offsets[1:] + token
        labels[row:row + n] = part.labels
        row, token = row + n, token + m
    return Encoded(flat[:token], offsets, labels)


def _to_encoded(table: pa.Table) -> Encoded:
    ids = table.column("ids").combine_chunks()
    offsets = ids.offsets.to_numpy().astype(np.int64)
    flat = ids.flatten().to_numpy().astype(np.int32, copy=False)
    labels = table.column("label").to_numpy().astype(np.int64)
    return Encoded(flat, offsets - offsets[0], labels)


class Batches:
    """Length-bucketed batches of an encoded split, re-iterable, with a known length.

    Training order: shuffle (seeded by `seed` and `epoch`, so a resumed run sees the same
    order), sort pools of 100 batches by length, shuffle the batches. Evaluation order: by
    length, so padding is minimal. Sequences longer than `max_length` keep their first tokens.
    With `crop`, that fraction of the examples is cut, anew each epoch, to a random run of one
    to three of its sentences (`sentence_crops`; `sentence_ends` are the ids that end one), so
    that a model trained on reviews also learns to read a sentence alone. With `shard`, each
    process of a distributed training computes the same order and serves its own share
    (`distributed.share`; padded to equal shares in training). With `pin`, batches come in
    page-locked memory, for non-blocking copies to a GPU.
    """

    def __init__(self, data: Encoded, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 max_length: int | None = None, crop: float = 0.0,
                 sentence_ends: Iterable[int] = (), shard: bool = False, pin: bool = False
                 ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, not {batch_size}")
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.max_length, self.crop, self.shard, self.pin = max_length, crop, shard, pin
        self.boundaries = (np.flatnonzero(np.isin(data.flat, list(sentence_ends))) + 1
                           if crop else np.empty(0, dtype=np.int64))
        self.epoch = 0

    def __len__(self) -> int:
        batches = -(-len(self.data) // self.batch_size)
        return len(self._share(list(range(batches))))

    def _share(self, batches: list[T]) -> list[T]:
        return distributed.share(batches, pad=self.shuffle) if self.shard else batches

    def spans(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each example starts in `data.flat` and how many tokens it has, this epoch."""
        if not self.crop:
            return self.data.offsets[:-1], self.data.lengths
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        return sentence_crops(self.data, self.boundaries, self.crop, rng)

    def order(self, lengths: np.ndarray | None = None) -> list[np.ndarray]:
        """The example indices of each batch, in the order they will be served."""
        lengths = self.data.lengths if lengths is None else lengths
        n, bs = len(self.data), self.batch_size
        if not self.shuffle:
            idx = np.argsort(lengths, kind="stable")
            return [idx[i:i + bs] for i in range(0, n, bs)]
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(n)
        pool = bs * POOL_BATCHES
        batches = []
        for start in range(0, n, pool):
            chunk = perm[start:start + pool]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i:i + bs] for i in range(0, len(chunk), bs)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[Batch]:
        starts, lengths = self.spans()
        for idx in self._share(self.order(lengths)):
            batch = make_batch(self.data, idx, self.max_length, (starts, lengths))
            yield batch.pinned() if self.pin else batch


def sentence_crops(data: Encoded, boundaries: np.ndarray, fraction: float,
                   rng: np.random.Generator, most: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths that cut a random `fraction` of the examples to a run of 1 to `most`
    consecutive sentences (a sentence ends after a token at a position in `boundaries`, sorted
    positions in `data.flat`), each run chosen uniformly; the other examples stay whole."""
    starts, ends = data.offsets[:-1].copy(), data.offsets[1:].copy()
    chosen = np.flatnonzero(rng.random(len(data)) < fraction)
    first = np.searchsorted(boundaries, starts[chosen], side="right")  # inner boundaries:
    last = np.searchsorted(boundaries, ends[chosen], side="left")  # boundaries[first:last]
    sentences = last - first + 1
    k = (rng.random(len(chosen)) * sentences).astype(np.int64)  # the first sentence taken
    m = np.minimum(k + rng.integers(0, most, len(chosen)), sentences - 1)  # the last one
    padded = np.append(boundaries, 0)  # so that the index below is valid where unused
    starts[chosen] = np.where(k > 0, padded[np.minimum(first + k - 1, len(boundaries))],
                              starts[chosen])
    ends[chosen] = np.where(m < sentences - 1, padded[np.minimum(first + m, len(boundaries))],
                            ends[chosen])
    return starts, ends - starts


def make_batch(data: Encoded, idx: np.ndarray, max_length: int | None = None,
               spans: tuple[np.ndarray, np.ndarray] | None = None) -> Batch:
    """Gather examples `idx` into a padded batch with numpy fancy indexing (no Python loop);
    `spans` (starts, lengths of every example) replaces the examples' own."""
    starts, lengths = spans if spans is not None else (data.offsets[:-1], data.lengths)
    starts, lengths = starts[idx], lengths[idx]
    if max_length is not None:
        lengths = np.minimum(lengths, max_length)
    width = max(int(lengths.max(initial=0)), 1)  # an empty review is one <pad>
    cols = np.arange(width)
    mask = cols[None, :] < lengths[:, None]
    pos = np.where(mask, starts[:, None] + cols[None, :], 0)
    ids = np.where(mask, data.flat[pos] if len(data.flat) else 0, text.PAD_ID)
    return Batch(
        text=torch.from_numpy(ids.astype(np.int64)),
        lengths=torch.from_numpy(np.maximum(lengths, 1).astype(np.int64)),
        label=torch.from_numpy(data.labels[idx].astype(np.float32)),
    )


def fingerprint_of(folder: Path) -> str | None:
    """The fingerprint of the prepared data in `folder` now (`Prepared.fingerprint`), or None
    where there is none."""
    raw = _read_manifest_bytes(Path(folder))
    return None if raw is None else _fingerprint(raw)


def _fingerprint(manifest_bytes: bytes) -> str:
    return "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()


def _read_manifest(folder: Path) -> dict | None:
    return _parse_manifest(_read_manifest_bytes(folder))


def _read_manifest_bytes(folder: Path) -> bytes | None:
    try:
        return (folder / MANIFEST).read_bytes()
    except OSError:
        return None


def _parse_manifest(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) else None


def _reusable(folder: Path, manifest: dict | None, wanted: dict) -> bool:
    """Whether `folder` holds a complete dataset made by this format from the `wanted`
    arguments and a local source whose files have not changed since (`sources.local_stamp`;
    a manifest from before stamps were recorded is taken as it is). Files whose times changed
    but not their contents (copied, touched) are the same source: a rebuild would give the
    data a new fingerprint, which every run trained on it would then refuse."""
    return (manifest is not None and manifest.get("format") == PREPARE_FORMAT
            and not _changed_args(manifest, wanted)
            and (manifest.get("source_stamp", wanted["source_stamp"]) == wanted["source_stamp"]
                 or _same_content(manifest, wanted["args"]))
            and _complete(folder, manifest))


def _same_content(manifest: dict, args: dict) -> bool:
    """Whether a local folder source holds the files the manifest's data was made from."""
    now = sources.local_fingerprint(args["source"], args["unsupervised"])
    return now is not None and manifest.get("source_fingerprint") == now


def _changed_args(manifest: dict, wanted: dict) -> list[str]:
    """The arguments that differ from those `manifest` was built with; the source counts as
    the same however it was spelled (`src`, `./src/`, its absolute path) once the manifest
    records where it lay (older manifests: as it was given)."""
    old, new = manifest.get("args") or {}, wanted["args"]
    same_place = bool(manifest.get("source_path")) and manifest["source_path"] == wanted[
        "source_path"]
    return [k for k in {*old, *new} if old.get(k) != new.get(k)
            and not (k == "source" and same_place)]


def _why_rebuild(folder: Path, manifest: dict, wanted: dict) -> str:
    """Why a prepared folder is not reused, for a line of report."""
    if manifest.get("format") != PREPARE_FORMAT:
        return "prepared by an older imdbsent"
    if changed := _changed_args(manifest, wanted):
        old = manifest.get("args") or {}
        return "prepared with " + "; ".join(
            f"{flag(k)} {old.get(k)!r}, now {v!r}" for k, v in wanted["args"].items()
            if k in changed)
    if not _complete(folder, manifest):
        return "files missing"
    return f"{wanted['args']['source']} changed since it was prepared from it"


def _files(manifest: dict) -> list[str]:
    """The files a prepared folder's manifest names."""
    splits = manifest.get("splits") or {}
    return [TOKENIZER, *(f"{name}.parquet" for name in splits),
            *([manifest["vectors"]] if manifest.get("vectors") else [])]


def is_prepared(folder: Path) -> bool:
    """Whether `folder` holds a whole prepared dataset."""
    manifest = _read_manifest(folder)
    return manifest is not None and _complete(folder, manifest)


def _complete(folder: Path, manifest: dict) -> bool:
    return bool(manifest.get("splits")) and all((folder / f).exists() for f in _files(manifest))


def _check_apart(source: str, out: Path) -> None:
    """Refuse an --out that would overwrite a local source or mix with it: the source folder
    itself or a folder inside it, or the folder of a source file named as a prepared file."""
    path = sources.local_path(source)
    if path is None:
        return
    src, dst = Path(path), out.expanduser().resolve()
    if src.is_dir() and (dst == src or src in dst.parents):
        where = "is the source" if dst == src else "is inside the source"
        raise UserError(f"--out {out} {where} {source}: prepare would write over its files; "
                        "give another --out")
    if src.is_file() and dst == src.parent and src.name in PREPARED_FILES:
        raise UserError(f"--out {out} holds the source {source}, which prepare would overwrite; "
                        "give another --out")


def _check_foreign(out: Path, manifest: dict | None) -> None:
    """Refuse an --out that holds files named as prepare's own (`train.parquet`, ...) but is
    no prepared dataset: they are someone's (a source's, a run's tokenizer), and would be
    replaced. A prepared dataset has prepare's manifest, or, when a rebuild was killed before
    writing it, nothing but prepare's own files beside the lock that prepare left."""
    visible = _visible(out) if out.is_dir() else set()
    if _prepares_own(out, manifest, visible):
        return
    theirs = sorted(visible & PREPARED_FILES)
    if theirs:
        raise UserError(f"--out {out} holds {', '.join(theirs)} but is not a prepared dataset: "
                        f"prepare would overwrite {'them' if len(theirs) > 1 else 'it'}; give "
                        "another --out")


def _prepares_own(folder: Path, manifest: dict | None, visible: set[str]) -> bool:
    """Whether `folder` (holding `visible`) is prepare's: its manifest, or, a rebuild killed
    before writing that, nothing but prepare's own files beside the lock prepare left."""
    return _made_by_prepare(manifest) or ((folder / LOCK_NAME).exists()
                                          and visible <= PREPARED_FILES)


def _made_by_prepare(manifest: dict | None) -> bool:
    """Whether a manifest is prepare's (a web app's manifest.json is not)."""
    return manifest is not None and "args" in manifest and "splits" in manifest


def _visible(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


PREPARED_FILES = {MANIFEST, VECTORS, TOKENIZER,  # what a prepared dataset holds
                   *(f"{n}.parquet" for n in (*sources.SPLITS, "valid"))}


def _label_counts(labels: np.ndarray) -> dict[str, int]:
    names = {0: "neg", 1: "pos", -1: "unlabeled"}
    values, counts = np.unique(labels, return_counts=True)
    return {"total": int(len(labels)), **{names[int(v)]: int(c) for v, c in zip(values, counts)}}


def _scan_warnings(source: str, scans: dict[str, Scan]) -> list[str]:
    """What the scan found that a user should know: duplicate reviews, and reviews with no
    text (kept: a model reads them as empty, where predict and evaluate skip such a text)."""
    out = []
    for name, sc in scans.items():
        dups = duplicate_rows(sc.digests)
        if len(dups):
            together = ", each one's copies on one side of train/valid" if name == "train" else ""
            out.append(f"{source} [{name}]: {len(dups)} duplicate review(s), kept as in the "
                       f"source{together} (first at row {dups[0]})")
        if sc.blank:
            out.append(f"{source} [{name}]: {len(sc.blank)} review(s) with no text, kept as in "
                       f"the source (first at row {sc.blank[0]}); predict and evaluate skip "
                       "such texts")
    return out
