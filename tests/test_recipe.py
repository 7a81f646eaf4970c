"""Recipe validation: every mistake is a ConfigError naming the field and its line."""

from pathlib import Path

import pytest
from pydantic import BaseModel

from netshrink.cli import main
from netshrink.errors import ConfigError
from netshrink.recipe import load_recipe, parse_recipe, trial_recipe
from netshrink.train import FitConfig

ROOT = Path(__file__).resolve().parents[1]
from netshrink.quant.quantize import QuantizeStage
from netshrink.share.scalar import ShareKmeansStage

GOOD = """\
name: good
data: {source: digits}
baseline:
  model: lenet300_100
  train: {epochs: 1}
stages:
  - method: prune_magnitude
    config: {threshold: {kind: std, ratio: 1.0}}
  - method: share_kmeans
    config: {bits: 4}
    finetune: {epochs: 1, lr: 0.001}
    budget: 2.0
  - method: quantize
"""

HEAD = "data: {source: digits}\nbaseline: {model: lenet300_100}\nstages:\n"

# (recipe text, the field the message must name, the line it must give, a word of the reason)
BAD = [
    (HEAD + "  - method: prune_magic\n", "stages[0]", 4, "unknown method"),
    (
        HEAD + "  - method: share_kmeans\n    config: {bits: many}\n",
        "stages[0].config.bits",
        5,
        "integer",
    ),
    (HEAD + "  - method: share_kmeans\n    config: {bits: 40}\n", "stages[0].config.bits", 5, "16"),
    (HEAD + "  - method: quantize\n    budget: -1\n", "stages[0].budget", 5, "percentage points"),
    (HEAD + "  - method: quantize\n    budget: 150\n", "stages[0].budget", 5, "percentage points"),
    (
        "data: {source: 'mnist:/no/such/dir'}\nbaseline: {model: lenet5}\n",
        "data",
        1,
        "does not exist",
    ),
    ("data: {source: cifar100}\nbaseline: {model: lenet5}\n", "data", 1, "unknown data source"),
    ("data: {source: digits}\n", "baseline", None, "required"),
    ("baseline: {model: lenet6}\n", "baseline.model", 1, "unknown model"),
    (
        "baseline: {model: lenet5, checkpoint: /no/such}\n",
        "baseline.checkpoint",
        1,
        "no checkpoint",
    ),
    (HEAD + "  - method: quantize\n    layers: [fc1]\n", "stages[0]", 4, "takes no layers"),
    (
        HEAD + "  - method: share_kmeans\n    soft_targets: {temperature: 2}\n",
        "stages[0]",
        4,
        "finetune",
    ),
    (HEAD + "  - config: {bits: 4}\n", "stages[0]", 4, "needs a method"),
    (HEAD + "  - method: quantize\n  - method: quantize\n", "recipe", None, "more than once"),
    (
        HEAD + "  - method: share_kmeans\n    finetune: {lr: -0.1}\n",
        "stages[0].finetune.lr",
        5,
        "greater than",
    ),
    (
        HEAD + "  - method: prune_magnitude\n    config: {threshold: {kind: std}}\n",
        "stages[0].config.threshold.ratio",
        5,
        "required",
    ),
    (
        HEAD + "  - method: share_kmeans\nexport: {c: true}\n",
        "recipe",
        None,
        "exports need a fixed-point model",
    ),
    (HEAD + "  - method: quantize\nexport: {c_storage: csr}\n", "export.c_storage", 5, "dense"),
    ("baseline: {model: lenet5}\nstagse: []\n", "stagse", 2, "unknown field"),
    ("baseline: {model: lenet5\n", "recipe", 2, "not valid YAML"),
]


def test_a_good_recipe_parses_into_the_methods_own_configs():
    recipe = parse_recipe(GOOD)
    assert [s.method for s in recipe.stages] == ["prune_magnitude", "share_kmeans", "quantize"]
    share = recipe.stages[1]
    assert isinstance(share, ShareKmeansStage) and share.config.bits == 4
    assert isinstance(recipe.stages[2], QuantizeStage) and recipe.stages[2].config.weights == 8
    assert recipe.baseline.fit.epochs == 1


