"""The short-text benchmark (benchmarks/short): the committed suite file is well-formed and is
exactly what its generator writes; score() computes accuracies, calibration and `<unk>` rates
correctly on a stub predictor whose probabilities the test sets; the IMDB-derived sentences
come from the validation split only; score.py runs end to end on the small trained run."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from imdbsent import text
from imdbsent.data import split
from imdbsent.sources import load_source

SHORT = Path(__file__).resolve().parents[1] / "benchmarks" / "short"


def _load(name: str):
    """A module of benchmarks/short (not a package) under a name of its own."""
    spec = importlib.util.spec_from_file_location(f"short_bench_{name}", SHORT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


suite = _load("suite")
generate = _load("generate")

CATEGORIES = ["polarity", "negation", "contrast", "intensity", "comparison", "typos", "emoji",
              "domains", "imdb_words"]


def test_suite_file_is_well_formed():
    lines = suite.SUITE.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "category\tlabel\ttext"
    assert lines[-1] == ""  # ends with one newline, and no blank line anywhere else
    rows = [line.split("\t") for line in lines[1:-1]]
    assert all(len(r) == 3 for r in rows), [r for r in rows if len(r) != 3]
    assert {r[1] for r in rows} == {"pos", "neg"}
    texts = [r[2] for r in rows]
    assert all(t and t == t.strip() and "\r" not in t for t in texts)
    assert [t for t, n in Counter(texts).items() if n > 1] == []
    assert 400 <= len(rows) <= 600
    per_label = Counter((r[0], r[1]) for r in rows)
    assert sorted({r[0] for r in rows}) == sorted(CATEGORIES)
    for category in CATEGORIES:
        assert per_label[category, "pos"] + per_label[category, "neg"] >= 40, category
        assert min(per_label[category, "pos"], per_label[category, "neg"]) >= 20, category


def test_generator_writes_the_committed_file_exactly(tmp_path):
    assert generate.render() == suite.SUITE.read_text(encoding="utf-8")
    out = tmp_path / "suite.tsv"
    assert generate.main(["--out", str(out)]) == 0
    assert out.read_bytes() == suite.SUITE.read_bytes()
    assert generate.main(["--out", str(out), "--check"]) == 0
    out.write_text("category\tlabel\ttext\n", encoding="utf-8")
    assert generate.main(["--out", str(out), "--check"]) == 1


def test_load_suite_reads_every_row_and_refuses_a_bad_one(tmp_path):
    items = suite.load_suite()
    assert len(items) == len(generate.rows())
    assert items[0] == suite.Item(*generate.rows()[0])
    assert {it.group for it in items} == {suite.SUITE_GROUP}
    bad = tmp_path / "bad.tsv"
    bad.write_text("category\tlabel\ttext\npolarity\tpositive\tgreat film\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.tsv:2"):
        suite.load_suite(bad)


def test_sentences_split_at_breaks_and_sentence_ends():
    review = ('Great film! I loved it.<br /><br />The end... was "odd." Still: 8/10<br/>'
              '<br /> -- ')
    assert suite.sentences(review) == ["Great film!", "I loved it.", "The end...", 'was "odd."',
                                       "Still: 8/10"]
    assert suite.sentences("no end mark at all") == ["no end mark at all"]


@dataclass
class _Pred:
    prob_pos: float | None
    label: str | None


class StubPredictor:
    """Gives each text the probability the test set for it."""

    def __init__(self, probs: dict[str, float | None], tokenizer=None):
        self.probs = probs
        self.tokenizer = tokenizer
        self.seen: list[str] = []

    def predict(self, texts):
        self.seen += texts
        out = []
        for t in texts:
            p = self.probs[t]
            out.append(_Pred(p, None if p is None else ("pos" if p >= 0.5 else "neg")))
        return out


def _items(rows):
    return [suite.Item(cat, label, txt) for cat, label, txt in rows]


def test_score_per_category_accuracy_calibration_and_examples():
    rows = [("a", "pos", "great film", 0.9),     # right
            ("a", "pos", "fine film", 0.3),      # wrong, confidence 0.7
            ("a", "neg", "dull film", 0.2),      # right
            ("a", "neg", "odd film", 0.6),       # wrong, confidence 0.6
            ("b", "pos", "lovely", 0.8),         # right
            ("b", "neg", "meh", 0.45)]           # right
    stub = StubPredictor({t: p for *_, t, p in rows})
    items = _items([r[:3] for r in rows])
    res = suite.score(stub, items, name="stub")
    assert stub.seen == [r[2] for r in rows]
    assert res["name"] == "stub" and res["recipe"] is None
    a, b = res["categories"]["a"], res["categories"]["b"]
    assert (a["count"], a["accuracy"], b["count"], b["accuracy"]) == (4, 0.5, 2, 1.0)
    assert a["mean_p_correct"] == pytest.approx((0.9 + 0.3 + 0.8 + 0.4) / 4)
    assert (a["pos_accuracy"], a["neg_accuracy"]) == (0.5, 0.5)
    # wrong examples, the most confident first
    assert [(w["text"], w["label"]) for w in a["wrong"]] == [("fine film", "pos"), ("odd film", "neg")]
    assert a["wrong"][0]["prob_pos"] == pytest.approx(0.3)
    assert b["wrong"] == []
    group = res["groups"]["suite"]
    assert group["micro"] == pytest.approx(4 / 6)
    assert group["macro"] == pytest.approx(0.75)
    # one item a bin: |right - max(p, 1-p)| = 0.1, 0.7, 0.2, 0.6, 0.2, 0.45
    assert group["ece"] == pytest.approx((0.1 + 0.7 + 0.2 + 0.6 + 0.2 + 0.45) / 6)
    assert group["brier"] == pytest.approx((0.01 + 0.49 + 0.04 + 0.36 + 0.04 + 0.2025) / 6)
    assert group["unk_rate"] is None  # the stub has no tokenizer


def test_ece_bins_share_items_on_both_sides_of_a_half():
    # one bin above 0.5: accuracy 2/3, confidence 0.95
    assert suite.calibration([0.91, 0.95, 0.99], [1, 1, 0])["ece"] == pytest.approx(0.95 - 2 / 3)
    # one bin below: the predictions say neg; right 1 of 2, confidence (0.95 + 0.98) / 2
    assert suite.calibration([0.05, 0.02], [0, 1])["ece"] == pytest.approx(0.965 - 0.5)
    # bins are over P(pos), not over confidence: 0.15 and 0.85 sit in bins of their own
    assert suite.calibration([0.15, 0.85], [1, 1])["ece"] == pytest.approx(0.5 * 0.85 + 0.5 * 0.15)
    # p = 1.0 falls in the last bin; p = 0.5 predicts pos
    assert suite.calibration([1.0, 0.5], [1, 0])["ece"] == pytest.approx(0.5 * 0.0 + 0.5 * 0.5)
    # perfectly calibrated: 80% of the items at 0.8 are positive
    assert suite.calibration([0.8] * 5, [1, 1, 1, 1, 0])["ece"] == pytest.approx(0.0)


def test_score_counts_a_skipped_text_as_wrong_and_the_unk_rate():
    tok = text.fit_tokenizer(["great film", "dull film"])
    items = _items([("a", "pos", "great film", ), ("a", "neg", "dull popcorn flick"),
                    ("b", "pos", "   ")])
    stub = StubPredictor({"great film": 0.7, "dull popcorn flick": 0.4, "   ": None}, tokenizer=tok)
    res = suite.score(stub, items)
    assert res["categories"]["a"]["accuracy"] == 1.0
    assert res["categories"]["a"]["unk_rate"] == pytest.approx(2 / 5)  # popcorn, flick
    assert res["categories"]["b"]["accuracy"] == 0.0
    assert res["categories"]["b"]["wrong"][0]["prob_pos"] == 0.5
    assert res["groups"]["suite"]["unk_rate"] == pytest.approx(2 / 5)


def test_score_on_the_whole_suite_with_a_constant_predictor():
    items = suite.load_suite()
    res = suite.score(StubPredictor(dict.fromkeys((it.text for it in items), 0.75)), items)
    for category, r in res["categories"].items():
        share_pos = sum(it.label == "pos" for it in items if it.category == category) / r["count"]
        assert r["accuracy"] == pytest.approx(share_pos)
        assert (r["pos_accuracy"], r["neg_accuracy"]) == (1.0, 0.0)
    group = res["groups"]["suite"]
    share_pos = sum(it.y for it in items) / len(items)
    assert group["micro"] == pytest.approx(share_pos)
    assert group["ece"] == pytest.approx(abs(0.75 - share_pos))


def test_markdown_has_a_column_a_run_and_escapes_text():
    items = _items([("a", "pos", "x | y", ), ("a", "neg", "z")])
    stub = StubPredictor({"x | y": 0.1, "z": 0.2})
    one, two = suite.score(stub, items, name="one"), suite.score(stub, items, name="two")
    md = suite.markdown([one, two], header=["machine: test"])
    assert "- machine: test" in md
    assert "| category | group | n | words | `one` | `two` |" in md
    assert "| a | suite | 2 | 2.0 | 50.0% (0.45) | 50.0% (0.45) |" in md
    assert "| a | pos | 0.100 | x \\| y |" in md
    assert "**suite: ECE (10 bins)**" in md


def test_imdb_items_come_from_valid_reviews_only(source_dir):
    items = suite.imdb_items(source_dir, n=20, seed=3)
    assert items == suite.imdb_items(source_dir, n=20, seed=3)  # seeded
    first = [it for it in items if it.category == "valid_first_sentence"]
    last = [it for it in items if it.category == "valid_last_sentence"]
    assert len(first) == len(last) == 20
    assert {it.group for it in items} == {suite.IMDB_GROUP}
    src = load_source(str(source_dir), unsupervised=False)
    train, valid, _ = split(src.splits["train"].dataset(), suite.SPLIT_RATIO, suite.SPLIT_SEED)
    by_first = {suite.sentences(t)[0]: ("pos" if y else "neg")
                for t, y in zip(valid["text"], valid["label"])}
    assert all(by_first.get(it.text) == it.label for it in first)
    train_first = {suite.sentences(t)[0] for t in train["text"]} - set(by_first)
    assert not train_first & {it.text for it in first}


def test_score_command_end_to_end(trained_run, source_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(SHORT))
    score = importlib.import_module("score")
    out = tmp_path / "short.md"
    rc = score.main([str(trained_run), "--source", str(source_dir), "--imdb-reviews", "10",
                     "--out", str(out), "--json", str(tmp_path / "short.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text(encoding="utf-8")
    assert f"run `{trained_run.name}`: model `gru`" in printed
    for category in [*CATEGORIES, "valid_first_sentence", "valid_last_sentence"]:
        assert f"| {category} |" in printed
    assert "torch " in printed and "**imdb-valid: micro accuracy**" in printed
    assert score.main([str(tmp_path / "nope"), "--no-imdb"]) == 2
    for bad in (["--imdb-reviews", "-1"], ["--threads", "0"]):  # a usage error, no traceback
        with pytest.raises(SystemExit) as stopped:
            score.main([str(trained_run), *bad])
        assert stopped.value.code == 2


def test_the_machine_line_names_the_cpu_and_the_kernels_torch_runs(monkeypatch):
    import torch

    line = suite.machine()
    assert f"{torch.backends.cpu.get_cpu_capability()} kernels" in line and "cores (" in line
    monkeypatch.setattr(suite.Path, "read_text", lambda self: (_ for _ in ()).throw(OSError()))
    assert suite.machine().startswith(f"{len(suite.os.sched_getaffinity(0))} cores (unknown CPU")
