"""The plots of a run's report: accuracy against size stage by stage, per-layer sparsity and
bits, weight histograms with their shared values and the pruned gap, sensitivity curves.

matplotlib is imported inside the functions: this module is imported by `netshrink report`
and the pipeline only, but importing matplotlib costs a second.
"""

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..files import atomic_write
from .tables import format_size

if TYPE_CHECKING:
    from ..codec.summary import TensorSummary
    from .run import ReportStage, RunReport

DPI = 110
MAX_WEIGHT_PLOTS = 12
MAX_LEVELS = 64  # at most this many distinct values: a codebook or a fixed-point grid, drawn


def _pyplot():
    # Imported here, not at the top: every CLI module imports netshrink.report, few draw anything.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(path: Path, draw: Callable, *args) -> Path:
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


def _stage_top1(stage: "ReportStage") -> float | None:
    return stage.measurement.top1 if stage.measurement.top1 is not None else stage.val_top1


def accuracy_vs_size_figure(report: "RunReport"):
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
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_size(int(v))))
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


def layers_figure(rows: Sequence["TensorSummary"]):
    """Per layer (rows of the .nsk file, netshrink.codec.summary): sparsity on top, the file's
    bits per non-zero weight below, each bar named by its encoding."""
    names = [r.name.removesuffix(".weight") for r in rows]
    width = min(14.0, 3.0 + 0.45 * len(rows))
    fig, (top, bottom) = _pyplot().subplots(2, 1, sharex=True, figsize=(width, 5))
    ticks = list(range(len(rows)))
    top.bar(ticks, [100 * (1 - r.nonzero / r.numel) for r in rows], color="C3")
    top.set(ylabel="sparsity (%)", ylim=(0, 100), title="final model, per layer")
    bars = bottom.bar(ticks, [8 * r.nbytes / max(r.nonzero, 1) for r in rows], color="C0")
    bottom.bar_label(bars, labels=[r.encoding for r in rows], fontsize=6)
    bottom.set(ylabel="file bits per non-zero weight")
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


def weights_figure(layers: Sequence[tuple[str, nn.Module]], baseline: nn.Module | None):
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


def write_sensitivity_plot(sensitivity, path: Path, name: str) -> Path:
    """sensitivity.png by `plot_sensitivity`, replaced atomically."""
    from ..prune.sensitivity import plot_sensitivity

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