@pytest.mark.parametrize("text, field, line, reason", BAD, ids=[b[3] for b in BAD])
def test_every_bad_recipe_names_the_field_and_line(text, field, line, reason):
    with pytest.raises(ConfigError) as caught:
        parse_recipe(text, "bad.yaml")
    message = str(caught.value)
    assert message.startswith("bad.yaml")
    assert f": {field}:" in message or (field == "recipe" and "bad.yaml" in message), message
    if line is not None:
        assert f"bad.yaml line {line}:" in message, message
    assert reason in message, message


def test_finetune_takes_the_baselines_settings_it_does_not_give():
    from netshrink.train import FitConfig

    stage = parse_recipe(GOOD).stages[1]
    base = FitConfig(epochs=20, lr=0.05, batch_size=64, weight_decay=1e-4)
    merged = stage.finetune_config(base)
    assert (merged.epochs, merged.lr, merged.batch_size, merged.weight_decay) == (
        1,
        0.001,
        64,
        1e-4,
    )
    lr_unset = parse_recipe(GOOD.replace("epochs: 1, lr: 0.001", "epochs: 1")).stages[1]
    assert lr_unset.method == "share_kmeans"  # every method: the baseline's rate / 10
    assert lr_unset.finetune_config(base).lr == pytest.approx(0.005)


def test_the_recipe_seed_fills_every_seed_a_stage_leaves_unset():
    from netshrink.stage import with_seed

    recipe = parse_recipe(GOOD.replace("config: {bits: 4}", "config: {bits: 4, seed: 3}"))
    share = with_seed(recipe.stages[1], 11)
    assert share.config.seed == 3  # given in the recipe: kept
    assert share.finetune.seed == 11
    assert with_seed(recipe.stages[1], 11).finetune_config(recipe.baseline.fit).seed == 11


def test_a_recipe_rebuilt_from_what_it_sets_still_passes_its_seed_on():
    import yaml

    from netshrink.recipe import Recipe
    from netshrink.stage import with_seed

    recipe = parse_recipe(GOOD)
    rebuilt = parse_recipe(yaml.safe_dump(recipe.as_written()))  # as a run folder saves it
    assert rebuilt == recipe
    assert with_seed(rebuilt.stages[1], 11).finetune.seed == 11
    # the trap as_written avoids: a full dump writes every default seed out, pinning it
    dumped = Recipe.model_validate(recipe.model_dump(mode="json"))
    assert with_seed(dumped.stages[1], 11).finetune.seed == 0


def _fit_configs(value):
    """Every FitConfig in a recipe, at any depth."""
    if isinstance(value, FitConfig):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _fit_configs(getattr(value, name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _fit_configs(item)


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_a_trial_caps_every_training_and_the_data(path):
    recipe = load_recipe(path)
    trial = trial_recipe(recipe, limit=300, epochs=1)
    assert trial.data.limit == 300 and trial.baseline.train is not None
    fits = list(_fit_configs(trial))
    assert fits and all(fit.epochs == 1 for fit in fits)
    assert trial_recipe(recipe) == recipe  # nothing asked, nothing changed


def test_run_with_limit_and_epochs_writes_its_own_folder(monkeypatch, tmp_path):
    import netshrink.cli

    ran = {}
    monkeypatch.setattr(
        netshrink.cli, "run_recipe", lambda recipe, out, **kw: ran.update(r=recipe, out=out)
    )
    monkeypatch.chdir(ROOT)
    assert (
        main(["run", "recipes/deep-compression-lenet5.yaml", "--limit", "500", "--epochs", "1"])
        == 0
    )
    assert ran["out"] == Path("runs/deep-compression-lenet5-trial")
    assert ran["r"].data.limit == 500 and ran["r"].baseline.train.epochs == 1
