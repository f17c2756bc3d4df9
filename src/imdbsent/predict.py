"""Prediction from a run directory alone: its config, tokenizer and best weights.

Texts are scored in batches as they stream in, so memory stays flat however long the input;
row N of the output always belongs to text N of the input.
"""

from __future__ import annotations

import numbers
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imdbsent import engine, runs, text, threads
from imdbsent.data import Batches, Encoded, load_prepared, make_batch
from imdbsent.errors import BadValue, UserError
from imdbsent.sources import read_labeled_file

# Reviews are cut to the model's max_length; models trained on whole reviews see at most this
# many tokens (the longest IMDB review has about 2,800).
DEFAULT_MAX_TOKENS = 3_000
# Reviews a forward pass scores at once. Small batches of similar length are fastest on the CPU
# (the default LSTM, 4,096 test reviews sorted by length: 1,465 a second at 64, 1,029 at 256,
# 627 at 1,024), as the recurrent state stays in cache.
MODEL_BATCH = 64
# Texts read from a stream before scoring: sorting more of them by length pads less (the default
# LSTM over the test reviews: 1,022 a second in chunks of 512, 1,306 in chunks of 2,048); the
# character budget bounds memory when lines are long.
STREAM_BATCH = 2048
STREAM_CHARS = 16_000_000


