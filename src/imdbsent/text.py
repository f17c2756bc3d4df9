"""Normaliser, tokenizer and vocabulary, all in one Hugging Face `tokenizers` WordLevel model.

The tokenizer (and so its vocabulary) is one JSON file that travels with every run, so a run
encodes text exactly as it did in training on a machine that never saw the data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer

from imdbsent.errors import UserError

TOKENIZER = "tokenizer.json"  # its file name in a prepared dataset and in a run
PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
# Longest raw text passed to the tokenizer: a multi-megabyte line is cut first so that memory
# stays bounded; any model's max_length is far below the tokens this many characters yields.
MAX_CHARS = 100_000
# Texts a tokenizer call encodes: big enough for its threads, small enough that a Ctrl-C waits
# little (a whole 25,000-row file in one call answered it 11 s late on 2 cores).
ENCODE_CHUNK = 4096


def new_tokenizer() -> Tokenizer:
    """An untrained tokenizer: drop IMDB's `<br />` tags, NFKC, lowercase, split punctuation off words."""
    tok = Tokenizer(WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(r"<br\s*/?>"), " "),
            normalizers.NFKC(),
            normalizers.Lowercase(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def fit_tokenizer(
    texts: Iterable[str], max_vocab: int = 25_000, min_freq: int = 1, length: int | None = None
) -> Tokenizer:
    """Learn the vocabulary: the `max_vocab` most frequent words seen `min_freq` times or more,
    plus `<pad>` (id 0) and `<unk>` (id 1)."""
    tok = new_tokenizer()
    trainer = WordLevelTrainer(
        vocab_size=max_vocab + 2,
        min_frequency=min_freq,
        special_tokens=[PAD, UNK],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def encode(tok: Tokenizer, texts: Iterable[str]) -> list[list[int]]:
    """Token ids of each text (in parallel, in Rust; without the character offsets, which cost a
    fifth of the time); over-long texts are cut to MAX_CHARS first. ENCODE_CHUNK texts a call:
    Python, and so a Ctrl-C, waits for the call under way to return."""
    ids: list[list[int]] = []
    for chunk in iter_batches(texts, ENCODE_CHUNK):
        ids += _encode_chunk(tok, chunk)
    return ids


def _encode_chunk(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    clipped = [t[:MAX_CHARS] for t in texts]
    try:
        encoded = tok.encode_batch_fast(clipped, add_special_tokens=False)
    except TypeError:  # a lone surrogate, which a Rust string cannot hold (rare: checked after)
        encoded = tok.encode_batch_fast([clean_surrogates(t) for t in clipped],
                                        add_special_tokens=False)
    return [e.ids for e in encoded]


def clean_surrogates(text: str) -> str:
    """`text` with each lone surrogate (Python's stand-in for a byte that was not UTF-8, as
    `os.fsdecode` or `errors="surrogateescape"` give) replaced by U+FFFD, one character for
    one, so that offsets into it still hold."""
    return _SURROGATE.sub("\ufffd", text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def sentence_end_ids(tok: Tokenizer) -> list[int]:
    """The ids of the tokens that end a sentence: runs of `.`, `!` and `?` (`...`, `!?`)."""
    return sorted(i for word, i in tok.get_vocab().items() if re.fullmatch(r"[.!?]+", word))


def tokens(tok: Tokenizer, text: str) -> list[str]:
    """The tokens of one text, as the model sees them (for explanations and tests)."""
    return tok.encode(clean_surrogates(text[:MAX_CHARS]), add_special_tokens=False).tokens


def iter_batches(items: Iterable[str | None], size: int, max_chars: int | None = None
                 ) -> Iterator[list[str]]:
    """Group a stream into lists of `size` items, or fewer once they hold `max_chars`
    characters (the last may be shorter), never holding more. A None in the stream marks a
    pause of its source: the items held so far go out at once, as a shorter list."""
    batch: list[str] = []
    chars = 0
    for item in items:
        if item is None:
            if batch:
                yield batch
                batch, chars = [], 0
            continue
        batch.append(item)
        chars += len(item)
        if len(batch) == size or (max_chars is not None and chars >= max_chars):
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def save(tok: Tokenizer, path: Path) -> None:
    """Write the tokenizer JSON (the caller makes it atomic)."""
    tok.save(str(path))


def load(path: Path, fix: str = "") -> Tokenizer:
    """Read a tokenizer JSON written by `save`; a missing or unreadable one is a clear error,
    followed by `fix` (what to do about it) when given."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception:  # tokenizers raises a bare Exception for unreadable JSON
        raise UserError(f"{path}: missing or unreadable tokenizer" + (f"; {fix}" if fix else "")) \
            from None
