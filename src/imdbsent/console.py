"""What the user sees: rich progress and tables on a terminal, plain parseable lines when piped.

Results go to standard output; progress, logs and warnings to standard error.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from imdbsent.errors import OutputFailed, Pending

if TYPE_CHECKING:  # not at run time: importing predict imports torch, and --help must start fast
    from imdbsent.explain import Explanation
    from imdbsent.predict import Prediction

# Text from users and files (reviews, paths, split names) must reach the terminal as it is: no
# rich markup (`[red]`, `[/x]`), no emoji codes (`:smile:`). Strings given to these consoles are
# never parsed; what goes into a table or a title is a `Text`, which is never parsed either.
out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)


class _Stderr(Console):
    """Standard error; a reader that went away ends the command with the status of a closed
    pipe (141, as for standard output), where rich's default exits 1 as if it had failed."""

    def on_broken_pipe(self) -> None:
        try:  # nothing left for Python to fail on when it flushes standard error at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        except (AttributeError, OSError, ValueError):  # not a file (a test's capture)
            pass
        raise SystemExit(141)


err = _Stderr(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)
FORMATS = ("tsv", "jsonl", "csv", "table")
NARROW = 130  # terminal columns below which `imdbsent runs` shows fewer columns


class _Guarded:
    """Standard output whose failed writes raise OutputFailed; None (closed) fails at once."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _do(self, method: str, *args: Any) -> Any:
        if self._stream is None:
            raise OutputFailed(OSError(errno.EBADF, "standard output is closed"))
        try:
            return getattr(self._stream, method)(*args)
        except OSError as exc:
            raise OutputFailed(exc) from None

    def write(self, text: str) -> int:
        """Writes `text` to the descriptor itself, until all is out or a write fails: the
        text layer, unbuffered (python -u, PYTHONUNBUFFERED), drops what a short write leaves
        (a disk that fills: the batch's tail lost, status 0), and a Ctrl-C or SIGTERM while a
        reader is slow cut a row in two. Callers write a row (a record) at a time: a first stop
        while one is written is held (`Pending`) until all of it is out, then raised; a second
        gives it up (a reader that never reads), and an output that fails meanwhile says the
        stop, which came first."""
        raw = self._raw()
        if raw is None:  # not a file (a test's capture)
            return self._do("write", text)
        data = text.encode(self._stream.encoding, self._stream.errors or "strict")
        view = memoryview(data)
        self.flush()
        sent = 0
        Pending.holding = True
        try:
            while sent < len(data):
                sent += _write_some(raw, view[sent:])
        except OutputFailed:
            if not Pending.held:
                raise
        finally:
            Pending.holding = False
        if Pending.held:
            Pending.held = False
            Pending.raise_again()
        return len(text)

    def _raw(self) -> io.RawIOBase | None:
        """The descriptor's raw stream under the text layer (and its buffer), if any."""
        buffer = getattr(self._stream, "buffer", None)
        raw = buffer if isinstance(buffer, io.RawIOBase) else getattr(buffer, "raw", None)
        return raw if isinstance(raw, io.RawIOBase) else None

    def flush(self) -> None:
        self._do("flush")

    def isatty(self) -> bool:
        return self._stream is not None and self._stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _write_some(raw: io.RawIOBase, data: memoryview) -> int:
    """One write of `data` to `raw`: how many bytes went out (0 while a non-blocking
    descriptor is full); a failed write is OutputFailed."""
    try:
        written = raw.write(data)
    except OSError as exc:
        raise OutputFailed(exc) from None
    if written is None:
        time.sleep(0.01)
    return written or 0


@contextmanager
def guarded_stdout() -> Iterator[None]:
    """Within: writes to standard output that fail raise OutputFailed. One that escapes points
    the descriptor at /dev/null first, so that what Python still holds for it, flushed at exit,
    fails no more."""
    real = sys.stdout
    sys.stdout = _Guarded(real)
    try:
        yield
    except OutputFailed:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), real.fileno())
        except (AttributeError, OSError, ValueError):  # closed, or not a file (a test's capture)
            pass
        raise
    finally:
        sys.stdout = real


def log(message: str) -> None:
    """One line of progress or a warning, on standard error."""
    err.print(message, markup=False, emoji=False, highlight=False)


