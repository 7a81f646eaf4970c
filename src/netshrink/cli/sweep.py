"""`netshrink sweep`: one setting of a recipe chosen on the validation split (netshrink.sweep).

    netshrink sweep recipe.yaml --stage share --field finetune.lr --values null 0.001 0.02 \
        --seeds 0 1 2 [--until fixed] [--out runs/NAME-sweep]
"""

import sys
from pathlib import Path

import yaml
from rich.table import Table

from ..device import DEVICE_NAMES
from ..errors import ConfigError
from ..recipe import load_recipe
from ..sweep import Sweep
from ..terminal import console

SHOWN = (
    "value",
    "in recipe",
    "val top-1",
    "val loss pt",
    "loss spread",
    "bytes",
    "ratio",
    "within budget",
)


def yaml_value(text: str):
    """A value of --values: YAML (`0.02`, `null`, `{bits: 4}`)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--values {text!r}: not YAML ({exc.problem})") from None


def add_commands(commands) -> None:
    """Register `sweep` on the top-level sub-command parser."""
    p = commands.add_parser(
        "sweep",
        help="choose a recipe's setting on the validation split: one field, several values, seeds",
        description="Run the recipe up to --stage (or --until a later stage) once per value of "
        "the stage's --field and per seed, and table each value's validation top-1, its loss "
        "against the baseline (median and spread over the seeds), the bytes its model packs "
        "to and their compression ratio. The stages before --stage are trained once a seed and "
        "reused; budgets are lifted; the test split is not read. Rows go to OUT/sweep.json.",
    )
    p.add_argument("recipe", type=Path, help="recipe file (.yaml)")
    p.add_argument("--stage", required=True, help="the swept stage's name in the recipe")
    p.add_argument("--field", required=True, metavar="PATH", help="e.g. finetune.lr, config.bits")
    p.add_argument("--values", required=True, nargs="+", type=str, metavar="YAML",
                   help="values of the field (null: the method's default)")  # fmt: skip
    p.add_argument("--until", metavar="STAGE", help="measure after this later stage")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, help="runs and sweep.json (default runs/<name>-sweep)")
    p.add_argument("--cache", type=Path, help="baseline cache (default ~/.cache/netshrink)")
    p.add_argument("--device", default=None,
                   help=f"where to compute: {DEVICE_NAMES} (default: the recipe's device:, auto)")  # fmt: skip
    p.set_defaults(run=run_sweep)


def run_sweep(args) -> None:
    values = [yaml_value(text) for text in args.values]
    recipe = load_recipe(args.recipe)
    sweep = Sweep(recipe, args.stage, args.field, args.until)
    out = args.out or Path("runs") / f"{recipe.name}-sweep"
    try:
        rows = sweep.run(values, args.seeds, out, cache_dir=args.cache,
                         allow_import=args.allow_import, device=args.device)  # fmt: skip
    except KeyboardInterrupt:
        print(f"interrupted: the same command reuses the stages finished in {out}", file=sys.stderr)
        raise
    table = Table(title=f"{recipe.name}: {args.stage} {args.field}, measured after "
                  f"{sweep.measured} (validation, {len(args.seeds)} seeds)")  # fmt: skip
    for column in SHOWN:
        table.add_column(column)
    for row in rows:
        table.add_row(*("-" if row[c] is None else str(row[c]) for c in SHOWN))
    console().print(table)
    console().print(f"rows: {out / 'sweep.json'}")
