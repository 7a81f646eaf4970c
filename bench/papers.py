"""The papers at CPU scale: each paper's pipeline on Fashion-MNIST, one row a stage, beside the
paper's own figure (its model and data set differ: read the `paper` column as context).

    python bench/papers.py [--cases deep-compression kim kim-vgg16 kim-googlenet shin-oh
                            ristretto gong] [--seeds 0 1 2] [--threads N] [--runs DIR]

Cases:

- deep-compression: Han et al. 2016 on LeNet-300-100 and LeNet-5 (recipes/deep-compression-*.yaml)
  and on the Caffe LeNet-5 (20-50-500, the model of the paper's 39x; deep-compression-lenet5-caffe),
  each run end to end by netshrink.pipeline.run_recipe: baseline, prune, share, packed file;
- kim: Kim et al.'s table 3 shape on the small VGG (recipes/hierarchical-kim.yaml): baseline,
  SP (synapse pruning), SP+SG (+ grouping), SP+SG+SQ (+ dynamic fixed point), the packed file;
- kim-vgg16, kim-googlenet: the same on the networks of Kim et al.'s tables 3 and 5, VGG-16 and
  GoogLeNet at full depth and CPU width (recipes/hierarchical-kim-*.yaml); GoogLeNet also runs
  SP+SQ (its recipe without the group stage, the prune stage reused), as table 5 does;
- shin-oh: Shin & Oh's fixed point -> AB distillation + gradual pruning on their DenseNet-BC
  (recipes/embedded-shin-oh-densenet.yaml), each stage with its size, top-1 and latency at
  batch 1 on one thread: PyTorch and the fp32 ONNX file for the float baseline, the int8 ONNX file
  and the compiled C code for the fixed-point stages;
- ristretto: dynamic fixed point of the cached LeNet-5 and Caffe LeNet-5 baselines at 8/8, 4/8,
  8/4 and 4/4 bits (weights / layer outputs), no retraining (Gysel et al.);
- gong: Gong et al. 2014's KM / PQ / RQ / binary / SVD comparison on LeNet-300-100's FC layers
  (bench/share.py's points, no retraining): each family's best top-1 at >= 10x and >= 20x.

`--runs DIR` keeps each recipe run in DIR/NAME/seed-N, and a later call resumes it: the seeds of
a long case can be run one invocation at a time, the last one (with every seed) publishing.

Writes bench/results/papers.json and the papers section of docs/benchmarks.md.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import readme  # noqa: E402
from common import ROOT, merge_published, publish  # noqa: E402
from netshrink.checkpoint import load_checkpoint  # noqa: E402
from netshrink.codec import packed_bytes  # noqa: E402
from netshrink.codec.summary import summarize  # noqa: E402
from netshrink.data import load_data  # noqa: E402
from netshrink.deploy import ExportConfig, export_artifacts  # noqa: E402
from netshrink.layers import select_layers  # noqa: E402
from netshrink.measure import dense_bytes  # noqa: E402
from netshrink.pipeline import reuse_stages, run_recipe  # noqa: E402
from netshrink.quant import QuantConfig, is_quantized, quantize  # noqa: E402
from netshrink.recipe import Recipe, load_recipe  # noqa: E402
from netshrink.train import evaluate  # noqa: E402
from pipeline import baseline  # noqa: E402

CASES = ("deep-compression", "kim", "kim-vgg16", "kim-googlenet", "shin-oh", "ristretto", "gong")
# The cases that run one recipe file each; GoogLeNet's also runs without its group stage (SP+SQ).
RECIPE_CASES = {
    "kim": "hierarchical-kim",
    "kim-vgg16": "hierarchical-kim-vgg16",
    "kim-googlenet": "hierarchical-kim-googlenet",
    "shin-oh": "embedded-shin-oh-densenet",
}
WITHOUT = {"hierarchical-kim-googlenet": ("group",)}
DEPLOYED = ("embedded-shin-oh-densenet",)  # stages measured as deployed: ONNX, int8, C latency
COLUMNS = [
    "case",
    "model",
    "stage",
    "seeds",
    "top-1",
    "top-5",
    "loss pt",
    "ratio",
    "torch ms",
    "ORT ms",
    "C ms",
    "C flash",
    "bytes",
    "floor bytes",
    "paper",
    "s",
]
LABELS = {
    "lenet300_100": "LeNet-300-100",
    "lenet5": "LeNet-5",
    "lenet5_caffe": "Caffe LeNet-5",
    "vgg_small": "small VGG",
    "vgg16": "VGG-16 (width 0.25)",
    "googlenet": "GoogLeNet (width 0.125)",
    "densenet": "DenseNet-BC-40 (k=6)",
}

# The papers' figures by stage name (Han et al. 2015 / 2016, MNIST; Kim et al.'s own model).
HAN_PRUNE = "12x by pruning, no loss (Han et al. 2015, MNIST)"
PAPER = {
    "deep-compression-lenet300": {
        "baseline": "top-1 error 1.64% (MNIST)",
        "prune": HAN_PRUNE,
        "packed": "40x, no loss: error 1.58% (MNIST)",
    },
    "deep-compression-lenet5": {
        "prune": HAN_PRUNE + " on Caffe LeNet-5",
        "packed": "39x on Caffe LeNet-5 (431k weights), no loss (MNIST)",
    },
    "deep-compression-lenet5-caffe": {
        "baseline": "top-1 error 0.80% (MNIST)",
        "prune": HAN_PRUNE,
        "packed": "39x, no loss: error 0.74% (MNIST)",
    },
    "hierarchical-kim": {
        "baseline": "Kim et al. table 3: baseline",
        "prune": "table 3: SP",
        "group": "table 3: SP+SG",
        "fixed-point": "table 3: SP+SG+SQ",
        "packed": "table 3 stores the same stages in its synapse code",
    },
    "hierarchical-kim-vgg16": {
        "baseline": "Kim et al. table 3 (VGG-16): baseline",
        "prune": "table 3: SP",
        "group": "table 3: SP+SG",
        "fixed-point": "table 3: SP+SG+SQ",
        "packed": "table 3: SP+SG+SQ, as the file stores it",
    },
    "hierarchical-kim-googlenet": {
        "baseline": "Kim et al. table 5 (GoogLeNet): baseline",
        "prune": "table 5: SP",
        "group": "table 5: SP+SG",
        "fixed-point, without group": "table 5: SP+SQ",
        "packed, without group": "table 5: SP+SQ, as the file stores it",
    },
    "embedded-shin-oh-densenet": {
        "baseline": "Shin & Oh (DenseNet-201): the float model, its size and latency",
        "fixed-point": "fixed point: smaller, faster on the device",
        "distill-prune": "QAT + gradual pruning + AB distillation: accuracy recovered",
        "packed": "the compressed model as the device stores it",
    },
}
RISTRETTO = "Gysel et al. 2016/2018: LeNet 4-bit weights / 4-bit layer outputs within ~0.3-1 pt, after fine-tuning"
# (weights, activations, range calibration); min-max is Ristretto's (the integer length covers
# the largest value), MSE is what bench/quant.py's PTQ 4/4 uses
BITS = ((8, 8, "minmax"), (4, 8, "minmax"), (8, 4, "minmax"), (4, 4, "minmax"), (4, 4, "mse"))
GONG = {
    "KM": "Gong et al. 2014: plain k-means already a good size / accuracy balance",
    "PQ": "PQ: the best of the methods at equal rate",
    "RQ": "RQ: below KM and PQ",
    "binary": "binarization: 32x, larger loss",
    "SVD": "SVD (factorization): clearly below vector quantization",
}
GONG_RATES = (10, 20)
LATENCY = ("torch ms", "ORT ms", "C ms", "C flash")


def recipe_rows(
    case: str, recipe: Recipe, text: str, seeds: tuple[int, ...], runs: Path | None = None
) -> list[dict]:
    """Run `recipe` once per seed; one row a stage (baseline first, packed last), each number
    the median over the seeds (the per-seed top-1 and bytes kept beside it). With `runs`, each
    seed's run is kept in runs/NAME/seed-N and resumed by a later call (a seed added later costs
    only its own run); without, it runs in a temporary directory."""
    runs_of_seeds = []
    for seed in seeds:
        if runs is None:
            with tempfile.TemporaryDirectory(prefix=f"netshrink-{recipe.name}-") as directory:
                runs_of_seeds.append(_stage_rows(case, recipe, text, seed, Path(directory)))
        else:
            directory = runs / recipe.name / f"seed-{seed}"
            runs_of_seeds.append(_stage_rows(case, recipe, text, seed, directory))
    rows = []
    for stage_rows in zip(*runs_of_seeds, strict=True):
        row = dict(stage_rows[0])
        for field in ("top-1", "top-5", "loss pt", "ratio", "bytes", "s", "floor bytes", *LATENCY):
            if row.get(field) is not None:
                row[field] = statistics.median(r[field] for r in stage_rows)
        row["seeds"] = len(stage_rows)
        row["top-1 per seed"] = [r["top-1"] for r in stage_rows]
        row["bytes per seed"] = [r["bytes"] for r in stage_rows]
        row["ratio per seed"] = [r["ratio"] for r in stage_rows]
        row["loss pt per seed"] = [r["loss pt"] for r in stage_rows]
        rows.append(row)
    return rows


def _stage_rows(case: str, recipe: Recipe, text: str, seed: int, directory: Path) -> list[dict]:
    """One run of `recipe` with `seed` (it reaches every stage's training and k-means) in
    directory/run; then, for each stage named in WITHOUT, the recipe without that stage in
    directory/without-STAGE, started from the first run's stages before it
    (netshrink.pipeline.reuse_stages), whose later stages are rows of their own."""
    if seed != recipe.seed:
        recipe, text = recipe.model_copy(update={"seed": seed}), None
    deployed = recipe.name in DEPLOYED
    run = directory / "run"
    result = run_recipe(recipe, run, recipe_text=text, latency=deployed, progress=False)
    rows = _result_rows(case, recipe, result, run, deployed)
    base = rows[0]["top-1"]
    for dropped in WITHOUT.get(recipe.name, ()):
        names = [stage.name for stage in recipe.stages]
        stages = [stage for stage in recipe.stages if stage.name != dropped]
        variant = recipe.model_copy(update={"stages": stages})
        other = directory / f"without-{dropped}"
        if not (other / "state.json").exists():
            reuse_stages(other, variant, [run])
        result = run_recipe(variant, other, latency=deployed, progress=False)
        later = _result_rows(case, recipe, result, other, deployed, base)
        for row in later[names.index(dropped) + 1 :]:  # + 1: the baseline's row
            row["stage"] = f"{row['stage']}, without {dropped}"
            row["paper"] = PAPER.get(recipe.name, {}).get(row.pop("name") + f", without {dropped}")
            rows.append(row)
    for row in rows:
        row.pop("name", None)
    return rows


def _result_rows(case, recipe, result, directory, deployed, base=None) -> list[dict]:
    """One row a stage of `result` (the packed file last, with its information floor); with
    `deployed`, each stage's latency as deployed (stage_latency)."""
    papers = PAPER.get(recipe.name, {})
    base = result.stages[0].measurement["top1"] if base is None else base
    data = load_data(recipe.data) if deployed else None
    rows = []
    for record in result.stages:
        m = record.measurement
        stage = record.name if record.name == record.method else f"{record.name} ({record.method})"
        row = {
            "case": case,
            "model": LABELS[recipe.baseline.spec.name],
            "stage": stage,
            "name": record.name,
            "top-1": m["top1"],
            "top-5": m["top5"],
            "loss pt": round(100 * (base - m["top1"]), 2),
            "ratio": round(m["compression_ratio"], 2),
            "bytes": m["size_bytes"],
            "paper": papers.get(record.name),
            "s": round(record.seconds, 1),
        }
        if deployed and record.checkpoint is None:  # the packed file: the decoded model
            row |= stage_latency(result.model, m, data, result.artifacts)
        elif deployed:
            model, _ = load_checkpoint(Path(directory) / record.checkpoint)
            row |= stage_latency(model, m, data)
        rows.append(row)
    rows[-1]["floor bytes"] = round(summarize(result.file).floor_bytes)
    return rows


# Test images a stage's latency artifacts are checked on: their timings are what the rows
# take (the recipe's own export checks its files on the whole split); the whole split through
# a DenseNet's C code and int8 file took most of a seed's 30 minutes.
CHECK = 256


def stage_latency(model, measurement: dict, data, exported=()) -> dict:
    """A stage's batch-1 latency on one thread as it deploys: PyTorch and the fp32 ONNX file for
    a float model; the int8 ONNX file and the compiled C code (gcc) for a fixed-point one (the
    recipe's own `exported` artifacts when it wrote both)."""
    with tempfile.TemporaryDirectory(prefix="netshrink-deploy-") as directory:
        if not is_quantized(model):
            (onnx,) = export_artifacts(model, directory, ExportConfig(onnx=True, check=CHECK), data)
            return {"torch ms": measurement["latency_ms_b1"], "ORT ms": _ms(onnx)}
        made = {artifact.artifact: artifact for artifact in exported}
        if not {"C99", "int8 ONNX"} <= made.keys():
            config = ExportConfig(c=True, int8=True, check=CHECK)
            c, int8 = export_artifacts(model, directory, config, data)
            made = {"C99": c, "int8 ONNX": int8}
    c = made["C99"]
    return {"ORT ms": _ms(made["int8 ONNX"]), "C ms": _ms(c), "C flash": c.flash_bytes}


def _ms(artifact) -> float | None:
    speed = artifact.images_per_second
    return None if not speed else round(1000 / speed, 3)


def file_recipe_rows(case: str, stem: str, seeds: tuple[int, ...], runs: Path | None) -> list[dict]:
    path = ROOT / "recipes" / f"{stem}.yaml"
    return recipe_rows(case, load_recipe(path), path.read_text(), seeds, runs)


def deep_compression_rows(seeds: tuple[int, ...], runs: Path | None) -> list[dict]:
    stems = (
        "deep-compression-lenet300",
        "deep-compression-lenet5",
        "deep-compression-lenet5-caffe",
    )
    return [
        row for stem in stems for row in file_recipe_rows("deep-compression", stem, seeds, runs)
    ]


def ristretto_rows(name: str) -> list[dict]:
    """The fp32 baseline, then each (weights, activations) bit pair, post-training only."""
    model, data, _ = baseline(name)
    fp32 = evaluate(model, data.loader("test", 500))
    common = {"case": "ristretto", "model": LABELS[name]}
    rows = [
        {**common, "stage": "fp32 baseline", "top-1": fp32.top1, "top-5": fp32.top5}
        | {"ratio": 1.0, "bytes": dense_bytes(model)}
    ]
    for weights, activations, calibrate in BITS:
        start = time.perf_counter()
        config = QuantConfig(weights=weights, activations=activations, calibrate=calibrate)
        qmodel = quantize(model, data, config)
        result = evaluate(qmodel, data.loader("test", 500))
        rows.append(
            {
                **common,
                "stage": f"fixed point w{weights}/a{activations}, {calibrate} ranges, no training",
                "top-1": result.top1,
                "top-5": result.top5,
                "loss pt": round(100 * (fp32.top1 - result.top1), 2),
                "ratio": round(dense_bytes(qmodel) / len(packed_bytes(qmodel)), 2),
                "bytes": len(packed_bytes(qmodel)),
                "paper": RISTRETTO
                if (weights, activations, calibrate) == (4, 4, "minmax")
                else None,
                "s": round(time.perf_counter() - start, 1),
            }
        )
    return rows


def gong_rows() -> list[dict]:
    """bench/share.py's Gong et al. points for LeNet-300-100; each family's best at each rate."""
    from share import gong_points

    start = time.perf_counter()
    reference, points = gong_points("lenet300_100")
    seconds = round(time.perf_counter() - start, 1)
    model, _, _ = baseline("lenet300_100")
    fc_bytes = sum(4 * m.weight.numel() for _, m in select_layers(model))
    common = {"case": "gong", "model": "LeNet-300-100 FC weights"}
    rows = [{**common, "stage": "fp32 (no compression)", "top-1": reference, "ratio": 1.0}]
    rows[0] |= {"bytes": fc_bytes, "s": seconds}
    for rate in GONG_RATES:
        for family, claim in GONG.items():
            reached = [p for p in points if p["family"].startswith(family) and p["rate"] >= rate]
            if not reached:
                continue
            best = max(reached, key=lambda p: p["top-1"])
            rows.append(
                {
                    **common,
                    "stage": f"{family} best at >= {rate}x: {best['family']} {best['setting']}",
                    "top-1": best["top-1"],
                    "loss pt": round(100 * (reference - best["top-1"]), 2),
                    "ratio": best["rate"],
                    "bytes": round(fc_bytes / best["rate"]),
                    "paper": claim,
                }
            )
    return rows


def run_cases(cases: list[str], seeds: tuple[int, ...], runs: Path | None = None) -> list[dict]:
    rows = []
    if "deep-compression" in cases:
        rows += deep_compression_rows(seeds, runs)
    for case, stem in RECIPE_CASES.items():
        if case in cases:
            rows += file_recipe_rows(case, stem, seeds, runs)
    if "ristretto" in cases:
        rows += ristretto_rows("lenet5") + ristretto_rows("lenet5_caffe")
    if "gong" in cases:
        rows += gong_rows()
    return [{k: _rounded(v) for k, v in r.items()} for r in rows]


def _rounded(value):
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return round(value, 4) if isinstance(value, float) else value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the recipe cases (medians over them)")  # fmt: skip
    parser.add_argument("--runs", type=Path,
                        help="keep each recipe run in RUNS/NAME/seed-N, resumed when run again "
                             "(default: temporary)")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    seeds = tuple(args.seeds)
    rows = run_cases(args.cases, seeds, args.runs)
    rows, earlier = merge_published("papers", rows, lambda row: row["case"], CASES.index)
    notes = _notes(args.threads, seeds, time.perf_counter() - start) + earlier
    publish("papers", "The papers at CPU scale (bench/papers.py)", rows, COLUMNS, notes)
    readme.refresh()


def _notes(threads: int, seeds: tuple[int, ...], total: float) -> str:
    return (
        "Fashion-MNIST, the 10,000 test images; the `paper` column is the paper's own figure on "
        "its own data (MNIST for Han et al. and Gysel et al., ImageNet for Gong et al., Kim et "
        "al.'s own model), context rather than a target. `loss pt`: top-1 points below the "
        "row's baseline (the case's first row for its model). Recipe rows (deep-compression, "
        f"kim) come from netshrink.pipeline.run_recipe from the cached baselines, run with the "
        f"recipe seed set to each of {', '.join(map(str, seeds))}: every number is the median "
        "over those runs (per-seed top-1 and bytes in the JSON); `bytes` is what "
        "a stage stores (the .nsk file the recipe's pack config writes for it, netshrink.codec.packed_bytes), on the packed row "
        "the .nsk file itself, whose accuracy is that of the model decoded from it, with its "
        "information floor beside it (`floor bytes`: its integer streams at their order-0 "
        "entropy, the rest as stored); `ratio`: "
        "dense fp32 bytes over `bytes`; `s`: the stage's time, measurement included. The "
        "LeNet-5 recipe uses the classic 62k-weight LeNet-5, the paper's 39x is for the Caffe "
        "LeNet-5 (third group). ristretto: power-of-two scale per layer, ranges calibrated on "
        "1,024 training images (min-max as Ristretto; the last row MSE, as bench/quant.py's PTQ "
        "4/4), no fine-tuning (Ristretto fine-tunes); bytes: the weights at their bits. kim: "
        "the rows follow Kim et al.'s table 3 (its model and numbers are not restated); "
        "kim-vgg16 / kim-googlenet: the networks of its tables 3 and 5 at full depth and CPU "
        "width, trained here for few epochs (netshrink.baseline.BASELINES), with the small "
        "VGG's settings (not chosen again); GoogLeNet's `without group` rows are SP+SQ. shin-oh: "
        "the DenseNet-BC's stages as deployed, at batch 1 on one thread (medians): `torch ms` "
        "PyTorch (float stages only: a fixed-point model only simulates its arithmetic), `ORT "
        "ms` ONNX Runtime on the fp32 ONNX file (float stages) or the int8 QDQ file "
        "(fixed-point stages), `C ms` / `C flash` the exported C99 code compiled with gcc -O2 "
        "on this machine's CPU (not a microcontroller). gong: "
        "bench/share.py's points (FC weights only, codebooks and indices counted, no "
        "retraining; PQ = PQ-x or PQ-y, SVD with or without the output layer kept); `s` on "
        "its first row: all the points; its claims paraphrase Gong et al.'s "
        f"ImageNet findings (16-24x within 1% top-5 loss). Torch on {threads} thread(s); "
        f"whole run {total:.0f} s."
    )


if __name__ == "__main__":
    main()
