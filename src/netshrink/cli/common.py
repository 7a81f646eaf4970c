"""What every command shares: the one import rule, data and checkpoint options, loading a model
file for a command, building a config from flags, and the stage rows a command prints."""

import argparse
from pathlib import Path

from pydantic import BaseModel, ValidationError

from ..checkpoint import checkpoint_paths, load_checkpoint
from ..codec import load_packed_checkpoint, packed_bytes
from ..data import DataConfig, load_data
from ..device import DEVICE_NAMES, resolve_device
from ..errors import ConfigError
from ..files import refuse_overwrite_input
from ..measure import measure
from ..models.registry import allowed_imports
from ..train import FitConfig


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a thread count, say), else a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def import_path(text: str) -> str:
    """argparse type for --allow-import: an exact 'package.module:factory', else a usage error."""
    try:
        allowed_imports([text])
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--allow-import {text!r}: "))
    return text


def add_allow_import(p: argparse.ArgumentParser) -> None:
    """The one import rule of every command (netshrink.models.registry, docs/security.md)."""
    p.add_argument(
        "--allow-import",
        type=import_path,
        action="append",
        default=[],
        metavar="PACKAGE.MODULE:FACTORY",
        help="build models named by this exact import path, which runs its code (repeatable); "
        "without it a file, recipe or run directory may only name zoo models",
    )


def unset_default(default) -> bool:
    return default is None or default is False or default == [] or default == argparse.SUPPRESS


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every command's --help shows each option's default, unless it has none (None, off, an
    empty list) or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if unset_default(action.default) or not action.option_strings or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def add_data_args(p: argparse.ArgumentParser, default: str | None = "fashion-mnist") -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=default,
        help="data set: fashion-mnist, digits, mnist:DIR, "
        "cifar10:DIR, folder:DIR or a directory" + (f" (default {default})" if default else ""),
    )
    g.add_argument(
        "--limit", type=int, default=None, help="use at most N examples of each split (quick runs)"
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="fraction of the training file held out for validation (default 0.1)",
    )
    g.add_argument("--image-size", type=int, default=None, help="resize images to N x N")


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint", type=Path, help="checkpoint (.safetensors, .json or their stem) or .nsk file"
    )
    add_data_args(p, default=None)
    add_device_arg(p)
    p.add_argument("--batch-size", type=int, default=256)


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """`--device`: where a command trains, evaluates and calibrates (netshrink.device)."""
    p.add_argument(
        "--device",
        default="auto",
        help=f"where to compute: {DEVICE_NAMES}; auto is CUDA when present, else the CPU "
        "(default: auto)",
    )


def make_config(cls: type[BaseModel], **fields) -> BaseModel:
    """Build a config from CLI values, turning validation failures into one-line ConfigErrors."""
    try:
        return cls(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None


def data_config(args, base: DataConfig | None = None, **augment) -> DataConfig:
    fields = base.model_dump() if base else {}
    overrides = {
        "source": args.data,
        "limit": args.limit,
        "val_fraction": args.val_fraction,
        "image_size": args.image_size,
        **augment,
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return make_config(DataConfig, **fields)


def refuse_overwriting_checkpoint(out: Path, *inputs: str | Path) -> None:
    """ConfigError when the checkpoint a command writes (`--out`) is one that it reads."""
    refuse_overwrite_input(checkpoint_paths(out), [p for i in inputs for p in checkpoint_paths(i)])


def load_model_file(path: Path, allow_import) -> tuple:
    """(model, sidecar) of a checkpoint, or of a .nsk file (decoded; its header as the sidecar):
    every command that reads a model takes either."""
    if Path(path).suffix == ".nsk":
        return load_packed_checkpoint(path, allow_import=allow_import)
    return load_checkpoint(path, allow_import=allow_import)


def load_for_command(args):
    """(model on --device, its sidecar, its data, or --data's)."""
    device = resolve_device(args.device)  # before any work: a missing GPU is a one-line error
    model, meta = load_model_file(args.checkpoint, args.allow_import)
    model.to(device)
    if meta.data is None and args.data is None:
        raise ConfigError(f"{args.checkpoint} does not say its data set: pass --data")
    data = load_data(data_config(args, meta.data))
    if data.input_shape != tuple(meta.input_shape):
        raise ConfigError(
            f"data images are {data.input_shape} but the model expects "
            f"{tuple(meta.input_shape)}: pass --image-size or other data"
        )
    return model, meta, data


def retrain_config(
    meta, *, epochs: int, lr: float | None, lr_divisor: float, **fields
) -> FitConfig:
    """The checkpoint's own training settings for `epochs` more, at `lr` or its rate / divisor."""
    base = meta.fit or FitConfig()
    lr = lr or base.lr / lr_divisor
    return make_config(FitConfig, **{**base.model_dump(), "epochs": epochs, "lr": lr, **fields})


def measure_stage(model, stage: str, data, args, baseline_bytes: int | None = None):
    """A stage's row: accuracy on the test split, the bytes of the .nsk file `pack` would write
    for the model (default pack config), MACs, latency."""
    return measure(
        model,
        stage=stage,
        input_shape=data.input_shape,
        test=data.loader("test", args.batch_size),
        size_bytes=len(packed_bytes(model)),
        baseline_bytes=baseline_bytes,
        latency=not args.no_latency,
    )
