"""The `imdbsent` command: parse arguments, call the library, format the output.

Every user error ends as one line on standard error and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import atexit
import codecs
import contextlib
import errno
import io
import json
import os
import queue
import re
import signal
import stat
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, AnyStr, BinaryIO, NoReturn

import typer

from imdbsent import __version__, config, console, launch, threads
from imdbsent.config import HUB_DEFAULT
from imdbsent.errors import (
    BadValue,
    OutputFailed,
    Pending,
    Shared,
    Terminated,
    Usage,
    UserError,
    stop_status,
    stop_word,
)

# torch, datasets and the modules over them are imported by the commands that need them, so
# `imdbsent --help` and `--version` start at once.


def _plain_type(label: str | None) -> str | None:
    """`<list[Path]>` -> `<path>`, `<int range>` -> `<int>`, `<Path>` (a path with a parser)
    -> `<path>`: the help says where a value may be given more than once, and shows a range's
    bounds (`[x>=1]`) beside the type."""
    return label and re.sub(r"<list\[(\w+)\]>|<(\w+) range>|<(Path)>",
                            lambda m: f"<{(m[1] or m[2] or m[3]).lower()}>", label)


class _BareSwitches:
    """typer 0.29 writes `<bool>` in the help beside a switch (--help, --json, --force) as if
    it took a value (an empty metavar shows none), and Python's type names for lists and
    ranges (`<list[Path]>`, `<float range>`) where a plain `<path>` or `<float>` reads better."""

    def get_params(self, ctx: typer.Context) -> list:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
            elif hasattr(param, "display_type_rich") and "display_type_rich" not in vars(param):
                shown = param.display_type_rich
                param.display_type_rich = lambda ctx, shown=shown: _plain_type(shown(ctx))
        return params


class _Group(_BareSwitches, typer.core.TyperGroup):
    pass


class _Command(_BareSwitches, typer.core.TyperCommand):
    pass


app = typer.Typer(
    cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Sentiment analysis of movie reviews: the IMDB RNN tutorial, reproduced and improved.")

MAX_LINE_BYTES = 1 << 20  # predict cuts longer input lines to their first MiB (bounded memory)
PAUSE_SECONDS = 0.2  # standard input silent this long: the lines read so far are scored
QUEUED_LINES = 64  # lines read ahead of scoring from standard input (each at most 1 MiB)
READER = "imdbsent-reader"  # the thread that reads a pipe or terminal, by name


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ExplainFormat(str, Enum):
    terminal = "terminal"
    jsonl = "jsonl"
    html = "html"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class Split(str, Enum):
    test = "test"
    valid = "valid"


class Format(str, Enum):
    tsv = "tsv"
    jsonl = "jsonl"
    csv = "csv"
    table = "table"


def _path(value: str) -> Path:
    """A path given on the command line, not empty: typer would take "" for "." (`report
    --out ""` wrote into the current folder)."""
    if not value:
        raise typer.BadParameter("must not be empty (. is this folder)")
    return Path(value)


TextsArgument = Annotated[list[str] | None, typer.Argument(
    help="Texts; - reads standard input, one text per line.")]
FileOption = Annotated[list[Path] | None, typer.Option(
    "--file", help="Read texts from this file, one a line (- for standard input); repeat it "
    "for several, read in order.", parser=_path)]
RUN_HELP = ("Run directory (default: the newest finished run under runs/, else the newest "
            "with a trained model).")
RunOption = Annotated[Path | None, typer.Option(help=RUN_HELP, parser=_path)]
ThresholdOption = Annotated[float, typer.Option(help="P(pos) at or above which a text is pos.")]
DeviceOption = Annotated[Device, typer.Option(help="auto: CUDA if available.")]
ThreadsOption = Annotated[int | None, typer.Option(
    "--threads", help="Compute threads (default: OMP_NUM_THREADS if set, else the cores "
    "other processes leave idle, re-checked while computing).", min=1)]


@app.command(cls=_Command)
def prepare(
    source: Annotated[str, typer.Option(help="Hub dataset name, or a local copy: a folder of "
                                        "Parquet/CSV/JSONL files named by split, an aclImdb/ "
                                        "folder or aclImdb_v1.tar.gz.")] = HUB_DEFAULT,
    out: Annotated[Path, typer.Option(help="Folder for the prepared dataset.", parser=_path)
                   ] = Path(config.DATA_DEFAULT),
    split_ratio: Annotated[float, typer.Option(help="Fraction of train kept for training; "
                                               "the rest is validation.")] = 0.7,
    seed: Annotated[int, typer.Option(help="Seed of the train/valid split.")] = 1234,
    max_vocab: Annotated[int, typer.Option(help="Most frequent words kept (plus <pad>, <unk>).")
                         ] = 25_000,
    min_freq: Annotated[int, typer.Option(help="Fewest occurrences for a word to be kept.")] = 1,
    unsupervised: Annotated[bool, typer.Option(help="Also encode the unlabeled reviews.")] = True,
    vectors_dim: Annotated[int, typer.Option(help="Size of the word vectors learned from the "
                                             "training and unlabeled reviews (0: none).")] = 128,
    vectors_tokens: Annotated[int, typer.Option(help="Most tokens the word vectors learn from; "
                                                "a larger corpus is sampled, review by review."
                                                )] = 25_000_000,
    text_column: Annotated[str, typer.Option(help="Text column of CSV/JSONL/Parquet files.")
                           ] = "text",
    label_column: Annotated[str, typer.Option(
        help="Label column (0/1, neg/pos or negative/positive).")] = "label",
    force: Annotated[bool, typer.Option(help="Rebuild even if already prepared.")] = False,
    threads_: ThreadsOption = None,
) -> None:
    """Load IMDB, split train into train/valid, build the vocabulary, encode every split."""
    threads.configure(threads_, warn=console.log)
    from imdbsent import data

    args = data.PrepareArgs(source=source, split_ratio=split_ratio, seed=seed, max_vocab=max_vocab,
                            min_freq=min_freq, unsupervised=unsupervised, vectors_dim=vectors_dim,
                            vectors_tokens=vectors_tokens, text_column=text_column,
                            label_column=label_column)
    had = data.is_prepared(out)
    view = console.PrepareView()
    try:
        manifest, built = data.prepare(args, out, force=force, report=view.log, progress=view)
    except (KeyboardInterrupt, Terminated) as exc:  # what was kept, as train says it
        view.close()
        kept = (f"{out} holds the dataset prepared before, as it was" if data.is_prepared(out)
                else f"{out} no longer holds a whole dataset: prepare it again" if had
                else f"no dataset was made in {out}")
        _stop_saying(exc, kept)
    finally:
        view.close()
    console.prepare_summary(manifest, out, built)


@app.command("train", cls=_Command)
def train_cmd(
    ctx: typer.Context,
    config_name: Annotated[str | None, typer.Option(
        "--config", help=f"Recipe name ({', '.join(config.recipe_names())}) or TOML path. "
        "Default: default.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Number of epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per batch (per process).")
                          ] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd, adam or adamw.")] = None,
    model: Annotated[str | None, typer.Option(help=", ".join(config.MODELS) + ".")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for weights and batch order.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Tokens kept per review (0: all).")
                          ] = None,
    vectors: Annotated[str | None, typer.Option(help="Word vectors: a GloVe/word2vec text "
                                                   "file, prepared (the prepared dataset's "
                                                   "own), or none.")] = None,
    device: Annotated[Device | None, typer.Option(help="auto: CUDA if available.")] = None,
    precision: Annotated[Precision | None, typer.Option(
        help="bf16: autocast to bfloat16 (CUDA or CPU). Default: the recipe's (fp32).")] = None,
    adversarial: Annotated[float | None, typer.Option(
        help="Adversarial training on the word embeddings: the perturbation's L2 norm a "
        "review (0: off).", min=0.0)] = None,
    virtual_adversarial: Annotated[float | None, typer.Option(
        help="Virtual adversarial training on the unlabeled reviews: the perturbation's L2 "
        "norm a review (0: off).", min=0.0)] = None,
    data_dir: Annotated[Path | None, typer.Option("--data", help="Prepared dataset folder.",
                                                  parser=_path)] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory (default: "
                                                    "runs/<model>-<time>).",
                                                 parser=_path)] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run from its last "
                                                   "checkpoint.", parser=_path)] = None,
    nproc: Annotated[int | None, typer.Option(
        help="Train with this many processes on this machine (started by torchrun; one GPU "
        "each on CUDA).", min=1)] = None,
    dist_timeout: Annotated[float, typer.Option(
        help="Seconds a process of a distributed training waits for the others before it "
        "gives up.", min=1.0)] = config.DIST_TIMEOUT,
    threads_: ThreadsOption = None,
) -> None:
    """Train a model; checkpoints, config and metrics go to a run directory."""
    overrides = {"train.epochs": epochs, "train.batch_size": batch_size, "train.lr": lr,
                 "train.optimizer": optimizer, "model.name": model, "train.seed": seed,
                 "train.max_length": max_length, "train.device": device and device.value,
                 "train.precision": precision and precision.value,
                 "train.vectors": "" if vectors == "none" else vectors,
                 "train.adversarial": adversarial, "train.virtual_adversarial": virtual_adversarial,
                 "data": data_dir and str(data_dir)}
    if resume is not None and (config_name or run_dir):
        raise Usage("--resume continues a run with its own config; drop --config/--run-dir")
    if nproc and nproc > 1:
        _launch(ctx, nproc, config_name, overrides, resume, threads_)
    threads.configure(threads_, warn=console.log)
    from imdbsent import training

    view = console.TrainView()
    try:
        if resume is not None:
            result = training.resume(resume, overrides, view, timeout=dist_timeout)
        else:
            result = training.start(config_name, overrides, view, run_dir=run_dir,
                                    timeout=dist_timeout)
    except training.Interrupted as exc:
        view.close()
        if str(exc):  # an error (a full disk, a lost rank) as every error; a signal as prepare's
            (_say_error if exc.cause else console.log)(str(exc))
            _said_stop()
        raise typer.Exit(exc.code) from None
    if _is_main():
        console.log(f"run saved in {result.run}")


def _launch(ctx: typer.Context, nproc: int, recipe: str | None, overrides: dict,
            resume: Path | None, threads_: int | None) -> None:
    """Check what can be checked once, then run the same command as `nproc` processes under
    torchrun, and exit with their status."""
    if "WORLD_SIZE" in os.environ:
        raise UserError("--nproc: this process was already started by torchrun; drop --nproc")
    from imdbsent import runs, training

    if resume is not None:
        old, cfg = training.planned_resume(runs.check_run(resume), overrides)
        if old.train.world_size != nproc:
            raise Usage(training.world_size_advice(resume, old.train.world_size, nproc))
    else:
        cfg = training.planned_start(recipe, overrides)
    training.check_launchable(cfg, training.prepared_for(cfg), nproc)
    launch.share_threads(nproc, threads_)
    forwarded = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name not in ("nproc", "help") and value is not None and param.opts:
            forwarded += [param.opts[0], str(value.value if isinstance(value, Enum) else value)]
    outcome = launch.run(nproc, forwarded)
    if outcome.message:
        _fail(outcome.message, outcome.code)
    raise typer.Exit(outcome.code)


@app.command("runs", cls=_Command)
def runs_cmd(
    folder: Annotated[Path | None, typer.Argument(
        help="Folder of run directories (or one run; default: runs/).", parser=_path)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as one JSON array.")
                       ] = False,
) -> None:
    """List the runs in a folder, newest first: model, size, progress, scores and status."""
    from imdbsent import runs

    if folder is None and not Path("runs").exists():  # a new user's first look: no error
        console.log("no runs yet: imdbsent train writes them under runs/")
        rows = []
    else:
        rows = runs.list_runs(folder or Path("runs"))
        if not rows:  # said, so that a wrong folder (a dataset's, say) is not a bare header
            console.log(f"no runs in {folder or Path('runs')}")
    if as_json:
        console.result(json.dumps(rows))
    else:
        console.runs_table(rows, runs.LISTED)


@app.command("report", cls=_Command)
def report_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories; several share each "
                                                       "figure.", metavar="RUN",
                                                   parser=_path)],
    out: Annotated[Path | None, typer.Option(help="Folder for the figures and report.html "
                                                  "(default: RUN/report for one run, report/ "
                                                  "for several).", parser=_path)] = None,
    data_dir: Annotated[Path | None, typer.Option("--data", help="Prepared dataset folder "
                                                     "(default: each run's).",
                                                  parser=_path)] = None,
    device: DeviceOption = Device.cpu,
    threads_: ThreadsOption = None,
) -> None:
    """Figures of runs: learning curves; on test, confusion, ROC, PR, reliability; PNGs and report.html."""
    threads.configure(threads_, warn=console.log)
    from imdbsent import report, runs

    folder = out or (run_dirs[0] / "report" if len(run_dirs) == 1 else Path("report"))
    for run in run_dirs:
        runs.say_unfinished(runs.check_run(run), console.log)
    figures = 0
    try:
        for path in report.make(run_dirs, folder, device.value, data_dir, console.log):
            console.result(str(path))
            figures += 1
    except (KeyboardInterrupt, Terminated) as exc:
        if figures:  # (before the first: the plain one line)
            page = folder / "report.html"
            left = f"{page} as an earlier report left it" if page.exists() else f"no {page}"
            _stop_saying(exc, f"{figures} of {len(report.TITLES)} figures written (above), "
                              f"{left}")
        raise


@app.command("evaluate", cls=_Command)
def evaluate_cmd(
    run: Annotated[Path | None, typer.Argument(help=RUN_HELP, parser=_path)] = None,
    split: Annotated[Split | None, typer.Option(help="Split of the prepared dataset "
                                                "(default: test).")] = None,
    data_files: Annotated[list[Path] | None, typer.Option(
        "--data-file", help="Score this labeled CSV/JSONL/Parquet file instead.",
        parser=_path)] = None,
    data_dir: Annotated[Path | None, typer.Option("--data", help="Prepared dataset folder "
                                                     "(default: the run's).",
                                                  parser=_path)] = None,
    text_column: Annotated[str, typer.Option(help="Text column of --data-file.")] = "text",
    label_column: Annotated[str, typer.Option(
        help="Label column of --data-file (0/1, neg/pos or negative/positive).")] = "label",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    threshold: Annotated[float, typer.Option(help="P(pos) at or above which a review is pos.")
                         ] = 0.5,
    device: DeviceOption = Device.cpu,
    threads_: ThreadsOption = None,
) -> None:
    """Loss, accuracy, precision, recall, F1, confusion matrix and calibration of a run."""
    threads.configure(threads_, warn=console.log)
    from imdbsent.predict import check_threshold, evaluate_run

    check_threshold(threshold)  # before the run is looked for
    if len(data_files or []) > 1:  # click would keep the last one, and say nothing
        raise BadValue("data_file", "takes one file: evaluate each with its own command")
    data_file = data_files[0] if data_files else None
    if data_file is not None and (split or data_dir):
        raise Usage(f"--data-file scores a file of its own: give it without "
                    f"{'--split' if split else '--data'}")
    named = [f for f, value, default in (("--text-column", text_column, "text"),
                                         ("--label-column", label_column, "label"))
             if value != default]
    if data_file is None and named:  # a prepared split has no columns to name
        raise Usage(f"{named[0]} names a column of --data-file, which is not given")
    run = _chosen_run(run)
    metrics, title = evaluate_run(run, split=(split or Split.test).value, data_file=data_file,
                                  data_dir=data_dir, threshold=threshold, device=device.value,
                                  text_column=text_column, label_column=label_column)
    if as_json:
        console.result(json.dumps({"run": str(run), "on": title, **metrics}))
    else:
        console.metrics_table(metrics, f"{run} on {title}")


@app.command("predict", cls=_Command)
def predict_cmd(
    texts: TextsArgument = None,
    files: FileOption = None,
    run: RunOption = None,
    fmt: Annotated[Format | None, typer.Option("--format", help="tsv (default when piped), "
                                                  "jsonl, csv, or table (on a terminal).")] = None,
    threshold: ThresholdOption = 0.5,
    batch_size: Annotated[int, typer.Option(help="Texts read before scoring (sorted by length "
                                            "within).", min=1)] = 2048,
    device: DeviceOption = Device.cpu,
    threads_: ThreadsOption = None,
) -> None:
    """Label texts pos or neg with the probability of pos: `label<TAB>prob_pos<TAB>text`."""
    threads.configure(threads_, warn=console.log)
    from imdbsent.predict import Predictor, check_threshold

    check_threshold(threshold)  # before the run is looked for
    texts = texts or []
    if not texts and not files:
        raise Usage("nothing to predict: give texts, - for standard input, or --file PATH")
    inputs = _inputs(texts, files)  # its mistakes before the run is looked for
    predictor = Predictor(_chosen_run(run), device.value, threshold)
    chosen = (fmt.value if fmt else ("table" if console.out.is_terminal else "tsv"))
    console.write_predictions(predictor.stream(inputs, batch_size), chosen)


@app.command("explain", cls=_Command)
def explain_cmd(
    texts: TextsArgument = None,
    files: FileOption = None,
    run: RunOption = None,
    fmt: Annotated[ExplainFormat | None, typer.Option(
        "--format", help="terminal (coloured words; the default on a terminal), jsonl (tokens, "
        "offsets, scores; the default when piped) or html (one page).")] = None,
    threshold: ThresholdOption = 0.5,
    device: DeviceOption = Device.cpu,
    threads_: ThreadsOption = None,
) -> None:
    """Word by word, how much each moved the score (exact for nbow/nblr, integrated gradients else)."""
    threads.configure(threads_, warn=console.log)
    from imdbsent import explain
    from imdbsent.predict import Predictor, check_threshold

    check_threshold(threshold)  # before the run is looked for
    if not texts and not files:
        raise Usage("nothing to explain: give texts, - for standard input, or --file PATH")
    inputs = _inputs(texts or [], files)  # its mistakes before the run is looked for
    run = _chosen_run(run)
    explainer = explain.Explainer(Predictor(run, device.value, threshold))
    results = (explainer.explain(t) for t in inputs if t is not None)
    chosen = fmt.value if fmt else ("terminal" if console.out.is_terminal else "jsonl")
    if chosen == "html":  # one page, at the end; stopped, the texts explained so far
        done: list = []
        title = f"imdbsent explain: {run}"
        try:
            for e in results:
                done.append(e)
        except BaseException:  # Ctrl-C, SIGTERM, an input that fails to read on the way
            with contextlib.suppress(OutputFailed):  # what stopped it is said, not this
                console.result(explain.to_html(done, title, f"Stopped early: the texts after "
                                               f"the {len(done):,} above were not explained."
                                               if done else "Stopped before any text was "
                                               "explained."))
            raise
        console.result(explain.to_html(done, title))
    elif chosen == "jsonl":
        for e in results:
            console.result(json.dumps(explain.as_dict(e)))
    else:
        for e in results:
            console.explanation(e)


def _chosen_run(run: Path | None) -> Path:
    """The run named, or else the newest finished one; said on standard error when it has not
    finished (its best checkpoint so far: not calibrated)."""
    from imdbsent import runs

    if run is None:
        return runs.latest_run(report=console.log)
    runs.say_unfinished(runs.check_run(run), console.log)
    return run


def _inputs(texts: list[str], files: list[Path] | None) -> Iterator[str | None]:
    """Texts from the arguments in order, `-` standing for standard input, then each --file
    in the order given (`--file -`: standard input; given once at most). Each file is tried
    here, so that one that cannot be opened is refused before anything is printed, and read
    in its turn (one open at a time, however many are given)."""
    files = files or []
    stdin = [*texts, *map(str, files)].count("-") + sum(map(_is_stdin_pipe, files))
    if stdin > 1:  # the second would find it at its end, and read nothing
        raise Usage(f"standard input (-) is given {stdin} times: it can be read once")
    for file in files:
        if str(file) != "-":
            _check_readable(file)
    if stdin and sys.stdin is None:
        raise UserError("- reads standard input, but it is closed")
    return _texts(texts, files)


def _is_stdin_pipe(file: Path) -> bool:
    """Whether `file` is the pipe on standard input (`--file /dev/stdin`), which a `-` would
    find read to its end."""
    try:
        mine, theirs = os.fstat(0), os.stat(file)
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mine.st_mode) and (mine.st_dev, mine.st_ino) == (theirs.st_dev,
                                                                          theirs.st_ino)


def _check_readable(file: Path) -> None:
    """Refuses a file that cannot be read. A named pipe (`--file <(producer)`, `mkfifo`) is
    not opened to try it: opening it waits for its writer, and closing it loses the lines of
    that writer, which a pipe has one of."""
    if not stat.S_ISFIFO(_mode(file)):
        _open(file).close()
    elif not os.access(file, os.R_OK):
        raise UserError(f"{file}: {os.strerror(errno.EACCES)}")


def _mode(file: Path) -> int:
    """The file's type and permissions (following links: `<(cmd)` is a link to a pipe)."""
    try:
        return os.stat(file).st_mode
    except OSError as exc:
        raise UserError(f"{file}: {exc.strerror}") from None


