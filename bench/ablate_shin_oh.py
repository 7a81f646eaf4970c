"""Which part of Shin & Oh's distill-prune stage breaks the DenseNet: the stage taken apart on
the validation split.

    python bench/ablate_shin_oh.py [--variants fixed ab kd kd-prune ab-kd-prune ...]
                                   [--lr LR] [--ab-lr LR] [--sparsity S]

Each variant starts from the recipe's fixed-point model (recipes/embedded-shin-oh-densenet.yaml,
stage 1, from the cached DenseNet baseline) and runs part of its distill-prune stage, with the
recipe's own settings unless the variant says otherwise:

- fixed: nothing more (the starting point);
- ab: the activation-boundary stage alone (no soft targets, no pruning);
- kd: the soft-target epochs alone (no AB, no pruning);
- kd-prune: soft targets with gradual pruning (no AB);
- ab-kd: AB, then soft targets (no pruning);
- ab-kd-prune: the whole stage, as the recipe runs it;
- kd-prune-layer, ab-kd-prune-layer: the same with per-layer sparsity (Zhu & Gupta's own:
  every layer to the scheduled sparsity) instead of the recipe's one global threshold.

`--lr` and `--ab-lr` replace the recipe's learning rates of the soft-target epochs and of the AB
stage (0.005 each), `--sparsity` its final sparsity (0.8). Per variant and settings: validation
top-1, the sparsity reached, the least and the most pruned layer, and at each AB layer the
student's pre-ReLU response beside the teacher's: its root mean square, and the share of
neurons on the teacher's side of zero (Heo et al.'s boundary agreement). Writes
bench/results/ablate_shin_oh.json (a rerun of some variants keeps the others' rows) and its
section of docs/benchmarks.md.
"""

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import merge_published, publish  # noqa: E402
from netshrink.distill import boundary_agreement, capture  # noqa: E402
from netshrink.layers import select_layers  # noqa: E402
from netshrink.measure import count_parameters  # noqa: E402
from netshrink.methods import plan_stages, run_stage  # noqa: E402
from netshrink.recipe import load_recipe  # noqa: E402
from netshrink.stage import StageContext, with_seed  # noqa: E402
from netshrink.train import evaluate  # noqa: E402
from pipeline import baseline  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "embedded-shin-oh-densenet.yaml"
# variant: (AB stage, soft-target epochs, gradual pruning: None, or its scope)
VARIANTS = {
    "fixed": (False, False, None),
    "ab": (True, False, None),
    "kd": (False, True, None),
    "kd-prune": (False, True, "global"),
    "ab-kd": (True, True, None),
    "ab-kd-prune": (True, True, "global"),
    "kd-prune-layer": (False, True, "layer"),
    "ab-kd-prune-layer": (True, True, "layer"),
}
COLUMNS = [
    "variant",
    "lr",
    "ab lr",
    "target sparsity",
    "val top-1",
    "sparsity",
    "layers' sparsity",
    "AB layers: RMS student / teacher, agreement",
]


def variant_stage(stage, ab: bool, kd: bool, scope: str | None, lr=None, ab_lr=None, sparsity=None):
    """The recipe's distill-prune stage with its parts switched on or off (`scope`: the
    pruning's, None for none) and its learning rates replaced where given."""
    config = stage.config
    update = {}
    if lr is not None:
        update["fit"] = config.fit.model_copy(update={"lr": lr})
    if ab_lr is not None:
        update["ab_lr"] = ab_lr
    if not ab:
        update["ab_pairs"] = ()
    if not kd:
        update["fit"] = config.fit.model_copy(update={"epochs": 0})
    config = config.model_copy(update=update)
    prune = {"scope": scope} | ({} if sparsity is None else {"final_sparsity": sparsity})
    return stage.model_copy(
        update={
            "config": config,
            "prune": None if scope is None else stage.prune.model_copy(update=prune),
        }
    )


