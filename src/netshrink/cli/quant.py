"""`netshrink quantize` and `netshrink qat`: the fixed-point family on the command line.

    netshrink quantize CHECKPOINT --weights 8 --activations 8 --calibrate kl --out OUT
    netshrink quantize CHECKPOINT --auto --budget 1.0 --out OUT
    netshrink qat CHECKPOINT --weights 4 --activations 4 --epochs 3 --out OUT

Each is a face of a method of netshrink.methods (quantize, search_bits, qat): its flags set that
stage's fields, and the stage runs as in a recipe. Each prints the stage table (the size column counts every weight at its bits), the per-layer
formats, and checks the integer path against the float model on the test split: the number of
images whose logits are identical, which should be all of them.
"""

import torch
from rich.table import Table

from ..errors import ConfigError
from ..quant.calibrate import CalibrationMethod
from ..quant.integer import IntegerModel
from ..quant.quantize import fixed_point_formats
from ..report import console
from ..stage import Stage
from .apply import Flag, add_flags, add_stage_options, flag_stage, run_stages


def layer_bits(text: str) -> dict[str, dict[str, int]]:
    """The field of a `--layer-bits conv1=8,fc3=6` value: {layer: bits}."""
    try:
        pairs = [item.split("=", 1) for item in text.split(",") if item]
        return {"layer_weights": {name: int(bits) for name, bits in pairs}}
    except ValueError:
        raise ConfigError(f"--layer-bits wants name=bits pairs, e.g. conv1=8,fc3=6, not {text!r}")


# The fixed-point formats: fields of a QuantConfig (quantize's config; qat's and the search's
# `config.quant`).
QUANT_FLAGS = (
    Flag("--weights", "weights", "weight bits", type=int),
    Flag("--activations", "activations", "activation bits", type=int),
    Flag("--bias", "bias", "bias bits", type=int),
    Flag("--accumulator", "accumulator", "accumulator bits", type=int),
    Flag(
        "--calibrate", "calibrate", "activation range: min-max, percentile, KL divergence or MSE",
        type=str, choices=CalibrationMethod.__args__,
    ),
    Flag("--calibration-images", "calibration_images", "training images", type=int),
    Flag(
        "--float-layers", "float_layers", "comma-separated layers left in float",
        type=lambda s: [n for n in s.split(",") if n],
    ),
    Flag(
        "--layer-bits", "layer_weights", "weight bits per layer, e.g. conv1=8,fc3=6",
        type=str, parse=layer_bits,
    ),
    Flag(
        "--ties", "ties", "rounding of halfway values: up (a device's shift) or even (as ONNX "
        "Runtime: the int8 ONNX file then agrees at ties)", type=str, choices=("up", "even"),
    ),
)  # fmt: skip


def _under(prefix: str, flags) -> list[Flag]:
    return [flag.under(prefix) for flag in flags]


# search_bits (quantize --auto): its budget, and the formats it starts from.
SEARCH_FLAGS = [
    Flag("--budget", "config.budget", "--auto: top-1 points it may lose (validation)"),
    *_under("config.quant", QUANT_FLAGS),
]
QAT_FLAGS = [
    Flag("--epochs", "config.fit.epochs", "epochs of training", type=int),
    Flag("--lr", "config.fit.lr", "learning rate"),
    *_under("config.quant", QUANT_FLAGS),
]


def add_commands(commands) -> None:
    """Register `quantize` and `qat` on the top-level sub-command parser."""
    p = commands.add_parser(
        "quantize",
        help="dynamic fixed point after training: weights, activations, automatic bit widths",
        description="Fold batch norm, calibrate activation ranges and put weights, biases and "
        "activations on dynamic fixed-point grids (Ristretto; Al-Hami et al.; Kim et al.). "
        "--auto searches per-layer bit widths within an accuracy budget. Defaults are the "
        "methods' own (quantize, search_bits; netshrink apply METHOD sets any field).",
    )
    uses = [("quantize", "quantize", f) for f in _under("config", QUANT_FLAGS)]
    uses += [("--auto", "search_bits", f) for f in SEARCH_FLAGS]
    add_flags(p, [*QUANT_FLAGS, SEARCH_FLAGS[0]], uses)
    p.add_argument(
        "--auto", action="store_true", help="search per-layer bit widths within --budget"
    )
    add_stage_options(p, finetune=False)
    p.set_defaults(run=run_quantize, build=build_quantize)
    p = commands.add_parser(
        "qat",
        help="quantization-aware training at given bit widths",
        description="Quantize, then train through the rounding with a straight-through "
        "estimator; weight fractional lengths are re-derived at each epoch. Defaults are the "
        "method's own (netshrink apply qat sets any field).",
    )
    add_flags(p, QAT_FLAGS, [("", "qat", f) for f in QAT_FLAGS])
    add_stage_options(p, finetune=False)
    p.set_defaults(run=run_qat, build=build_qat)


def build_quantize(args) -> list[Stage]:
    """The stage `quantize` describes: quantize, or search_bits with --auto."""
    if args.budget is not None and not args.auto:
        raise ConfigError("--budget is for --auto")
    if args.auto:
        return [flag_stage("search_bits", SEARCH_FLAGS, args, **_layers(args))]
    return [flag_stage("quantize", _under("config", QUANT_FLAGS), args, **_layers(args))]


def build_qat(args) -> list[Stage]:
    """The stage `qat` describes."""
    return [flag_stage("qat", QAT_FLAGS, args, **_layers(args))]


def _layers(args) -> dict:
    if args.layers is not None:  # the fixed-point family converts the whole graph
        raise ConfigError("the fixed-point methods take no --layers: use --float-layers")
    return {}


def run_quantize(args) -> None:
    stage = build_quantize(args)[0]
    title = "auto bits" if stage.method == "search_bits" else f"fixed point {_bits(stage.config)}"
    run_stages(args, [stage], title=title, tables=[_print_formats])


def run_qat(args) -> None:
    stage = build_qat(args)[0]
    run_stages(args, [stage], title=f"QAT {_bits(stage.config.quant)}", tables=[_print_formats])


def _bits(config) -> str:
    return f"w{config.weights}/a{config.activations}"


def _print_formats(qmodel, ctx, data, args) -> None:
    console().print(format_table(qmodel))
    same, total = integer_agreement(qmodel, data.loader("test", args.batch_size))
    console().print(f"integer path: identical logits on {same}/{total} test images")


@torch.no_grad()
def integer_agreement(qmodel, loader) -> tuple[int, int]:
    """(images whose integer-path logits equal the float model's exactly, images)."""
    integer = IntegerModel(qmodel)
    same = total = 0
    for x, _ in loader:
        same += int((integer.run(x).logits == qmodel(x).double()).all(dim=1).sum())
        total += len(x)
    return same, total


def format_table(model) -> Table:
    """Each quantized layer's weight, bias and output formats (bits.frac; u: unsigned)."""
    formats = fixed_point_formats(model)
    table = Table(title="fixed-point formats (bits.frac)")
    for column in ("layer", "weights", "bias", "output"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for name, spec in formats.weights.items():
        bias = formats.biases.get(name)
        out = formats.activations.get(name.replace(".", "_") + "_quant")  # plan.py's naming
        table.add_row(
            name,
            _text(spec),
            _text(bias) if bias else "-",
            _text(out) if out else "accumulator",
        )
    for name in formats.float_layers:
        table.add_row(name, "float", "float", "-")
    return table


def _text(spec) -> str:
    return f"{'' if spec.signed else 'u'}{spec.bits}.{spec.frac}"
