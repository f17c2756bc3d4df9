"""Region embeddings learned from unlabeled text: Johnson & Zhang's (2015) "tv-embeddings".

A region of `region` consecutive words (a bag) is embedded as z = relu(E r + b), E and b
trained, over a pass of the token stream, to predict the words of the two regions beside it
(negative sampling; frequent target words subsampled as word2vec's; `<pad>` and `<unk>` never
a target). A model then reads, at each word, z of the region centred on it (`centred`): what a
word means in its neighbourhood ("not good", "good fun"), learned from the 50,000 unlabeled
reviews as well as the training ones. On IMDB's 20 million tokens a pass took 195-203 s on 2
cores of a Xeon with AVX-512 and 205-286 s on an AMD EPYC with AVX2 (benchmarks/notes.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imdbsent import threads, word2vec
from imdbsent.text import PAD_ID, UNK_ID

BATCH = 8192  # regions a step
NEGATIVES = 10  # words drawn against each region
LR = 3e-3
SUBSAMPLE = 1e-4


def steps(tokens: int, region: int, passes: int = 1) -> int:
    """The number of steps `learn` takes in `passes` passes over a stream of `tokens` tokens."""
    return math.ceil(passes * max(tokens - 3 * region, 0) / BATCH)


def learn(ids: np.ndarray, vocab_size: int, region: int, dim: int, seed: int,
          report: Callable[[int, int], None] = lambda _done, _total: None, *,
          passes: int = 1, lr: float = LR) -> tuple[torch.Tensor, torch.Tensor]:
    """E [vocab_size, dim] (`<pad>`'s row zero) and b [dim], from `passes` passes over every
    region of the token stream `ids` (texts end to end), each in a seeded order; `report(step,
    steps)` after each step. The same ids and arguments give the same embedding. (The recipes
    make three passes: benchmarks/notes.md.)"""
    gen = torch.Generator().manual_seed(seed)
    counts = np.bincount(ids, minlength=vocab_size).astype(np.float64)
    counts[[PAD_ID, UNK_ID]] = 0
    # tables made without their default init, which would draw from torch's global generator:
    # a model then trains the same whether it learned its region embeddings or took them
    embed = nn.EmbeddingBag(vocab_size, dim, mode="sum", padding_idx=PAD_ID,
                            _weight=torch.empty(vocab_size, dim))
    nn.init.uniform_(embed.weight, -0.5 / dim, 0.5 / dim, generator=gen)
    bias = nn.Parameter(torch.zeros(dim))
    total = steps(len(ids), region, passes)
    if total and counts.sum():
        keep, table = word2vec.sampling(counts, SUBSAMPLE, np.random.default_rng(seed))
        keep[[PAD_ID, UNK_ID]] = 0.0  # never a target
        _fit(torch.from_numpy(ids.astype(np.int64)), embed, bias, region,
             torch.from_numpy(keep).float(), table, gen, report, total, passes, lr)
    weight = embed.weight.detach().clone()
    weight[PAD_ID] = 0.0
    return weight, bias.detach().clone()


def _fit(tokens: torch.Tensor, embed: nn.EmbeddingBag, bias: nn.Parameter, region: int,
         keep: torch.Tensor, table: torch.Tensor, gen: torch.Generator,
         report: Callable[[int, int], None], total: int, passes: int, lr: float) -> None:
    out = nn.Embedding(len(keep), embed.embedding_dim, _weight=torch.zeros(len(keep), embed.embedding_dim))
    # dense Adam over the whole tables, where a row not drawn in a step still moves by its
    # moments: 1.6 times as fast a step as SparseAdam on 2 CPU cores, its region embeddings as
    # good by a linear probe (benchmarks/notes.md)
    optimizer = torch.optim.Adam([embed.weight, out.weight, bias], lr=lr)
    inside = torch.arange(region)
    beside = torch.cat([torch.arange(-region, 0), torch.arange(region, 2 * region)])
    order = torch.cat([torch.randperm(len(tokens) - 3 * region, generator=gen)
                       for _ in range(passes)]) + region
    for step, start in enumerate(threads.balanced(range(0, len(order), BATCH)), 1):
        at = order[start:start + BATCH]
        z = F.relu(embed(tokens[at[:, None] + inside]) + bias)
        targets = tokens[at[:, None] + beside]
        kept = (torch.rand(targets.shape, generator=gen) < keep[targets]).float()
        drawn = table[torch.randint(len(table), (len(at), NEGATIVES), generator=gen)]
        pos = (out(targets) * z[:, None]).sum(-1)
        neg = (out(drawn) * z[:, None]).sum(-1)
        loss = ((F.softplus(-pos) * kept).sum() + F.softplus(neg).sum()) / len(at)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        report(step, total)


def region_sums(x: torch.Tensor, region: int) -> torch.Tensor:
    """[batch, time, dim] -> [batch, time + region - 1, dim]: the sum over each window of
    `region` positions that holds a token (the texts padded with zeros at both ends)."""
    cum = F.pad(torch.cumsum(F.pad(x, (0, 0, region - 1, region - 1)), dim=1), (0, 0, 1, 0))
    return cum[:, region:] - cum[:, :-region]


def centred_sums(x: torch.Tensor, region: int) -> torch.Tensor:
    """[batch, time, dim] -> [batch, time, dim]: the sum over the `region` positions centred on
    each position, `region` odd (a region past a text's ends holds only its positions). Summed
    shift by shift in place, forward and backward (the window is symmetric, so the gradient is
    the same sum of the output's gradient): exact, and about three times as fast on the CPU as
    the running sums of `region_sums`, or autograd's own backward of the shifted slices."""
    return _CentredSums.apply(x, region)


class _CentredSums(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, region: int) -> torch.Tensor:
        ctx.region = region
        return _shifted_sums(x, region)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _shifted_sums(grad, ctx.region), None


def _shifted_sums(x: torch.Tensor, region: int) -> torch.Tensor:
    out = x.clone()
    for k in range(1, (region - 1) // 2 + 1):
        out[:, k:] += x[:, :-k]
        out[:, :-k] += x[:, k:]
    return out


def centred(embedded: torch.Tensor, bias: torch.Tensor, region: int) -> torch.Tensor:
    """relu(E r + b) of the region centred on each position of `embedded` [batch, time, dim]
    (rows of E; `<pad>`'s are zero, so a region past a text's ends holds only its words). By
    running sums (`region_sums`), not `centred_sums`: the recipes that read region embeddings
    were measured with them, and exact sums differ in the last bits, enough to train otherwise."""
    half = (region - 1) // 2
    return F.relu(region_sums(embedded, region)[:, half:half + embedded.shape[1]] + bias)
