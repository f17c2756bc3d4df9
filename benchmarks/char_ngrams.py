"""Character n-grams as a stack member (issue 12): the recipes' members all read the same
words, and their errors overlap (benchmarks/notes.md), so a member that reads characters
(scikit-learn's char_wb n-grams inside word boundaries, sublinear TF-IDF, optionally scaled by
the Naive Bayes log-count ratio as NB-LR does, then a logistic regression) may add what they
miss: misspellings, word pieces, punctuation runs. Trained on the train split's raw texts
alone, as `data.split` divides them for the prepared data; validation and test reviews are
only transformed. Then every subset of the members with it, stacked
(`stacking.ranked_subsets`, cross-fitted on validation).

    python benchmarks/char_ngrams.py --source ../shared/data/imdb --data benchmarks/work/data \\
        --members benchmarks/work/runs/{default,gru,nblr,nbow}-1234

Needs the `bench` extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from imdbsent import data
from imdbsent.sources import load_source
from stacking import rank_with_runs  # benchmarks/, beside this


def nb_ratio(x, labels: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Wang & Manning's log-count ratio of each feature, from binarized counts."""
    present = x > 0
    pos = np.asarray(present[labels == 1].sum(0)).ravel() + alpha
    neg = np.asarray(present[labels == 0].sum(0)).ravel() + alpha
    return np.log((pos / pos.sum()) / (neg / neg.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="../shared/data/imdb")
    parser.add_argument("--data", type=Path, default=Path("benchmarks/work/data"))
    parser.add_argument("--members", type=Path, nargs="*", default=[],
                        help="finished runs on the same data, to stack with")
    parser.add_argument("--ngrams", default="2,5", help="smallest,largest n")
    parser.add_argument("--min-df", type=int, default=3)
    parser.add_argument("--c", type=float, default=10.0, help="inverse regularization")
    parser.add_argument("--nb", action="store_true", help="scale features by the NB ratio")
    args = parser.parse_args()
    prepared = data.load_prepared(args.data)
    ratio, seed = prepared.manifest["args"]["split_ratio"], prepared.manifest["args"]["seed"]
    src = load_source(args.source, unsupervised=False)
    parts = data.split(src.splits["train"].dataset(), ratio, seed)
    texts = {"train": parts.train, "valid": parts.valid, "test": src.splits["test"].dataset()}

    start = time.time()
    low, high = (int(n) for n in args.ngrams.split(","))
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(low, high), min_df=args.min_df,
                          sublinear_tf=True, lowercase=True, dtype=np.float32)
    xtrain = vec.fit_transform(texts["train"]["text"])
    ytrain = np.asarray(texts["train"]["label"])
    if not np.array_equal(ytrain, prepared.split("train").labels):
        raise SystemExit(f"{args.data}'s train split is not data.split's of {args.source}")
    scale = nb_ratio(xtrain, ytrain) if args.nb else None
    if scale is not None:
        xtrain = xtrain.multiply(scale).tocsr()
    classifier = LogisticRegression(C=args.c, max_iter=1000).fit(xtrain, ytrain)
    print(f"char n-grams {low}-{high}{' NB-scaled' if args.nb else ''}: "
          f"{xtrain.shape[1]:,} features, trained in {time.time() - start:.0f} s", flush=True)

    char, labels = [], {}
    for name in ("valid", "test"):
        order = np.argsort(prepared.split(name).lengths, kind="stable")  # a scored run's order
        x = vec.transform(texts[name].select(order)["text"])
        if scale is not None:
            x = x.multiply(scale).tocsr()
        char.append(torch.tensor(classifier.decision_function(x)))
        labels[name] = torch.tensor(np.asarray(texts[name]["label"])[order]).float()
        if not torch.equal(labels[name], torch.tensor(prepared.split(name).labels[order]).float()):
            raise SystemExit(f"{args.data}'s {name} reviews are not {args.source}'s in order")
    print(f"scored validation and test: {time.time() - start:.0f} s since the start\n")
    rank_with_runs({"char": tuple(char)}, labels, args.members, args.data)


if __name__ == "__main__":
    main()
