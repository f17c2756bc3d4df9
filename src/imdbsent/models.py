"""The models, one registry by name. Each takes padded ids [batch, time] and their true lengths
(a CPU tensor) and returns one logit per review [batch]."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from imdbsent import regions
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


class RegionInput(nn.Module):
    """Each word's region embedding (`regions`: relu(E r + b) of the region of `region` words
    centred on it, E and b learned beforehand from unlabeled text and kept frozen) through a
    trained projection to the word embedding's size. The projection starts at zero, so that a
    model starts where it would without the region embedding. `passes`: over the stream, when
    E and b are learned."""

    def __init__(self, vocab_size: int, dim: int, region: int, out_dim: int,
                 passes: int = 1) -> None:
        super().__init__()
        self.region, self.passes = region, passes
        self.register_buffer("table", torch.zeros(vocab_size, dim))
        self.register_buffer("bias", torch.zeros(dim))
        self.project = nn.Linear(dim, out_dim, bias=False)
        nn.init.zeros_(self.project.weight)

    def learn(self, ids: np.ndarray, seed: int, report: Callable[[int, int], None]) -> None:
        """Learn E and b from the token stream `ids` (`regions.learn`)."""
        table, bias = regions.learn(ids, self.table.shape[0], self.region, self.table.shape[1],
                                    seed, report, passes=self.passes)
        self.table.copy_(table)
        self.bias.copy_(bias)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.project(regions.centred(nn.functional.embedding(text, self.table),
                                            self.bias, self.region))


class Recurrent(nn.Module):
    """LSTM or GRU: multi-layer, optionally bidirectional, dropout; the review is the final
    forward and backward states, or max/mean pooling of the outputs over its true length.
    With `region_size`, each word's input adds its region embedding (`RegionInput`) to its
    word embedding: Johnson & Zhang's (2016) LSTM with tv-embeddings.

    Padding never enters the recurrence of a real token: the forward direction meets pads only
    after the last token, and the backward direction runs over each review reversed within its
    own length. With `packed`, each direction runs over a PackedSequence instead (the same
    weights and results); dense is the default because the packed backward pass on the CPU
    grows with the square of the length (a 757-token batch: 61 s packed, 0.6 s dense here).
    """

    def __init__(self, cell: str, vocab_size: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.pooling, self.packed, self.hidden_dim = cfg.pooling, cfg.packed, cfg.hidden_dim
        self.embedding = nn.Embedding(vocab_size, cfg.embedding_dim, padding_idx=PAD_ID)
        self.regions = (RegionInput(vocab_size, cfg.region_dim, cfg.region_size,
                                    cfg.embedding_dim, cfg.region_passes)
                        if cfg.region_size else None)
        kind = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        directions = 2 if cfg.bidirectional else 1
        self.layers = nn.ModuleList(
            nn.ModuleList(kind(cfg.embedding_dim if i == 0 else cfg.hidden_dim * directions,
                               cfg.hidden_dim, batch_first=True) for _ in range(directions))
            for i in range(cfg.num_layers))
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.hidden_dim * directions, 1)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.cpu()  # pack_padded_sequence wants them there on every device
        reverse = reversal_index(lengths, text.shape[1]).to(text.device)
        x = self.embedding(text)
        if self.regions is not None:
            x = x + self.regions(text)
        x = self.dropout(x)
        for i, directions in enumerate(self.layers):
            if i:
                x = self.dropout(x)
            outputs = [self._run(directions[0], x, lengths)]
            if len(directions) == 2:
                backward = self._run(directions[1], _gather_time(x, reverse), lengths)
                outputs.append(_gather_time(backward, reverse))  # back to reading order
            x = torch.cat(outputs, dim=2)
        return self.fc(self.dropout(self._pool(x, lengths))).squeeze(1)

    def _run(self, rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.packed:
            return rnn(x)[0]
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=x.shape[1])[0]

    def _pool(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        device_lengths = lengths.to(x.device)
        if self.pooling == "last":
            # forward: output at the last token; backward (aligned): output at the first token
            last = (device_lengths - 1).view(-1, 1, 1).expand(-1, 1, self.hidden_dim)
            parts = [x[:, :, :self.hidden_dim].gather(1, last).squeeze(1)]
            if x.shape[2] > self.hidden_dim:
                parts.append(x[:, 0, self.hidden_dim:])
            return torch.cat(parts, dim=1)
        mask = token_mask(device_lengths, x)
        if self.pooling == "max":
            return masked_max(x, mask, dim=1)
        return (x * mask).sum(dim=1) / device_lengths[:, None].clamp(min=1)


def masked_max(x: torch.Tensor, inside: torch.Tensor, dim: int) -> torch.Tensor:
    """The maximum of `x` over `dim` among the positions where `inside` (broadcast to `x`) is
    True: padding is never the maximum. `max`, not `amax`, whose backward pass (spreading the
    gradient over ties) made an epoch of the region CNN half as slow again on the CPU."""
    return x.masked_fill(~inside, float("-inf")).max(dim=dim).values


def token_mask(lengths: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """True at each sequence's first `lengths` steps of `x` [batch, time, ...], False at
    padding; shaped [batch, time, 1]."""
    steps = torch.arange(x.shape[1], device=x.device)
    return (steps[None, :] < lengths.to(x.device)[:, None]).unsqueeze(2)


def reversal_index(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[batch, width] time indices that reverse each row within its length, pads left in place
    (applying it twice is the identity)."""
    steps = torch.arange(width).unsqueeze(0)
    lens = lengths.unsqueeze(1)
    return torch.where(steps < lens, lens - 1 - steps, steps)


