"""The models, one registry by name. Each takes padded ids [batch, time] and their true lengths
(a CPU tensor) and returns one logit per review [batch]."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from imdbsent.config import ModelConfig
from imdbsent.text import PAD_ID


class RNN(nn.Module):
    """The tutorial's model, unchanged: embedding, one `nn.RNN` layer, its last hidden state
    (padding included, as in the tutorial) to one logit."""

    def __init__(self, input_dim: int, embedding_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(input_dim, embedding_dim)
        self.rnn = nn.RNN(embedding_dim, hidden_dim)
        self.fc = nn.Linear(hidden_dim, output_dim)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        embedded = self.embedding(text.t())  # [sent len, batch, emb], as the tutorial's
        _output, hidden = self.rnn(embedded)
        return self.fc(hidden.squeeze(0)).squeeze(1)


class Recurrent(nn.Module):
    """LSTM or GRU: multi-layer, bidirectional, over packed sequences (pads never enter the
    recurrence); the review is the final forward and backward states, or max/mean over time."""

    def __init__(self, cell: str, vocab_size: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.pooling = cfg.pooling
        self.embedding = nn.Embedding(vocab_size, cfg.embedding_dim, padding_idx=PAD_ID)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](
            cfg.embedding_dim, cfg.hidden_dim, num_layers=cfg.num_layers, batch_first=True,
            bidirectional=cfg.bidirectional, dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        directions = 2 if cfg.bidirectional else 1
        self.fc = nn.Linear(cfg.hidden_dim * directions, 1)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        embedded = self.dropout(self.embedding(text))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        output, hidden = self.rnn(packed)
        if self.pooling == "last":
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # LSTM: (h, c)
            final = (torch.cat([hidden[-2], hidden[-1]], dim=1) if self.rnn.bidirectional
                     else hidden[-1])
        else:
            output, _ = pad_packed_sequence(output, batch_first=True, total_length=text.shape[1])
            mask = (torch.arange(text.shape[1], device=text.device)[None, :]
                    < lengths.to(text.device)[:, None]).unsqueeze(2)
            if self.pooling == "max":
                final = output.masked_fill(~mask, float("-inf")).max(dim=1).values
            else:
                final = output.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return self.fc(self.dropout(final)).squeeze(1)


class CNN(nn.Module):
    """Kim (2014): convolutions of several widths over the embeddings, max over time, dropout."""

    def __init__(self, vocab_size: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, cfg.embedding_dim, padding_idx=PAD_ID)
        self.convs = nn.ModuleList(
            nn.Conv1d(cfg.embedding_dim, cfg.num_filters, k) for k in cfg.filter_sizes)
        self.widest = max(cfg.filter_sizes)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.num_filters * len(cfg.filter_sizes), 1)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if text.shape[1] < self.widest:
            text = nn.functional.pad(text, (0, self.widest - text.shape[1]), value=PAD_ID)
        embedded = self.dropout(self.embedding(text)).transpose(1, 2)  # [batch, emb, time]
        pooled = [torch.relu(conv(embedded)).amax(dim=2) for conv in self.convs]
        return self.fc(self.dropout(torch.cat(pooled, dim=1))).squeeze(1)


class NBOW(nn.Module):
    """fastText-style: the mean of word embeddings and of hashed word-bigram embeddings, then a
    linear layer. Bigram ids are computed on the device from the batch, no Python per example."""

    HASH_PRIME = 1_000_003

    def __init__(self, vocab_size: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.vocab_size, self.buckets = vocab_size, cfg.ngram_buckets
        self.embedding = nn.EmbeddingBag(vocab_size + self.buckets, cfg.embedding_dim,
                                         mode="mean", padding_idx=PAD_ID)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.embedding_dim, 1)

    def ngram_ids(self, text: torch.Tensor) -> torch.Tensor:
        """Word ids followed by hashed bigram ids; pairs touching padding map to padding."""
        if not self.buckets or text.shape[1] < 2:
            return text
        left, right = text[:, :-1], text[:, 1:]
        bigrams = (left * self.HASH_PRIME + right) % self.buckets + self.vocab_size
        bigrams = bigrams.masked_fill((left == PAD_ID) | (right == PAD_ID), PAD_ID)
        return torch.cat([text, bigrams], dim=1)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.dropout(self.embedding(self.ngram_ids(text)))).squeeze(1)


Builder = Callable[[int, ModelConfig], nn.Module]
REGISTRY: dict[str, Builder] = {
    "rnn": lambda vocab, cfg: RNN(vocab, cfg.embedding_dim, cfg.hidden_dim, 1),
    "lstm": lambda vocab, cfg: Recurrent("lstm", vocab, cfg),
    "gru": lambda vocab, cfg: Recurrent("gru", vocab, cfg),
    "cnn": CNN,
    "nbow": NBOW,
}


def build(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    """The model named by `cfg.name`, for a vocabulary of `vocab_size` ids."""
    return REGISTRY[cfg.name](vocab_size, cfg)

