"""`netshrink apply`: any method of netshrink.methods on a checkpoint, with the fields a recipe's
stage would give it; and what every one-method command shares.

    netshrink apply CHECKPOINT share_kmeans --set config.bits=4 --set finetune.epochs=1 --out OUT
    netshrink apply CHECKPOINT prune_magnitude --set config.threshold="{kind: std, ratio: 1.5}" ...

`--set PATH=VALUE` sets one field of the stage by its dotted path in a recipe's stage entry; the
value is read as YAML (`4`, `0.5`, `[conv1, fc1]`, `{kind: std, ratio: 1.5}`). The family commands
(`prune`, `share`, `quantize`, `qat`, `distill`, `compressive`) are the same thing with named flags:
each declares a table of its flags and the stage fields they set (`Flag`), and runs the stages it
builds through `run_stages`, as `netshrink run` does with a recipe's.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from torch import nn

from ..checkpoint import CheckpointMeta, has_codebook, restore_shared, save_checkpoint
from ..data import DataSplits
from ..errors import ConfigError
from ..layers import copy_model, select_layers
from ..mask import restore_masks
from ..measure import dense_bytes
from ..methods import METHOD_NAMES, parse_stage, plan_stages, run_stage, stage_class
from ..recipe import set_field
from ..report import print_measurements
from ..share.codebooks import VectorCodebook
from ..stage import Stage, StageContext, with_seed
from ..train import FitConfig
from .common import (
    add_checkpoint_args,
    load_for_command,
    measure_stage,
    refuse_overwriting_checkpoint,
)


@dataclass(frozen=True)
class Flag:
    """A family command's option and the stage field it sets (a dotted path in a recipe's stage
    entry). `parse` turns the option's text into the value, or into several fields at once
    (returning a dict of path -> value). Options have no defaults of their own: an option not
    given leaves the field to the method's config, the one place its default lives."""

    option: str
    path: str
    help: str
    type: Callable[[str], Any] = float
    choices: Sequence[str] | None = None
    parse: Callable[[Any], dict[str, Any]] | None = None

    def add_to(self, parser, default: str | None = None) -> None:
        """Add the option; `default` is what help says the method uses when it is not given."""
        said = default is None or "default" in self.help
        text = self.help if said else f"{self.help} (default: {default})"
        if self.type is bool:
            parser.add_argument(self.option, action="store_true", default=None, help=text)
            return
        parser.add_argument(self.option, type=self.type, choices=self.choices, help=text)

    @property
    def dest(self) -> str:
        return self.option.removeprefix("--").replace("-", "_")

    def under(self, prefix: str) -> "Flag":
        """This flag for the same field one group down (`weights` -> `config.quant.weights`)."""
        parse = self.parse and (lambda v: {f"{prefix}.{k}": x for k, x in self.parse(v).items()})
        return replace(self, path=self.path and f"{prefix}.{self.path}", parse=parse)

    def fields(self, args) -> dict[str, Any]:
        """{path: value} for this option as given on the command line; {} when it was not."""
        value = getattr(args, self.dest, None)
        if value is None:
            return {}
        return self.parse(value) if self.parse else {self.path: value}


def add_flags(parser, flags: Sequence[Flag], uses: Sequence[tuple[str, str, Flag]] = ()) -> None:
    """Add each option once. `uses` lists (label, method, flag with its full stage path) for
    every method the command can run: help shows the default each method's config gives."""
    seen = set()
    for flag in flags:
        if flag.option not in seen:
            found = [
                (label, field_default(m, f.path)) for label, m, f in uses if f.option == flag.option
            ]
            flag.add_to(parser, default_note(found))
            seen.add(flag.option)


def field_default(method: str, path: str) -> Any:
    """The default of the field at dotted `path` of `method`'s stage (through the defaults of
    the configs above it), or MISSING when it has none (required, or one of several kinds)."""
    node: Any = stage_class(method)
    for part in path.split("."):
        if isinstance(node, BaseModel):
            node = getattr(node, part, MISSING)
        elif isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            info = node.model_fields[part]
            default = info.get_default(call_default_factory=True)
            node = info.annotation if default is PydanticUndefined else default
        else:
            return MISSING
    return MISSING if isinstance(node, (type, BaseModel)) or node is MISSING else node


MISSING = object()


def default_note(found: Sequence[tuple[str, Any]]) -> str | None:
    """`8`, or `pq 256, rq 16` where the methods differ; None when none has a default."""
    found = [(label, value) for label, value in found if value not in (MISSING, None)]
    values = {repr(value) for _, value in found}
    if not found:
        return None
    if len(values) == 1:
        return _shown(found[0][1])
    return ", ".join(f"{label} {_shown(value)}" for label, value in found)


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def stage_dict(method: str, values: dict[str, Any]) -> dict[str, Any]:
    """A recipe stage entry from dotted paths: {"config.bits": 4} -> {"config": {"bits": 4}}."""
    fields: dict[str, Any] = {"method": method}
    for path, value in values.items():
        set_field(fields, path, value)
    return fields


def refuse_other_flags(args, used: Sequence[Flag], every: Sequence[Flag]) -> None:
    """A ConfigError for a flag given that `--method` does not read (never ignored silently)."""
    used_options = {flag.option for flag in used}
    for flag in every:
        if flag.option not in used_options and flag.fields(args):
            raise ConfigError(f"--method {args.method} takes no {flag.option}")


# The options of add_stage_options, by the stage field each sets: what errors call those fields.
STAGE_OPTIONS = {
    "layers": "--layers",
    "finetune.epochs": "--finetune-epochs",
    "finetune.lr": "--finetune-lr",
}