def _gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index.unsqueeze(2).expand(-1, -1, x.shape[2]))


class CNN(nn.Module):
    """Kim (2014): convolutions of several widths over the embeddings, max over time, dropout.

    The max runs over the windows that lie within the review's length only, so a review scores
    the same in any batch: never over windows of padding. A review shorter than a filter has one
    window for it, the first, which sees the review and the zero `<pad>` embedding after it, as
    it does in any batch.
    """

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
        if lengths is None:
            lengths = torch.full((text.shape[0],), text.shape[1])
        lengths = lengths.to(text.device)
        pooled = []
        for conv in self.convs:
            features = torch.relu(conv(embedded))  # [batch, filters, windows]
            windows = (lengths - conv.kernel_size[0] + 1).clamp(min=1)
            inside = torch.arange(features.shape[2], device=text.device)[None, :] < windows[:, None]
            pooled.append(masked_max(features, inside.unsqueeze(1), dim=2))
        return self.fc(self.dropout(torch.cat(pooled, dim=1))).squeeze(1)


class RegionCNN(nn.Module):
    """Johnson & Zhang's (2015) one-layer CNN over bags of words with a tv-embedding: at each
    word h = relu(W r + U z + c), r the bag of the `region_size` words centred on it (W r a
    sum of rows of `embedding`, [vocab, hidden_dim]) and z their region embedding
    (`RegionInput`, learned beforehand from unlabeled text), then the maximum of h over the
    review, dropout and one logit. Cheap on a CPU: no recurrence, one layer."""

    def __init__(self, vocab_size: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.region = cfg.region_size
        self.embedding = nn.Embedding(vocab_size, cfg.hidden_dim, padding_idx=PAD_ID)
        nn.init.normal_(self.embedding.weight, std=0.1)
        with torch.no_grad():
            self.embedding.weight[PAD_ID] = 0.0
        self.bias = nn.Parameter(torch.zeros(cfg.hidden_dim))
        self.regions = RegionInput(vocab_size, cfg.region_dim, cfg.region_size, cfg.hidden_dim,
                                   cfg.region_passes)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.hidden_dim, 1)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        bags = regions.centred_sums(self.embedding(text), self.region)
        h = torch.relu(bags + self.bias + self.regions(text))
        pooled = masked_max(h, token_mask(lengths, h), dim=1)
        return self.fc(self.dropout(pooled)).squeeze(1)


def ngram_ids(text: torch.Tensor, vocab_size: int, buckets: int, n: int) -> torch.Tensor:
    """Word ids followed by hashed ids of word 2..n-grams, in [vocab_size, vocab_size + buckets);
    any n-gram touching padding maps to padding. Computed on the batch's device, no Python per
    example."""
    parts = [text]
    if buckets:
        hashed = text
        for k in range(1, n):
            if text.shape[1] <= k:
                break
            hashed = (hashed[:, :-1] * HASH_MULTIPLIER + text[:, k:]) % HASH_PRIME
            ids = hashed % buckets + vocab_size
            pad = torch.zeros_like(ids, dtype=torch.bool)
            for j in range(k + 1):
                pad |= text[:, j:j + ids.shape[1]] == PAD_ID
            parts.append(ids.masked_fill(pad, PAD_ID))
    return torch.cat(parts, dim=1)


