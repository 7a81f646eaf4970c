"""Centroid fine-tuning: Han et al.'s summed gradients against the members' mean, on validation.

    python bench/centroid_step.py [--models lenet300_100 lenet5_caffe] [--seeds 0] [--threads 1]

Deep Compression (Han et al. 2016, section 3.3) moves each shared value by the sum of its members'
gradients; netshrink moves it by their mean (netshrink.share.gather), at the rate every stage
fine-tunes with (the baseline's / 10). For each model, from the cached baseline unpruned and
from bench/pipeline.py's pruned model, every layer is shared by k-means at each bit width
(linear init) and its centroids fine-tuned for 2 epochs: by the summed gradients at 0.0005 (the
rate netshrink's Deep Compression recipes gave them) and by the mean gradients at 0.005 (the
default) and 0.05 (the baseline's own rate). Validation top-1 (the test split is not read) of
the shared model before and after, median over the seeds; target: fine-tuning ends no more than
0.5 pt below where it started. Writes bench/results/centroid_step.json and its section of
docs/benchmarks.md.
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import publish  # noqa: E402
from netshrink.share import ScalarCodebook, ShareKmeansConfig, share_kmeans  # noqa: E402
from netshrink.train import FitConfig, evaluate, fit  # noqa: E402
from papers import LABELS  # noqa: E402
from pipeline import baseline, pruned_baseline  # noqa: E402

BITS = (2, 4)
EPOCHS = 2
UPDATES = (("summed (Han et al.)", 0.0005), ("mean", 0.005), ("mean", 0.05))
TOLERANCE = 0.5  # points a fine-tuning may end below its start and still meet the target
COLUMNS = [
    "model",
    "start",
    "bits",
    "update",
    "lr",
    "seeds",
    "val top-1 shared",
    "val top-1 fine-tuned",
    "change pt",
    "target",
    "meets target",
]


def summed(model: torch.nn.Module) -> None:
    """Make each centroid's gradient the sum of its members' (Han et al.), not their mean: the
    codebook divides by the member count in its backward, this hook multiplies it back."""
    for module in model.modules():
        if isinstance(module, ScalarCodebook):
            members = module.members().clamp(min=1)
            module.centroids.register_hook(lambda grad, m=members: grad * m)


def val_top1(model, data) -> float:
    return round(100 * evaluate(model, data.loader("val", 500)).top1, 2)


def case_rows(name: str, start: str, seeds: list[int]) -> list[dict]:
    model, data, base_fit = baseline(name)
    if start == "pruned":
        _, model, data = pruned_baseline(name)
    rows = []
    for bits in BITS:
        shared = share_kmeans(copy.deepcopy(model), ShareKmeansConfig(bits=bits), progress=False)
        before = val_top1(shared.eval(), data)
        for update, lr in UPDATES:
            after = []
            for seed in seeds:
                tuned = copy.deepcopy(shared)
                if update != "mean":
                    summed(tuned)
                config = FitConfig(**{**base_fit.model_dump(), "epochs": EPOCHS, "lr": lr,
                                      "seed": seed})  # fmt: skip
                fit(tuned, data, config, progress=False)
                after.append(val_top1(tuned.eval(), data))
            final = statistics.median(after)
            rows.append({
                "model": LABELS[name], "start": start, "bits": bits, "update": update, "lr": lr,
                "seeds": len(seeds), "val top-1 shared": before, "val top-1 fine-tuned": final,
                "change pt": round(final - before, 2), "per seed": after,
                "target": f">= {-TOLERANCE:g} pt", "meets target": final >= before - TOLERANCE,
            })  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet300_100", "lenet5_caffe"],
                        choices=["lenet300_100", "lenet5_caffe"])  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = [row for name in args.models for start in ("unpruned", "pruned")
            for row in case_rows(name, start, args.seeds)]  # fmt: skip
    notes = (
        f"Validation split (the test split is not read); median over seeds {args.seeds}. "
        "`val top-1 shared`: every layer shared by k-means (linear init) at `bits`, before any "
        f"training; `fine-tuned`: after {EPOCHS} epochs of SGD on the centroids only (the "
        "baseline's batch size and schedule), each centroid moved by its members' summed "
        "gradient or by their mean. `pruned`: bench/pipeline.py's model (iterative std "
        "thresholds with retraining, the first seed). The summed rows reproduce Han et al.'s "
        "update by a gradient hook that multiplies netshrink's mean back by the member count. "
        f"Torch on {args.threads} thread(s); whole run {time.perf_counter() - started:.0f} s."
    )
    publish("centroid_step", "Centroid fine-tuning: summed or mean gradients (bench/centroid_step.py)",
            rows, COLUMNS, notes)  # fmt: skip


if __name__ == "__main__":
    main()