def result(line: str) -> None:
    """One line of result, on standard output, flushed (so pipelines see it at once)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class TrainView:
    """Draws the fit loop: parameter count, a progress bar per epoch (on a terminal), the
    tutorial's three lines per epoch, and the test line."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task = None
        self._start = 0.0
        self._seen = 0
        self._loss = self._acc = 0.0
        self._member: str | None = None  # the ensemble member being trained
        self._members_trained = False
        self._regions: tuple[PrepareView, float] | None = None  # being learned: view, start

    def start(self, run: Path, parameters: int, device: str, first_epoch: int) -> None:
        log(f"run directory: {run} (device {device}"
            + (f", resuming at epoch {first_epoch})" if first_epoch > 1 else ")"))
        self._member = run.name if run.parent.name == "members" else None  # runs.MEMBERS
        if self._member:  # so that piped output tells the members' lines apart
            result(f"Member: {self._member}")
        result(f"The model has {parameters:,} trainable parameters")

    def epoch_start(self, epoch: int, batches: int) -> None:
        self._start, self._seen, self._loss, self._acc = time.time(), 0, 0.0, 0.0
        if err.is_terminal:
            self._progress = Progress(
                TextColumn(f"epoch {epoch:02}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.2%}"),
                TextColumn("{task.fields[rate]:,.0f} ex/s"), TimeElapsedColumn(),
                console=err, transient=True)
            self._task = self._progress.add_task("train", total=batches, loss=0.0, acc=0.0, rate=0)
            self._progress.start()

    def batch(self, examples: int, loss: float, acc: float) -> None:
        self._loss = (self._loss * self._seen + loss * examples) / (self._seen + examples)
        self._acc = (self._acc * self._seen + acc * examples) / (self._seen + examples)
        self._seen += examples
        if self._progress is not None:
            rate = self._seen / max(time.time() - self._start, 1e-9)
            self._progress.update(self._task, advance=1, loss=self._loss, acc=self._acc, rate=rate)

    def epoch_end(self, record: dict[str, Any]) -> None:
        from imdbsent.engine import epoch_time  # here: engine imports torch (loaded by now)

        self.close()
        mins, secs = epoch_time(0.0, record["seconds"])
        result(f"Epoch: {record['epoch']:02} | Epoch Time: {mins}m {secs}s")
        result(f"\tTrain Loss: {record['train_loss']:.3f} | Train Acc: {record['train_acc']*100:.2f}%")
        result(f"\t Val. Loss: {record['valid_loss']:.3f} |  Val. Acc: {record['valid_acc']*100:.2f}%")
        for decay, average in record.get("averages", {}).items():  # train.averages
            result(f"\t Avg. {decay}: Val. Loss: {average['valid_loss']:.3f} |  Val. Acc: "
                   f"{average['valid_acc']*100:.2f}%")

    def test(self, record: dict[str, Any]) -> None:
        if record.get("diverged_epoch"):
            log(f"warning: training diverged in epoch {record['diverged_epoch']} (its validation "
                f"loss is not a number; try a lower --lr): stopped there, and tested the best "
                f"epoch before it ({record['best_epoch']})")
        if self._member is None and self._members_trained:  # the ensemble's own, after theirs
            result("Ensemble: the members stacked")
        self._members_trained |= self._member is not None
        self._member = None
        result(f"Test Loss: {record['test_loss']:.3f} | Test Acc: {record['test_acc']*100:.2f}%")

    def regions(self, step: int, steps: int) -> None:
        if self._regions is None:
            self._regions = PrepareView(), time.time()
        view, started = self._regions
        view("region embeddings", step, steps)
        if step == steps:
            view.close()
            self._regions = None
            log(f"region embeddings learned in {time.time() - started:.0f} s")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._regions is not None:
            self._regions[0].close()
            self._regions = None


