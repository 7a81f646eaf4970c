"""`netshrink export`: a checkpoint or .nsk file to ONNX (fp32, int8 QDQ) and to C99.

    netshrink export model.nsk --onnx model.onnx --int8 model.int8.onnx --c out/

Each output is checked on the model's test split when its data set is known (or --data given):
fp32 ONNX against PyTorch (top-1 agreement, largest logit difference), int8 ONNX against the
integer path (top-1 agreement; below 99.9%, the first quantizer where they differ and why:
netshrink.export.agreement), the C code compiled and run against the integer path (images
whose logits are identical bit for bit). --check N limits the images checked.
"""

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import checkpoint_paths, load_checkpoint
from ..codec.api import load_packed
from ..data import DataConfig, load_data
from ..errors import ConfigError
from ..export.c_program import STORAGE
from ..files import refuse_overwrite_input
from ..quant import IntegerModel, is_quantized
from ..report import console
from .common import add_data_args, data_config


def add_commands(commands) -> None:
    """Register `export` on the top-level sub-command parser."""
    p = commands.add_parser(
        "export",
        help="write ONNX (fp32 / int8 QDQ) and C99 code for a device",
        description="Export a checkpoint or .nsk file: --onnx writes the fp32 graph run by ONNX "
        "Runtime; --int8 the QDQ graph of a fixed-point model with its own power-of-two scales; "
        "--c model.h / model.c with integer kernels, bit-exact with the integer path.",
    )
    p.add_argument("model", type=Path, help="a .nsk file or a checkpoint (stem)")
    p.add_argument("--onnx", type=Path, help="fp32 ONNX file to write")
    p.add_argument("--int8", type=Path, help="int8 QDQ ONNX file to write (fixed-point models)")
    p.add_argument("--c", type=Path, help="directory for the C99 sources (fixed-point models)")
    p.add_argument("--name", default="model", help="C file and symbol prefix (default model)")
    p.add_argument(
        "--c-storage",
        choices=STORAGE,
        default="smallest",
        help="how the C code stores each layer's weights: the least flash of dense, codebook "
        "indices and sparse (default), all dense, or sparse wherever a layer has a non-zero",
    )
    p.add_argument("--check", type=int, default=None, help="check on at most N test images")
    add_data_args(p, default=None)
    p.set_defaults(run=run_export)


def run_export(args) -> None:
    if not (args.onnx or args.int8 or args.c):
        raise ConfigError("nothing to export: give --onnx FILE, --int8 FILE and/or --c DIR")
    refuse_overwrite_input(_outputs(args), _inputs(args))
    model, input_shape, data_cfg = _load(args)
    if (args.int8 or args.c) and not is_quantized(model):
        raise ConfigError(
            f"{args.model} is not fixed point: --int8 and --c need a quantized model "
            "(netshrink quantize or qat first)"
        )
    images = _test_images(args, data_cfg)
    if args.onnx:
        _export_fp32(model, args.onnx, input_shape, images)
    if args.int8:
        _export_int8(model, args.int8, input_shape, images)
    if args.c:
        _export_c(model, args, input_shape, images)


def _outputs(args) -> list[Path]:
    files = [args.onnx, args.int8]
    if args.c:
        files += [args.c / f"{args.name}.h", args.c / f"{args.name}.c"]
    return [f for f in files if f is not None]


def _inputs(args) -> list[Path]:
    return [args.model] if args.model.suffix == ".nsk" else list(checkpoint_paths(args.model))


def _load(args):
    if args.model.suffix == ".nsk":
        model, header = load_packed(args.model, allow_import=args.allow_import)
        data = DataConfig(**header.data) if header.data else None
        shape = header.input_shape
    else:
        model, meta = load_checkpoint(args.model, allow_import=args.allow_import)
        data, shape = meta.data, meta.input_shape
    if shape is None:
        raise ConfigError(f"{args.model} does not record its input shape; pack it with one")
    return model.eval(), tuple(shape), data


def _test_images(args, base: DataConfig | None):
    if base is None and args.data is None:
        console().print("no data set known: outputs are written unchecked (pass --data)")
        return None
    data = load_data(data_config(args, base))
    count = len(data.test) if args.check is None else min(args.check, len(data.test))
    return CheckImages(data, count)


class CheckImages:
    """The first `count` test images an export is checked on, read batch by batch each time
    they are iterated: the checks hold one batch, however large the test split."""

    def __init__(self, data, count: int, batch_size: int = 256) -> None:
        self.data, self.count, self.batch_size = data, count, batch_size

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        seen = 0
        for x, _ in self.data.loader("test", self.batch_size, shuffle=False):
            if seen >= self.count:
                return
            yield x[: self.count - seen]
            seen += len(x)


def _export_fp32(model, path: Path, input_shape, images) -> None:
    from ..export.onnx import export_onnx, onnx_logits, onnx_session

    export_onnx(model, path, input_shape)
    session = onnx_session(path)
    line = f"fp32 ONNX: {path} ({path.stat().st_size:,} B)"
    if images is not None:
        same, largest = 0, 0.0
        for x in images:
            with torch.no_grad():
                ours = model(x).numpy()
            theirs = onnx_logits(session, x)
            same += int((ours.argmax(1) == theirs.argmax(1)).sum())
            largest = max(largest, float(abs(ours - theirs).max()))
        line += f"; top-1 agreement with PyTorch {same / len(images):.2%}, max |diff| {largest:.2g}"
    console().print(line + "; " + _latency(session, input_shape))


def _export_int8(model, path: Path, input_shape, images) -> None:
    from ..export.agreement import int8_agreement
    from ..export.onnx import onnx_session
    from ..export.qdq import export_onnx_int8

    export_onnx_int8(model, path, input_shape)
    session = onnx_session(path)
    line = f"int8 ONNX: {path} ({path.stat().st_size:,} B)"
    if images is not None:  # below 99.9%: where the two first part, and why
        line += "; " + int8_agreement(model, path, images).describe()
    console().print(line + "; " + _latency(session, input_shape))


def _export_c(model, args, input_shape, images) -> None:
    from ..export.c import build_and_run, export_c, flash_and_ram, quantize_input

    export = export_c(model, args.c, input_shape, name=args.name, storage=args.c_storage)
    console().print(export.describe())
    with tempfile.TemporaryDirectory() as work:
        sizes = flash_and_ram(export, work)
        console().print(
            f"gcc -O2: flash {sizes['flash_bytes']:,} B (code + weights), "
            f"RAM {sizes['ram_bytes']:,} B"
        )
        if images is not None:
            inputs = np.concatenate([quantize_input(x, export) for x in images])
            logits = build_and_run(export, inputs, work)
            integer = IntegerModel(model)
            expected = torch.cat([integer.run(x).integers for x in images]).numpy()
            same = int((logits == expected).all(axis=1).sum())
            console().print(f"C logits bit-identical to the integer path on {same}/{len(images)}")


def _latency(session, input_shape) -> str:
    times = []
    for batch in (1, 64):
        x = np.zeros((batch, *input_shape), dtype=np.float32)
        feed = {session.get_inputs()[0].name: x}
        session.run(None, feed)
        runs = []
        for _ in range(20):
            start = time.perf_counter()
            session.run(None, feed)
            runs.append(time.perf_counter() - start)
        times.append(f"{1000 * statistics.median(runs):.3f} ms @{batch}")
    return "ONNX Runtime " + ", ".join(times)