def layer_sparsities(model) -> str:
    """The least and the most pruned of the layers pruning chooses (the 3x3 convs of a dense
    layer against its 1x1 bottleneck, under one global threshold)."""
    shares = {n: float(m.weight.eq(0).float().mean()) for n, m in select_layers(model)}
    low, high = min(shares, key=shares.get), max(shares, key=shares.get)
    return f"{shares[low]:.0%} ({low}) to {shares[high]:.0%} ({high})"


@torch.no_grad()
def boundaries(student, teacher, data, pairs) -> str:
    """At each AB pair: RMS of the student's and the teacher's responses on 512 validation
    images, and their boundary agreement."""
    x, _ = next(iter(data.loader("val", 512, augment=False)))
    student.eval()
    cells = []
    with (
        capture(student, [s for s, _ in pairs]) as ours,
        capture(teacher, [t for _, t in pairs]) as theirs,
    ):
        student(x)
        teacher(x)
    for s, t in pairs:
        rms = [float(v.pow(2).mean().sqrt()) for v in (ours[s], theirs[t])]
        agree = boundary_agreement(ours[s], theirs[t])
        cells.append(f"{s}: {rms[0]:.2f}/{rms[1]:.2f}, {agree:.1%}")
    return "; ".join(cells)


def run_variant(name, recipe, teacher, data, base_fit, lr=None, ab_lr=None, sparsity=None):
    ab, kd, scope = VARIANTS[name]
    ctx = StageContext(data=data, baseline=teacher, baseline_fit=base_fit, progress=True)
    quantize_stage, distill_stage = plan_stages(recipe.stages)
    stages = [quantize_stage]
    if ab or kd:
        stages.append(variant_stage(distill_stage, ab, kd, scope, lr, ab_lr, sparsity))
    config = stages[-1].config
    model = copy.deepcopy(teacher)
    for index, stage in enumerate(stages, start=1):  # as netshrink.pipeline runs a recipe
        torch.manual_seed(recipe.seed + index)
        model = run_stage(model, with_seed(stage, recipe.seed), ctx)
    model.eval()
    top1 = evaluate(model, data.loader("val", 256)).top1
    count = count_parameters(model)
    return {
        "variant": name,
        "lr": config.fit.lr if kd else None,
        "ab lr": (config.ab_lr or config.fit.lr) if ab else None,
        "target sparsity": stages[-1].prune.final_sparsity if scope else None,
        "val top-1": round(100 * top1, 2),
        "sparsity": round(1 - count.nonzero / count.total, 3),
        "layers' sparsity": layer_sparsities(model),
        "AB layers: RMS student / teacher, agreement": boundaries(
            model, teacher, data, distill_stage.config.pairs
        ),
    }


def _order(variants: list[str]):
    """Rows by variant, then by their rates and sparsity, the recipe's first (None: no such
    stage)."""
    return lambda part: (variants.index(part[0]), -(part[1] or 1), -(part[2] or 1), -(part[3] or 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--lr", type=float, help="the soft-target epochs' rate (recipe: 0.005)")
    parser.add_argument("--ab-lr", type=float, help="the AB stage's rate (recipe: 0.005)")
    parser.add_argument("--sparsity", type=float, help="the final sparsity (recipe: 0.8)")
    args = parser.parse_args(argv)
    recipe = load_recipe(RECIPE)
    teacher, data, base_fit = baseline("densenet")
    rows = [
        run_variant(name, recipe, teacher, data, base_fit, args.lr, args.ab_lr, args.sparsity)
        for name in args.variants
    ]
    order = list(VARIANTS)
    rows, earlier = merge_published(
        "ablate_shin_oh",
        rows,
        lambda r: (r["variant"], r.get("lr"), r.get("ab lr"), r.get("target sparsity", 0.8)),
        _order(order),
    )
    notes = (
        "Validation split (the test split is not read). One seed (the recipe's). Teacher: the "
        "float DenseNet-BC-40 baseline; every variant starts from the recipe's 8/8 fixed-point "
        "model." + earlier
    )
    publish(
        "ablate_shin_oh",
        "Shin & Oh's distill-prune stage taken apart on the DenseNet (bench/ablate_shin_oh.py)",
        rows,
        COLUMNS,
        notes,
    )


if __name__ == "__main__":
    main()
