"""Stage tables: one row a `Measurement`, printed with rich or written as Markdown / JSON; and
the report of a pipeline run, `render_report`: report.json -> report.md with PNG plots.

matplotlib is imported inside the plotting functions only: every CLI module imports this one.
"""

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.table import Table
from torch import nn

from .errors import ConfigError, Error
from .files import atomic_write
from .layers import select_layers
from .measure import Measurement, TensorStorage, count_macs, storage_report


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


def console() -> Console:
    """stdout; wide enough for the stage table when it is a file or a pipe (rich assumes 80)."""
    out = Console()
    return out if out.is_terminal else Console(width=160)


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
    console().print(measurement_table(rows, title))


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


# ---- the report of a pipeline run: report.json -> report.md and PNG plots -------------------

REPORT_FILE = "report.json"
DPI = 110
MAX_WEIGHT_PLOTS = 12
MAX_LEVELS = 64  # at most this many distinct values: a codebook or a fixed-point grid, drawn


class _Record(BaseModel):
    # Unknown keys are ignored so that a newer pipeline's report still renders.
    model_config = ConfigDict(frozen=True, extra="ignore")


class StageRecord(_Record):
    """One stage of a run: its Measurement, validation top-1, wall time and checkpoint stem."""

    name: str
    method: str
    measurement: Measurement
    val_top1: float | None = None
    seconds: float | None = None
    checkpoint: str | None = None  # relative to the run directory


class FinalRecord(_Record):
    """The packed file and the accuracy of the model decoded from it."""

    file: str
    bytes: int
    top1: float | None = None
    top5: float | None = None


class RunReport(_Record):
    """`report.json`, written by the recipe pipeline; `stages[0]` is the baseline."""

    format: Literal["netshrink-report"]
    version: Literal[1]
    name: str
    recipe: str | None = None
    model: str
    data: str
    date: str
    stages: list[StageRecord] = Field(min_length=1)
    final: FinalRecord
    sensitivity: dict | None = None  # a Sensitivity as a dict; built lazily (see _sensitivity)


def read_run_report(run_dir: Path) -> RunReport:
    """Parse and validate `run_dir/report.json`; anything wrong with it is a ConfigError."""
    path = Path(run_dir) / REPORT_FILE
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such file; give the directory that a recipe run wrote (it holds"
            " report.json), or run the recipe first"
        )
    try:
        report = RunReport.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: not valid JSON ({exc}); rerun the recipe to rewrite it"
        ) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "top level"
        raise ConfigError(
            f"{path}: not a netshrink report ({where}: {err['msg']}); rerun the recipe to rewrite it"
        ) from None
    _sensitivity(report, path)  # a malformed sensitivity fails here, before anything is written
    return report


def _sensitivity(report: RunReport, where: Path):
    """The report's Sensitivity dataclass, or None."""
    from pydantic import TypeAdapter

    from .prune.sensitivity import Sensitivity

    if report.sensitivity is None:
        return None
    try:
        return TypeAdapter(Sensitivity).validate_python(report.sensitivity)
    except ValidationError as exc:
        raise ConfigError(
            f"{where}: its sensitivity is malformed ({exc.errors()[0]['msg']})"
        ) from None


def render_report(run_dir: Path, *, allow_import: bool = False) -> list[Path]:
    """Write `report.md` and its plots into `run_dir`, from `report.json`, the final `.nsk` file
    and the baseline checkpoint alone; returns the paths written, each replaced atomically.

    The per-layer table and the weight plots are of the model decoded from the file (DESIGN.md:
    what is stored is what is claimed). `allow_import` is passed to `unpack` for a model named by
    an import path: building it runs that code.

    Example:
        >>> render_report(Path("runs/deep-compression-lenet5"))  # doctest: +SKIP
    """
    from .codec import unpack

    run_dir = Path(run_dir)
    report = read_run_report(run_dir)
    packed = run_dir / report.final.file
    if not packed.is_file():
        raise ConfigError(
            f"{packed}: the final file named in report.json is missing; rerun the recipe"
        )
    model = unpack(packed, allow_import=allow_import)
    baseline = _baseline_model(run_dir, report.stages[0], allow_import)
    layers = select_layers(model)
    written = [_plot_path(run_dir / "accuracy_vs_size.png", _accuracy_vs_size, report)]
    if layers:
        written.append(_plot_path(run_dir / "layers.png", _layers_figure, layer_rows(model)))
        written.append(_plot_path(run_dir / "weights.png", _weights_figure, layers, baseline))
    sensitivity = _sensitivity(report, run_dir / REPORT_FILE)
    if sensitivity is not None:
        written.append(_write_sensitivity(sensitivity, run_dir / "sensitivity.png", report.name))
    text = report_markdown(report, model, [p.name for p in written])
    md = run_dir / "report.md"
    atomic_write(md, lambda tmp: tmp.write_text(text))
    return [md, *written]


