"""The end of a review as a stack member (issue 12): a review's verdict is often in its last
sentences, and every member of `stack` reads the whole review (the recurrent ones its first
800 tokens), so a model of the last K tokens alone may err on other reviews than they do.
NB-LR as Wang & Manning wrote it (binarized word 1-3-grams of the last K token ids of each
prepared review, scaled by the Naive Bayes log-count ratio, logistic regression), trained on
the train split; then every subset of the members with it, stacked (`stacking.rank_with_runs`,
cross-fitted on validation).

    python benchmarks/tail_ngrams.py --data benchmarks/work/data --last 60 \\
        --members benchmarks/work/runs/{default,gru,nblr,nbow-k64}-1234

Needs the `bench` extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from char_ngrams import nb_ratio  # benchmarks/, beside this
from imdbsent import data
from stacking import rank_with_runs


def tails(enc: data.Encoded, last: int) -> list[str]:
    """Each review's last `last` token ids, as a string of numbers."""
    return [" ".join(map(str, enc.flat[enc.offsets[i]:enc.offsets[i + 1]][-last:]))
            for i in range(len(enc))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("benchmarks/work/data"))
    parser.add_argument("--members", type=Path, nargs="*", default=[],
                        help="finished runs on the same data, to stack with")
    parser.add_argument("--last", type=int, default=60, help="tokens read from each end")
    parser.add_argument("--c", type=float, default=0.1, help="inverse regularization")
    args = parser.parse_args()
    prepared = data.load_prepared(args.data)
    start = time.time()
    train = prepared.split("train")
    vec = CountVectorizer(token_pattern=r"\S+", ngram_range=(1, 3), binary=True,
                          dtype=np.float32)
    xtrain = vec.fit_transform(tails(train, args.last))
    scale = nb_ratio(xtrain, train.labels)
    classifier = LogisticRegression(C=args.c, max_iter=2000).fit(
        xtrain.multiply(scale).tocsr(), train.labels)
    print(f"the last {args.last} tokens: {xtrain.shape[1]:,} n-grams, trained in "
          f"{time.time() - start:.0f} s", flush=True)
    tail, labels = [], {}
    for name in ("valid", "test"):
        enc = prepared.split(name)
        order = np.argsort(enc.lengths, kind="stable")  # a scored run's order
        x = vec.transform(tails(enc.take(order), args.last)).multiply(scale).tocsr()
        tail.append(torch.tensor(classifier.decision_function(x)))
        labels[name] = torch.tensor(enc.labels[order]).float()
    rank_with_runs({f"tail{args.last}": tuple(tail)}, labels, args.members, args.data)


if __name__ == "__main__":
    main()
