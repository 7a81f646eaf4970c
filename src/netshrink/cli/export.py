"""`netshrink export`: a checkpoint or .nsk file to ONNX (fp32, int8 QDQ) and to C99.

    netshrink export model.nsk --onnx model.onnx --int8 model.int8.onnx --c out/

Each output is checked on the model's test split when its data set is known (or --data given):
fp32 ONNX against PyTorch (top-1 agreement, largest logit difference), int8 ONNX against the
integer path (top-1 agreement; below 99.9%, the first quantizer where they differ and why:
netshrink.export.agreement), the C code compiled and run against the integer path (images
whose logits are identical bit for bit). --check N limits the images checked.
"""

from pathlib import Path
from typing import get_args

from ..checkpoint import checkpoint_paths, load_checkpoint
from ..codec.api import load_packed
from ..data import DataConfig, load_data
from ..deploy import (
    CheckImages,
    ExportConfig,
    c_artifact,
    int8_artifact,
    onnx_artifact,
    print_artifacts,
)
from ..errors import ConfigError
from ..export.c_program import STORAGE
from ..files import refuse_overwrite_input
from ..quant import is_quantized
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
    p.add_argument(
        "--int8-integers",
        choices=get_args(ExportConfig.model_fields["int8_integers"].annotation),
        default=ExportConfig().int8_integers,
        help="the int8 file's 8-bit type: uint8 at zero point 128, exact on every CPU (default), "
        "or int8, faster where ONNX Runtime has VNNI or ARM dot products but saturating on x86 "
        "CPUs without VNNI",
    )
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
    checks = _test_images(args, data_cfg)
    rows = []
    if args.onnx:
        rows.append(onnx_artifact(model, args.onnx, input_shape, checks))
    if args.int8:
        rows.append(int8_artifact(model, args.int8, input_shape, checks, args.int8_integers))
    if args.c:
        row = c_artifact(model, args.c, input_shape, checks, args.c_storage, name=args.name)
        console().print(row.detail)
        rows.append(row)
    print_artifacts(rows, title=f"{args.model}: exported (batch 1, one core / thread)")


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


def _test_images(args, base: DataConfig | None) -> CheckImages | None:
    if base is None and args.data is None:
        console().print("no data set known: outputs are written unchecked (pass --data)")
        return None
    return CheckImages(load_data(data_config(args, base)), args.check)
