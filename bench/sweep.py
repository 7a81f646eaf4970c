"""Choose one setting of a recipe on the validation split: a stage field swept over values, seeds.

    python bench/sweep.py RECIPE --stage NAME --field PATH --values V [V ...] [--until LATER]
                          [--seeds 0 1 2] [--threads 1]

`netshrink sweep` (netshrink.sweep: what the fields mean, how the stages before NAME are trained
once a seed) run on a ready recipe and published: RECIPE is a recipes/ name (no .yaml) or a
recipe file; the runs live in $NETSHRINK_CACHE/sweep/RECIPE/seed-N/ID, so a later sweep of the
same recipe reuses its earlier stages and the values already run. One row a value: the
validation top-1 after the measured stage, its loss against the baseline's validation top-1
(medians over the seeds, the spread min - max), the bytes that stage's model packs to and their
compression ratio, and whether every seed stays within the recipe's budget for it. Only
validation numbers are shown: the test split is for the reports (bench/recipes.py,
bench/papers.py). Writes bench/results/sweep.json (a rerun replaces the rows of its recipe,
stage, field and measured stage) and its section of docs/benchmarks.md.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, merge_published, publish  # noqa: E402
from netshrink.baseline import default_cache_dir  # noqa: E402
from netshrink.errors import ConfigError  # noqa: E402
from netshrink.recipe import load_recipe  # noqa: E402
from netshrink.sweep import Sweep  # noqa: E402

COLUMNS = [
    "recipe",
    "stage",
    "field",
    "value",
    "in recipe",
    "measured after",
    "seeds",
    "val top-1 baseline",
    "val top-1",
    "val loss pt",
    "loss spread",
    "bytes",
    "ratio",
    "budget",
    "within budget",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a recipes/ name (no .yaml) or a recipe file")
    parser.add_argument("--stage", required=True, help="the stage's name in the recipe")
    parser.add_argument("--field", required=True, metavar="PATH", help="e.g. finetune.lr")
    parser.add_argument("--until", metavar="NAME", help="measure after this later stage")
    parser.add_argument("--values", required=True, nargs="+", type=yaml.safe_load)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(args.recipe)
    if not path.is_file():
        path = ROOT / "recipes" / f"{args.recipe}.yaml"
    if not path.is_file():
        parser.error(f"no recipe {args.recipe} (a recipes/ name or a YAML file)")
    recipe, start = load_recipe(path), time.perf_counter()
    try:
        sweep = Sweep(recipe, args.stage, args.field, args.until)
    except ConfigError as exc:
        parser.error(str(exc))
    directory = default_cache_dir() / "sweep" / recipe.name
    rows = sweep.run(args.values, args.seeds, directory)
    rows, earlier = merge_published(
        "sweep",
        rows,
        lambda row: (row["recipe"], row["stage"], row["field"], row["measured after"]),
        lambda part: part,
    )
    notes = (
        "Fashion-MNIST's validation split only. Each recipe run up to `measured after` with "
        "`field` of `stage` set to each value and the recipe's `seed` to each seed (the stages "
        "before `stage` trained once a seed and shared by every value); `val top-1`, `val loss "
        "pt` (against the baseline's validation top-1), `bytes` (what the measured stage's "
        "model packs to) and `ratio` (the dense fp32 bytes over them) are medians over the "
        "seeds, the loss spread min - max; `within budget`: every seed's loss within the "
        "recipe's budget for the measured stage. `in "
        "recipe`: the value the recipe ships. Per-seed values in bench/results/sweep.json. "
        f"Torch on {args.threads} thread(s); this run {time.perf_counter() - start:.0f} s."
        + earlier
    )
    publish("sweep", "Settings chosen on validation (bench/sweep.py)", rows, COLUMNS, notes)


if __name__ == "__main__":
    main()
