"""Pictures of runs: learning curves, and on the test split the confusion matrix, ROC and
precision-recall curves, the reliability diagram and the histogram of P(pos), as PNG files
(matplotlib's Agg backend: no display needed), and one self-contained `report.html` with the
figures embedded, a table of metrics and each run's config. Several runs share each figure.

matplotlib is imported here only, when a report is made (`pip install 'imdbsent[report]'`).
"""

from __future__ import annotations

import base64
import contextlib
import html
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imdbsent import engine, runs
from imdbsent.data import PREPARED_FILES, fingerprint_of
from imdbsent.errors import UserError
from imdbsent.fsutil import atomic_write, atomic_write_text
from imdbsent.predict import score_run

SIZE = (8.0, 5.0)  # inches; at DPI, every PNG is 960 x 600 pixels
DPI = 120
MARKER_AREA = 600  # points squared: the reliability diagram's point for a bin of every review
TITLES = {"curves": "Loss and accuracy per epoch", "confusion": "Confusion matrix (test)",
          "roc": "ROC curve (test)", "pr": "Precision-recall curve (test)",
          "reliability": "Reliability diagram (test)", "histogram": "P(pos) by true label (test)"}


@dataclass
class Scores:
    """What a report shows of one run."""

    name: str
    run: Path
    curves: dict[str, list[dict[str, Any]]]  # its epochs (an ensemble: each member's)
    probs: np.ndarray  # P(pos) on the test split, calibrated as predict gives it
    labels: np.ndarray
    metrics: dict[str, Any]
    config: str  # as TOML, without the fields that go unused (Config.to_toml)
    scored: str  # the prepared data and split its figures are of
    data: str  # that data's fingerprint (a copy of a dataset is the same data)
    model: str  # and its status, as `imdbsent runs` shows them
    status: str


def load(run: Path, name: str, device: str = "cpu", data_dir: Path | None = None) -> Scores:
    """Score a run's best checkpoint on its test split (of `data_dir`, default the run's own
    prepared data), and read its epochs and config."""
    run = runs.check_run(run)
    if not (run / runs.BEST).is_file():
        raise UserError(f"{run}: no trained model yet (no {runs.BEST}); nothing to report")
    scored = score_run(run, split="test", device=device, data_dir=data_dir)
    if not len(scored.labels):
        raise UserError(f"{scored.what}: the test split is empty; nothing to report")
    members = [p for p in runs.members(run) if (p / runs.CONFIG).is_file()]
    curves = {f"{name}/{m.name}": runs.epoch_records(m) for m in members} or {
        name: runs.epoch_records(run)}
    logits, labels = scored.logits.double(), scored.labels.double()
    metrics = engine.classification_metrics(logits, labels)
    probs, truth = torch_to_numpy(logits.sigmoid()), torch_to_numpy(labels)
    fpr, tpr = roc(probs, truth)
    recall, precision = pr(probs, truth)
    metrics["roc_auc"] = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    metrics["average_precision"] = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    row, cfg = runs.describe(run), runs.load_config(run)
    data = fingerprint_of(data_dir or runs.data_folder(run, cfg.data)) or scored.what
    return Scores(name, run, curves, probs, truth, metrics, cfg.to_toml(used=True), scored.what,
                  data, row["model"], row["status"])


def torch_to_numpy(t: Any) -> np.ndarray:
    """A tensor's values as a float64 numpy array."""
    return t.detach().cpu().numpy().astype(np.float64)