def flag_stage(method: str, flags: Sequence[Flag], args, **fixed) -> Stage:
    """The stage `method` with the fields `flags` set from `args` (and `fixed` paths); a value
    the method refuses is a ConfigError naming the flag that gave it."""
    values, names = dict(fixed), dict(STAGE_OPTIONS)
    for flag in flags:
        given = flag.fields(args)
        values.update(given)
        names.update({path: flag.option for path in (flag.path, *given) if path})
    fields = stage_dict(method, values)
    if "config" in stage_class(method).model_fields:  # no flag given: the config's own defaults
        fields.setdefault("config", {})
    return parse_stage(fields, names)


def add_stage_options(p, *, finetune: bool = True) -> None:
    """What every one-method command has besides the method's own flags."""
    add_checkpoint_args(p)
    p.add_argument(
        "--layers",
        type=lambda s: [n for n in s.split(",") if n],
        help="comma-separated layer names (default: every conv and linear layer)",
    )
    if finetune:
        p.add_argument(
            "--finetune-epochs", type=int, help="epochs of training after the method (default 0)"
        )
        p.add_argument(
            "--finetune-lr",
            type=float,
            help="fine-tuning learning rate (default: the checkpoint's / the method's divisor)",
        )
    p.add_argument("--seed", type=int, default=0, help="fills every seed the method leaves unset")
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--out", type=Path, required=True, help="output checkpoint path (no suffix)")


def stage_options(args, *, finetune: bool = True) -> dict[str, Any]:
    """{path: value} of the options `add_stage_options` adds, as given."""
    given = {"layers": args.layers}
    if finetune:
        given |= {"finetune.epochs": args.finetune_epochs, "finetune.lr": args.finetune_lr}
    return {path: value for path, value in given.items() if value is not None}


@dataclass
class StageInput:
    """What a one-method command runs its stages on: the model, its sidecar, the data and the
    stage context (whose `baseline` is the "before" row: the checkpoint as given, or distill's
    teacher)."""

    model: nn.Module
    meta: CheckpointMeta
    data: DataSplits
    ctx: StageContext
    before: str = "before"


def checkpoint_input(args) -> StageInput:
    """The command's checkpoint as the model and as the baseline (its training settings, the
    teacher of soft targets), as `netshrink run` treats a recipe's baseline."""
    refuse_overwriting_checkpoint(args.out, args.checkpoint)
    model, meta, data = load_for_command(args)
    restore_shared(model, meta.shared, where=str(args.checkpoint))  # before the masks: values
    # a checkpoint's zeros are pruned weights; a VectorCodebook (loaded back) has its own mask
    layers = [
        (n, m)
        for n, m in select_layers(model, scales=True)
        if not has_codebook(m, (VectorCodebook,))
    ]
    restore_masks(model, layers)
    return StageInput(
        model, meta, data, StageContext(data, copy_model(model), meta.fit or FitConfig())
    )


def run_stages(
    args,
    stages: Sequence[Stage],
    *,
    title: str,
    tables: Sequence[Callable] = (),
    given: StageInput | None = None,
    label: str | None = None,
) -> None:
    """Run `stages` on the command's input as a recipe would, measure before and after, save
    the result and print the tables: the body of every one-method command. The result's row
    is called `label` (default: `title`)."""
    given = given or checkpoint_input(args)
    model, data, ctx = given.model, given.data, given.ctx
    dense = dense_bytes(ctx.baseline)
    rows = [measure_stage(ctx.baseline, given.before, data, args, dense)]
    for stage in plan_stages(stages):
        model = run_stage(model, with_seed(stage, args.seed), ctx)
    rows.append(measure_stage(model, label or title, data, args, dense))
    metrics = {"test_top1": rows[-1].top1, "test_top5": rows[-1].top5}
    out = save_checkpoint(model, args.out, given.meta.model_copy(update={"metrics": metrics}))
    for table in tables:
        table(model, ctx, data, args)
    print_measurements(rows, title=f"{title}: {out}")


def parse_setting(text: str) -> tuple[str, Any]:
    """`PATH=VALUE` of --set: a dotted field path and a YAML value."""
    path, sep, value = text.partition("=")
    if not sep or not path or any(not part.isidentifier() for part in path.split(".")):
        raise ConfigError(f"--set {text!r}: give PATH=VALUE, e.g. config.bits=4")
    try:
        return path, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not YAML ({exc.problem})") from None


def settings_stage(method: str, settings: Sequence[str], layers=None) -> Stage:
    """The stage `netshrink apply METHOD --set ...` describes."""
    values = dict(parse_setting(text) for text in settings)
    if layers is not None:
        values["layers"] = layers
    return parse_stage(stage_dict(method, values))


def add_commands(commands) -> None:
    """Register `apply` on the top-level sub-command parser."""
    p = commands.add_parser(
        "apply",
        help="apply any method to a checkpoint, with the fields of a recipe stage",
        description="Apply one method (a recipe stage's `method`) to a checkpoint and save the "
        "result. --set PATH=VALUE sets a field of the stage as a recipe would "
        "(config.bits=4, finetune.epochs=1, config.threshold='{kind: std, ratio: 1.5}'); "
        "the defaults are the method's own. Methods: " + ", ".join(METHOD_NAMES) + ".",
    )
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="a field of the stage (repeatable)",
    )
    add_stage_options(p, finetune=False)  # the checkpoint first: apply CHECKPOINT METHOD
    p.add_argument("method", choices=METHOD_NAMES, metavar="METHOD")
    p.set_defaults(run=run_apply, build=build_apply)


def build_apply(args) -> list[Stage]:
    return [settings_stage(args.method, args.settings, args.layers)]


def run_apply(args) -> None:
    run_stages(args, build_apply(args), title=args.method)
