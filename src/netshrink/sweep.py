"""Choose one setting of a recipe on the validation split: a stage's field swept over values and
seeds, the test split never read (`netshrink sweep`, bench/sweep.py).

    netshrink sweep recipes/deep-compression-lenet5.yaml --stage share --field finetune.lr \
        --values null 0.001 0.02 0.05 --seeds 0 1 2

Stage `stage`'s field `path` (a dotted field of its recipe entry, as `netshrink apply --set`
names it) is set to each value (`None` unsets it: the method's default), the recipe's `seed` to
each seed, and the recipe runs up to `until` (the swept stage itself, or a later one: a pruning
setting judged by what the sharing after it makes of it). Each value and seed runs in its own
folder (DIRECTORY/seed-N/ID, its recipe.yaml says which), started from the stages another run of
that seed finished (netshrink.pipeline.reuse_stages): the stages before the swept one are trained
once a seed and every value starts from the same model, in this sweep and in later ones into the
same DIRECTORY; a value already run is resumed whole, so an interrupted sweep run again goes on
where it stopped. Budgets are lifted (a value past the budget is a row that says so, not a
stopped run); the runs are validation-only (`run_recipe(report=False)`): nothing is packed,
exported or measured on the test split.
"""

import hashlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from .errors import ConfigError
from .files import atomic_write
from .models.registry import AllowImport
from .pipeline import reuse_stages, run_recipe
from .recipe import Recipe, set_field
from .terminal import console