class PrepareView:
    """Progress of `prepare`, called as `view(stage, done, total)`: a bar a stage on a terminal
    (rows read, rows encoded, word-vector epochs; and in training, a model's region
    embeddings); when piped, a plain line as each stage ends, and one a minute within a long
    stage."""

    EVERY = 60.0  # seconds between plain lines within a stage

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._tasks: dict[str, Any] = {}
        self._stage: tuple[str, int, int | None] | None = None
        self._said = time.time()

    def __call__(self, stage: str, done: int, total: int | None = None) -> None:
        if err.is_terminal:
            if self._progress is None:
                self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                          MofNCompleteColumn(), TimeElapsedColumn(), console=err)
                self._progress.start()
            if stage not in self._tasks:
                for task in self._progress.tasks:  # a stage of unknown length ends here
                    if task.total is None:
                        self._progress.update(task.id, total=task.completed)
                self._tasks[stage] = self._progress.add_task(stage, total=total)
            self._progress.update(self._tasks[stage], completed=done, total=total)
            return
        if self._stage is not None and self._stage[0] != stage:
            self._say(*self._stage)
        self._stage = (stage, done, total)  # said when the stage ends, or a minute on
        if time.time() - self._said > self.EVERY:
            self._say(*self._stage)
            self._stage = None

    def log(self, message: str) -> None:
        """A line of `prepare`'s report, after the line of the stage it ends, when piped."""
        if self._stage is not None:
            self._say(*self._stage)
            self._stage = None
        log(message)

    def _say(self, stage: str, done: int, total: int | None) -> None:
        log(f"{stage}: {done:,}" + (f"/{total:,}" if total else ""))
        self._said = time.time()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif self._stage is not None:
            self._say(*self._stage)
            self._stage = None


def prepare_summary(manifest: dict, out_dir: Path, built: bool) -> None:
    """The prepared dataset's counts: a table on a terminal, tab-separated lines when piped."""
    rows = [(name, c.get("total", 0), c.get("neg", 0), c.get("pos", 0), c.get("unlabeled", 0))
            for name, c in manifest["splits"].items()]
    log(("prepared " if built else "already prepared (same arguments; --force rebuilds) ")
        + f"{out_dir}: vocabulary {manifest['vocab_size']:,} ids"
        + (f", word vectors in {manifest['vectors']}" if manifest.get("vectors") else ""))
    if out.is_terminal:
        table = Table("split", "reviews", "neg", "pos", "unlabeled", title=Text(str(out_dir)))
        for row in rows:
            table.add_row(*(f"{v:,}" if isinstance(v, int) else Text(str(v)) for v in row))
        out.print(table)
    else:
        result("split\treviews\tneg\tpos\tunlabeled")
        for row in rows:
            result("\t".join(str(v) for v in row))


def metrics_table(metrics: dict[str, Any], title: str) -> None:
    """Evaluation metrics as rich tables (terminal), or when piped `name<TAB>value` lines with
    raw numbers (fractions, not percentages; the names of `--json`), then one line a bin of
    P(pos): `reliability<TAB>LOW-HIGH<TAB>examples<TAB>mean prob_pos<TAB>share positive`."""
    c = metrics["confusion"]
    bins = [(f"{b['bin'][0]:.1f}-{b['bin'][1]:.1f}", b["examples"], b["mean_prob_pos"],
             b["positive"]) for b in metrics["reliability"]]
    scores = ["accuracy", "precision", "recall", "f1"]
    if not out.is_terminal:
        names = ["examples", "skipped", "loss", *scores, "ece", "brier", "unk_rate"]
        for name, value in [*((k, metrics[k]) for k in names if k in metrics), *c.items()]:
            result(f"{name}\t{_number(value)}")
        for span, *values in bins:
            result("\t".join(["reliability", span, *map(_number, values)]))
        return
    rows = [("examples", f"{metrics['examples']:,}")]
    if "skipped" in metrics:
        rows.append(("rows without words, skipped", f"{metrics['skipped']:,}"))
    rows.append(("loss", f"{metrics['loss']:.4f}"))
    rows += [(k, f"{metrics[k] * 100:.2f}%") for k in scores]
    rows += [("confusion (rows true neg/pos, cols predicted neg/pos)",
              f"{c['tn']} {c['fp']} / {c['fn']} {c['tp']}"),
             ("ece (10 bins)", f"{metrics['ece']:.4f}"), ("brier", f"{metrics['brier']:.4f}")]
    if "unk_rate" in metrics:
        rows.append(("unknown tokens", f"{metrics['unk_rate'] * 100:.2f}%"))
    table = Table("metric", "value", title=Text(title))
    for row in rows:
        table.add_row(*row)
    out.print(table)
    reliability = Table("prob_pos", "examples", "mean prob_pos", "positive", title="reliability")
    for span, count, mean_p, positive in bins:
        reliability.add_row(span, f"{count:,}", f"{mean_p:.4f}", f"{positive * 100:.2f}%")
    out.print(reliability)


def _number(value: float) -> str:
    """A metric for a pipe: an integer as it is, a float to 6 decimals (as `runs` and
    `predict` write theirs)."""
    return str(value) if isinstance(value, int) else str(round(value, 6))