def _open(file: Path) -> BinaryIO:
    try:
        return open(file, "rb")
    except OSError as exc:
        raise UserError(f"{file}: {exc.strerror}") from None


def _texts(texts: list[str], files: list[Path]) -> Iterator[str | None]:
    for t in texts:
        if t == "-":
            yield from _reading("standard input", live_lines(sys.stdin.buffer))
        else:  # bytes that were not UTF-8 reach Python as lone surrogates: replaced, as in files
            yield t.encode("utf-8", "surrogateescape").decode("utf-8", errors="replace")
    for file in files:
        if str(file) == "-":
            yield from _reading("standard input", live_lines(sys.stdin.buffer))
        else:
            yield from _reading(str(file), file_lines(file))


def _reading(name: str, lines: Iterator[str | None]) -> Iterator[str | None]:
    """`lines`, where a read that fails on the way (a disk's I/O error) is one line naming
    the input, as a file that cannot be opened is."""
    try:
        yield from lines
    except OSError as exc:
        raise UserError(f"{name}: cannot read: {exc.strerror or exc}") from None


def live_lines(fh: BinaryIO, pause: float = PAUSE_SECONDS) -> Iterator[str | None]:
    """`read_lines` of a stream that may pause (a pipe, a terminal: `tail -f log | imdbsent
    predict -`), with a None whenever no line has come for `pause` seconds, so that the lines
    already read are scored then instead of when a whole batch has come (`_threaded`). A
    regular file never pauses and is read as it is."""
    try:
        regular = stat.S_ISREG(os.fstat(fh.fileno()).st_mode)
    except (OSError, ValueError):  # no descriptor (a test's stream): read as it is
        regular = True
    if regular:
        yield from read_lines(fh)
    else:
        yield from _threaded(lambda: read_lines(fh), pause)


