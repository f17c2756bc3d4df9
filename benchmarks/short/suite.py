"""The short-text benchmark's core: load the hand-made suite, make the IMDB-derived sentences,
score a predictor per category, and format the results as markdown.

    from suite import load_suite, imdb_items, score, markdown   # with benchmarks/short on sys.path
    items = load_suite() + imdb_items("../shared/data/imdb")
    print(markdown([score(Predictor(run), items, name=run.name)]))

Two groups of items: `suite` (benchmarks/short/suite.tsv, one-line texts written by us, labels a
human finds obvious) and `imdb-valid` (the first and the last sentence of a seeded sample of
IMDB's validation reviews, labeled by their review: a noisy proxy, as a sentence of a positive
review need not be positive). The validation split is the one `imdbsent prepare` makes by
default, so these sentences come from reviews no run trained on; no IMDB text is stored here.

Calibration: the expected calibration error (ECE) bins the items by P(pos) into 10 equal-width
bins; in each, |accuracy - mean confidence| (confidence = max(p, 1-p), the prediction p >= 0.5),
weighted by the bin's share of items. As no bin straddles 0.5, this equals the weighted
|fraction positive - mean P(pos)| of a reliability table over P(pos). Brier: mean (p - y)^2.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

HERE = Path(__file__).resolve().parent
SUITE = HERE / "suite.tsv"
SUITE_GROUP, IMDB_GROUP = "suite", "imdb-valid"
IMDB_CATEGORIES = ("valid_first_sentence", "valid_last_sentence")
IMDB_REVIEWS = 500  # reviews sampled from validation: one first and one last sentence each
IMDB_SEED = 9
SPLIT_RATIO, SPLIT_SEED = 0.7, 1234  # imdbsent prepare's defaults
EXAMPLES = 2  # wrong examples shown a category


@dataclass(frozen=True)
class Item:
    category: str
    label: str  # "pos" or "neg"
    text: str
    group: str = SUITE_GROUP

    @property
    def y(self) -> int:
        return 1 if self.label == "pos" else 0


class _Prediction(Protocol):
    prob_pos: float | None
    label: str | None


class PredictorLike(Protocol):
    """What score() needs: imdbsent.predict.Predictor, or a stub in tests. A `tokenizer`
    attribute (a `tokenizers.Tokenizer`) is used for the <unk> rate when present."""

    def predict(self, texts: list[str]) -> Sequence[_Prediction]: ...


def load_suite(path: Path = SUITE) -> list[Item]:
    """The hand-made suite: a TSV file with the header `category<TAB>label<TAB>text`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t") != ["category", "label", "text"]:
        raise ValueError(f"{path}: the first line must be the header category, label, text")
    items = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3 or fields[1] not in ("pos", "neg") or not fields[2].strip():
            raise ValueError(f"{path}:{number}: not category<TAB>pos|neg<TAB>text: {line!r}")
        items.append(Item(*fields))
    return items


_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
# A sentence ends at . ! or ? (and a closing quote or bracket after it) followed by white space.
# Simple, so "Mr. Smith" splits too: the IMDB group is a noisy proxy anyway.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")
_WORD = re.compile(r"\w")


def sentences(review: str) -> list[str]:
    """A review's sentences: `<br />` tags end a paragraph, paragraphs split at . ! ? and
    white space; pieces with no letter or digit are dropped."""
    out = []
    for paragraph in _BR.split(review):
        for piece in _SENTENCE_END.split(paragraph):
            piece = " ".join(piece.split())
            if _WORD.search(piece):
                out.append(piece)
    return out