def _baseline_model(run_dir: Path, stage: StageRecord, allow_import: bool) -> nn.Module | None:
    """The baseline checkpoint for the weight histograms' overlay, or None when it cannot load."""
    from .checkpoint import checkpoint_paths, load_checkpoint, read_meta

    if stage.checkpoint is None:
        return None
    try:
        meta = read_meta(checkpoint_paths(run_dir / stage.checkpoint)[1])
        if ":" in meta.model.name and not allow_import:
            return None  # building it would import code nobody allowed
        return load_checkpoint(run_dir / stage.checkpoint)[0]
    except Error:
        return None  # the overlay is a comparison only: the report stands without it


# ---- the Markdown ---------------------------------------------------------------------------


def layer_rows(model: nn.Module) -> list[TensorStorage]:
    """`storage_report` rows of the convolution and linear weights of `model`, in model order."""
    names = {f"{name}.weight" for name, _ in select_layers(model)}
    return [row for row in storage_report(model) if row.name in names]


def report_markdown(report: RunReport, model: nn.Module, images: Sequence[str]) -> str:
    """report.md: title, stage tables, the final file, the final model's layers, the images."""
    final = report.final
    recipe = f", recipe `{report.recipe}`" if report.recipe else ""
    lines = [
        f"# {report.name}\n",
        f"Model `{report.model}`, data `{report.data}`{recipe}, {report.date}.\n",
        "## Stages\n",
        measurements_markdown([s.measurement for s in report.stages]),
        _timing_markdown(report.stages),
        "## Final file\n",
        f"`{final.file}`: {final.bytes:,} bytes ({_size(final.bytes)}), top-1 {_pct(final.top1)},"
        f" top-5 {_pct(final.top5)}, measured on the model decoded from {final.file}.\n",
        *_image("accuracy_vs_size.png", "top-1 against size, stage by stage", images),
        "## Layers of the final model\n",
        _layers_markdown(layer_rows(model)),
        *_image("layers.png", "sparsity and bits per weight of each layer", images),
        *_image("weights.png", "non-zero weights of each layer", images),
        *_weights_note(select_layers(model)),
        *_image("sensitivity.png", "pruning sensitivity of each layer", images),
    ]
    return "\n".join(lines)


def _timing_markdown(stages: Sequence[StageRecord]) -> str:
    rows = ["| stage | method | val top-1 | seconds |", "| --- | --- | ---: | ---: |"]
    for s in stages:
        seconds = "-" if s.seconds is None else f"{s.seconds:.1f}"
        rows.append(f"| {s.name} | {s.method} | {_pct(s.val_top1)} | {seconds} |")
    total = sum(s.seconds or 0.0 for s in stages)
    return "\n".join(rows) + f"\n\nTotal: {total:.1f} s.\n"


def _layers_markdown(rows: Sequence[TensorStorage]) -> str:
    if not rows:
        return "The final model has no convolution or linear layers.\n"
    out = [
        "| layer | shape | params | non-zero | sparsity | storage | bits/weight | bits/non-zero |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r.name.removesuffix('.weight')} | {'x'.join(map(str, r.shape))} | {r.numel:,}"
            f" | {r.nonzero:,} | {1 - r.nonzero / r.numel:.1%} | {r.method}"
            f" | {r.bits / r.numel:.2f} | {r.bits / max(r.nonzero, 1):.2f} |"
        )
    return "\n".join(out) + "\n"


def _image(name: str, alt: str, images: Sequence[str]) -> list[str]:
    return [f"![{alt}]({name})\n"] if name in images else []


def _weights_note(layers: Sequence[tuple[str, nn.Module]]) -> list[str]:
    left_out = [name for name, _ in layers[MAX_WEIGHT_PLOTS:]]
    if not left_out:
        return []
    return [
        f"Weight histograms of {', '.join(left_out)} are left out (first {MAX_WEIGHT_PLOTS}).\n"
    ]


# ---- the plots ------------------------------------------------------------------------------


def _pyplot():
    # Imported here, not at the top: every CLI module imports report.py, few draw anything.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_path(path: Path, draw: Callable, *args) -> Path:
    """Draw a figure with `draw(*args)` and save it to `path` as a PNG, atomically."""
    fig = draw(*args)
    try:
        # The temporary file's name does not end in .png, so the format is given; no Software
        # stamp, so that the same run renders the same bytes on any matplotlib version.
        atomic_write(
            path,
            lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}),
        )
    finally:
        _pyplot().close(fig)
    return path


def _stage_top1(stage: StageRecord) -> float | None:
    return stage.measurement.top1 if stage.measurement.top1 is not None else stage.val_top1