# n-gram hash: h = (h * MULTIPLIER + next id) mod PRIME, a polynomial hash modulo a prime
# (products stay below 2**63). A large multiplier spreads neighbouring ids over the whole
# range; the earlier 1,000,003 without a modulus put bigrams in a quarter of 4,000,000 buckets.
HASH_PRIME = 2_147_483_647  # 2**31 - 1
HASH_MULTIPLIER = 1_583_458_089
NGRAM_HASH = 2  # recorded in checkpoints: weights of hashed buckets fit only the same hash


class NBOW(nn.Module):
    """fastText-style: the mean of the embeddings of the words and of their hashed n-grams
    (up to `ngrams` words), then a linear layer. With `prior_tokens` k the mean divides by the
    count of ids plus k, as if k zero vectors were in every text: a whole review barely moves,
    a text of a few words moves towards the bias."""

    def __init__(self, vocab_size: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.vocab_size, self.buckets, self.n = vocab_size, cfg.ngram_buckets, cfg.ngrams
        self.prior_tokens = cfg.prior_tokens
        self.embedding = nn.EmbeddingBag(vocab_size + self.buckets, cfg.embedding_dim,
                                         mode="sum", padding_idx=PAD_ID)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.embedding_dim, 1)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        ids = ngram_ids(text, self.vocab_size, self.buckets, self.n)
        count = (ids != PAD_ID).sum(dim=1, keepdim=True) + self.prior_tokens
        pooled = self.embedding(ids) / count.clamp(min=1)
        return self.fc(self.dropout(pooled)).squeeze(1)


