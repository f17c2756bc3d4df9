"""Word vectors learned from IMDB's own reviews: word2vec's CBOW with negative sampling
(Mikolov et al. 2013), in torch, with sparse gradients and no Python work per token.

Each kept token is predicted from the mean of the vectors of the `window` words on each side
of it (reviews run end to end; at the two ends of the stream the end word stands in for the
missing ones) against `negatives` words drawn from the unigram distribution raised to 3/4;
frequent words are subsampled. On the full data (18.6 million tokens of the
training split and the unlabeled reviews) an epoch takes about 27 s on 2 CPU cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imdbsent import threads
from imdbsent.text import PAD_ID, UNK_ID

NEGATIVE_TABLE = 1_000_000  # pre-drawn negatives, sampled from by index


@dataclass(frozen=True)
class Word2VecArgs:
    dim: int = 128
    epochs: int = 5
    window: int = 5
    negatives: int = 5
    subsample: float = 1e-4
    lr: float = 0.05
    batch_size: int = 4096
    seed: int = 1234


def untrained_loss(args: Word2VecArgs) -> float:
    """The loss a token costs before any step: the target vectors start at zero, so every
    candidate's score is 0 and each of the 1 + `negatives` costs ln 2."""
    return (args.negatives + 1) * math.log(2)


def sampling(counts: np.ndarray, subsample: float, rng: np.random.Generator,
             size: int = NEGATIVE_TABLE) -> tuple[np.ndarray, torch.Tensor]:
    """word2vec's two distributions from word counts: each word's probability of being kept
    (frequent words subsampled at threshold `subsample`) and `size` negatives pre-drawn from
    the counts raised to 3/4."""
    freq = counts / counts.sum()
    with np.errstate(divide="ignore"):
        keep = np.minimum(1.0, (np.sqrt(freq / subsample) + 1) * subsample / freq)
    noise = counts ** 0.75
    return keep, torch.from_numpy(rng.choice(len(counts), size, p=noise / noise.sum()))


def train_vectors(ids: np.ndarray, vocab_size: int, args: Word2VecArgs,
                  report: Callable[[int, float], None] = lambda _epoch, _loss: None
                  ) -> torch.Tensor:
    """Vectors [vocab_size, dim] learned from the token stream `ids` (reviews end to end;
    `<pad>` and `<unk>` are neither predicted nor context). `report(epoch, mean loss)` after
    each epoch. The vectors are scaled to a standard deviation of 1, as a model's randomly
    initialised embedding (for the default recipe on IMDB: 91.05% validation accuracy against
    90.81% at word2vec's own scale, and slower overfitting). The same ids and args give the
    same vectors."""
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    ids = np.asarray(ids, dtype=np.int64)
    ids = ids[(ids != PAD_ID) & (ids != UNK_ID)]
    counts = np.bincount(ids, minlength=vocab_size).astype(np.float64)
    if not len(ids):
        return torch.zeros(vocab_size, args.dim)
    keep, negatives = sampling(counts, args.subsample, rng)

    context = nn.EmbeddingBag(vocab_size, args.dim, mode="mean", sparse=True)
    nn.init.uniform_(context.weight, -0.5 / args.dim, 0.5 / args.dim, generator=gen)
    target = nn.Embedding(vocab_size, args.dim, sparse=True)
    nn.init.zeros_(target.weight)
    optimizer = torch.optim.SGD([context.weight, target.weight], lr=args.lr)
    offsets = torch.cat([torch.arange(-args.window, 0), torch.arange(1, args.window + 1)])
    labels = torch.zeros(1, args.negatives + 1)
    labels[0, 0] = 1.0

    total = args.epochs * math.ceil(keep[ids].sum() / args.batch_size)  # expected steps
    step = 0
    for epoch in range(1, args.epochs + 1):
        kept = torch.from_numpy(ids[rng.random(len(ids)) < keep[ids]])
        order = torch.randperm(len(kept), generator=gen)
        loss_sum = 0.0
        for start in threads.balanced(range(0, len(kept), args.batch_size)):
            for group in optimizer.param_groups:  # word2vec's linear decay
                group["lr"] = args.lr * max(1e-4, 1.0 - step / total)
            centre = order[start:start + args.batch_size]
            around = kept[(centre[:, None] + offsets[None, :]).clamp(0, len(kept) - 1)]
            drawn = negatives[torch.randint(NEGATIVE_TABLE, (len(centre), args.negatives),
                                            generator=gen)]
            candidates = torch.cat([kept[centre, None], drawn], dim=1)
            scores = (target(candidates) * context(around)[:, None, :]).sum(dim=2)
            loss = nn.functional.binary_cross_entropy_with_logits(
                scores, labels.expand_as(scores), reduction="sum")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            step += 1
        report(epoch, loss_sum / max(len(kept), 1))
    vectors = context.weight.detach().clone()
    vectors[PAD_ID] = 0.0
    return vectors / vectors[PAD_ID + 1:].std()  # the scale of nn.Embedding's N(0, 1) start