@dataclass(frozen=True)
class Sweep:
    """Stage `stage`'s field `path` swept; each run measured after stage `until` (default:
    `stage`)."""

    recipe: Recipe
    stage: str
    path: str
    until: str | None = None

    def __post_init__(self) -> None:
        titles = [s.title for s in self.recipe.stages]
        for name in (self.stage, self.measured):
            if name not in titles:
                raise ConfigError(
                    f"{self.recipe.name} has no stage {name!r}: its stages are {titles}"
                )
        if self.index(self.measured) < self.index(self.stage):
            raise ConfigError(
                f"until {self.until!r}: it runs before the swept stage {self.stage!r}"
            )
        if not self.path or any(not key.isidentifier() for key in self.path.split(".")):
            raise ConfigError(f"field {self.path!r}: give a dotted path, e.g. finetune.lr")

    @property
    def measured(self) -> str:
        return self.until or self.stage

    def index(self, title: str) -> int:
        return [s.title for s in self.recipe.stages].index(title)

    def recipe_for(self, value, seed: int) -> Recipe:
        """The recipe cut after the measured stage, `path` set to `value`, budgets lifted,
        nothing exported, seeded by `seed`."""
        fields = self.recipe.as_written()
        stages = fields["stages"][: self.index(self.measured) + 1]
        for entry in stages:
            entry.pop("budget", None)
        entry = stages[self.index(self.stage)]
        if value is None:  # unset: the method's own default
            *parents, leaf = self.path.split(".")
            parent = _lookup(entry, parents)
            if isinstance(parent, dict):
                parent.pop(leaf, None)
        else:
            set_field(entry, self.path, value)
        fields.update(stages=stages, seed=seed, export={})
        try:
            return Recipe.model_validate(fields)
        except ValidationError as exc:  # a value the stage does not take: one line, no traceback
            error = exc.errors()[0]
            raise ConfigError(f"{self.stage}.{self.path}={value!r}: {error['msg']}") from None

    def current_value(self):
        """The value the recipe itself writes at `path` (None: unset, the method's default)."""
        entry = self.recipe.as_written()["stages"][self.index(self.stage)]
        return _lookup(entry, self.path.split("."))

    def run(
        self,
        values: Sequence,
        seeds: Sequence[int],
        directory: str | Path,
        *,
        cache_dir: Path | None = None,
        allow_import: AllowImport = (),
        device: str | None = None,
        progress: bool = True,
    ) -> list[dict]:
        """One row a value (`row`), every run in `directory`/seed-N. The rows finished so far
        are in `directory`/sweep.json after each value; an interrupted sweep run again trains
        the stages before the swept one no more (the pipeline resumes them)."""
        if not values or not seeds:
            raise ConfigError("a sweep needs at least one value and one seed")
        directory, rows = Path(directory), []
        for value in values:  # every value checked before the first run trains anything
            self.recipe_for(value, seeds[0])
        total = len(values) * len(seeds)
        for value in values:
            runs = []
            for seed in seeds:
                recipe = self.recipe_for(value, seed)
                if progress:  # the stages' own lines and bars follow
                    console().rule(f"run {len(rows) * len(seeds) + len(runs) + 1}/{total}: "
                                   f"{self.path}={value}, seed {seed}")  # fmt: skip
                folder = self.folder(directory, value, seed)
                if not (folder / "state.json").is_file():  # from what another value trained
                    earlier = [p.parent for p in folder.parent.glob("**/state.json")]
                    reuse_stages(folder, recipe, earlier)
                result = run_recipe(recipe, folder, cache_dir=cache_dir, latency=False,
                                    progress=progress, allow_import=allow_import, device=device,
                                    report=False)  # fmt: skip
                record = next(r for r in result.stages if r.name == self.measured)
                runs.append((result.stages[0].val_top1, record.val_top1, record.measurement))
                if progress:
                    console().print(f"{self.path}={value} seed {seed}: {self.measured} validation "
                                    f"top-1 {record.val_top1:.2%}")  # fmt: skip
            rows.append(self.row(value, seeds, runs))
            text = json.dumps(rows, indent=2) + "\n"
            atomic_write(directory / "sweep.json", lambda tmp, text=text: tmp.write_text(text))
        return rows

    def folder(self, directory: Path, value, seed: int) -> Path:
        """The run of `value` with `seed`: DIRECTORY/seed-N/ID, ID a hash of the stage, field and
        value. `run` starts a new one from the stages another run of this seed finished (any
        earlier sweep's into DIRECTORY) and resumes a finished one whole."""
        name = json.dumps([self.stage, self.path, value], sort_keys=True, default=str)
        return directory / f"seed-{seed}" / hashlib.sha256(name.encode()).hexdigest()[:12]

    def row(self, value, seeds: Sequence[int], runs: list[tuple]) -> dict:
        """Medians over the seeds of one value's runs: (baseline val top-1, measured stage's
        val top-1, its measurement) each."""
        bases = [100 * base for base, _, _ in runs]
        tops = [100 * top for _, top, _ in runs]
        sizes = [measurement["size_bytes"] for _, _, measurement in runs]
        ratios = [measurement["compression_ratio"] for _, _, measurement in runs]
        losses = [round(b - t, 2) for b, t in zip(bases, tops, strict=True)]
        budget = self.recipe.stages[self.index(self.measured)].budget
        return {
            "recipe": self.recipe.name,
            "stage": self.stage,
            "field": self.path,
            "value": "default" if value is None else value,
            "in recipe": value == self.current_value(),
            "measured after": self.measured,
            "seeds": len(seeds),
            "val top-1 baseline": round(statistics.median(bases), 2),
            "val top-1": round(statistics.median(tops), 2),
            "val loss pt": round(statistics.median(losses), 2),
            "loss spread": f"{min(losses):.2f} - {max(losses):.2f}",
            "bytes": int(statistics.median(sizes)),
            "ratio": round(statistics.median(ratios), 2),  # the dense fp32 bytes over `bytes`
            "budget": budget,
            "within budget": None if budget is None else all(loss <= budget for loss in losses),
            "val top-1 per seed": [round(top, 2) for top in tops],
            "bytes per seed": sizes,
        }


def _lookup(entry, keys: Sequence[str]):
    """The node at `keys` in nested dicts (None where the path leaves them)."""
    for key in keys:
        entry = entry.get(key) if isinstance(entry, dict) else None
    return entry