def roc(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every threshold, from (0, 0) to (1, 1)."""
    tp, fp = _cumulative(probs, labels)
    return (np.concatenate([[0.0], fp / max(fp[-1], 1)]),
            np.concatenate([[0.0], tp / max(tp[-1], 1)]))


def pr(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at every threshold, the highest threshold first."""
    tp, fp = _cumulative(probs, labels)
    return tp / max(tp[-1], 1), tp / np.maximum(tp + fp, 1)


def _cumulative(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives above each distinct threshold, the highest first."""
    order = np.argsort(-probs, kind="stable")
    probs, labels = probs[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(probs)), len(probs) - 1]  # ties move together
    tp = np.cumsum(labels)[last]
    return tp, (last + 1) - tp


def make(run_dirs: list[Path], out: Path, device: str = "cpu", data_dir: Path | None = None,
         say: Callable[[str], None] = lambda _m: None) -> Iterator[Path]:
    """Write every figure and report.html for `run_dirs` into `out` (scored on `data_dir`'s
    test split, default each run's own); each path as it is written, so that a report stopped
    part way has said which figures it left. Runs scored on different test sets are said
    through `say`, as the page says it."""
    _refuse_theirs(out)
    resolved = [Path(r).resolve() for r in run_dirs]
    twice = next((r for r, p in zip(run_dirs, resolved) if resolved.count(p) > 1), None)
    if twice is not None:
        raise UserError(f"{twice}: given twice; each run is drawn once")
    plt = _pyplot()
    names = _names(run_dirs)
    scores = [load(r, n, device, data_dir) for r, n in zip(run_dirs, names)]
    mixed = mixed_test_sets(scores)
    if mixed:
        say(mixed)
    made = [p for p in (out, *out.parents) if not p.exists()]  # innermost first
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "it is a file" if out.is_file() else exc.strerror
        raise UserError(f"--out {out}: cannot make the folder ({why})") from None
    written = []
    try:
        for key, title in TITLES.items():
            fig = DRAW[key](plt, scores, title)
            path = out / f"{key}.png"
            try:
                atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=DPI))
            finally:
                plt.close(fig)
            written.append(path)
            yield path
    except BaseException:  # stopped before its first figure: no empty folder of its own left
        with contextlib.suppress(OSError):
            for folder in made if not written else []:
                folder.rmdir()
        raise
    page = out / "report.html"
    atomic_write_text(page, to_html(scores, written))
    yield page


def _refuse_theirs(out: Path) -> None:
    """Refuse an `out` that holds a run's or a prepared dataset's files: figures beside them
    would be mistaken for theirs (and `imdbsent runs` would list the folder as a run)."""
    try:
        held = {p.name for p in out.iterdir()} if out.is_dir() else set()
    except OSError as exc:
        raise UserError(f"--out {out}: cannot read the folder ({exc.strerror})") from None
    theirs = sorted(held & {*runs.RUN_FILES, *PREPARED_FILES})
    if theirs:
        raise UserError(f"--out {out} holds {', '.join(theirs)} (a run or a prepared dataset): "
                        "choose another --out")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UserError("imdbsent report draws with matplotlib, which is not installed: "
                        "pip install 'imdbsent[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _names(run_dirs: list[Path]) -> list[str]:
    """Each run's folder name, or its path where two runs share a name."""
    names = [Path(r).name for r in run_dirs]
    return [n if names.count(n) == 1 else str(r) for n, r in zip(names, run_dirs)]


def _label(name: str) -> str:
    """A name as matplotlib shows it literally: `$` is not math, a leading `_` not hidden."""
    name = name.replace("$", r"\$")
    return " " + name if name.startswith("_") else name


def _figure(plt: Any, title: str, panels: int = 1) -> tuple[Any, Any]:
    fig, axes = plt.subplots(1, panels, figsize=SIZE, squeeze=False)
    fig.suptitle(title)
    return fig, axes[0]


def _curves(plt: Any, scores: list[Scores], title: str) -> Any:
    fig, (loss, acc) = _figure(plt, title, 2)
    for s in scores:
        for label, records in s.curves.items():
            epochs = [r["epoch"] for r in records]
            for ax, key in ((loss, "loss"), (acc, "acc")):
                line, = ax.plot(epochs, [r[f"valid_{key}"] for r in records], marker="o",
                                label=f"{_label(label)} valid")
                ax.plot(epochs, [r[f"train_{key}"] for r in records], linestyle="--",
                        marker="x", color=line.get_color(), label=f"{_label(label)} train")
    for ax, what in ((loss, "loss (binary cross-entropy)"), (acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _confusion(plt: Any, scores: list[Scores], title: str) -> Any:
    fig, axes = _figure(plt, f"{title}\ncells: count (share of the true class)", len(scores))
    for ax, s in zip(axes, scores):  # (said once above: beside each of several, it overlapped)
        c = s.metrics["confusion"]
        cells = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(cells, cmap="Blues")
        for (i, j), count in np.ndenumerate(cells):
            ax.text(j, i, f"{count:,}\n({count / max(cells[i].sum(), 1):.1%})",
                    ha="center", va="center", fontsize="small",
                    color="white" if count > (cells.min() + cells.max()) / 2 else "black")
        ax.set_xticks([0, 1], ["neg", "pos"])
        ax.set_yticks([0, 1], ["neg", "pos"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{_label(s.name)}\naccuracy {s.metrics['accuracy']:.2%}",
                     fontsize="medium")
    fig.tight_layout()
    return fig


def _roc(plt: Any, scores: list[Scores], title: str) -> Any:
    return _square(plt, title, [(*roc(s.probs, s.labels),
                                 f"{_label(s.name)} (AUC {s.metrics['roc_auc']:.4f})")
                                for s in scores],
                   "false positive rate", "true positive rate", diagonal="chance")


def _pr(plt: Any, scores: list[Scores], title: str) -> Any:
    return _square(plt, title, [(*pr(s.probs, s.labels),
                                 f"{_label(s.name)} (AP {s.metrics['average_precision']:.4f})")
                                for s in scores],
                   "recall (pos)", "precision (pos)")


def _reliability(plt: Any, scores: list[Scores], title: str) -> Any:
    """Each bin a point, its area the bin's share of the reviews: a bin of a dozen reviews far
    from the diagonal weighs little (as in the ECE)."""
    lines = [([b["mean_prob_pos"] for b in s.metrics["reliability"]],
              [b["positive"] for b in s.metrics["reliability"]],
              f"{_label(s.name)} (ECE {s.metrics['ece']:.4f})") for s in scores]
    fig = _square(plt, title, lines, "mean P(pos) in the bin (10 bins; a point's area: the "
                  "bin's share of the reviews)", "share of reviews that are pos",
                  diagonal="perfect calibration")
    ax = fig.axes[0]
    for s, line in zip(scores, ax.get_lines()):
        bins = s.metrics["reliability"]
        ax.scatter(line.get_xdata(), line.get_ydata(), color=line.get_color(), zorder=3,
                   s=[MARKER_AREA * b["examples"] / len(s.labels) + 4 for b in bins])
    return fig


def _square(plt: Any, title: str, lines: list[tuple[Any, Any, str]], xlabel: str, ylabel: str,
            diagonal: str | None = None) -> Any:
    """One figure of curves (x, y, label) over [0, 1] x [0, 1], with a dotted diagonal when
    `diagonal` names it."""
    fig, (ax,) = _figure(plt, title)
    for x, y, label in lines:
        ax.plot(x, y, label=label)
    if diagonal:
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label=diagonal)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def _histogram(plt: Any, scores: list[Scores], title: str) -> Any:
    fig, axes = _figure(plt, title, len(scores))
    bins = np.linspace(0, 1, 21)
    for ax, s in zip(axes, scores):  # outlines, not bars that mix; black, dashed or solid,
        # since the other figures give each run a colour
        for value, label, style in ((0.0, "true neg", "--"), (1.0, "true pos", "-")):
            ax.hist(s.probs[s.labels == value], bins=bins, histtype="step", linewidth=2,
                    label=label, color="black", linestyle=style)
        ax.set_yscale("log")  # the few confident mistakes at either end stay visible
        ax.set_xlabel("P(pos)")
        ax.set_ylabel("reviews (log scale)")
        ax.set_title(_label(s.name), fontsize="medium")
        ax.legend(fontsize="small", loc="upper center")  # over the middle, which holds fewest
    top = max(ax.get_ylim()[1] for ax in axes)
    for ax in axes:
        ax.set_ylim(top=top)  # one scale for every run, to compare them
    fig.tight_layout()
    return fig


DRAW = {"curves": _curves, "confusion": _confusion, "roc": _roc, "pr": _pr,
        "reliability": _reliability, "histogram": _histogram}


def mixed_test_sets(scores: list[Scores]) -> str | None:
    """A warning when the runs were scored on different test sets, whose figures do not
    compare; None when they share one."""
    if len({s.data for s in scores}) < 2:
        return None
    return ("the runs were scored on different test sets, so their figures do not compare: "
            + "; ".join(f"{s.name} on {s.scored}" for s in scores)
            + " (--data DIR scores them all on one)")


def to_html(scores: list[Scores], figures: list[Path]) -> str:
    """The report page: metrics, figures as embedded PNG data, configs; everything escaped,
    nothing fetched."""
    e = html.escape
    head = ("run", "model", "status", "test acc", "loss", "precision", "recall", "F1", "ROC AUC", "AP",
            "ECE", "Brier", "epochs")
    rows = []
    for s in scores:
        m = s.metrics
        epochs = sum(len(r) for r in s.curves.values())
        cells = [s.name, s.model, s.status,
                 f"{m['accuracy']:.2%}",
                 f"{m['loss']:.4f}", f"{m['precision']:.2%}", f"{m['recall']:.2%}",
                 f"{m['f1']:.2%}", f"{m['roc_auc']:.4f}", f"{m['average_precision']:.4f}",
                 f"{m['ece']:.4f}", f"{m['brier']:.4f}", str(epochs)]
        rows.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    images = []
    for path in figures:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        images.append(f'<figure><img alt="{e(TITLES[path.stem])}" '
                      f'src="data:image/png;base64,{data}"><figcaption>{e(TITLES[path.stem])}'
                      "</figcaption></figure>")
    configs = "".join(f"<h3>{e(s.name)}</h3><p>scored on {e(s.scored)}</p><pre>{e(s.config)}"
                      "</pre>" for s in scores)
    title = "imdbsent report: " + ", ".join(s.name for s in scores)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{e(title)}</h1><h2>Metrics on the test split</h2><div class=\"wide\"><table><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table></div>"
            + (f"<p class=\"warning\">Note: {e(mixed)}.</p>"
               if (mixed := mixed_test_sets(scores)) else "")
            + f"<p class=\"legend\">{e(LEGEND)}</p>"
            + "<h2>Figures</h2>" + "".join(images) + "<h2>Configs</h2>" + configs
            + "</body></html>\n")


LEGEND = ("status: as imdbsent runs says it (an interrupted run's best checkpoint so far is "
          "not calibrated); loss: cross-entropy of the calibrated P(pos) on the test reviews; "
          "precision, recall and F1: of the pos label; ROC AUC and AP (average precision): of P(pos) as a "
          "ranking; ECE: expected calibration error over 10 bins; Brier: mean squared error of "
          "P(pos); epochs: trained (an ensemble's: its members' together), the checkpoint of "
          "the best validation loss scored.")
_CSS = ("body{font:15px/1.5 system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        ".legend{color:#555;font-size:14px}.warning{color:#8a4b00;font-weight:600}"
        "figure{margin:1rem 0}pre{background:#f6f6f6;padding:.5rem;overflow:auto}"
        ".wide{overflow-x:auto}h1{overflow-wrap:anywhere}")
