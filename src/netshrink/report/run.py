"""The report of a pipeline run: report.json (written by netshrink.pipeline) -> report.md with
PNG plots (netshrink.report.plots), re-rendered from the run directory's files alone by
`netshrink report`. The per-layer table and layers.png are `netshrink inspect`'s rows of the
packed file (netshrink.codec.summary), so they say what the file holds.
"""

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from ..deploy import Artifact
from ..errors import ConfigError, Error
from ..files import atomic_write
from ..layers import select_layers
from ..measure import Measurement
from .plots import (
    MAX_WEIGHT_PLOTS,
    accuracy_vs_size_figure,
    layers_figure,
    save_png,
    weights_figure,
    write_sensitivity_plot,
)
from .tables import format_percent, format_size, measurements_markdown

if TYPE_CHECKING:
    from ..codec.summary import FileSummary, TensorSummary

REPORT_FILE = "report.json"


class _Record(BaseModel):
    # Unknown keys are ignored so that a newer pipeline's report still renders.
    model_config = ConfigDict(frozen=True, extra="ignore")


class ReportStage(_Record):
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
    stages: list[ReportStage] = Field(min_length=1)
    final: FinalRecord
    sensitivity: dict | None = None  # a Sensitivity as a dict; built lazily (see _sensitivity)
    artifacts: list[Artifact] = []  # what the recipe's `export:` deployed, the .nsk file first


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

    from ..prune.sensitivity import Sensitivity

    if report.sensitivity is None:
        return None
    try:
        return TypeAdapter(Sensitivity).validate_python(report.sensitivity)
    except ValidationError as exc:
        raise ConfigError(
            f"{where}: its sensitivity is malformed ({exc.errors()[0]['msg']})"
        ) from None


def render_report(run_dir: Path, *, allow_import: Collection[str] = ()) -> list[Path]:
    """Write `report.md` and its plots into `run_dir`, from `report.json`, the final `.nsk` file
    and the baseline checkpoint alone; returns the paths written, each replaced atomically.

    The per-layer table and the weight plots are of the model decoded from the file (DESIGN.md:
    what is stored is what is claimed). `allow_import` (exact `package.module:factory` names) is
    passed to `unpack` for a model named by an import path: building it runs that code.

    Example:
        >>> render_report(Path("runs/deep-compression-lenet5"))  # doctest: +SKIP
    """
    from ..codec import summarize, unpack

    run_dir = Path(run_dir)
    report = read_run_report(run_dir)
    packed = run_dir / report.final.file
    if not packed.is_file():
        raise ConfigError(
            f"{packed}: the final file named in report.json is missing; rerun the recipe"
        )
    model = unpack(packed, allow_import=allow_import)
    rows = layer_rows(summarize(packed), model)
    baseline = _baseline_model(run_dir, report.stages[0], allow_import)
    layers = select_layers(model, scales=True)
    written = [save_png(run_dir / "accuracy_vs_size.png", accuracy_vs_size_figure, report)]
    if layers:
        written.append(save_png(run_dir / "layers.png", layers_figure, rows))
        written.append(save_png(run_dir / "weights.png", weights_figure, layers, baseline))
    sensitivity = _sensitivity(report, run_dir / REPORT_FILE)
    if sensitivity is not None:
        written.append(
            write_sensitivity_plot(sensitivity, run_dir / "sensitivity.png", report.name)
        )
    text = report_markdown(report, model, rows, [p.name for p in written])
    md = run_dir / "report.md"
    atomic_write(md, lambda tmp: tmp.write_text(text))
    return [md, *written]


def _baseline_model(
    run_dir: Path, stage: ReportStage, allow_import: Collection[str]
) -> nn.Module | None:
    """The baseline checkpoint for the weight histograms' overlay, or None when it cannot load
    (a model nobody allowed to import included)."""
    from ..checkpoint import load_checkpoint

    if stage.checkpoint is None:
        return None
    try:
        return load_checkpoint(run_dir / stage.checkpoint, allow_import=allow_import)[0]
    except Error:
        return None  # the overlay is a comparison only: the report stands without it


