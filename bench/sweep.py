"""Choose one setting of a recipe on the validation split: a stage field swept over values, seeds.

    python bench/sweep.py RECIPE --stage NAME --field PATH --values V [V ...] [--seeds 0 1 2]

The recipe (recipes/RECIPE.yaml, or a YAML file's path) runs up to and including stage NAME with the stage's PATH (a
dotted field of its entry, as `netshrink apply --set` names it: `finetune.lr`, `config.bits`,
`budget`) set to each value (read as YAML; `null` is the method's default), and with each seed as the recipe's `seed`. Each seed
runs in its own folder under the cache (~/.cache/netshrink/sweep/RECIPE/seed-N), so the stages
before NAME are trained once and every value starts from the same model (the pipeline resumes
them); a later sweep of the same recipe reuses them too. Budgets are lifted for the sweep (a value
past the stage's budget is a row that says so, not a stopped run); the export is off.

One row a value: the validation top-1 after stage NAME and its loss against the baseline's
validation top-1, medians over the seeds with the spread, and whether every seed stays within the
recipe's budget for that stage. Only validation numbers are shown: the test split is for the
report (bench/recipes.py, bench/papers.py). Writes bench/results/sweep.json (a rerun replaces the
rows of its recipe, stage and field) and its section of docs/benchmarks.md.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, merge_published, publish  # noqa: E402
from netshrink.baseline import default_cache_dir  # noqa: E402
from netshrink.pipeline import run_recipe  # noqa: E402
from netshrink.recipe import Recipe, load_recipe  # noqa: E402

COLUMNS = [
    "recipe",
    "stage",
    "field",
    "value",
    "in recipe",
    "seeds",
    "val top-1 baseline",
    "val top-1",
    "val loss pt",
    "loss spread",
    "budget",
    "within budget",
]


def swept_recipe(recipe: Recipe, stage: str, path: str, value, seed: int) -> Recipe:
    """`recipe` cut after `stage`, with `path` of that stage set to `value`, budgets lifted,
    nothing exported, seeded by `seed`."""
    fields = recipe.as_written()
    titles = [s.title for s in recipe.stages]
    stages = fields["stages"][: titles.index(stage) + 1]
    for entry in stages:
        entry.pop("budget", None)
    _set(stages[-1], path, value)
    fields.update(stages=stages, seed=seed, export={})
    return Recipe.model_validate(fields)


def _set(entry: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        entry = entry.setdefault(key, {})
        if not isinstance(entry, dict):
            raise SystemExit(f"--field {path}: {key} is not a mapping in the stage")
    if value is None:  # unset: the method's own default
        entry.pop(leaf, None)
    else:
        entry[leaf] = value


def current_value(recipe: Recipe, stage: str, path: str):
    """The value the recipe itself writes at `path` (None: unset, the method's default)."""
    titles = [s.title for s in recipe.stages]
    entry = recipe.as_written()["stages"][titles.index(stage)]
    for key in path.split("."):
        if not isinstance(entry, dict):
            return None
        entry = entry.get(key)
    return entry


def val_tops(recipe: Recipe, stage: str, directory: Path) -> tuple[float, float]:
    """(baseline's, stage's) validation top-1 of one seeded run, in percent."""
    result = run_recipe(recipe, directory, latency=False, progress=False)
    records = {record.name: record for record in result.stages}
    return 100 * result.stages[0].val_top1, 100 * records[stage].val_top1


def value_row(recipe: Recipe, stage: str, path: str, value, seeds: list[int]) -> dict:
    budget = next(s for s in recipe.stages if s.title == stage).budget
    bases, tops = [], []
    for seed in seeds:
        directory = default_cache_dir() / "sweep" / recipe.name / f"seed-{seed}"
        base, top = val_tops(swept_recipe(recipe, stage, path, value, seed), stage, directory)
        bases.append(base)
        tops.append(top)
        print(f"{recipe.name} {stage} {path}={value} seed {seed}: val {top:.2f}%", flush=True)
    losses = [round(b - t, 2) for b, t in zip(bases, tops, strict=True)]
    return {
        "recipe": recipe.name,
        "stage": stage,
        "field": path,
        "value": "default" if value is None else value,  # `null`: the method's own default
        "in recipe": value == current_value(recipe, stage, path),
        "seeds": len(seeds),
        "val top-1 baseline": round(statistics.median(bases), 2),
        "val top-1": round(statistics.median(tops), 2),
        "val loss pt": round(statistics.median(losses), 2),
        "loss spread": f"{min(losses):.2f} - {max(losses):.2f}",
        "budget": budget,
        "within budget": None if budget is None else all(loss <= budget for loss in losses),
        "val top-1 per seed": [round(top, 2) for top in tops],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a recipes/ name (no .yaml) or a recipe file")
    parser.add_argument("--stage", required=True, help="the stage's name in the recipe")
    parser.add_argument("--field", required=True, metavar="PATH", help="e.g. finetune.lr")
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
    titles = [stage.title for stage in recipe.stages]
    if args.stage not in titles:
        parser.error(f"{recipe.name} has no stage {args.stage!r}: its stages are {titles}")
    rows = [value_row(recipe, args.stage, args.field, v, args.seeds) for v in args.values]
    rows, earlier = merge_published(
        "sweep", rows, lambda row: (row["recipe"], row["stage"], row["field"]), lambda part: part
    )
    notes = (
        "Fashion-MNIST's validation split only. Each recipe run up to the stage with the field "
        "set to each value and the recipe's `seed` set to each seed (the stages before it "
        "trained once a seed and shared by every value); `val top-1` and `val loss pt` "
        "(against the baseline's validation top-1) are medians over the seeds, the spread "
        "min - max; `within budget`: every seed's loss within the recipe's budget for the stage. "
        "`in recipe`: the value the recipe ships. Per-seed values in bench/results/sweep.json. "
        f"Torch on {args.threads} thread(s); this run {time.perf_counter() - start:.0f} s."
        + earlier
    )
    publish("sweep", "Settings chosen on validation (bench/sweep.py)", rows, COLUMNS, notes)


if __name__ == "__main__":
    main()
