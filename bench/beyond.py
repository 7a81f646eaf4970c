"""Past Deep Compression: each method that went past it, run as a recipe on the network Deep
Compression's recipe compresses, beside that recipe, against issue 20's targets.

    python bench/beyond.py [--models lenet300_100] [--recipes STEM ...] [--seeds 0 1 2]
                           [--threads N]

Each (model, recipe) pair runs once per seed through netshrink.pipeline.run_recipe (bench/papers.py's
`recipe_rows`, from the cached baselines); the row is the packed file's: the median top-1 of the
model decoded from it, the median loss against the baseline, the median file bytes and ratio,
and the spread (min - max) over the seeds. The pruning stage's median ratio is shown beside it
(how much of the file's ratio the pruning gives; "-" where pruning is not a stage of its own).
`--recipes` runs only those of the models' recipes and keeps the other published rows. Every
recipe setting was chosen on the validation split (each recipe's header says how); the test
split is read for this report only.

Writes bench/results/beyond.json and the beyond section of docs/benchmarks.md.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, merge_published, publish  # noqa: E402
from netshrink.recipe import load_recipe  # noqa: E402
from papers import LABELS, recipe_rows  # noqa: E402

# model -> (Deep Compression's recipe, the recipes past it)
RECIPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "lenet300_100": (
        "deep-compression-lenet300",
        ("variational-dropout-lenet300", "soft-weight-sharing-lenet300"),
    ),
    "lenet5_caffe": (
        "deep-compression-lenet5-caffe",
        ("variational-dropout-lenet5-caffe", "soft-weight-sharing-lenet5-caffe"),
    ),
    "vgg_small": ("deep-compression-vgg-small", ()),
}
# issue 20's targets: (ratio at least, loss at most in points), each met or not
TARGETS: dict[str, tuple[tuple[float, float], ...]] = {
    "lenet300_100": ((64.0, 0.5),),
    "lenet5_caffe": ((80.0, 0.5), (160.0, 1.0)),
    "vgg_small": ((50.0, 1.0),),
}
COLUMNS = [
    "model",
    "recipe",
    "seeds",
    "top-1",
    "loss pt",
    "loss spread",
    "prune ratio",
    "ratio",
    "ratio spread",
    "bytes",
    "floor bytes",
    "target",
    "meets target",
]


def recipe_row(model: str, stem: str, seeds: tuple[int, ...]) -> dict:
    """The packed row of recipes/STEM.yaml over `seeds`, with the spread of loss and ratio."""
    path = ROOT / "recipes" / f"{stem}.yaml"
    stages = recipe_rows("beyond", load_recipe(path), path.read_text(), seeds)
    packed = stages[-1]
    prune = next((r for r in stages if r["stage"].startswith("prune")), None)
    losses, ratios = packed["loss pt per seed"], packed["ratio per seed"]
    targets = TARGETS[model]
    meets = [packed["ratio"] >= ratio and packed["loss pt"] <= loss for ratio, loss in targets]
    return {
        "model": LABELS[model],
        "recipe": stem,
        "seeds": packed["seeds"],
        "top-1": round(packed["top-1"], 4),
        "loss pt": packed["loss pt"],
        "loss spread": f"{min(losses):.2f} - {max(losses):.2f}",
        "prune ratio": round(prune["ratio"], 2) if prune else None,
        "ratio": round(packed["ratio"], 2),
        "ratio spread": f"{min(ratios):.1f} - {max(ratios):.1f}",
        "bytes": int(packed["bytes"]),
        "floor bytes": int(packed["floor bytes"]),
        "target": "; ".join(f">= {ratio:g}x at <= {loss:g} pt" for ratio, loss in targets),
        "meets target": "; ".join(map(str, meets)),
        "loss per seed": losses,
        "ratio per seed": ratios,
        "bytes per seed": packed["bytes per seed"],
        "stages": stages,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=tuple(RECIPES), default=list(RECIPES))
    parser.add_argument("--recipes", nargs="+", metavar="STEM", help="only these recipes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start, seeds = time.perf_counter(), tuple(args.seeds)
    cases = [(m, stem) for m in args.models for stem in _stems(m)]
    if args.recipes:
        unknown = set(args.recipes) - {stem for _, stem in cases}
        if unknown:
            parser.error(f"not a recipe of {' '.join(args.models)}: {' '.join(sorted(unknown))}")
        cases = [(m, stem) for m, stem in cases if stem in args.recipes]
    rows = [recipe_row(model, stem, seeds) for model, stem in cases]
    order = [(LABELS[m], stem) for m in RECIPES for stem in _stems(m)]
    rows, earlier = merge_published(
        "beyond", rows, lambda row: (row["model"], row["recipe"]), order.index
    )
    notes = (
        "Fashion-MNIST, the 10,000 test images, the model decoded from the packed .nsk file. "
        f"Each recipe run with its seed set to each of {', '.join(map(str, seeds))} from the "
        "cached baseline; `top-1`, `loss pt`, `ratio` (dense fp32 bytes over the file's) and "
        "`bytes` are medians over the seeds, the spreads min - max, per-seed values and every "
        "stage in bench/results/beyond.json. `floor bytes`: the file's information floor (its "
        "integer streams at their order-0 entropy, the rest as stored; `netshrink inspect`), "
        "what the coding could still save. `prune ratio`: what the pruned model alone stores, "
        'packed ("-": soft weight-sharing prunes and shares in one stage). Settings chosen on '
        "the validation split (the recipes' headers). `target`: "
        "issue 20's (the literature's MNIST numbers: soft weight-sharing 64x on LeNet-300-100, "
        "162x on the Caffe LeNet-5), each met or not. "
        f"Torch on {args.threads} thread(s); this run {time.perf_counter() - start:.0f} s."
        + earlier
    )
    publish("beyond", "Past Deep Compression (bench/beyond.py)", rows, COLUMNS, notes)


def _stems(model: str) -> tuple[str, ...]:
    deep_compression, past = RECIPES[model]
    return (deep_compression, *past)


if __name__ == "__main__":
    main()