# ---- the Markdown ---------------------------------------------------------------------------


def layer_rows(summary: "FileSummary", model: nn.Module) -> list["TensorSummary"]:
    """The rows of `summary` (a .nsk file's, or a model's before it is packed) that hold the
    convolution and linear weights of `model`, in the file's order."""
    names = {f"{name}.weight" for name, _ in select_layers(model, scales=True)}
    return [row for row in summary.tensors if row.name in names]


def report_markdown(
    report: RunReport, model: nn.Module, rows: Sequence["TensorSummary"], images: Sequence[str]
) -> str:
    """report.md: title, stage tables, the final file, the final model's layers as the file
    stores them (`rows`, from `layer_rows`), the images."""
    final = report.final
    recipe = f", recipe `{report.recipe}`" if report.recipe else ""
    lines = [
        f"# {report.name}\n",
        f"Model `{report.model}`, data `{report.data}`{recipe}, {report.date}.\n",
        "## Stages\n",
        measurements_markdown([s.measurement for s in report.stages]),
        _timing_markdown(report.stages),
        "## Final file\n",
        f"`{final.file}`: {final.bytes:,} bytes ({format_size(final.bytes)}), top-1 {format_percent(final.top1)},"
        f" top-5 {format_percent(final.top5)}, measured on the model decoded from {final.file}.\n",
        *_artifacts_markdown(report.artifacts),
        *_image("accuracy_vs_size.png", "top-1 against size, stage by stage", images),
        "## Layers of the final model\n",
        _layers_markdown(rows),
        *_image("layers.png", "sparsity and bits per weight of each layer", images),
        *_image("weights.png", "non-zero weights of each layer", images),
        *_weights_note(select_layers(model, scales=True)),
        *_image("sensitivity.png", "pruning sensitivity of each layer", images),
    ]
    return "\n".join(lines)


def _artifacts_markdown(rows: Sequence[Artifact]) -> list[str]:
    if not rows:
        return []
    lines = [
        "## Deployed\n",
        "What the recipe's `export:` wrote, each measured as a device runs it: images/s at batch 1"
        " on one core (C) or one ONNX Runtime thread; top-1 on the test split.\n",
        "| artifact | file | bytes | flash | RAM | images/s | top-1 | check |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        speed = "-" if r.images_per_second is None else f"{r.images_per_second:,.0f}"
        flash = "-" if r.flash_bytes is None else f"{r.flash_bytes:,}"
        ram = "-" if r.ram_bytes is None else f"{r.ram_bytes:,}"
        lines.append(
            f"| {r.artifact} | `{Path(r.file).name}` | {r.bytes:,} | {flash} | {ram} | {speed} "
            f"| {format_percent(r.top1)} | {r.check or ''} |"
        )
    return [lines[0], lines[1], "\n".join(lines[2:]) + "\n"]


def _timing_markdown(stages: Sequence[ReportStage]) -> str:
    rows = ["| stage | method | val top-1 | seconds |", "| --- | --- | ---: | ---: |"]
    for s in stages:
        seconds = "-" if s.seconds is None else f"{s.seconds:.1f}"
        rows.append(f"| {s.name} | {s.method} | {format_percent(s.val_top1)} | {seconds} |")
    total = sum(s.seconds or 0.0 for s in stages)
    return "\n".join(rows) + f"\n\nTotal: {total:.1f} s.\n"


def _layers_markdown(rows: Sequence["TensorSummary"]) -> str:
    if not rows:
        return "The final model has no convolution or linear layers.\n"
    out = [
        "| layer | shape | params | non-zero | sparsity | encoding | bytes | bits/weight"
        " | bits/non-zero |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r.name.removesuffix('.weight')} | {'x'.join(map(str, r.shape))} | {r.numel:,}"
            f" | {r.nonzero:,} | {1 - r.nonzero / r.numel:.1%} | {r.encoding} | {r.nbytes:,}"
            f" | {r.bits_per_weight:.2f} | {8 * r.nbytes / max(r.nonzero, 1):.2f} |"
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
