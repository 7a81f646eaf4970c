"""Choose one setting of a recipe on the validation split: a stage field swept over values, seeds.

    python bench/sweep.py RECIPE --stage NAME --field PATH --values V [V ...] [--until LATER]
                          [--seeds 0 1 2] [--threads 1]

RECIPE is a recipes/ name (no .yaml) or a recipe file. Stage NAME's PATH (a dotted field of its
entry, as `netshrink apply --set` names it: `finetune.lr`, `config.bits`, `budget`) is set to
each value (read as YAML; `null` unsets it: the method's default), the recipe's `seed` to each
seed, and the recipe runs up to stage NAME, or to stage LATER after it (a pruning setting judged
by what the sharing after it makes of it). Each seed runs in its own folder under the cache
($NETSHRINK_CACHE/sweep/RECIPE/seed-N), so the stages before NAME are trained once and every value
starts from the same model (the pipeline resumes them), in this sweep and in later ones. Budgets
are lifted (a value past the budget is a row that says so, not a stopped run); nothing is
exported.

One row a value: the validation top-1 after the measured stage and its loss against the
baseline's validation top-1 (medians over the seeds, the spread min - max), the bytes that
stage's model packs to, and whether every seed stays within the recipe's budget for it. Only
validation numbers are shown: the test split is for the reports (bench/recipes.py,
bench/papers.py). Writes bench/results/sweep.json (a rerun replaces the rows of its recipe,
stage, field and measured stage) and its section of docs/benchmarks.md.
"""

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
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
    "measured after",
    "seeds",
    "val top-1 baseline",
    "val top-1",
    "val loss pt",
    "loss spread",
    "bytes",
    "budget",
    "within budget",
]


@dataclass(frozen=True)
class Sweep:
    """Stage `stage`'s field `path` swept; the run measured after stage `until` (the same stage
    or a later one: a pruning setting judged by the file the sharing after it makes)."""

    recipe: Recipe
    stage: str
    path: str
    until: str

    def index(self, title: str) -> int:
        return [s.title for s in self.recipe.stages].index(title)

    def run_recipe(self, value, seed: int) -> Recipe:
        """The recipe cut after `until`, with `path` set to `value`, budgets lifted, nothing
        exported, seeded by `seed`."""
        fields = self.recipe.as_written()
        stages = fields["stages"][: self.index(self.until) + 1]
        for entry in stages:
            entry.pop("budget", None)
        _set(stages[self.index(self.stage)], self.path, value)
        fields.update(stages=stages, seed=seed, export={})
        return Recipe.model_validate(fields)

    def current_value(self):
        """The value the recipe itself writes at `path` (None: unset, the method's default)."""
        entry = self.recipe.as_written()["stages"][self.index(self.stage)]
        for key in self.path.split("."):
            if not isinstance(entry, dict):
                return None
            entry = entry.get(key)
        return entry

    def measure(self, value, seed: int) -> tuple[float, float, int]:
        """(baseline's validation top-1 %, `until`'s, the bytes `until`'s model packs to)."""
        directory = default_cache_dir() / "sweep" / self.recipe.name / f"seed-{seed}"
        result = run_recipe(self.run_recipe(value, seed), directory, latency=False, progress=False)
        record = next(r for r in result.stages if r.name == self.until)
        return (
            100 * result.stages[0].val_top1,
            100 * record.val_top1,
            record.measurement["size_bytes"],
        )

    def row(self, value, seeds: list[int]) -> dict:
        budget = self.recipe.stages[self.index(self.until)].budget
        bases, tops, sizes = [], [], []
        for seed in seeds:
            base, top, size = self.measure(value, seed)
            bases.append(base)
            tops.append(top)
            sizes.append(size)
            print(f"{self.recipe.name} {self.path}={value} seed {seed}: {self.until} val "
                  f"{top:.2f}%, {size:,} B", flush=True)  # fmt: skip
        losses = [round(b - t, 2) for b, t in zip(bases, tops, strict=True)]
        return {
            "recipe": self.recipe.name,
            "stage": self.stage,
            "field": self.path,
            "value": "default" if value is None else value,  # `null`: the method's own default
            "in recipe": value == self.current_value(),
            "measured after": self.until,
            "seeds": len(seeds),
            "val top-1 baseline": round(statistics.median(bases), 2),
            "val top-1": round(statistics.median(tops), 2),
            "val loss pt": round(statistics.median(losses), 2),
            "loss spread": f"{min(losses):.2f} - {max(losses):.2f}",
            "bytes": int(statistics.median(sizes)),
            "budget": budget,
            "within budget": None if budget is None else all(loss <= budget for loss in losses),
            "val top-1 per seed": [round(top, 2) for top in tops],
            "bytes per seed": sizes,
        }


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
    titles = [stage.title for stage in recipe.stages]
    for name in (args.stage, args.until or args.stage):
        if name not in titles:
            parser.error(f"{recipe.name} has no stage {name!r}: its stages are {titles}")
    if titles.index(args.until or args.stage) < titles.index(args.stage):
        parser.error(f"--until {args.until}: it runs before stage {args.stage}")
    sweep = Sweep(recipe, args.stage, args.field, args.until or args.stage)
    rows = [sweep.row(value, args.seeds) for value in args.values]
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
        "pt` (against the baseline's validation top-1) and `bytes` (what the measured stage's "
        "model packs to) are medians over the seeds, the loss spread min - max; `within "
        "budget`: every seed's loss within the recipe's budget for the measured stage. `in "
        "recipe`: the value the recipe ships. Per-seed values in bench/results/sweep.json. "
        f"Torch on {args.threads} thread(s); this run {time.perf_counter() - start:.0f} s."
        + earlier
    )
    publish("sweep", "Settings chosen on validation (bench/sweep.py)", rows, COLUMNS, notes)


if __name__ == "__main__":
    main()