def check_threshold(threshold: float) -> None:
    """Refuse a threshold that is not a probability: a TypeError for what is not a number, a
    BadValue for a number outside [0, 1] (NaN too)."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):  # numpy's too
        raise TypeError(f"threshold is a number from 0 to 1, not {type(threshold).__name__}")
    if not 0.0 <= threshold <= 1.0:
        raise BadValue("threshold", f"must be between 0 and 1, not {threshold}")


def has_words(raw: str, ids: list[int]) -> bool:
    """Whether a text is scored: it has a token and a character that is not a space, a control
    or a format character (a blank line, one of NUL or zero-width spaces, or only `<br />` tags
    is skipped, not guessed; an emoji newer than Python's Unicode tables is scored)."""
    return bool(ids) and any(unicodedata.category(c) not in _UNSEEN for c in raw)


_UNSEEN = {"Cc", "Cf", "Zs", "Zl", "Zp"}  # Unicode's control, format and space categories


def _with_words(texts: list[str], ids: list[list[int]]) -> list[int]:
    """The indices of the texts that are scored (`has_words`); the rest are skipped."""
    return [i for i, (raw, one) in enumerate(zip(texts, ids)) if has_words(raw, one)]


@dataclass
class Prediction:
    """One input's result; `prob_pos` is None when the text was skipped (no token in it)."""

    text: str
    prob_pos: float | None
    label: str | None

    @property
    def skipped(self) -> bool:
        return self.prob_pos is None


class Predictor:
    """A trained model ready to score raw text."""

    def __init__(self, run: str | Path, device: str | torch.device = "cpu", threshold: float = 0.5
                 ) -> None:
        run = runs.check_run(run)
        check_threshold(threshold)
        self.config = runs.load_config(run)
        self.tokenizer = runs.load_tokenizer(run)
        self.device = engine.resolve_device(device)
        self.model = engine.load_best(run, self.config,
                                      self.tokenizer.get_vocab_size()).to(self.device).eval()
        self.max_length = self.config.train.max_length or DEFAULT_MAX_TOKENS
        self.threshold = threshold

    @property
    def threshold(self) -> float:
        """P(pos) at or above which a text is labeled pos; checked when set, as when given."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        check_threshold(value)
        self._threshold = float(value)

    def probabilities(self, ids: list[list[int]]) -> np.ndarray:
        """P(positive) of each encoded text, in input order (scored shortest first to pad
        little)."""
        enc = Encoded.from_lists(ids, np.zeros(len(ids), dtype=np.int64))
        order = np.argsort(enc.lengths, kind="stable")
        probs = np.empty(len(ids), dtype=np.float64)

        def score(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with torch.inference_mode():
                batch = make_batch(enc, idx, self.max_length).to(self.device)
                logits = self.model(batch.text, batch.lengths).double()  # float32 rounds
                return idx, torch.sigmoid(logits).cpu().numpy()  # sigmoid(17) to exactly 1

        batches = (order[start:start + MODEL_BATCH] for start in range(0, len(order), MODEL_BATCH))
        for idx, batch_probs in threads.mapped(score, batches,
                                               parallel=self.device.type == "cpu"):
            probs[idx] = batch_probs
        return probs

    def predict(self, texts: Iterable[str]) -> list[Prediction]:
        """Predictions for texts (a list, or any iterable of str), in order; those without
        words (`has_words`) are skipped."""
        texts = _texts(texts)
        ids = text.encode(self.tokenizer, texts)
        keep = _with_words(texts, ids)
        probs = self.probabilities([ids[i] for i in keep]) if keep else np.empty(0)
        out = [Prediction(t, None, None) for t in texts]
        for i, p in zip(keep, probs):
            out[i] = Prediction(texts[i], float(p), "pos" if p >= self.threshold else "neg")
        return out

    def stream(self, texts: Iterable[str | None], batch_size: int = STREAM_BATCH
               ) -> Iterator[list[Prediction]]:
        """Predictions batch by batch for a stream of texts, holding one batch (at most
        `batch_size` texts and STREAM_CHARS characters) at a time; a None in the stream (its
        source paused) scores the texts held so far at once."""
        if isinstance(texts, str | bytes | bytearray):
            raise TypeError(f"Predictor.stream takes an iterable of texts, not one "
                            f"{type(texts).__name__}")
        if not isinstance(texts, Iterable):
            raise TypeError(f"Predictor.stream takes an iterable of texts, not "
                            f"{type(texts).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size is a whole number, not {type(batch_size).__name__}")
        if batch_size < 1:
            raise BadValue("batch_size", f"must be at least 1, not {batch_size}")
        return (self.predict(batch)  # checked above at the call, not at the first batch
                for batch in text.iter_batches(_stream_items(texts), batch_size, STREAM_CHARS))


def _stream_items(texts: Iterable[str | None]) -> Iterator[str | None]:
    """The stream's texts and pauses (None), anything else a TypeError when it comes."""
    for item in texts:
        if item is not None and not isinstance(item, str):
            raise TypeError(f"Predictor.stream takes texts as str (or None for a pause), not "
                            f"{type(item).__name__}")
        yield item


def _texts(texts: Iterable[str]) -> list[str]:
    """`texts` as a list of str; a bare str (else each of its characters would be scored) or
    anything else than str among them is a TypeError."""
    if isinstance(texts, str):
        raise TypeError("Predictor.predict takes a list of texts; give [text] for one")
    if isinstance(texts, bytes | bytearray):  # else each byte would be called a text
        raise TypeError("Predictor.predict takes texts as str, not bytes: decode them first")
    if not isinstance(texts, Iterable):
        raise TypeError(f"Predictor.predict takes a list of texts, not {type(texts).__name__}")
    texts = list(texts)
    odd = [t for t in texts if not isinstance(t, str)]
    if odd:
        raise TypeError(f"Predictor.predict takes texts as str, not {type(odd[0]).__name__}")
    return texts


@dataclass
class Scored:
    """A run's calibrated logits on a labeled set, its labels, the share of its tokens that the
    vocabulary lacks, a description of the set, and how many of a file's rows had no words
    (skipped, as predict skips them; None for a prepared split)."""

    logits: torch.Tensor
    labels: torch.Tensor
    unk_rate: float
    what: str
    skipped: int | None = None


LABELED_SPLITS = ("train", "valid", "test")


def score_run(run: str | Path, *, split: str = "test", data_file: str | Path | None = None,
              data_dir: str | Path | None = None, device: str | torch.device = "cpu",
              text_column: str = "text", label_column: str = "label") -> Scored:
    """Score a run's best checkpoint (calibrated, if it was) on a prepared split (a labeled
    one: train, valid or test), or on a labeled file."""
    if data_file is None and split not in LABELED_SPLITS:  # unsupervised's labels are all -1
        raise BadValue("split", f"must be one of {', '.join(LABELED_SPLITS)}, not {split!r}")
    predictor = Predictor(run, device)
    run = Path(run)
    if data_file is not None:
        ds = read_labeled_file(data_file, text_column, label_column)
        ids = text.encode(predictor.tokenizer, ds["text"])
        keep = _with_words(ds["text"], ids)
        if not keep:
            raise UserError(f"{data_file}: no row has a text with words to score")
        enc = Encoded.from_lists([ids[i] for i in keep], np.asarray(ds["label"])[keep])
        skipped: int | None = len(ids) - len(keep)
        what = str(data_file)
    else:
        prepared = load_prepared(Path(data_dir) if data_dir is not None
                                 else runs.data_folder(run, predictor.config.data))
        runs.check_data(run, prepared, runs.recorded_fingerprint(run),
                        "named" if data_dir is not None else "score")
        enc = prepared.split(split)
        what, skipped = f"{prepared.folder} [{split}]", None
    batches = Batches(enc, MODEL_BATCH, max_length=predictor.max_length)
    logits, labels = engine.predict_logits(predictor.model, batches)
    unk_rate = float((enc.flat == text.UNK_ID).mean()) if len(enc.flat) else 0.0
    return Scored(logits, labels, unk_rate, what, skipped)


def evaluate_run(run: str | Path, *, split: str = "test", data_file: str | Path | None = None,
                 data_dir: str | Path | None = None, threshold: float = 0.5,
                 device: str | torch.device = "cpu", text_column: str = "text",
                 label_column: str = "label") -> tuple[dict, str]:
    """Metrics of a run on a prepared split or a labeled file (`score_run`) at `threshold`,
    with its `unk_rate`; returns the metrics and a description of what was scored."""
    check_threshold(threshold)
    scored = score_run(run, split=split, data_file=data_file, data_dir=data_dir, device=device,
                       text_column=text_column, label_column=label_column)
    metrics = engine.classification_metrics(scored.logits, scored.labels, threshold)
    metrics["unk_rate"] = scored.unk_rate
    if scored.skipped is not None:
        metrics["skipped"] = scored.skipped  # a file's rows without words
    return metrics, scored.what
