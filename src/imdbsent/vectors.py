"""Word vectors in GloVe or word2vec text format: read into a model's embedding, and written
(GloVe format) for the vectors `prepare` learns.

Words of the vocabulary found in the file take its vector; the others keep their random
initialisation; `<pad>` is zero. Only the vocabulary's words are kept in memory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from imdbsent.errors import UserError
from imdbsent.text import PAD_ID, UNK_ID


def read_vectors(path: Path, vocab: dict[str, int], dim: int) -> dict[int, torch.Tensor]:
    """The vectors of the vocabulary's words: {id: vector}. A word2vec header line is skipped."""
    found: dict[int, torch.Tensor] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                parts = line.rstrip().split(" ")
                if lineno == 1 and len(parts) == 2:
                    continue  # word2vec text header: "<count> <dim>"
                if len(parts) < 2 or parts[0] not in vocab:
                    continue
                if len(parts) - 1 != dim:
                    raise UserError(f"{path}, line {lineno}: {len(parts) - 1} numbers, but the "
                                    f"model's embedding has {dim} (set model.embedding_dim, or "
                                    "for prepared vectors imdbsent prepare --vectors-dim)")
                try:
                    found[vocab[parts[0]]] = torch.tensor([float(x) for x in parts[1:]])
                except ValueError:
                    raise UserError(f"{path}, line {lineno}: not a word and numbers") from None
    except OSError as exc:
        raise _unreadable(path, exc) from None
    return found


def check_readable(path: Path) -> None:
    """Refuse now a vectors file that `read_vectors` could not open (for a check made before
    training starts)."""
    try:
        open(path, "rb").close()
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: OSError) -> UserError:
    return UserError(f"{path}: cannot read vectors ({exc.strerror})")


def load_into(model: nn.Module, tokenizer: Tokenizer, path: Path) -> int:
    """Copy the file's vectors into `model.embedding`; returns how many words were found."""
    embedding = getattr(model, "embedding", None)
    if embedding is None or embedding.weight.shape[1] < 2:
        raise UserError(f"{type(model).__name__} has no word embedding to take train.vectors")
    found = read_vectors(path, tokenizer.get_vocab(), embedding.weight.shape[1])
    if not found:
        raise UserError(f"{path}: no word of the vocabulary has a vector in this file")
    with torch.no_grad():
        ids = torch.tensor(list(found))
        embedding.weight[ids] = torch.stack(list(found.values()))
        embedding.weight[PAD_ID] = 0.0
    return len(found)


def write_text(path: Path, tokenizer: Tokenizer, weights: torch.Tensor) -> None:
    """Write vectors in GloVe text format, `word x1 x2 ...` a line, for every word of the
    vocabulary but `<pad>` and `<unk>` (the caller makes it atomic)."""
    words = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    with open(path, "w", encoding="utf-8") as fh:
        for word, i in words:
            if i not in (PAD_ID, UNK_ID):
                fh.write(word + " " + " ".join(f"{x:.5f}" for x in weights[i].tolist()) + "\n")
