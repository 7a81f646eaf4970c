"""Stage tables: one row a `Measurement`, printed with rich or written as Markdown / JSON."""

import json
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table

from .measure import Measurement


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _size(n: int) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


COLUMNS: tuple[tuple[str, Callable[[Measurement], str]], ...] = (
    ("stage", lambda m: m.stage),
    ("top-1", lambda m: _pct(m.top1)),
    ("top-5", lambda m: _pct(m.top5)),
    ("params", lambda m: f"{m.params:,}"),
    ("non-zero", lambda m: f"{m.nonzero_params:,}"),
    ("size", lambda m: _size(m.size_bytes)),
    ("bits/weight", lambda m: f"{m.bits_per_weight:.2f}"),
    ("ratio", lambda m: f"{m.compression_ratio:.1f}x"),
    ("MMACs", lambda m: f"{m.macs / 1e6:.3f}"),
    ("sparse MMACs", lambda m: f"{m.sparse_macs / 1e6:.3f}"),
    ("ms @1", lambda m: _ms(m.latency_ms_b1)),
    ("ms @64", lambda m: _ms(m.latency_ms_b64)),
)


def measurement_table(rows: Sequence[Measurement], title: str = "netshrink") -> Table:
    """A rich table of stages, one row each."""
    table = Table(title=title)
    for name, _ in COLUMNS:
        table.add_column(name, justify="left" if name == "stage" else "right")
    for row in rows:
        table.add_row(*(cell(row) for _, cell in COLUMNS))
    return table


def print_measurements(rows: Sequence[Measurement], title: str = "netshrink") -> None:
    """Print the stage table to stdout."""
    Console().print(measurement_table(rows, title))


def measurements_markdown(rows: Sequence[Measurement]) -> str:
    """The stage table as GitHub Markdown."""
    header = "| " + " | ".join(name for name, _ in COLUMNS) + " |"
    rule = "| " + " | ".join("---" for _ in COLUMNS) + " |"
    body = ["| " + " | ".join(cell(r) for _, cell in COLUMNS) + " |" for r in rows]
    return "\n".join([header, rule, *body]) + "\n"


def measurements_json(rows: Sequence[Measurement]) -> str:
    """The stage table as JSON, one object a stage."""
    return json.dumps([r.to_json() for r in rows], indent=2) + "\n"
