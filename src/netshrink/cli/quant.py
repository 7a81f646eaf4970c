"""`netshrink quantize` and `netshrink qat`: the fixed-point family on the command line.

    netshrink quantize CHECKPOINT --weights 8 --activations 8 --calibrate kl --out OUT
    netshrink quantize CHECKPOINT --auto --budget 1.0 --out OUT
    netshrink qat CHECKPOINT --weights 4 --activations 4 --epochs 3 --out OUT

Each prints the stage table (the size column counts every weight at its bits), the per-layer
formats, and checks the integer path against the float model on the test split: the number of
images whose logits are identical, which should be all of them.
"""

from pathlib import Path

import torch
from rich.table import Table

from ..checkpoint import save_checkpoint
from ..cli import (
    add_checkpoint_args,
    load_for_command,
    make_config,
    measure_stage,
    refuse_overwriting_checkpoint,
    retrain_config,
)
from ..errors import ConfigError
from ..measure import dense_bytes
from ..report import console, print_measurements
from .calibrate import CalibrationMethod
from .integer import IntegerModel
from .quantize import QuantConfig, fixed_point_formats, quantize

# QAT trains through rounding: steps far below the baseline's learning rate.
QAT_LR_DIVISOR = 10


def add_commands(commands) -> None:
    """Register `quantize` and `qat` on the top-level sub-command parser."""
    p = commands.add_parser(
        "quantize",
        help="dynamic fixed point after training: weights, activations, automatic bit widths",
        description="Fold batch norm, calibrate activation ranges and put weights, biases and "
        "activations on dynamic fixed-point grids (Ristretto; Al-Hami et al.; Kim et al.). "
        "--auto searches per-layer bit widths within an accuracy budget.",
    )
    _add_quant_args(p)
    p.add_argument(
        "--auto", action="store_true", help="search per-layer bit widths within --budget"
    )
    p.add_argument(
        "--budget", type=float, default=1.0, help="--auto: top-1 points it may lose (val split)"
    )
    p.set_defaults(run=run_quantize)
    p = commands.add_parser(
        "qat",
        help="quantization-aware training at given bit widths",
        description="Quantize, then train through the rounding with a straight-through "
        "estimator; weight fractional lengths are re-derived at each epoch.",
    )
    _add_quant_args(p, weights=4, activations=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, help=f"default: the baseline's / {QAT_LR_DIVISOR}")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run_qat)


def _add_quant_args(p, weights: int = 8, activations: int = 8) -> None:
    add_checkpoint_args(p)
    p.add_argument("--weights", type=int, default=weights, help="weight bits")
    p.add_argument("--activations", type=int, default=activations, help="activation bits")
    p.add_argument("--bias", type=int, help="bias bits (default 16)")
    p.add_argument("--accumulator", type=int, help="accumulator bits (default 32)")
    p.add_argument(
        "--calibrate",
        choices=CalibrationMethod.__args__,
        default="minmax",
        help="activation range: min-max, percentile, KL divergence or MSE",
    )
    p.add_argument("--calibration-images", type=int, help="training images (default 1024)")
    p.add_argument(
        "--float-layers",
        type=lambda s: tuple(n for n in s.split(",") if n),
        default=(),
        help="comma-separated layers left in float (partial quantization)",
    )
    p.add_argument(
        "--layer-bits",
        default="",
        help="weight bits per layer, e.g. conv1=8,fc3=6 (overrides --weights)",
    )
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--out", type=Path, required=True, help="output checkpoint path (no suffix)")


def quant_config(args) -> QuantConfig:
    """The QuantConfig the flags describe."""
    return make_config(
        QuantConfig,
        weights=args.weights,
        activations=args.activations,
        bias=args.bias,
        accumulator=args.accumulator,
        calibrate=args.calibrate,
        calibration_images=args.calibration_images,
        float_layers=args.float_layers,
        layer_weights=_layer_bits(args.layer_bits),
    )


def _layer_bits(text: str) -> dict[str, int]:
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    try:
        return {name: int(bits) for name, bits in pairs}
    except ValueError:
        raise ConfigError(f"--layer-bits wants name=bits pairs, e.g. conv1=8,fc3=6, not {text!r}")


def run_quantize(args) -> None:
    refuse_overwriting_checkpoint(args.out, args.checkpoint)
    model, meta, data = load_for_command(args)
    dense = dense_bytes(model)
    rows = [measure_stage(model, "float", data, args, dense)]
    config = quant_config(args)
    if args.auto:
        from .search import BitSearchConfig, search_bits

        search = make_config(BitSearchConfig, budget=args.budget, quant=config)
        result = search_bits(model, data, search, progress=True)
        qmodel, stage = result.model, f"auto ({args.budget} pt budget)"
        console().print(
            f"search: {result.evaluations} evaluations, mean weight bits "
            f"{result.mean_weight_bits:.2f}, loss {result.loss:.2f} pt on val"
        )
    else:
        qmodel = quantize(model, data, config)
        stage = f"fixed point w{args.weights}/a{args.activations}"
    _finish(qmodel, stage, rows, meta, data, args, dense)


def run_qat(args) -> None:
    from .qat import QatConfig, train_quantized

    refuse_overwriting_checkpoint(args.out, args.checkpoint)
    model, meta, data = load_for_command(args)
    dense = dense_bytes(model)
    rows = [measure_stage(model, "float", data, args, dense)]
    fit = retrain_config(
        meta, epochs=args.epochs, lr=args.lr, lr_divisor=QAT_LR_DIVISOR, seed=args.seed
    )
    qat = make_config(QatConfig, quant=quant_config(args), fit=fit)
    qmodel, _ = train_quantized(model, data, qat, progress=True)
    _finish(qmodel, f"QAT w{args.weights}/a{args.activations}", rows, meta, data, args, dense)


def _finish(qmodel, stage: str, rows, meta, data, args, dense: int) -> None:
    rows.append(measure_stage(qmodel, stage, data, args, dense))
    same, total = integer_agreement(qmodel, data.loader("test", args.batch_size))
    metrics = {"test_top1": rows[-1].top1, "test_top5": rows[-1].top5}
    out = save_checkpoint(qmodel, args.out, meta.model_copy(update={"metrics": metrics}))
    console().print(format_table(qmodel))
    print_measurements(rows, title=f"{stage}: {out}")
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