def imdb_items(source: str | Path, n: int = IMDB_REVIEWS, seed: int = IMDB_SEED,
               split_ratio: float = SPLIT_RATIO, split_seed: int = SPLIT_SEED) -> list[Item]:
    """The first and the last sentence of `n` validation reviews (a seeded sample of those with
    two sentences or more), labeled by their review. The validation split is made as
    `imdbsent prepare --split-ratio SPLIT_RATIO --seed SPLIT_SEED` makes it from `source`."""
    from imdbsent.data import split
    from imdbsent.sources import load_source

    src = load_source(str(source), unsupervised=False)
    valid = split(src.splits["train"].dataset(), split_ratio, split_seed).valid
    texts, labels = valid["text"], valid["label"]
    candidates = [i for i, t in enumerate(texts) if len(sentences(t)) >= 2]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(candidates), size=min(n, len(candidates)), replace=False).tolist())
    first, last = [], []
    for c in chosen:
        i = candidates[c]
        label = "pos" if labels[i] == 1 else "neg"
        parts = sentences(texts[i])
        first.append(Item(IMDB_CATEGORIES[0], label, parts[0], IMDB_GROUP))
        last.append(Item(IMDB_CATEGORIES[1], label, parts[-1], IMDB_GROUP))
    return first + last


def calibration(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """ECE (10 bins of P(pos)) and Brier score, as `imdbsent evaluate` computes them."""
    if len(probs) == 0:
        return {"ece": float("nan"), "brier": float("nan")}
    import torch

    from imdbsent.engine import calibration_metrics
    m = calibration_metrics(torch.from_numpy(np.asarray(probs, dtype=np.float64)),
                            torch.from_numpy(np.asarray(y, dtype=np.float64)))
    return {"ece": m["ece"], "brier": m["brier"]}


def unk_counts(tokenizer: Any, texts: list[str]) -> list[tuple[int, int]]:
    """(<unk> tokens, tokens) of each text as the run's tokenizer encodes it."""
    from imdbsent import text

    return [(sum(i == text.UNK_ID for i in ids), len(ids)) for ids in text.encode(tokenizer, texts)]


def score(predictor: PredictorLike, items: list[Item], name: str | None = None) -> dict:
    """Scores of one predictor on `items`, per category and per group (see the module doc).

    A text the predictor skips (no prob_pos) counts as wrong, with P(pos) 0.5."""
    texts = [it.text for it in items]
    preds = predictor.predict(texts)
    probs = np.array([0.5 if p.prob_pos is None else p.prob_pos for p in preds], dtype=np.float64)
    y = np.array([it.y for it in items])
    correct = np.array([p.label == it.label for p, it in zip(preds, items)])
    p_correct = np.where(y == 1, probs, 1 - probs)
    tokenizer = getattr(predictor, "tokenizer", None)
    unk = np.array(unk_counts(tokenizer, texts)) if tokenizer is not None else None
    words = np.array([len(t.split()) for t in texts])

    def summary(mask: np.ndarray) -> dict:
        out = {"count": int(mask.sum()), "accuracy": float(correct[mask].mean()),
               "mean_p_correct": float(p_correct[mask].mean()),
               **calibration(probs[mask], y[mask]),
               "mean_words": float(words[mask].mean()), "unk_rate": None}
        for label, value in (("pos", 1), ("neg", 0)):
            sel = mask & (y == value)
            out[f"{label}_accuracy"] = float(correct[sel].mean()) if sel.any() else None
        if unk is not None:
            tokens = unk[mask, 1].sum()
            out["unk_rate"] = float(unk[mask, 0].sum() / tokens) if tokens else 0.0
        return out

    categories, groups = {}, {}
    cat_of = np.array([it.category for it in items])
    group_of = np.array([it.group for it in items])
    for category in dict.fromkeys(it.category for it in items):
        mask = cat_of == category
        res = summary(mask)
        res["group"] = str(group_of[mask][0])
        wrong = np.flatnonzero(mask & ~correct)
        wrong = wrong[np.argsort(-np.abs(probs[wrong] - 0.5), kind="stable")][:EXAMPLES]
        res["wrong"] = [{"text": texts[i], "label": items[i].label, "prob_pos": float(probs[i])}
                        for i in wrong]
        categories[category] = res
    for group in dict.fromkeys(it.group for it in items):
        mask = group_of == group
        res = summary(mask)
        res["micro"] = res.pop("accuracy")
        members = [c for c, r in categories.items() if r["group"] == group]
        res["macro"] = float(np.mean([categories[c]["accuracy"] for c in members]))
        res["categories"] = len(members)
        groups[group] = res
    config = getattr(predictor, "config", None)
    recipe = config.model.name if config is not None else None
    return {"name": name, "recipe": recipe, "categories": categories, "groups": groups}


def machine() -> str:
    """The machine in one line, as benchmarks/run.py describes it."""
    import torch

    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    # the family and model tell apart CPUs sold under one name (AMD EPYC), and the kernels
    # torch picks (AVX2, AVX512) change both the speed and the last bits of a training run
    cpu = ", ".join([info.get("model name", "unknown CPU")]
                    + [f"{key} {info[key]}" for key in ("cpu family", "model") if key in info]
                    + [f"{torch.backends.cpu.get_cpu_capability()} kernels"])
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return (f"{cores} cores ({cpu}), {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def _cell_text(text: str, limit: int = 140) -> str:
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")


def markdown(results: list[dict], *, header: Sequence[str] = ()) -> str:
    """One table, a row a category and a column a run (cells: accuracy, and in brackets the
    mean probability of the right label), the groups' summaries, then each run's wrong
    examples. `header` lines (machine, command, ...) go on top as a list."""
    if not results:
        return "# Short-text suite\n\nno runs scored\n"
    names = [r["name"] or f"run {i + 1}" for i, r in enumerate(results)]
    lines = ["# Short-text suite", ""]
    lines += [f"- {h}" for h in header]
    lines += [f"- run `{n}`: model `{r['recipe']}`" for n, r in zip(names, results)]
    lines += ["- cells: accuracy (mean P(right label)); words: mean words a text; `<unk>`: share of "
              "the run's tokens that are out of its vocabulary", ""]
    first = results[0]
    lines.append("| category | group | n | words | " + " | ".join(f"`{n}`" for n in names) + " |")
    lines.append("| --- | --- | --- | --- |" + " --- |" * len(results))
    for category, res in first["categories"].items():
        cells = [f"{_pct(r['categories'][category]['accuracy'])} "
                 f"({_num(r['categories'][category]['mean_p_correct'], 2)})" for r in results]
        lines.append(f"| {category} | {res['group']} | {res['count']} | {res['mean_words']:.1f} | "
                     + " | ".join(cells) + " |")
    for group, res in first["groups"].items():
        rows = [("macro accuracy", lambda g: _pct(g["macro"])),
                ("micro accuracy", lambda g: _pct(g["micro"])),
                ("accuracy on pos / neg", lambda g: f"{_pct(g['pos_accuracy'])} / {_pct(g['neg_accuracy'])}"),
                ("ECE (10 bins)", lambda g: _num(g["ece"])),
                ("Brier", lambda g: _num(g["brier"])),
                ("`<unk>` rate", lambda g: _pct(g["unk_rate"]))]
        for label, fmt in rows:
            cells = [fmt(r["groups"][group]) for r in results]
            lines.append(f"| **{group}: {label}** | {group} | {res['count']} | {res['mean_words']:.1f} | "
                         + " | ".join(cells) + " |")
    for n, r in zip(names, results):
        lines += ["", f"Wrong, most confident first (`{n}`):", "",
                  "| category | right | P(pos) | text |", "| --- | --- | --- | --- |"]
        for category, res in r["categories"].items():
            if not res["wrong"]:
                lines.append(f"| {category} | - | - | (none wrong) |")
            for w in res["wrong"]:
                lines.append(f"| {category} | {w['label']} | {w['prob_pos']:.3f} | "
                             f"{_cell_text(w['text'])} |")
    return "\n".join(lines) + "\n"
