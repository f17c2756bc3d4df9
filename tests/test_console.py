"""The console shows user and file text as it is (never as rich markup or emoji codes), prints
a prediction table chunk by chunk, and imports neither torch nor datasets."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from imdbsent import console
from imdbsent.predict import Prediction

HOSTILE = ["[/x] closing tag", "[red]great[/red]", ":smile: and :thumbs_up:", "[bold]unclosed"]
WIDTH = 100
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """console.out replaced by a terminal of fixed width writing to a buffer, with rich's
    defaults (markup, emoji) on: only the console code itself can keep text from being parsed."""
    buffer = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buffer, force_terminal=True, width=WIDTH,
                                                color_system="truecolor"))
    return buffer


def plain(buffer: io.StringIO) -> str:
    return ANSI.sub("", buffer.getvalue())


def test_a_csv_row_keeps_a_bare_carriage_return_inside_its_field() -> None:
    import csv
    rows = "".join(console._format_row(Prediction(t, 0.9, "pos"), "csv")
                   for t in ("first\rsecond", "plain", "a\r\nb"))
    assert list(csv.reader(io.StringIO(rows, newline=""))) == [
        ["pos", "0.9000", "first\rsecond"], ["pos", "0.9000", "plain"], ["pos", "0.9000", "a\r\nb"]]


def test_predicted_texts_are_shown_verbatim(screen: io.StringIO) -> None:
    console.write_predictions([[Prediction(t, 0.9, "pos") for t in HOSTILE]], "table")
    out = screen.getvalue()
    for text in HOSTILE:
        assert text in out  # as typed, no style codes inside it
    assert "😄" not in out and "👍" not in out


def test_control_characters_cannot_drive_the_terminal(screen: io.StringIO) -> None:
    console.write_predictions([[Prediction("red \x1b[31mflag\x07 end", 0.1, "neg")]], "table")
    out = screen.getvalue()
    assert "\x1b[31mflag" not in out and "\x07" not in out
    assert "red \ufffd[31mflag\ufffd end" in plain(screen)


def test_rows_are_one_line_and_cut_to_the_terminal(screen: io.StringIO) -> None:
    console.write_predictions([[Prediction("word " * 100, 0.5, "pos"),
                                Prediction("line\u2028break\ttab", 0.5, "pos")]], "table")
    lines = plain(screen).splitlines()
    assert len(lines) == 4  # header, rule, two rows
    assert all(len(line) <= WIDTH for line in lines)
    assert lines[2].rstrip().endswith("…")
    assert "line break tab" in lines[3]


def test_paths_and_split_names_in_titles_are_verbatim(screen: io.StringIO) -> None:
    import torch

    from imdbsent.engine import classification_metrics
    metrics = classification_metrics(torch.tensor([2.0, -2.0]), torch.tensor([1.0, 0.0]))
    console.metrics_table(metrics, "runs/[/x] :smile: on data/[red]x[/red] [test]")
    assert "runs/[/x] :smile: on data/[red]x[/red] [test]" in screen.getvalue()
    manifest = {"vocab_size": 10, "splits": {"[/x]": {"total": 1, "neg": 1}}}
    console.prepare_summary(manifest, Path("data/[red]:smile:[/red]"), built=True)
    out = screen.getvalue()
    assert "data/[red]:smile:[/red]" in out and "[/x]" in out


def test_log_lines_are_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    console.log("reading [red]x[/red] :smile: [/x]")
    assert capsys.readouterr().err == "reading [red]x[/red] :smile: [/x]\n"


def test_the_table_is_printed_chunk_by_chunk(screen: io.StringIO) -> None:
    seen_before_second: list[str] = []

    def chunks() -> Iterator[list[Prediction]]:
        yield [Prediction(f"first chunk {i}", 0.9, "pos") for i in range(3)]
        seen_before_second.append(plain(screen))  # what was printed before chunk 2 exists
        yield [Prediction(f"second chunk {i}", 0.2, "neg") for i in range(3)]
        yield [Prediction("", None, None)]

    console.write_predictions(chunks(), "table")
    (before,) = seen_before_second
    assert all(f"first chunk {i}" in before for i in range(3))
    assert "second" not in before
    lines = plain(screen).splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["pos"] * 3 + ["neg"] * 3 + ["skip"]
    assert sum("label" in line for line in lines) == 1  # the header once
    # the same column widths in every chunk: every text starts where the header's does
    starts = {line.index("chunk") - len(line.split()[2]) - 1 for line in lines[2:8]}
    assert starts == {lines[0].index("text")}


def test_an_empty_input_prints_the_header_alone(screen: io.StringIO) -> None:
    console.write_predictions(iter([]), "table")
    assert plain(screen).split() == ["label", "prob_pos", "text", "─" * len(plain(screen).split()[3])]


def test_console_imports_neither_torch_nor_datasets() -> None:
    code = ("import imdbsent.console, sys; "
            "assert 'torch' not in sys.modules, 'torch'; assert 'datasets' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("every, said", [
    (1e9, ["a: 2", "b: 1/2", "a report line", "c: 5/5"]),  # each stage once, as it ends
    (0.0, ["a: 1", "a: 2", "b: 1/2", "a report line", "c: 5/5"]),  # a line each time, no repeat
])
def test_prepare_progress_when_piped_says_each_state_once(capsys, monkeypatch, every, said):
    monkeypatch.setattr(console.PrepareView, "EVERY", every)
    view = console.PrepareView()
    view("a", 1)
    view("a", 2)
    view("b", 1, 2)
    view.log("a report line")
    view("c", 5, 5)
    view.close()
    assert capsys.readouterr().err.splitlines() == said


@pytest.mark.parametrize("width", [80, 200])
def test_runs_on_a_narrow_terminal_shows_fewer_columns_whole(monkeypatch, width):
    buffer = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buffer, force_terminal=True, width=width))
    row = {"name": "default-1234", "started": "2026-12-01T13:32:31+00:00", "recipe": "default",
           "model": "lstm", "parameters": 3464705, "processes": 1, "epochs": 5,
           "best_epoch": 4, "best_valid_loss": 0.2332, "best_valid_acc": 0.9097,
           "test_acc": 0.906, "train_seconds": 640.0, "status": "finished"}
    broken = dict(row, name="other", status="broken: best.safetensors: not a readable "
                  "imdbsent checkpoint (truncated or corrupted? Error while deserializing header)")
    console.runs_table([row, broken], row)
    shown = plain(buffer)
    assert all(len(line) <= width for line in shown.splitlines())
    for whole in ("finished", "default-1234", "2026-12-01 13:32", "5 (4)"):
        assert whole in shown  # never cut to "fin…", nor squeezed out by a long status
    assert shown.count("90.97%") == shown.count("90.60%") == 2
    assert ("3,464,705" in shown) == (width >= console.NARROW)