def runs_table(rows: list[dict[str, Any]], columns: Iterable[str]) -> None:
    """`imdbsent runs`: a table on a terminal; tab-separated lines of `columns` under a header
    when piped (raw values, empty where unknown)."""
    if not out.is_terminal:
        columns = list(columns)
        result("\t".join(columns))
        for row in rows:
            result("\t".join(_one_field("" if row[c] is None else str(row[c])) for c in columns))
        return
    cells = []
    for r in rows:
        epochs = "" if r["epochs"] is None else (
            f"{r['epochs']} ({r['best_epoch']})" if r["best_epoch"] else str(r["epochs"]))
        if r["processes"] and r["processes"] > 1:
            epochs += f" x{r['processes']} procs"
        cells.append({"run": _cell(r["name"]), "started": (r["started"] or "")[:16].replace("T", " "),
                      "recipe": _cell(r["recipe"]), "model": r["model"] or "",
                      "parameters": _maybe(r["parameters"], "{:,}"), "epochs (best)": epochs,
                      "best valid loss": _maybe(r["best_valid_loss"], "{:.4f}"),
                      "valid acc": _maybe(r["best_valid_acc"], "{:.2%}"),
                      "test acc": _maybe(r["test_acc"], "{:.2%}"),
                      "training": _maybe(r["train_seconds"], "{:.0f} s"),
                      "status": _cell(r["status"])})
    shown = list(cells[0]) if cells else []
    narrow = out.width < NARROW
    if narrow:  # the columns that say most, each readable, over all of them cut short
        shown = [c for c in shown if c not in ("recipe", "model", "parameters",
                                               "best valid loss", "training")]
    table = Table(*(c.replace(" ", "\n") if narrow else c for c in shown), box=box.SIMPLE_HEAD,
                  show_edge=False)  # narrow: headers on two lines, to leave the status room
    for column in table.columns:  # figures whole; the name and a long status fold onto lines
        column.overflow = "fold"
        column.no_wrap = column.header not in ("run", "status")
    for row in cells:
        table.add_row(*(row[c] for c in shown))
    out.print(table)


