"""What a model deploys as, measured as a device runs it: the C99 sources (flash and RAM from
`size` of the compiled object, images/s of the compiled code at batch 1 on one core, logits
checked bit for bit against the integer path), the int8 QDQ ONNX file and the fp32 ONNX file
(bytes, ONNX Runtime's images/s at batch 1 on one thread, top-1 agreement). Every artifact's
top-1 is measured on the test split, so a table of artifacts says what each one is worth.

A recipe's `export:` section (ExportConfig) writes them beside model.nsk at the end of a run
(netshrink.pipeline); `netshrink export` writes any of them for a checkpoint or .nsk file. The
PyTorch model of a fixed-point stage only simulates its arithmetic (fake quantization), so its
latency says nothing about a device: these artifacts' numbers do.

    >>> rows = export_artifacts(qmodel, "runs/demo", ExportConfig(c=True, int8=True), data)
    >>> print_artifacts(rows)
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from .config import Config, takes_mappings
from .errors import ConfigError
from .quant import IntegerModel, is_quantized
from .terminal import console

ORT_RUNS = 100  # batch-1 runs timed per ONNX file (median)
TIMED_IMAGES = 1000  # images the compiled C code is timed on


class ExportConfig(Config):
    """A recipe's `export:` section: which artifacts to write beside model.nsk (`c`: model.c /
    model.h in c/, `int8`: model.int8.onnx, `onnx`: model.onnx), how the C code stores its
    weights (`c_storage`, netshrink.export.c.export_c), the int8 file's integer type
    (`int8_integers`: uint8 is exact on every CPU, int8 runs faster where ONNX Runtime has VNNI
    or ARM dot products; netshrink.export.qdq) and on how many test images they are checked
    (`check`; all by default). C and int8 need a fixed-point model."""

    c: bool = False
    int8: bool = False
    onnx: bool = False
    c_storage: Literal["smallest", "dense", "sparse"] = "smallest"
    int8_integers: Literal["uint8", "int8"] = "uint8"
    check: int | None = Field(None, ge=1)

    @property
    def wanted(self) -> bool:
        return self.c or self.int8 or self.onnx


class Artifact(Config):
    """One deployed file as measured: `bytes` of the file (the C sources: their weights' const
    bytes), flash and RAM of the compiled object, images/s at batch 1 (one core / thread),
    test top-1, and how it agrees with the model it came from (`check`)."""

    artifact: str
    file: str
    bytes: int
    flash_bytes: int | None = None
    ram_bytes: int | None = None
    images_per_second: float | None = None
    top1: float | None = None
    agreement: float | None = None  # top-1 agreement with the model it came from (ONNX files)
    check: str | None = None
    detail: str | None = None  # the C code: how each layer stores its weights


class CheckImages:
    """The first `count` test images (and labels) the artifacts are checked on, read batch by
    batch each time they are iterated: a check holds one batch, however large the test split."""

    def __init__(self, data, count: int | None = None, batch_size: int = 256) -> None:
        total = len(data.test)
        self.data, self.batch_size = data, batch_size
        self.count = total if count is None else min(count, total)

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        seen = 0
        for x, y in self.data.loader("test", self.batch_size, shuffle=False):
            if seen >= self.count:
                return
            yield x[: self.count - seen], y[: self.count - seen]
            seen += len(x)

    def images(self):
        """The images alone, batch by batch (re-iterable, with a length)."""
        return _Images(self)


class _Images:
    def __init__(self, checks: CheckImages) -> None:
        self.checks = checks

    def __len__(self) -> int:
        return len(self.checks)

    def __iter__(self):
        return (x for x, _ in self.checks)


@takes_mappings
def export_artifacts(model, directory, config: ExportConfig, data) -> list[Artifact]:
    """Write what `config` asks for into `directory` for `model` and measure each on `data`'s
    test split; a float model asked for C or int8 is a ConfigError."""
    if (config.c or config.int8) and not is_quantized(model):
        raise ConfigError(
            "export: c and int8 need a fixed-point model: end the recipe with a quantize, qat or "
            "search_bits stage"
        )
    directory, checks = Path(directory), CheckImages(data, config.check)
    rows = []
    if config.c:
        rows.append(c_artifact(model, directory / "c", data.input_shape, checks, config.c_storage))
    if config.int8:
        path = directory / "model.int8.onnx"
        rows.append(int8_artifact(model, path, data.input_shape, checks, config.int8_integers))
    if config.onnx:
        rows.append(onnx_artifact(model, directory / "model.onnx", data.input_shape, checks))
    return rows


def c_artifact(
    model, outdir, input_shape, checks: CheckImages | None, storage: str = "smallest", name="model"
) -> Artifact:
    """export_c into `outdir`, compiled (gcc -O2): flash and RAM from `size`; on `checks`, the
    logits compared bit for bit with the integer path, top-1, and images/s at batch 1."""
    from .export.c import build_and_run, export_c, flash_and_ram, images_per_second, quantize_input

    export = export_c(model, outdir, input_shape, name=name, storage=storage)
    row = Artifact(
        artifact="C99", file=str(export.source), bytes=export.weight_bytes, detail=export.describe()
    )
    with tempfile.TemporaryDirectory() as work:
        sizes = flash_and_ram(export, work)
        row = row.model_copy(
            update={"flash_bytes": sizes["flash_bytes"], "ram_bytes": sizes["ram_bytes"]}
        )
        if checks is None:
            return row
        integer, inputs, expected, labels = IntegerModel(model), [], [], []
        for x, y in checks:
            inputs.append(quantize_input(x, export))
            expected.append(integer.run(x).integers.numpy())
            labels.append(y.numpy())
        inputs, expected, labels = (np.concatenate(a) for a in (inputs, expected, labels))
        logits = build_and_run(export, inputs, work)
        speed = images_per_second(export, inputs[:TIMED_IMAGES], work)
    same = int((logits == expected).all(axis=1).sum())
    return row.model_copy(
        update={
            "images_per_second": speed,
            "top1": float((logits.argmax(1) == labels).mean()),
            "check": f"bit-exact with the integer path on {same}/{len(labels)}",
        }
    )


def int8_artifact(model, path, input_shape, checks: CheckImages | None, integers: str) -> Artifact:
    """export_onnx_int8 to `path` (`integers`: its 8-bit type): bytes, ONNX Runtime's images/s,
    top-1 and its agreement with the integer path (below 99.9%: where they first part,
    netshrink.export.agreement)."""
    from .export.agreement import int8_agreement
    from .export.qdq import export_onnx_int8

    path = export_onnx_int8(model, path, input_shape, integers=integers)
    row = _onnx_row("int8 ONNX", path, input_shape, checks)
    if checks is None:
        return row
    agreement = int8_agreement(model, path, checks.images())
    return row.model_copy(update={"agreement": agreement.top1, "check": agreement.describe()})


def onnx_artifact(model, path, input_shape, checks: CheckImages | None) -> Artifact:
    """export_onnx to `path`: bytes, ONNX Runtime's images/s, top-1 and its top-1 agreement
    with the PyTorch model (with the largest logit difference)."""
    from .export.onnx import export_onnx, onnx_logits, onnx_session

    path = export_onnx(model, path, input_shape)
    row = _onnx_row("fp32 ONNX", path, input_shape, checks)
    if checks is None:
        return row
    session, same, largest = onnx_session(path), 0, 0.0
    for x, _ in checks:
        with torch.no_grad():
            ours = model(x).numpy()
        theirs = onnx_logits(session, x)
        same += int((ours.argmax(1) == theirs.argmax(1)).sum())
        largest = max(largest, float(abs(ours - theirs).max()))
    check = f"top-1 agreement with PyTorch {same / len(checks):.2%}, max |diff| {largest:.2g}"
    return row.model_copy(update={"agreement": same / len(checks), "check": check})


def _onnx_row(label: str, path: Path, input_shape, checks: CheckImages | None) -> Artifact:
    from .export.onnx import onnx_logits, onnx_session

    session = onnx_session(path, threads=1)
    row = Artifact(artifact=label, file=str(path), bytes=path.stat().st_size)
    row = row.model_copy(update={"images_per_second": ort_images_per_second(session, input_shape)})
    if checks is None:
        return row
    correct = sum(int((onnx_logits(session, x).argmax(1) == y.numpy()).sum()) for x, y in checks)
    return row.model_copy(update={"top1": correct / len(checks)})


def ort_images_per_second(session, input_shape, runs: int = ORT_RUNS) -> float:
    """Batch-1 images/s of an ONNX Runtime session: 1 / the median of `runs` timed runs."""
    feed = {session.get_inputs()[0].name: np.zeros((1, *input_shape), dtype=np.float32)}
    for _ in range(5):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1 / max(statistics.median(times), 1e-9)


def packed_artifact(path, top1: float | None) -> Artifact:
    """The .nsk file as a row of the table: its bytes and the top-1 of the model decoded from it
    (in PyTorch, which simulates fixed-point arithmetic: no device speed)."""
    path = Path(path)
    return Artifact(
        artifact=".nsk", file=str(path), bytes=path.stat().st_size, top1=top1,
        check="the model decoded from the file, in PyTorch",
    )  # fmt: skip


def print_artifacts(rows: list[Artifact], nsk: Artifact | None = None, title: str = "") -> None:
    """The artifacts as one table (the packed file first when given), then each one's check as a
    line of its own (long sentences do not wrap inside a table)."""
    from rich.table import Table

    rows = ([nsk] if nsk else []) + rows
    table = Table(title=title or "deployed (batch 1, one core / thread)")
    for column in ("artifact", "file", "bytes", "flash", "RAM", "images/s", "top-1"):
        table.add_column(column, justify="left" if column in ("artifact", "file") else "right")
    for row in rows:
        table.add_row(
            row.artifact,
            Path(row.file).name,
            f"{row.bytes:,}",
            _count(row.flash_bytes),
            _count(row.ram_bytes),
            "-" if row.images_per_second is None else f"{row.images_per_second:,.0f}",
            "-" if row.top1 is None else f"{row.top1:.2%}",
        )
    console().print(table)
    for row in rows:
        if row.check:
            console().print(f"{row.artifact}: {row.check}", soft_wrap=True)


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
