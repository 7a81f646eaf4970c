"""The `netshrink` command line. A user's mistake prints one line and exits 2, never a traceback."""

import argparse
import json
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch

from .. import terminal
from ..baseline import train_model
from ..checkpoint import save_checkpoint
from ..codec import packed_bytes
from ..data import load_data
from ..device import DEVICE_NAMES, resolve_device
from ..errors import ConfigError, Error
from ..files import directory_lock, os_error_line
from ..measure import dense_bytes, measure, simulates_arithmetic
from ..models import ModelSpec
from ..pipeline import run_recipe
from ..recipe import load_recipe, trial_recipe
from ..report import (
    WIDE_COLUMNS,
    console,
    measurements_json,
    measurements_markdown,
    print_measurements,
    render_report,
)
from ..train import FitConfig, close_distributed, evaluate, is_main_process
from . import apply, codec, export, prune, quant, share, sweep, train_side
from .common import (
    DefaultsHelpFormatter,
    add_allow_import,
    add_checkpoint_args,
    add_data_args,
    add_device_arg,
    data_config,
    load_for_command,
    make_config,
    positive_int,
    unset_default,
)

DESCRIPTION = """\
netshrink compresses convolutional image classifiers for embedded devices.

Start with `netshrink demo` (Deep Compression of a LeNet-5 on Fashion-MNIST), run a recipe of your
own with `netshrink run recipe.yaml` (see recipes/), or one method at a time: `netshrink train`,
`prune`, `share`, `quantize`, `pack`, ... each with --help.
Data: fashion-mnist | digits | mnist:DIR | cifar10:DIR | folder:DIR | a directory to detect.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `netshrink` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    terminal.WIDE_TABLES = args.wide
    failed = True
    try:
        args.run(args)
        failed = False
    except Error as exc:
        print(f"netshrink: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only folder, -o naming a directory: not a bug
        print(f"netshrink: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("netshrink: interrupted", file=sys.stderr)
        return 130
    finally:
        close_distributed(wait=not failed)  # under torchrun: no rank exits while others talk
    return 0


def _version() -> str:
    try:
        return metadata.version("netshrink")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netshrink",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"netshrink {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a model and save a checkpoint",
        description="Train a zoo model (or a user's factory) and save a "
        "safetensors checkpoint with a JSON sidecar.",
    )
    train.add_argument(
        "--model",
        default="lenet5",
        help="zoo name, e.g. lenet5 or "
        "'vgg_small(width=0.5)', or an import path package.module:factory",
    )
    train.add_argument(
        "--model-args",
        default=None,
        metavar="JSON",
        help="extra keyword arguments for the model, as a JSON object",
    )
    add_data_args(train)
    add_device_arg(train)
    _add_fit_args(train)
    train.add_argument(
        "--out",
        type=Path,
        default=None,
        help="checkpoint path without suffix (default: runs/MODEL); an interrupted "
        "run with the same settings resumes from OUT.train-state",
    )
    train.add_argument("--json", action="store_true", help="print the metrics as JSON")
    train.set_defaults(run=run_train)

    ev = commands.add_parser(
        "evaluate",
        help="top-1 / top-5 accuracy of a checkpoint",
        description="Evaluate a checkpoint on its data set's test split (or on --data).",
    )
    add_checkpoint_args(ev)
    ev.add_argument("--split", choices=("test", "val", "train"), default="test")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.set_defaults(run=run_evaluate)

    me = commands.add_parser(
        "measure",
        help="accuracy, size, MACs and latency of a checkpoint",
        description="Measure a checkpoint: accuracy, parameters, bytes, MACs "
        "(dense and sparse) and latency at batch 1 and 64.",
    )
    add_checkpoint_args(me)
    me.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    me.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    me.set_defaults(run=run_measure)

    demo = commands.add_parser(
        "demo",
        help="the end-to-end demo (make demo runs this)",
        description="Run recipes/deep-compression-lenet5.yaml: a LeNet-5 baseline on "
        "Fashion-MNIST (trained once, then cached), pruned, shared and packed into one file, "
        "with the stage table and the report in --out.",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory")
    demo.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="baseline cache directory (default: $NETSHRINK_CACHE or ~/.cache/netshrink)",
    )
    demo.set_defaults(run=run_demo)

    run = commands.add_parser(
        "run",
        help="run a recipe: baseline, stages, one packed file and a report (resumable)",
        description="Run a recipe (YAML; see recipes/): the baseline, each stage measured and "
        "saved, the packed .nsk file and report.md / report.json / plots in --out. Run it "
        "again after an interruption and it resumes after the last finished stage.",
    )
    run.add_argument("recipe", type=Path, help="recipe file (.yaml)")
    run.add_argument("--out", type=Path, help="run directory (default runs/<recipe name>)")
    run.add_argument("--restart", action="store_true", help="forget an earlier run in --out")
    run.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    run.add_argument("--cache", type=Path, help="baseline cache (default ~/.cache/netshrink)")
    run.add_argument(
        "--device",
        default=None,
        help=f"where to compute: {DEVICE_NAMES} (default: the recipe's device:, auto)",
    )
    run.add_argument(
        "--limit", type=positive_int, help="try it quickly: at most N examples of each split"
    )
    run.add_argument(
        "--epochs", type=positive_int, help="try it quickly: every training at most N epochs"
    )
    run.set_defaults(run=run_recipe_command)

    report = commands.add_parser(
        "report",
        help="re-render a run's report.md and plots from its files",
        description="Re-render report.md and the PNG plots of a run directory from its "
        "report.json and model.nsk.",
    )
    report.add_argument("directory", type=Path, help="a run directory (netshrink run --out)")
    report.set_defaults(run=run_report)

    for family in (apply, prune, share, quant, train_side, export, codec, sweep):
        family.add_commands(commands)
    for command in commands.choices.values():
        add_allow_import(command)
        command.add_argument(
            "--threads",
            type=positive_int,
            help="torch threads, latency included (default: the cores)",
        )
        command.add_argument(
            "--wide",
            action="store_true",
            help="stage tables with every column on a terminal narrower than "
            f"{WIDE_COLUMNS} (files and pipes get them all)",
        )
        command.formatter_class = DefaultsHelpFormatter
        for action in command._actions:  # argparse prints no help line for help=None
            if action.help is None and action.option_strings and not unset_default(action.default):
                action.help = "default: %(default)s"
    return parser


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    defaults = FitConfig()
    g.add_argument("--epochs", type=int, default=defaults.epochs)
    g.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    g.add_argument("--optimizer", choices=("sgd", "adam"), default=defaults.optimizer)
    g.add_argument("--momentum", type=float, default=defaults.momentum)
    g.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    g.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="global batch size (split over processes under torchrun)",
    )
    g.add_argument("--schedule", choices=("cosine", "constant"), default=defaults.schedule)
    g.add_argument(
        "--warmup-epochs",
        type=float,
        default=defaults.warmup_epochs,
        help="linear learning-rate warm-up before the schedule (a network without batch norm "
        "at a high rate from scratch)",
    )
    g.add_argument(
        "--clip-grad-norm",
        type=float,
        default=defaults.clip_grad_norm,
        help="rescale each step's gradient to at most this L2 norm (default: no clipping)",
    )
    g.add_argument("--seed", type=int, default=defaults.seed)
    g.add_argument(
        "--mixed-precision",
        action="store_true",
        help="train in bfloat16 / float16 on CUDA (weights stay float32)",
    )
    g.add_argument("--crop-padding", type=int, default=0, help="augment: random crop after padding")
    g.add_argument("--hflip", action="store_true", help="augment: random horizontal flips")


def run_train(args) -> None:
    device = resolve_device(args.device)  # before any work: a missing GPU is a one-line error
    spec = ModelSpec.parse(args.model, args.model_args)
    data = load_data(
        data_config(
            args, crop_padding=args.crop_padding or None, hflip=args.hflip or None, seed=args.seed
        )
    )
    config = make_config(
        FitConfig,
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        clip_grad_norm=args.clip_grad_norm,
        mixed_precision=args.mixed_precision or None,
        seed=args.seed,
    )
    out = args.out or Path("runs") / spec.name.replace(":", "-")
    model, meta = train_model(
        spec,
        data,
        config,
        device=device,
        resume=out.with_name(out.name + ".train-state"),
        allow_import=[*args.allow_import, spec.name] if ":" in spec.name else args.allow_import,
    )
    if not is_main_process():
        return
    out = save_checkpoint(model, out, meta)
    if args.json:
        print(json.dumps({"checkpoint": str(out), **meta.metrics}, sort_keys=True))
    else:
        print(
            f"checkpoint {out}.safetensors: test top-1 {meta.metrics['test_top1']:.2%}, "
            f"top-5 {meta.metrics['test_top5']:.2%}"
        )


def run_evaluate(args) -> None:
    model, _, data = load_for_command(args)
    result = evaluate(model, data.loader(args.split, args.batch_size), progress=True)
    if args.json:
        print(json.dumps(result.__dict__, sort_keys=True))
    else:
        print(
            f"{args.split}: top-1 {result.top1:.2%}  top-5 {result.top5:.2%}  "
            f"loss {result.loss:.4f}  ({result.count} examples)"
        )


def run_measure(args) -> None:
    model, meta, data = load_for_command(args)
    row = measure(
        model,
        stage=meta.model.name,
        input_shape=data.input_shape,
        test=data.loader("test", args.batch_size),
        size_bytes=len(packed_bytes(model, meta=meta)),  # what `netshrink pack` writes for it
        baseline_bytes=dense_bytes(model),
        latency=not args.no_latency,
        threads=args.threads,
    )
    if args.format == "json":
        print(measurements_json([row]), end="")
    elif args.format == "markdown":
        print(measurements_markdown([row]), end="")
    else:
        print_measurements([row], title=str(args.checkpoint))
        if simulates_arithmetic(model) and not args.no_latency:
            console().print(
                "latency: not measured in PyTorch, where this fixed-point model only simulates "
                f"its integer arithmetic; `netshrink export {args.checkpoint} --c DIR --int8 "
                "FILE` measures the code a device runs (images/s at batch 1, flash, RAM)"
            )


DEMO_RECIPE = "deep-compression-lenet5.yaml"


def run_demo(args) -> None:
    for folder in (Path("recipes"), Path(__file__).resolve().parents[3] / "recipes"):
        if (folder / DEMO_RECIPE).is_file():
            args.recipe, args.restart, args.no_latency = folder / DEMO_RECIPE, False, False
            return run_recipe_command(args)
    raise ConfigError(f"recipes/{DEMO_RECIPE} not found: run the demo from the repository root")


def run_recipe_command(args) -> None:
    recipe = load_recipe(args.recipe)
    trying = getattr(args, "limit", None) or getattr(args, "epochs", None)
    if trying:  # a cut-down run goes to its own folder, never into the real run's
        recipe = trial_recipe(recipe, limit=args.limit, epochs=args.epochs)
    out = args.out or Path("runs") / (recipe.name + ("-trial" if trying else ""))
    try:
        run_recipe(
            recipe,
            out,
            recipe_text=None if trying else args.recipe.read_text(),
            cache_dir=args.cache,
            latency=not args.no_latency,
            allow_import=args.allow_import,
            restart=args.restart,
            device=getattr(args, "device", None),
        )
    except KeyboardInterrupt:
        print(f"interrupted: `netshrink run {args.recipe} --out {out}` resumes it", file=sys.stderr)
        raise


def run_report(args) -> None:
    if not args.directory.is_dir():
        raise ConfigError(f"{args.directory}: no such run directory")
    with directory_lock(args.directory):  # not while a run is writing its report
        written = render_report(args.directory, allow_import=args.allow_import)
    for path in written:
        print(path)
