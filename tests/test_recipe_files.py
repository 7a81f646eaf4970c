"""The ready recipes in recipes/: each one validates, is named after its file, and the one that
`make demo` runs is there."""

from pathlib import Path

import pytest

from conftest import require_fashion_mnist
from netshrink.baseline import BASELINES
from netshrink.recipe import load_recipe

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))
DEMO = "deep-compression-lenet5"


@pytest.fixture(autouse=True)
def _fashion_mnist():
    # a recipe names its data source, and validation checks that the files are there
    require_fashion_mnist()


def test_the_demo_recipe_is_there():
    assert (RECIPES_DIR / f"{DEMO}.yaml").is_file()
    assert len(RECIPES) >= 7


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_loads_and_is_named_after_its_file(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.stages, "a ready recipe compresses something"
    assert path.read_text().startswith("#"), "a ready recipe opens with its comment header"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_starts_from_a_cached_baseline(path):
    # data and baseline exactly as in netshrink.baseline.BASELINES: the same cache key, so a
    # recipe reuses the baseline that the benchmarks and the demo trained
    recipe = load_recipe(path)
    spec, data, fit = BASELINES[recipe.baseline.spec.name]
    assert (recipe.baseline.spec, recipe.data, recipe.baseline.fit) == (spec, data, fit)


def test_recipe_names_are_distinct():
    names = [load_recipe(path).name for path in RECIPES]
    assert len(set(names)) == len(names)


def test_the_demo_recipe_is_deep_compression_on_lenet5():
    recipe = load_recipe(RECIPES_DIR / f"{DEMO}.yaml")
    assert recipe.baseline.model == "lenet5"
    methods = [stage.method for stage in recipe.stages]
    assert methods == ["prune_iterative", "share_kmeans", "quantize"]  # ends deployable in C


def test_deep_compression_recipes_end_in_fixed_point():
    # the "the pipeline ends deployable": every Deep Compression recipe's file exports to C
    for path in RECIPES_DIR.glob("deep-compression-*.yaml"):
        assert load_recipe(path).stages[-1].method == "quantize", path.name