class NBLR(nn.Module):
    """NB-weighted logistic regression over binarized word n-grams: Wang & Manning's NBSVM in
    the form of fastai's "NB-LR". Each n-gram's learned weight is scaled by its naive-Bayes
    log-count ratio, computed once from the training split (`fit_prior`)."""

    W_ADJ, R_ADJ = 0.4, 10.0

    def __init__(self, vocab_size: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.vocab_size, self.buckets, self.n = vocab_size, cfg.ngram_buckets, cfg.ngrams
        size = vocab_size + self.buckets
        self.weight = nn.EmbeddingBag(size, 1, mode="sum", padding_idx=PAD_ID)
        nn.init.uniform_(self.weight.weight, -0.1, 0.1)
        self.register_buffer("ratio", torch.zeros(size))
        self.bias = nn.Parameter(torch.zeros(1))

    def features(self, text: torch.Tensor) -> torch.Tensor:
        """Binarized n-gram ids: each distinct n-gram of a review once, repeats set to padding."""
        ids = ngram_ids(text, self.vocab_size, self.buckets, self.n).sort(dim=1).values
        repeat = torch.zeros_like(ids, dtype=torch.bool)
        repeat[:, 1:] = ids[:, 1:] == ids[:, :-1]
        return ids.masked_fill(repeat, PAD_ID)

    @torch.no_grad()
    def fit_prior(self, batches: Iterable, alpha: float = 1.0) -> None:
        """Set the NB log-count ratios log((p/|p|)/(q/|q|)) from labeled batches."""
        counts = torch.zeros(2, self.ratio.numel(), dtype=torch.float64)
        for batch in batches:
            ids = self.features(batch.text.to(self.ratio.device)).cpu()
            for label in (0, 1):
                rows = ids[batch.label.cpu() == label].flatten()
                counts[label] += torch.bincount(rows[rows != PAD_ID], minlength=counts.shape[1])
        p, q = counts[1] + alpha, counts[0] + alpha
        ratio = torch.log((p / p.sum()) / (q / q.sum()))
        ratio[PAD_ID] = 0.0
        self.ratio.copy_(ratio.to(self.ratio.dtype))

    def forward(self, text: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.features(text)
        r = self.ratio[ids]
        score = self.weight(ids, per_sample_weights=r).squeeze(1) + self.W_ADJ * r.sum(dim=1)
        return score / self.R_ADJ + self.bias


class Ensemble(nn.Module):
    """Trained models combined by stacking: a logistic regression over their logits, fitted on
    the validation split (`fit_weights`). Each member reads at most its own `max_length`
    tokens (0: all), as in its training."""

    def __init__(self, members: list[nn.Module], max_lengths: list[int], names: list[str]
                 ) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.max_lengths, self.names = max_lengths, names
        self.weight = nn.Parameter(torch.full((len(members),), 1.0 / len(members)))
        self.bias = nn.Parameter(torch.zeros(1))

    def member_logits(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[batch, members]: each member's logit."""
        out = []
        for member, limit in zip(self.members, self.max_lengths):
            if limit and text.shape[1] > limit:
                out.append(member(text[:, :limit], lengths.clamp(max=limit)))
            else:
                out.append(member(text, lengths))
        return torch.stack(out, dim=1)

    def combine(self, member_logits: torch.Tensor) -> torch.Tensor:
        """The ensemble's logit from its members' logits [batch, members]."""
        return member_logits @ self.weight + self.bias

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.combine(self.member_logits(text, lengths))

    def fit_weights(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Fit the combination to members' logits [n, members] and 0/1 labels."""
        weight, bias = fit_platt(logits, labels)
        with torch.no_grad():
            self.weight.copy_(weight)
            self.bias.copy_(bias)


class Calibrated(nn.Module):
    """A trained model whose logit is divided by a temperature and shifted by a bias, both
    fitted on the validation split (Platt scaling; temperature scaling, Guo et al. 2017, when
    the bias is 0): probabilities that mean what they say."""

    def __init__(self, model: nn.Module, temperature: float, bias: float = 0.0) -> None:
        super().__init__()
        self.model, self.temperature, self.bias = model, temperature, bias

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model(text, lengths) / self.temperature + self.bias


def fit_logistic(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression of labels in [0, 1] on features [n, k], to the minimum of the log loss
    (L-BFGS: a handful of parameters, a few thousand examples); the weights [k] and the bias."""
    weight = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    offset = torch.zeros(1, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, offset], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = nn.functional.binary_cross_entropy_with_logits(x @ weight + offset, labels)
        value.backward()
        return value

    optimizer.step(loss)
    return weight.detach(), offset.detach()


def fit_platt(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`fit_logistic` of held-out 0/1 labels on logits [n, k] (an ensemble's members', or one
    model's for calibration), towards Platt's (1999) targets: (positives + 1) / (positives +
    2) and 1 / (negatives + 2), not 1 and 0, so that logits that separate the labels perfectly
    (small data) give a finite fit instead of an ever sharper one."""
    positive = (labels >= 0.5).to(x)  # on x's device and in its dtype, whatever the labels'
    count = positive.sum()
    targets = torch.where(positive > 0, (count + 1) / (count + 2), 1 / (len(x) - count + 2))
    return fit_logistic(x, targets)


Builder = Callable[[int, ModelConfig], nn.Module]
REGISTRY: dict[str, Builder] = {
    "rnn": lambda vocab, cfg: RNN(vocab, cfg.embedding_dim, cfg.hidden_dim, 1),
    "lstm": lambda vocab, cfg: Recurrent("lstm", vocab, cfg),
    "gru": lambda vocab, cfg: Recurrent("gru", vocab, cfg),
    "cnn": CNN,
    "rcnn": RegionCNN,
    "nbow": NBOW,
    "nblr": NBLR,
}


@contextmanager
def output_hooked(module: nn.Module, hook: Callable[[torch.Tensor], torch.Tensor | None]
                  ) -> Iterator[None]:
    """Within the block, `hook` sees every output of `module` computed by this thread; what it
    returns, unless None, replaces that output (for explanations and adversarial training, on
    the embedding). Other threads' forward passes through the same model are left alone: an
    explanation beside predictions on one Predictor replaced their embeddings with its own."""
    owner = threading.get_ident()

    def hooked(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        return hook(output) if threading.get_ident() == owner else None

    handle = module.register_forward_hook(hooked)
    try:
        yield
    finally:
        handle.remove()


def build(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    """The model named by `cfg.name`, for a vocabulary of `vocab_size` ids."""
    return REGISTRY[cfg.name](vocab_size, cfg)

