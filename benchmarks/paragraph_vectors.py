"""Paragraph vectors from the unlabeled reviews as a stack member (issue 12): PV-DBOW (gensim's
Doc2Vec, dm=0) learned on the train split and the 50,000 unlabeled reviews, each review's
vector trained to predict its words and, with `--ngrams 2`, its bigrams as extra targets (Li
et al. 2016's DV-ngram; Mesnil et al. 2014 stacked paragraph vectors with NBSVM). Validation
and test vectors are inferred with the model frozen, so no test review is read in training; a
logistic regression (C 1) on the training vectors scores them (the vectors learned in training,
or with `--infer-train` inferred again as the others are); then every subset of the members
with it, stacked (`stacking.ranked_subsets`, cross-fitted on validation). gensim's two worker
threads make the vectors differ a little from run to run.

    python benchmarks/paragraph_vectors.py --data benchmarks/work/data \\
        --members benchmarks/work/runs/{default,gru,nblr,nbow}-1234

Needs the `bench` extra (gensim, scikit-learn).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from gensim.models.doc2vec import Doc2Vec
from sklearn.linear_model import LogisticRegression

from imdbsent import data
from stacking import rank_with_runs  # benchmarks/, beside this


def targets(split: data.Encoded, i: int, ngrams: int) -> list[str]:
    """Review `i`'s token ids as words, then its n-grams up to `ngrams` joined by "_"."""
    ids = split.flat[split.offsets[i]:split.offsets[i + 1]].tolist()
    return [str(t) for t in ids] + ["_".join(map(str, ids[j:j + n]))
                                    for n in range(2, ngrams + 1)
                                    for j in range(len(ids) - n + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("benchmarks/work/data"))
    parser.add_argument("--members", type=Path, nargs="*", default=[],
                        help="finished runs on the same data, to stack with")
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--ngrams", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--infer-train", action="store_true",
                        help="fit the classifier on inferred training vectors")
    args = parser.parse_args()
    prepared = data.load_prepared(args.data)
    train = prepared.split("train")
    start = time.time()
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as corpus:
        for split in (train, prepared.split("unsupervised")):
            for i in range(len(split)):
                corpus.write(" ".join(targets(split, i, args.ngrams)) + "\n")
        corpus.flush()
        model = Doc2Vec(corpus_file=corpus.name, dm=0, vector_size=args.dim, negative=5,
                        min_count=2, sample=1e-4, epochs=args.epochs, workers=2,
                        seed=args.seed)
    print(f"PV-DBOW: {time.time() - start:.0f} s, {len(model.wv):,} targets", flush=True)

    def inferred(split: data.Encoded, rows: np.ndarray) -> np.ndarray:
        return np.stack([model.infer_vector(targets(split, i, args.ngrams), epochs=args.epochs)
                         for i in rows])

    start = time.time()
    vectors = (inferred(train, np.arange(len(train))) if args.infer_train
               else model.dv.vectors[:len(train)])
    classifier = LogisticRegression(max_iter=2000).fit(vectors, train.labels)
    pv, labels = [], {}
    for name in ("valid", "test"):
        split = prepared.split(name)
        order = np.argsort(split.lengths, kind="stable")  # a scored run's order
        pv.append(torch.tensor(classifier.decision_function(inferred(split, order))))
        labels[name] = torch.tensor(split.labels[order]).float()
    print(f"inferred {'train, ' if args.infer_train else ''}validation and test: "
          f"{time.time() - start:.0f} s\n", flush=True)
    rank_with_runs({"pv": tuple(pv)}, labels, args.members, args.data)


if __name__ == "__main__":
    main()