def _maybe(value: Any, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def _cell(text: str | None) -> Text:
    """Text from a folder or file as a table cell: never markup, control characters visible."""
    return Text(_displayed(text or "", 200))


# A word whose score is under this share of the strongest one's keeps the terminal's colour:
# it hardly moved the score, and the darkest shades read as black on 16-colour terminals.
FAINT = 0.05


def explanation(e: Explanation) -> None:
    """One explanation on the terminal: label and probability, the text with each token
    coloured (green towards pos, red towards neg, brighter for a larger score; words out of the
    vocabulary underlined), and the words that moved it most (the occurrences of a word that
    the model read summed; scores that round to 0.00 left out), from which reference."""
    from imdbsent.explain import pieces, signed, strongest, unread_note

    if e.prob_pos is None:
        out.print(Text("skip  " + _displayed(e.text, 10_000)))
        return
    line = Text(f"{e.label}  {e.prob_pos:.4f}  ")
    top = strongest(e)
    for piece, token in pieces(e):
        style = ""
        if token is not None and token.score and abs(token.score) >= FAINT * top:
            shade = int(128 + 127 * min(1.0, abs(token.score) / top))  # from 128: never black
            style = f"bold rgb(0,{shade},0)" if token.score > 0 else f"bold rgb({shade},0,0)"
        if token is not None and token.unknown:
            style += " underline"
        if token is not None and not token.read:
            style += " dim"
        line.append(_displayed(piece, 10_000), style=style.strip())
    out.print(line)

    totals: dict[str, list[float]] = {}  # each word as written (case aside): its scores
    for t in (t for t in e.tokens if t.read):  # an occurrence never read moved nothing
        totals.setdefault(_displayed(e.text[t.start:t.end], 40).casefold(), []).append(t.score)
    shown = [(w, sum(s), len(s)) for w, s in totals.items() if abs(sum(s)) >= 0.005]  # +0.00

    def word(w: str, score: float, times: int) -> str:  # punctuation quoted: `"," +0.27`
        written = w if any(c.isalnum() for c in w) else f'"{w}"'
        return f"{written} {score:+.2f}" + (f" ({times}x)" if times > 1 else "")

    ranked = sorted(shown, key=lambda x: x[1])
    most = [word(*x) for x in reversed(ranked[-3:]) if x[1] > 0]
    least = [word(*x) for x in ranked[:3] if x[1] < 0]
    gap = "" if e.complete else f"; the scores miss the logit by {e.gap:+.3f}"
    out.print(Text(f"      towards pos: {', '.join(most) or '-'}; towards neg: "
                   f"{', '.join(least) or '-'} (from a reference of {signed(e.reference, 2)}; "
                   f"{e.method}{gap}){unread_note(e)}"), style="dim")


def write_predictions(batches: Iterable[list[Prediction]], fmt: str) -> None:
    """Write predictions to standard output in `fmt`, flushing after every batch."""
    if fmt == "table":
        write_table(batches)
        return
    for batch in batches:
        for p in batch:  # a row a write: a stop never cuts one (`_Guarded.write`)
            sys.stdout.write(_format_row(p, fmt))
        sys.stdout.flush()


LABEL_WIDTH, PROB_WIDTH = 5, 8
# What a table adds to its columns' widths: padding of 1 each side of 3 columns, 2 separators.
TABLE_EXTRA = 8


def write_table(batches: Iterable[list[Prediction]]) -> None:
    """Predictions as a table on the terminal, printed chunk by chunk as they are scored: each
    input chunk is a table of its own with the same fixed column widths (the text column takes
    the rest of the terminal's width), the header only above the first, and no borders between
    chunks, so that they read as one table while only one chunk is ever held."""
    text_width = max(10, out.width - LABEL_WIDTH - PROB_WIDTH - TABLE_EXTRA)
    shown = False
    for batch in batches:
        table = _prediction_table(text_width, header=not shown)
        for p in batch:
            table.add_row(p.label or "skip", "" if p.skipped else f"{p.prob_pos:.4f}",
                          Text(_displayed(p.text, text_width)))
        out.print(table)
        shown = True
    if not shown:  # no input at all: the header alone, as for an empty table
        out.print(_prediction_table(text_width, header=True))


def _prediction_table(text_width: int, header: bool) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, show_header=header)
    table.add_column("label", width=LABEL_WIDTH, no_wrap=True)
    table.add_column("prob_pos", width=PROB_WIDTH, justify="right", no_wrap=True)
    table.add_column("text", width=text_width, no_wrap=True, overflow="ellipsis")
    return table


def _displayed(text: str, width: int) -> str:
    """A text as a table cell shows it: on one line (tabs and line breaks become spaces), every
    other control character (ESC could drive the terminal) a visible U+FFFD, and cut long before
    any terminal's width ends (rich then cuts it to the cell, with an ellipsis)."""
    if len(text) > 4 * width:
        text = text[:4 * width] + "\u2026"
    return text.translate(_CELL_CONTROLS)


def _format_row(p: Prediction, fmt: str) -> str:
    prob = "" if p.skipped else f"{p.prob_pos:.4f}"
    label = p.label or "skip"
    if fmt == "jsonl":
        return json.dumps({"label": p.label, "prob_pos": None if p.skipped else round(p.prob_pos, 6),
                           "text": p.text, **({"skipped": "no words"} if p.skipped else {})},
                          ensure_ascii=True) + "\n"  # no raw U+2028 etc. to split a row
    if fmt == "csv":  # csv quotes a field with "\n" (the line terminator), not one with a
        buf = io.StringIO()  # bare "\r", which CSV readers take for a line's end
        quoting = csv.QUOTE_ALL if "\r" in p.text else csv.QUOTE_MINIMAL
        csv.writer(buf, lineterminator="\n", quoting=quoting).writerow([label, prob, p.text])
        return buf.getvalue()
    return f"{label}\t{prob}\t{_one_field(p.text)}\n"


# Tab, and every character that str.splitlines() takes for a line break.
_FIELD_BREAKS = dict.fromkeys(map(ord, "\0\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), " ")  # and
# NUL, which ends a C string and stops `read` in a shell loop


# Control characters (C0, DEL, C1) a table cell shows as U+FFFD; line breaks and tabs as spaces.
_CELL_CONTROLS = {**dict.fromkeys([*range(0x20), 0x7F, *range(0x80, 0xA0)], "\ufffd"),
                  **_FIELD_BREAKS}


def _one_field(text: str) -> str:
    """A text made safe for one TSV field: tabs and line breaks become spaces, so row N of the
    output is line N of the input for any line-splitting reader."""
    return text.translate(_FIELD_BREAKS)
