"""The ready recipes (recipes/*.yaml) end to end on Fashion-MNIST, as `netshrink run` runs them.

    python bench/recipes.py [--recipes NAME ...] [--threads N] [--out DIR]

Each recipe runs into a fresh run directory (a temporary one, or DIR/NAME cleared first: what
`netshrink run --restart` does) from the cached baselines (bench/baselines.py), latency
included. One row a recipe: its baseline's test top-1, the top-1 of the model decoded from the
packed file (the report's last row: what is stored is what is claimed), the loss, the file's
bytes and ratio against the dense fp32 baseline, MACs, batch-1 latency of the decoded model,
the wall time of the whole run, and the recipe's target. A recipe that fails is a row too,
with the error.

Writes bench/results/recipes.json and the recipes section of docs/benchmarks.md.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, merge_published, publish  # noqa: E402
from netshrink.errors import Error  # noqa: E402
from netshrink.pipeline import clear_run, run_recipe  # noqa: E402
from netshrink.recipe import load_recipe  # noqa: E402

RECIPES = ROOT / "recipes"
COLUMNS = [
    "recipe",
    "model",
    "stages",
    "baseline top-1",
    "final top-1",
    "loss pt",
    "bytes",
    "ratio",
    "MMACs",
    "sparse MMACs",
    "ms @1",
    "wall s",
    "target",
    "meets target",
]

# Accuracy loss allowed against the recipe's own baseline (test top-1 points), and the paper's
# number as context (its data set and model differ: MNIST, and for LeNet-5 the Caffe variant).
TARGETS: dict[str, tuple[float, str]] = {
    "deep-compression-lenet300": (1.0, "paper: 40x, no loss (MNIST)"),
    "deep-compression-lenet5": (1.0, "paper: 39x on Caffe LeNet-5, no loss (MNIST)"),
    "deep-compression-lenet5-caffe": (1.0, "paper: 39x, no loss (MNIST)"),
    "deep-compression-lenet5-caffe-aggressive": (1.0, "past the paper: bench/peers.py's recipe"),
    "hierarchical-kim": (1.0, ""),
    "stable-fixed-point-alhami": (1.5, "stage budgets 0.5 + 0.5 pt on validation"),
    "vector-quantization-gong": (1.0, "packed file: stage checkpoints keep no vector codebooks"),
    "embedded-shin-oh": (1.0, "bench/train_side.py: -0.14 pt at 10x"),
    "compressive-grimaldi": (1.0, ""),
    "variational-dropout-lenet300": (2.0, "sparser than DC at a higher loss: bench/beyond.py"),
    "variational-dropout-lenet5-caffe": (1.0, "bench/beyond.py"),
    "deep-compression-vgg-small": (1.0, "issue 20: >= 50x at <= 1 pt; bench/beyond.py"),
    "hierarchical-kim-vgg16": (1.5, "paper: VGG-16 on ImageNet; bench/papers.py kim-vgg16"),
    "hierarchical-kim-googlenet": (1.5, "paper: GoogLeNet on ImageNet; bench/papers.py"),
    "embedded-shin-oh-densenet": (1.0, "paper: DenseNet-201; bench/papers.py shin-oh"),
}
DEFAULT_TARGET = (1.0, "")


def recipe_paths(names: list[str] | None) -> list[Path]:
    """recipes/NAME.yaml for each name, or every recipe in recipes/."""
    if not names:
        return sorted(RECIPES.glob("*.yaml"))
    paths = [RECIPES / f"{name.removesuffix('.yaml')}.yaml" for name in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"no recipe {', '.join(missing)}")
    return paths


def run_one(path: Path, directory: Path) -> dict:
    """Run the recipe at `path` into `directory` (emptied first); its row."""
    recipe = load_recipe(path)
    limit, context = TARGETS.get(recipe.name, DEFAULT_TARGET)
    target = f"<= {limit:g} pt loss" + (f" ({context})" if context else "")
    row = {
        "recipe": recipe.name,
        "model": recipe.baseline.model,
        "stages": " -> ".join(stage.method for stage in recipe.stages),
        "target": target,
    }
    clear_run(directory)
    start = time.perf_counter()
    try:
        result = run_recipe(
            recipe, directory, recipe_text=path.read_text(), latency=True, progress=False
        )
    except Error as exc:  # a method that refuses, a budget that broke: the row says so
        row.update({"wall s": time.perf_counter() - start, "meets target": False})
        row["error"] = str(exc)
        return row
    seconds = time.perf_counter() - start
    base, final = result.stages[0].measurement, result.stages[-1].measurement
    loss = round(100 * (base["top1"] - final["top1"]), 2)
    row.update(
        {
            "baseline top-1": base["top1"],
            "final top-1": final["top1"],
            "loss pt": loss,
            "bytes": result.file.stat().st_size,
            "ratio": round(final["compression_ratio"], 2),
            "MMACs": round(final["macs"] / 1e6, 3),
            "sparse MMACs": round(final["sparse_macs"] / 1e6, 3),
            "ms @1": None if final["latency_ms_b1"] is None else round(final["latency_ms_b1"], 3),
            "wall s": round(seconds, 1),
            "meets target": loss <= limit,
            "per stage": [
                {
                    "stage": r.name,
                    "method": r.method,
                    "top1": r.measurement["top1"],
                    "bytes": r.measurement["size_bytes"],
                    "ratio": r.measurement["compression_ratio"],
                    "seconds": r.seconds,
                }
                for r in result.stages
            ],
        }
    )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", metavar="NAME", help="default: all in recipes/")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (and latency)")
    parser.add_argument("--out", type=Path, help="keep the runs in OUT/NAME (default: temporary)")
    args = parser.parse_args(argv)
    # one thread: on the shared 2-core machine two threads each ran several times slower
    torch.set_num_threads(args.threads)
    paths = recipe_paths(args.recipes)
    rows, start = [], time.perf_counter()
    for path in paths:
        if args.out is not None:
            rows.append(run_one(path, args.out / path.stem))
            continue
        with tempfile.TemporaryDirectory(prefix=f"netshrink-{path.stem}-") as directory:
            rows.append(run_one(path, Path(directory)))
    total = time.perf_counter() - start
    names = [p.stem for p in sorted(RECIPES.glob("*.yaml"))]
    order = lambda name: names.index(name) if name in names else len(names)  # noqa: E731
    rows, earlier = merge_published("recipes", rows, lambda row: row["recipe"], order)
    notes = _notes(rows, args, total) + earlier
    publish("recipes", "Ready recipes (bench/recipes.py)", rows, COLUMNS, notes)


def _notes(rows: list[dict], args, total: float) -> str:
    failed = "".join(f" {r['recipe']} failed: {r['error']}." for r in rows if "error" in r)
    return (
        "Every recipe in recipes/ run end to end by netshrink.pipeline.run_recipe into a fresh "
        "run directory, from the cached Fashion-MNIST baselines (their training not counted). "
        "`final top-1`: the model decoded from the packed .nsk file, on the 10,000 test images; "
        "`loss pt` against the recipe's baseline; `bytes`: the .nsk file; `ratio`: dense fp32 "
        "bytes over it. MMACs: dense; sparse MMACs: those with a non-zero weight. `ms @1`: "
        f"PyTorch batch-1 latency of the decoded model, {args.threads} thread(s) (other jobs "
        "share the 2 cores). `wall s`: the whole run, every stage measured (latency included). "
        "The per-stage numbers are in bench/results/recipes.json; each recipe's header says "
        f"what it does and why its settings. Whole benchmark {total:.0f} s.{failed}"
    )


if __name__ == "__main__":
    main()
