"""A recipe's BiLSTM pre-trained as a language model on the unlabeled reviews, then trained on
the labels as the recipe says: one experiment of issue 12 (Dai & Le 2015; ULMFiT), on this
machine's budget. Reads no validation or test review before the training's own scoring.

1. Language model: after the recipe's start (the prepared word vectors in the embedding), its
   one-layer BiLSTM reads fixed windows of the token stream of the train split and the 50,000
   unlabeled reviews; the forward direction predicts each next word, the backward direction
   each previous one, through one sampled softmax, for `--seconds` (Adam, gradients clipped
   at 1).
2. The recipe's training, unchanged, from those weights, into a run directory that
   `imdbsent evaluate` and `benchmarks/stacking.py` read as any other.

    python benchmarks/lm_pretraining.py --data benchmarks/work/data \\
        --run-dir benchmarks/work/runs/lm-1234
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imdbsent import console, data, engine, threads, training


def pretrain(model: nn.Module, stream: np.ndarray, vocab: int, seconds: float, *,
             window: int = 100, batch: int = 64, negatives: int = 512, lr: float = 2e-3
             ) -> None:
    """Train `model`'s embedding and BiLSTM (a `models.Recurrent` of one layer) as a forward
    and a backward language model over windows of `stream`, in random order, for `seconds`.
    The softmax over the vocabulary is sampled (Jean et al. 2015): each batch scores the true
    word against `negatives` words drawn from the unigram distribution to the power 0.75, with
    log Q subtracted; a full softmax (even an adaptive one) cost four times the LSTM here."""
    if len(model.layers) != 1 or len(model.layers[0]) != 2:
        raise SystemExit("the recipe's model must be a one-layer bidirectional LSTM or GRU")
    forward, backward = model.layers[0]
    q = torch.from_numpy(np.bincount(stream, minlength=vocab)).double() ** 0.75
    q = (q / q.sum()).float()
    log_q = q.clamp(min=1e-12).log()
    ids = torch.from_numpy(stream.astype(np.int64))
    out = nn.Embedding(vocab, model.hidden_dim)
    nn.init.normal_(out.weight, std=0.05)
    bias = nn.Parameter(torch.zeros(vocab))
    params = [*model.embedding.parameters(), *model.layers.parameters(), out.weight, bias]
    optimizer = torch.optim.Adam(params, lr=lr)
    starts = torch.randperm(len(ids) // window - 1) * window
    offsets = torch.arange(window)
    model.train()
    begin, seen, total = time.time(), 0, 0.0
    for step, i in enumerate(threads.balanced(range(0, len(starts), batch)), 1):
        words = ids[starts[i:i + batch, None] + offsets]
        x = model.dropout(model.embedding(words))
        ahead = model.dropout(forward(x)[0][:, :-1])  # read up to t: word t + 1
        behind = model.dropout(backward(x.flip(1))[0].flip(1)[:, 1:])  # read from t: word t - 1
        hidden = torch.cat([ahead, behind]).reshape(-1, model.hidden_dim)
        y = torch.cat([words[:, 1:], words[:, :-1]]).reshape(-1)
        drawn = torch.multinomial(q, negatives, replacement=True)
        true = (hidden * out(y)).sum(-1) + bias[y] - log_q[y]
        false = hidden @ out(drawn).T + bias[drawn] - log_q[drawn]
        false = false.masked_fill(drawn[None, :] == y[:, None], float("-inf"))  # drawn true word
        scores = torch.cat([true[:, None], false], dim=1)
        loss = nn.functional.cross_entropy(scores, torch.zeros(len(y), dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        seen, total = seen + words.numel(), total + loss.item()
        last = time.time() - begin > seconds or i + batch >= len(starts)  # or out of windows
        if step % 200 == 0 or last:
            print(f"language model: {seen:,} tokens, {time.time() - begin:.0f} s, sampled "
                  f"loss of the last batches {total / (step % 200 or 200):.3f}", flush=True)
            total = 0.0
        if last:
            break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("benchmarks/work/data"))
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--seconds", type=float, default=420, help="language-model training")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--lr", type=float, help="the recipe's learning rate after pre-training")
    args = parser.parse_args()
    prepared = data.load_prepared(args.data)
    stream = prepared.unlabeled_stream()
    vocab = prepared.tokenizer.get_vocab_size()
    recipe_start = engine.Trainer._initialise
    pretrained = []  # when the language model ended

    def initialise(trainer: engine.Trainer) -> None:
        recipe_start(trainer)
        pretrain(trainer.model, stream, vocab, args.seconds)
        pretrained.append(time.time())

    engine.Trainer._initialise = initialise  # the recipe's fresh start, then the LM
    overrides: dict[str, Any] = {"data": str(args.data), "train.seed": args.seed}
    if args.lr:
        overrides["train.lr"] = args.lr
    training.start(args.recipe, overrides, console.TrainView(), run_dir=args.run_dir)
    print(f"training after the language model: {time.time() - pretrained[0]:.0f} s")


if __name__ == "__main__":
    main()