def file_lines(file: Path, pause: float = PAUSE_SECONDS) -> Iterator[str | None]:
    """The lines of a `--file`, as `live_lines` gives a stream's. Any but a regular file (a
    named pipe, a terminal) is opened by the thread that reads it, and closed by it: opening
    a pipe waits for its writer (the texts before it are scored meanwhile), and closing it
    from here while that thread waits in a read would wait too (a Ctrl-C hung the command)."""
    def lines() -> Iterator[str]:
        with _open(file) as fh:
            yield from read_lines(fh)

    yield from lines() if stat.S_ISREG(_mode(file)) else _threaded(lines, pause)


def _threaded(lines: Callable[[], Iterator[str]], pause: float) -> Iterator[str | None]:
    """The items of `lines()`, taken in a thread of their own (at most QUEUED_LINES ahead),
    with a None whenever none has come for `pause` seconds; what it raises is raised here.
    Left early, the thread may wait on for good in a read: the CLI then leaves at once
    (`_reader_waits`)."""
    queued: queue.Queue[object] = queue.Queue(QUEUED_LINES)
    done = object()

    def read() -> None:
        try:
            for line in lines():
                queued.put(line)
        except BaseException as exc:  # raised again where the lines are taken
            queued.put(exc)
        queued.put(done)

    threading.Thread(target=read, daemon=True, name=READER).start()
    paused = False  # a None was given for the pause going on
    while True:
        try:  # never an untimed wait: a Ctrl-C that the kernel hands to the reader thread
            item = queued.get(timeout=pause)  # would not wake it, and it would wait forever
        except queue.Empty:
            Pending.raise_again()  # one that a library swallowed: no batch comes to raise it
            if not paused:
                paused = True
                yield None
            continue
        paused = False
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def read_lines(fh: BinaryIO, max_bytes: int = MAX_LINE_BYTES) -> Iterator[str]:
    """Lines of a byte stream as text: UTF-8, or UTF-16 where the stream starts with its
    byte-order mark (as Windows PowerShell's `>` writes files); a byte-order mark that starts a
    line dropped (as Windows editors write one, and `cat` joins files that each have one),
    invalid bytes replaced, each line cut to `max_bytes` (UTF-16: half as many characters; the
    rest of an over-long line is read and dropped, never held). `fh` is left open."""
    if not hasattr(fh, "peek") or fh.peek(1)[:1] in (b"\xff", b"\xfe"):
        # a stream without a buffer of its own (a BytesIO), or one that may start with a UTF-16
        # mark, perhaps written a byte at a time: its first two bytes read whole, put back
        fh = io.BufferedReader(_Prefixed(fh.read(2) if hasattr(fh, "peek") else b"", fh))
    wide = fh.peek(2)[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    text = io.TextIOWrapper(fh, "utf-16", "replace", newline="\n") if wide else None
    lines = (_cut_lines(text.readline, max_bytes // 2, "\n") if text else
             (b.decode("utf-8", "replace") for b in _cut_lines(fh.readline, max_bytes, b"\n")))
    try:
        for line in lines:
            yield line.removeprefix("\ufeff").rstrip("\r\n")
    finally:
        if text:  # the stream stays open for its owner (closing the wrapper would close it)
            text.detach()


class _Prefixed(io.RawIOBase):
    """`head`, then what `fh` gives: a stream to read again bytes already taken from `fh`,
    which closing this never closes."""

    def __init__(self, head: bytes, fh: BinaryIO) -> None:
        super().__init__()
        self.head, self.fh = head, fh

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            data, self.head = self.head, b""
        else:  # read1: no more than one read, so a live stream's lines are not held back
            data = (self.fh.read1 if hasattr(self.fh, "read1") else self.fh.read)(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _cut_lines(readline: Callable[[int], AnyStr], most: int, end: AnyStr) -> Iterator[AnyStr]:
    """The lines `readline` gives, each cut to `most` bytes or characters (the rest of a longer
    line is read and dropped)."""
    while line := readline(most):
        if not line.endswith(end):
            while (rest := readline(most)) and not rest.endswith(end):
                pass
        yield line


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False
          ) -> None:
    if version:
        console.result(f"imdbsent {__version__}")
        raise typer.Exit()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; user errors and interruptions end as one line and an exit code."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, handler in handlers.items():  # an ignored one stays ignored (`imdbsent train &`
        if handler is not signal.SIG_IGN:  # in a script ignores Ctrl-C)
            signal.signal(sig, _raise_pending)
    size = os.environ.get("WORLD_SIZE", "1")
    worker = size.isdigit() and int(size) > 1
    code: int | str | None = 1
    try:
        _run(argv)
    except SystemExit as exc:
        code = exc.code
        raise
    except BaseException:
        if worker:  # said here: _leave_at_once skips Python's own report
            traceback.print_exc()
        raise
    finally:  # the handlers found (for a rank, SIGTERM's default: torchrun stopping it as it
        # exits ends it, with no traceback from an atexit hook), and no mark left
        Pending.raised, Pending.said, Pending.held = None, False, False
        for sig, handler in handlers.items():  # (None: not set from Python)
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if worker or _reader_waits():
            _leave_at_once(code)


def say_late_stops(code: int | str | None) -> None:
    """From the end of `main` to the end of the process (Python's finalization takes a while:
    torch's), a Ctrl-C or SIGTERM is said as one during the command is, and ends the process
    with 130 or 143 if the command had succeeded; with the command's own status if it had
    not (its error or stop is said already). Unhandled, it ended the process silently."""
    def late(signum: int, _frame: object) -> None:
        status = 143 if signum == signal.SIGTERM else 130
        if code in (0, None) and _is_main():
            _say_error(stop_word(status))
        elif code not in (0, None):
            status = code if isinstance(code, int) else 1
        _leave_at_once(status)

    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # one ignored at the start stays so
            signal.signal(sig, late)


def leave(code: int | str | None) -> None:
    """End the process after its command: the exit hooks run (with `say_late_stops`' handlers
    still set), then the process leaves without the rest of Python's finalization, the
    unloading of torch's modules that took 0.2 s, in which a Ctrl-C or SIGTERM found Python's
    handlers removed and killed the process without a word."""
    atexit._run_exitfuncs()
    if isinstance(code, str) and sys.stderr is not None:  # as sys.exit("message") prints it
        with contextlib.suppress(OSError, ValueError):
            print(code, file=sys.stderr)
    _leave_at_once(code)


def _reader_waits() -> bool:
    """Whether a reader thread (`_threaded`) still waits on standard input, a pipe or a
    terminal (the command ended early: an interrupt, an error): Python's finalization would
    abort on the lock it holds ("Fatal Python error: _enter_buffered_busy"), so the process
    must leave at once."""
    return any(t.name == READER and t.is_alive() for t in threading.enumerate())


def _leave_at_once(code: int | str | None) -> None:
    """End the process without the interpreter's finalization, where threads that are still
    running could abort it: gloo's in a distributed training (SIGABRT, "terminate called
    without an active exception", after its work was done), or the reader of standard input.
    Everything it writes is already whole on disk (atomic writes); the standard streams are
    flushed here."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: closed when the process started (`>&-`)
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def _run(argv: list[str] | None) -> None:
    try:
        with console.guarded_stdout():
            code = app(args=argv, prog_name="imdbsent", standalone_mode=False)
        if not Pending.said:  # typer's silent 130 for a Ctrl-C; one swallowed (torch's import
            Pending.raise_again()  # of numpy drops it) that no batch raised before the end
    except Shared:
        sys.exit(1)  # another rank's error: rank 0 has said it
    except BadValue as exc:  # a usage error, as click's own: named by the flag, status 2
        _fail(f"{_rank_prefix()}{config.flag(exc.name)} {exc.problem} (see "
              f"{_command_path(exc, argv)} --help)", 2)
    except Usage as exc:
        _fail(f"{_rank_prefix()}{exc} (see {_command_path(exc, argv)} --help)", 2)
    except UserError as exc:
        _fail(_rank_prefix() + str(exc), 1)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.exceptions.TyperException as exc:  # usage errors: bad flag, bad value
        code = getattr(exc, "exit_code", 2)
        if not exc.format_message().strip():  # bare `imdbsent`: its help is what it says
            sys.exit(code)
        _fail(f"{_usage_message(exc)} (see {_command_path(exc, argv)} --help)", code)
    except (KeyboardInterrupt, typer.Abort, Terminated) as exc:
        _stopped(type(exc))
    except OutputFailed as exc:
        if exc.message:
            _fail(exc.message, exc.code)
        sys.exit(exc.code)
    except Exception:
        if Pending.raised is None or Pending.said:
            raise
        _stopped(Pending.raised)  # what a swallowed signal broke on its way (a half import)
    sys.exit(code if isinstance(code, int) else 0)


def _stopped(signal_raised: type[BaseException]) -> None:
    """Exit as a Ctrl-C (130) or SIGTERM (143) that no command has said: one line, by rank 0
    alone."""
    code = stop_status(signal_raised)
    if not _is_main():
        sys.exit(code)
    _said_stop()
    _fail(stop_word(code), code)


def _stop_saying(exc: KeyboardInterrupt | Terminated, kept: str) -> NoReturn:
    """End a command stopped by Ctrl-C or SIGTERM with one line that says what it kept."""
    code = stop_status(exc)
    console.log(f"{stop_word(code)}: {kept}")
    _said_stop()
    raise typer.Exit(code) from None


def _said_stop() -> None:
    """Mark that this command has said how it stopped (for `_run`, and for the launcher of a
    rank 0)."""
    Pending.said = True
    launch.say_stopped()


_BOUNDS = {"greater than or equal to": "at least", "less than or equal to": "at most",
           "greater than": "more than", "less than": "less than"}
_KINDS = {"a valid integer": "an integer", "a valid number": "a number"}


def _usage_message(exc: typer.exceptions.TyperException) -> str:
    """click's message without what its validators add ("Value error, ") or its last period;
    a value that imdbsent's own parsers refuse said as "--out must not be empty"; a flag's
    value out of range or of the wrong kind said as imdbsent's own checks say it
    ("--nproc must be at least 1, not 0", "--lr must be a number, not 'abc'"; the value given
    is in the validator's error, which typer chains)."""
    message = exc.format_message().replace("Value error, ", "").rstrip(".")
    own = re.fullmatch(r"Invalid value for '([^']+)': (must .*)", message)  # imdbsent's parsers
    if own:
        return f"{own[1]} {own[2]}"
    match = re.fullmatch(r"Invalid value for '(--[\w-]+)': Input should be (.+?)"
                         r"(?:, unable to parse .*)?", message)
    bound = match and re.fullmatch(f"({'|'.join(_BOUNDS)}) (\\S+)", match[2])
    errors = getattr(exc.__cause__, "errors", list)()
    if match is None or not (bound or match[2] in _KINDS) or len(errors) != 1:
        return message
    given = errors[0].get("input")
    if bound:
        return f"{match[1]} must be {_BOUNDS[bound[1]]} {bound[2]}, not {given}"
    return f"{match[1]} must be {_KINDS[match[2]]}, not {given!r}"


def _command_path(exc: Exception, argv: list[str] | None) -> str:
    """`imdbsent COMMAND` of the command the usage error is in (click gives no context for a
    flag that lacks its value: the first word of the line that names a command), else
    `imdbsent`."""
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        return ctx.command_path
    words = argv if argv is not None else sys.argv[1:]
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    named = next((w for w in words if not w.startswith("-")), None)
    return f"imdbsent {named}" if named in commands else "imdbsent"


def _fail(message: str, code: int) -> None:
    _say_error(message)
    sys.exit(code)


def _say_error(message: str) -> None:
    """One line on standard error, even where a library's message spans several."""
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    console.err.print(f"imdbsent: error: {message}", markup=False, soft_wrap=True)


def _is_main() -> bool:
    """Whether this process is rank 0 of a distributed training, or trains alone."""
    return os.environ.get("RANK", "0") in ("", "0") or "WORLD_SIZE" not in os.environ


def _rank_prefix() -> str:
    """"rank N: " in a process of a distributed training other than rank 0, else ""."""
    return "" if _is_main() else f"rank {os.environ['RANK']}: "


def _raise_pending(signum: int, _frame: object) -> None:
    """SIGINT and SIGTERM: raised, and kept as `Pending` for a library that swallows it; the
    first while output is being written is held until its row is whole (`console`), a second
    raised at once."""
    first = Pending.raised is None
    Pending.raised = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    if Pending.holding and first:
        Pending.held = True
        return
    raise Pending.raised()
