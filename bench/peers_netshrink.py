"""netshrink's side of bench/peers.py: a recipe from recipes/ per model, 8/8 post-training fixed
point and filter pruning, each written to a .nsk file whose decoded model is what is measured."""

import copy
import tempfile
from pathlib import Path

from netshrink.codec import PackConfig, pack, unpack
from netshrink.pipeline import run_recipe
from netshrink.prune.filters import PruneFiltersConfig, prune_filters
from netshrink.quant import QuantConfig, quantize
from netshrink.recipe import Recipe, load_recipe
from netshrink.train import FitConfig, fit
from peers_tools import Result, Timer, filter_result, top1

ROOT = Path(__file__).resolve().parent.parent
PACK = PackConfig(index_bits="best", coders=("huffman", "ans"))


# netshrink's pipeline for each model: Deep Compression (the Caffe LeNet-5's pushed past the
# paper's settings: the paper's own is in bench/papers.py). The VGG's was Kim et al.'s
# hierarchical pipeline until it had a Deep Compression recipe (bench/beyond.py: 2x smaller).
RECIPES = {
    "lenet300_100": "deep-compression-lenet300",
    "lenet5_caffe": "deep-compression-lenet5-caffe-aggressive",
    "vgg_small": "deep-compression-vgg-small",
}


def recipe_for(name: str) -> tuple[Recipe, str]:
    """The recipe netshrink runs on the baseline `name`, and its path."""
    if name not in RECIPES:
        raise ValueError(f"no netshrink recipe for {name}: add one to RECIPES")
    return _load(RECIPES[name], name)


def _load(stem: str, name: str) -> tuple[Recipe, str]:
    """recipes/STEM.yaml and its path, checked to compress the baseline `name`."""
    path = ROOT / "recipes" / f"{stem}.yaml"
    recipe = load_recipe(path)
    if recipe.baseline.model != name:
        raise ValueError(f"{path} compresses {recipe.baseline.model}, not {name}")
    return recipe, str(path.relative_to(ROOT))


def quick_recipe(recipe: Recipe) -> Recipe:
    """The recipe cut for a smoke run: one pruning step of one epoch, one fine-tuning epoch."""
    fields = recipe.as_written()
    for stage in fields["stages"]:
        if stage["method"] == "prune_iterative":
            stage["config"]["steps"] = 1
            stage["config"].setdefault("retrain", {})["epochs"] = 1
        if stage.get("finetune"):
            stage["finetune"]["epochs"] = 1
        stage["budget"] = None
    return Recipe.model_validate(fields)


# netshrink's front per model: its Deep Compression recipe swept over KNOBS (pruning thresholds
# scaled: the knob its sparsity follows; k-means bits lowered by one), budgets off (a sweep
# measures every point), and the recipes past Deep Compression as they are.
FRONT = {
    "lenet300_100": ("variational-dropout-lenet300", "soft-weight-sharing-lenet300"),
    "lenet5_caffe": ("variational-dropout-lenet5-caffe",),
    "vgg_small": (),
}
KNOBS = ((0.8, 0), (1.25, 0), (1.0, -1))  # (threshold scale, bits change); the recipe is (1, 0)


def front_recipes(name: str) -> list[tuple[Recipe, str]]:
    """The recipes of `name`'s front with their row labels: the model's recipe, its KNOBS
    variants and the recipes of FRONT."""
    recipe, source = recipe_for(name)
    found = [(recipe, f"{recipe.name} recipe ({source})")]
    for scale, bits in KNOBS:
        label = f"{recipe.name}, thresholds x{scale:g}, bits {bits:+d}, no budgets"
        found.append((variant(recipe, scale, bits), label))
    for stem in FRONT.get(name, ()):
        other, path = _load(stem, name)
        found.append((other, f"{other.name} recipe ({path})"))
    return found


def variant(recipe: Recipe, scale: float, bits: int) -> Recipe:
    """`recipe` with every std-threshold ratio of its iterative pruning multiplied by `scale`,
    every k-means bit width changed by `bits` (at least 1), and no stage budgets."""
    fields = recipe.as_written()
    for stage in fields["stages"]:
        stage["budget"] = None
        config = stage.get("config") or {}
        if stage["method"] == "prune_iterative":
            prune = config.setdefault("prune", {})
            if prune.get("threshold", {}).get("kind") == "std":
                prune["threshold"]["ratio"] *= scale
                prune["per_layer"] = {k: v * scale for k, v in prune.get("per_layer", {}).items()}
        if stage["method"] == "share_kmeans":
            for key in ("conv_bits", "fc_bits"):
                if config.get(key) is not None:
                    config[key] = max(1, config[key] + bits)
    return Recipe.model_validate(fields)


def packed_recipe(recipe: Recipe, seed: int) -> Result:
    """`run_recipe` on the recipe with `seed` (it reaches every stage's training and k-means);
    the packed file's bytes, the top-1 of the model decoded from it (the last record) and its
    validation loss against the baseline's (what a point is chosen by)."""
    recipe = recipe.model_copy(update={"seed": seed})
    with tempfile.TemporaryDirectory() as work, Timer() as timer:
        result = run_recipe(recipe, work, latency=False, progress=False)
        raw = result.file.read_bytes()
    first, last = result.stages[0].val_top1, result.stages[-1].val_top1
    val_loss = None if first is None or last is None else round(100 * (first - last), 2)
    return Result(result.stages[-1].measurement["top1"], raw, timer.seconds, val_loss=val_loss)


def _packed(model, meta, seconds: float):
    """Pack `model`; (the file's bytes, the model decoded from it, seconds with the packing)."""
    with tempfile.TemporaryDirectory() as work:
        with Timer() as timer:
            path = pack(model, Path(work) / "model.nsk", PACK, meta=meta)
            raw = path.read_bytes()
        return raw, unpack(path), seconds + timer.seconds


def ptq8(model, meta, data, calibration) -> Result:
    """netshrink 8-bit dynamic fixed point (weights and activations, min-max ranges, one
    power-of-two scale per layer) on the same calibration batches, packed."""
    with Timer() as timer:
        quantized = quantize(model, calibration, QuantConfig())
    raw, decoded, seconds = _packed(quantized, meta, timer.seconds)
    return Result(top1(decoded, data), raw, seconds)


def filters(model, meta, data, amount: float, fit_config: FitConfig) -> Result:
    """netshrink filter pruning (Li et al.'s filter L1 norm) removing `amount` of every conv's
    filters, the same fine-tuning as the Torch-Pruning case, packed."""
    pruned = copy.deepcopy(model)
    with Timer() as timer:
        prune_filters(pruned, PruneFiltersConfig(amount=amount), data.input_shape)
        fit(pruned, data, fit_config, progress=False)
    raw, decoded, seconds = _packed(pruned.eval(), meta, timer.seconds)
    return filter_result(model, decoded.eval(), data, raw, seconds)
