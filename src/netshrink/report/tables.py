"""Stage tables: one row a `Measurement`, printed with rich or written as Markdown / JSON; the
per-layer tables of a model's MACs (`layer_table`) and of what its .nsk file stores for each
layer (`storage_table`, from netshrink.codec.summary's rows).

Every CLI module imports this one: it imports neither matplotlib nor the codec.
"""

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from .. import terminal
from ..measure import Measurement, count_macs
from ..terminal import console

if TYPE_CHECKING:
    from ..codec.summary import TensorSummary


def format_percent(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_size(n: int) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


COLUMNS: tuple[tuple[str, Callable[[Measurement], str]], ...] = (
    ("stage", lambda m: m.stage),
    ("top-1", lambda m: format_percent(m.top1)),
    ("top-5", lambda m: format_percent(m.top5)),
    ("params", lambda m: f"{m.params:,}"),
    ("non-zero", lambda m: f"{m.nonzero_params:,}"),
    ("size", lambda m: format_size(m.size_bytes)),
    ("bits/weight", lambda m: f"{m.bits_per_weight:.2f}"),
    ("ratio", lambda m: f"{m.compression_ratio:.1f}x"),
    ("MMACs", lambda m: f"{m.macs / 1e6:.3f}"),
    ("sparse MMACs", lambda m: f"{m.sparse_macs / 1e6:.3f}"),
    ("ms @1", lambda m: _ms(m.latency_ms_b1)),
    ("ms @64", lambda m: _ms(m.latency_ms_b64)),
)


# The columns of a stage table on a terminal under WIDE_COLUMNS wide (80 columns fit them).
NARROW = ("stage", "top-1", "size", "ratio", "sparse MMACs", "ms @1")
WIDE_COLUMNS = 130


def measurement_table(
    rows: Sequence[Measurement], title: str = "netshrink", *, wide: bool = True
) -> Table:
    """A rich table of stages, one row each: every column, or the NARROW ones."""
    columns = [(n, cell) for n, cell in COLUMNS if wide or n in NARROW]
    table = Table(title=title)
    for name, _ in columns:
        table.add_column(name, justify="left" if name == "stage" else "right")
    for row in rows:
        table.add_row(*(cell(row) for _, cell in columns))
    return table


def print_measurements(rows: Sequence[Measurement], title: str = "netshrink") -> None:
    """Print the stage table to stdout: every column where it fits (a file, a pipe, a wide
    terminal) or `--wide` asked for it (terminal.wide_tables), else the NARROW ones."""
    out = console()
    wide = out.width >= WIDE_COLUMNS
    if terminal.WIDE_TABLES and not wide:  # whole rows, past the edge, rather than squeezed
        out, wide = Console(file=out.file, width=160, force_terminal=out.is_terminal), True
    out.print(measurement_table(rows, title, wide=wide))


def measurements_markdown(rows: Sequence[Measurement]) -> str:
    """The stage table as GitHub Markdown."""
    header = "| " + " | ".join(name for name, _ in COLUMNS) + " |"
    rule = "| " + " | ".join("---" for _ in COLUMNS) + " |"
    body = ["| " + " | ".join(cell(r) for _, cell in COLUMNS) + " |" for r in rows]
    return "\n".join([header, rule, *body]) + "\n"


def measurements_json(rows: Sequence[Measurement]) -> str:
    """The stage table as JSON, one object a stage."""
    return json.dumps([r.to_json() for r in rows], indent=2) + "\n"


def layer_table(model: nn.Module, input_shape: tuple[int, ...], title: str = "layers") -> Table:
    """Per convolution / linear layer: weight shape, parameters kept, sparsity and MACs."""
    table = Table(title=title)
    for name in ("layer", "weight", "params", "non-zero", "sparsity", "MMACs", "sparse MMACs"):
        table.add_column(name, justify="left" if name in ("layer", "weight") else "right")
    for row in count_macs(model, input_shape):
        weight = model.get_submodule(row.name).weight
        nonzero = int(torch.count_nonzero(weight))
        table.add_row(
            row.name,
            "x".join(map(str, weight.shape)),
            f"{weight.numel():,}",
            f"{nonzero:,}",
            f"{1 - nonzero / weight.numel():.1%}",
            f"{row.macs / 1e6:.3f}",
            f"{row.sparse_macs / 1e6:.3f}",
        )
    return table


def storage_table(rows: Sequence["TensorSummary"], title: str = "layers") -> Table:
    """Per stored tensor (netshrink.codec.summary rows, e.g. a model's layer weights): the
    encoding the .nsk file holds it in, its bytes there, bits per weight and per non-zero,
    and the ratio against the same tensor at fp32."""
    table = Table(title=title)
    columns = ("tensor", "encoding", "shape", "non-zero", "bytes")
    for name in columns + ("bits/weight", "bits/non-zero", "ratio"):
        table.add_column(name, justify="left" if name in columns[:3] else "right")
    for row in rows:
        table.add_row(
            row.name,
            row.encoding,
            "x".join(map(str, row.shape)) or "scalar",
            f"{row.nonzero:,}",
            f"{row.nbytes:,}",
            f"{row.bits_per_weight:.2f}",
            f"{8 * row.nbytes / max(row.nonzero, 1):.2f}",
            f"{32 * row.numel / max(8 * row.nbytes, 1):.1f}x",
        )
    return table
