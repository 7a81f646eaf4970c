"""The stage table fits an 80-column terminal (the NARROW columns); `--wide`, a file or a pipe
get every column."""

import io

from rich.console import Console

from netshrink import terminal
from netshrink.cli import main
from netshrink.measure import Measurement
from netshrink.report import tables

ROWS = [
    Measurement("baseline", 0.911, 0.9985, 61706, 61706, 247501, 32.09, 1.0, 416520, 416520,
                0.318, 1.88),
    Measurement("packed (.nsk)", 0.9019, 0.998, 61706, 3904, 7927, 1.03, 31.1, 416520, 97000,
                0.984, 2.301),
]  # fmt: skip


def printed(monkeypatch, width: int) -> str:
    out = io.StringIO()
    monkeypatch.setattr(
        tables, "console", lambda: Console(file=out, width=width, force_terminal=True)
    )
    tables.print_measurements(ROWS, title="deep-compression-lenet5: runs/demo/model.nsk")
    return out.getvalue()


def test_an_80_column_terminal_gets_the_narrow_columns_whole(monkeypatch):
    text = printed(monkeypatch, 80)
    lines = [line for line in text.splitlines() if "│" in line]
    assert lines and all(len(line) <= 80 for line in lines)
    assert "31.1x" in text and "7.9 KB" in text and "…" not in text
    assert "ms @64" not in text


def test_wide_asks_for_every_column(monkeypatch):
    monkeypatch.setattr(terminal, "WIDE_TABLES", True)
    assert "ms @64" in printed(monkeypatch, 80)


def test_a_pipe_or_a_wide_terminal_gets_every_column(monkeypatch):
    assert "ms @64" in printed(monkeypatch, 160)


def test_wide_is_an_option_of_every_command(monkeypatch, capsys):
    monkeypatch.setattr(terminal, "WIDE_TABLES", False)
    assert main(["report", "no/such/run", "--wide"]) == 2  # parsed, then the run is refused
    assert terminal.WIDE_TABLES is True