def _accuracy_vs_size(report: RunReport):
    """The pipeline's path through (size, top-1), one labelled point a stage, in order."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = _pyplot().subplots(figsize=(6.5, 4.2))
    points = [(s.name, s.measurement.size_bytes, _stage_top1(s)) for s in report.stages]
    points = [(n, x, 100 * y) for n, x, y in points if y is not None and x > 0]
    if points:
        _, xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", color="C0")
        for name, x, y in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xscale("log")
        # A span of more than a decade always holds a labelled power of ten.
        ax.set_xlim(min(xs) / 4, max(xs) * 4)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _size(int(v))))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.text(0.5, 0.5, "no stage measured its accuracy", ha="center", transform=ax.transAxes)
    base = _stage_top1(report.stages[0])
    if base is not None:
        ax.axhline(100 * base, color="grey", linestyle="--", linewidth=1, label="baseline")
        ax.legend(fontsize=8)
    ax.set(xlabel="size (bytes, log scale)", ylabel="top-1 accuracy (%)", title=report.name)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def _layers_figure(rows: Sequence[TensorStorage]):
    """Per layer: sparsity on top, bits per stored (non-zero) weight below, named by method."""
    names = [r.name.removesuffix(".weight") for r in rows]
    width = min(14.0, 3.0 + 0.45 * len(rows))
    fig, (top, bottom) = _pyplot().subplots(2, 1, sharex=True, figsize=(width, 5))
    ticks = list(range(len(rows)))
    top.bar(ticks, [100 * (1 - r.nonzero / r.numel) for r in rows], color="C3")
    top.set(ylabel="sparsity (%)", ylim=(0, 100), title="final model, per layer")
    bars = bottom.bar(ticks, [r.bits / max(r.nonzero, 1) for r in rows], color="C0")
    bottom.bar_label(bars, labels=[r.method for r in rows], fontsize=6)
    bottom.set(ylabel="bits per stored weight")
    bottom.set_xticks(ticks, names, rotation=45, ha="right", fontsize=7)
    for ax in (top, bottom):
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def distinct_levels(weight: torch.Tensor, limit: int = MAX_LEVELS) -> torch.Tensor | None:
    """The sorted distinct non-zero values of `weight` when there are at most `limit` of them (a
    shared layer's centroids, Han et al. 2016; a fixed-point layer's levels), else None."""
    values = torch.unique(weight.detach()[weight != 0].float())
    return values if values.numel() <= limit else None


def _weights_figure(layers: Sequence[tuple[str, nn.Module]], baseline: nn.Module | None):
    """A histogram of each layer's non-zero weights, over the baseline's drawn lightly."""
    shown = layers[:MAX_WEIGHT_PLOTS]
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (name, module) in zip(axes.flat, shown):
        _weight_histogram(ax, name, module.weight.detach(), _baseline_weight(baseline, name))
    for ax in axes.flat[len(shown) :]:
        ax.set_visible(False)
    if baseline is not None:
        axes.flat[0].legend(fontsize=6)
    if len(layers) > len(shown):
        left_out = ", ".join(name for name, _ in layers[len(shown) :])
        fig.suptitle(
            f"first {len(shown)} of {len(layers)} layers; left out: {left_out}", fontsize=7
        )
    fig.tight_layout()
    return fig


def _baseline_weight(baseline: nn.Module | None, name: str) -> torch.Tensor | None:
    if baseline is None:
        return None
    try:
        weight = baseline.get_submodule(name).weight.detach().flatten().float()
    except AttributeError:  # a layer that a structural edit added (SVD's factors)
        return None
    return weight[weight != 0]


def _weight_histogram(ax, name: str, weight: torch.Tensor, before: torch.Tensor | None) -> None:
    flat = weight.flatten().float()
    kept = flat[flat != 0]  # zeros left out, so that pruning shows as a gap around zero
    levels = distinct_levels(weight)
    both = kept if before is None else torch.cat([kept, before])
    if both.numel():
        lo, hi = float(both.min()), float(both.max())
        bins = torch.linspace(lo, hi, 61).tolist() if hi > lo else [lo - 0.5, hi + 0.5]
        if before is not None:
            ax.hist(before.numpy(), bins, color="grey", alpha=0.35, label="baseline")
        ax.hist(kept.numpy(), bins, color="C0", label="final")
    for value in [] if levels is None else levels.tolist():
        ax.axvline(value, color="C3", linewidth=0.6, alpha=0.7)
    count = "" if levels is None else f", {levels.numel()} values"
    sparsity = 1 - kept.numel() / max(flat.numel(), 1)
    ax.set_title(f"{name}: {sparsity:.1%} pruned{count}", fontsize=8)
    ax.tick_params(labelsize=6)


def _write_sensitivity(sensitivity, path: Path, name: str) -> Path:
    """sensitivity.png by `plot_sensitivity`, replaced atomically."""
    from .prune.sensitivity import plot_sensitivity

    def write(tmp: Path) -> None:
        # plot_sensitivity takes the format from the name's suffix, which `tmp` lacks.
        png = tmp.with_name(tmp.name + ".png")
        try:
            plot_sensitivity(sensitivity, png, title=f"{name}: pruning sensitivity")
            os.replace(png, tmp)
        finally:
            png.unlink(missing_ok=True)

    atomic_write(path, write)
    return path
