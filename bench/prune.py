"""Pruning benchmark on Fashion-MNIST, against the cached baselines (bench/baselines.py).

    python bench/prune.py [--seeds 0 1 2] [--cases iterative_lenet300 ...]

Cases (the pruning issue's table): iterative std-threshold + retrain on LeNet-300-100 and Caffe
LeNet-5 (Han et al. 2015), incremental pruning without retraining on LeNet-5 (Al-Hami et al.),
gradual cubic pruning during training on LeNet-300-100 (Zhu & Gupta), filter pruning of the small
VGG to >= 50% fewer MACs + fine-tuning (Li et al.), and the sensitivity plot. Beside each
magnitude case runs `torch.nn.utils.prune` (L1 unstructured at the same per-layer sparsity, the
same retraining) with its accuracy and the bytes its state dict holds. Seeds vary the retraining;
each row is the median over seeds. Writes bench/results/prune.json and docs/benchmarks.md.
"""

import argparse
import copy
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.utils.prune as torch_prune

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DOC, latency_ratio, publish  # noqa: E402
from netshrink.baseline import BASELINES  # noqa: E402
from netshrink.checkpoint import effective_state_dict  # noqa: E402
from netshrink.layers import select_layers  # noqa: E402
from netshrink.measure import count_macs  # noqa: E402
from netshrink.models import build_model  # noqa: E402
from netshrink.prune import (  # noqa: E402
    PruneGradualConfig,
    PruneIncrementalConfig,
    incremental_ratios,
    plot_sensitivity,
    prune_gradual,
    prune_incremental,
    prune_iterative,
    sensitivity_analysis,
)
from netshrink.prune.filters import PruneFiltersConfig, prune_filters  # noqa: E402
from netshrink.train import FitConfig, evaluate, fit  # noqa: E402
from pipeline import baseline, pruning_config  # noqa: E402

COLUMNS = [
    "case",
    "method",
    "seeds",
    "top-1 dense",
    "top-1 pruned",
    "loss pt",
    "removed",
    "target",
    "meets target",
    "torch.prune top-1",
    "state bytes",
    "torch.prune bytes",
    "MACs ratio",
    "latency ratio @1",
    "latency ratio @64",
]


def _baseline(name: str):
    return baseline(name)


def _top1(model, data) -> float:
    return evaluate(model, data.loader("test", 512)).top1


def _removed(model) -> float:
    weights = [m.weight for _, m in select_layers(model)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def _state_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _torch_prune(
    dense, data, sparsities: dict[str, float], retrain: FitConfig
) -> tuple[float, int]:
    """The built-in a user would reach for: L1 unstructured per layer, then the same retraining."""
    model = copy.deepcopy(dense)
    for name, module in select_layers(model):
        torch_prune.l1_unstructured(module, "weight", amount=sparsities[name])
    fit(model, data, retrain, progress=False)
    return _top1(model, data), _state_bytes(model.state_dict())


def iterative(name: str, seed: int) -> dict:
    """bench/pipeline.py's pruning recipe, measured; torch.nn.utils.prune beside it."""
    dense, data, base_fit = _baseline(name)
    config = pruning_config(name, base_fit.batch_size, seed)
    retrain = config.retrain
    model = prune_iterative(copy.deepcopy(dense), data, config, progress=False)
    sparsities = {n: float((m.weight == 0).float().mean()) for n, m in select_layers(model)}
    total = retrain.model_copy(update={"epochs": retrain.epochs * config.steps})
    torch_top1, torch_bytes = _torch_prune(dense, data, sparsities, total)
    return {
        "top-1 dense": _top1(dense, data),
        "top-1 pruned": _top1(model, data),
        "removed": _removed(model),
        "torch.prune top-1": torch_top1,
        "state bytes": _state_bytes(effective_state_dict(model)),
        "torch.prune bytes": torch_bytes,
    }


def gradual(name: str, sparsity: float, seed: int) -> dict:
    dense, data, base_fit = _baseline(name)
    fit_config = base_fit.model_copy(update={"seed": seed})
    torch.manual_seed(seed)
    c, h, _ = data.input_shape
    model = build_model(
        BASELINES[name][0], num_classes=data.num_classes, in_channels=c, input_size=h
    )
    steps = len(data.loader("train", fit_config.batch_size)) * fit_config.epochs
    config = PruneGradualConfig(final_sparsity=sparsity, steps=20, interval=int(0.7 * steps) // 20)
    prune_gradual(model, data, config, fit_config, progress=False)
    return {
        "top-1 dense": _top1(dense, data),
        "top-1 pruned": _top1(model, data),
        "removed": _removed(model),
    }


def incremental(name: str, budget: float) -> dict:
    dense, data, _ = _baseline(name)
    calibration = data.loader("val", 512)
    config = PruneIncrementalConfig(budget=budget, step=0.1, max_ratio=3.0)
    table = incremental_ratios(dense, calibration, config, progress=False)
    model = prune_incremental(copy.deepcopy(dense), calibration, config, progress=False)
    return {
        "top-1 dense": _top1(dense, data),
        "top-1 pruned": _top1(model, data),
        "removed": _removed(model),
        "ratios": table,
    }


def filters(name: str, target_macs: float, seed: int) -> dict:
    dense, data, base_fit = _baseline(name)
    model = copy.deepcopy(dense)
    prune_filters(model, PruneFiltersConfig(target_macs=target_macs), data.input_shape)
    fit(
        model,
        data,
        FitConfig(epochs=4, lr=0.01, batch_size=base_fit.batch_size, seed=seed),
        progress=False,
    )
    macs = [sum(r.macs for r in count_macs(m, data.input_shape)) for m in (dense, model)]
    latency = {
        batch: latency_ratio(dense, model, data.input_shape, batch_size=batch, threads=2)
        for batch in (1, 64)
    }
    return {
        "top-1 dense": _top1(dense, data),
        "top-1 pruned": _top1(model, data),
        "removed": 1
        - sum(p.numel() for p in model.parameters()) / sum(p.numel() for p in dense.parameters()),
        "MACs ratio": macs[0] / macs[1],
        "latency ratio @1": latency[1],
        "latency ratio @64": latency[64],
    }


@dataclass(frozen=True)
class Case:
    label: str
    method: str
    target: str
    run: Callable[[int], dict]
    meets: Callable[[dict], bool]
    max_seeds: int = 99  # deterministic or slow cases run fewer seeds


CASES = {
    "iterative_lenet300": Case(
        "LeNet-300-100",
        "iterative std + retrain",
        ">= 92% removed, <= 0.5 pt",
        lambda s: iterative("lenet300_100", s),
        lambda r: r["removed"] >= 0.92 and r["loss pt"] <= 0.5,
    ),
    "iterative_caffe": Case(
        "Caffe LeNet-5",
        "iterative std + retrain",
        ">= 90% removed, <= 0.5 pt",
        lambda s: iterative("lenet5_caffe", s),
        lambda r: r["removed"] >= 0.90 and r["loss pt"] <= 0.5,
    ),
    "incremental_lenet5": Case(
        "LeNet-5",
        "incremental, no retraining, 1 pt budget on validation",
        "report sparsity + per-layer ratios",
        lambda s: incremental("lenet5", 1.0),
        lambda r: r["removed"] > 0,
        max_seeds=1,
    ),
    "gradual_lenet300": Case(
        "LeNet-300-100",
        "gradual cubic to 90% while training",
        "<= 0.5 pt vs dense",
        lambda s: gradual("lenet300_100", 0.9, s),
        lambda r: r["loss pt"] <= 0.5,
    ),
    "filters_vgg": Case(
        "small VGG",
        "filter pruning (L1) to 50% fewer MACs + 4 epochs",
        "<= 1 pt, >= 2x fewer MACs, latency ratio reported",
        lambda s: filters("vgg_small", 0.5, s),
        lambda r: r["loss pt"] <= 1.0 and r["MACs ratio"] >= 2.0,
        max_seeds=1,
    ),
}


def run_case(key: str, seeds: list[int]) -> dict:
    case = CASES[key]
    seeds = seeds[: case.max_seeds]
    results = [case.run(seed) for seed in seeds]
    print(f"{key}: {results}", file=sys.stderr, flush=True)
    row = {"case": case.label, "method": case.method, "seeds": len(seeds), "target": case.target}
    for field in results[0]:
        values = [r[field] for r in results]
        row[field] = statistics.median(values) if isinstance(values[0], float) else values[0]
    row["loss pt"] = round(100 * (row["top-1 dense"] - row["top-1 pruned"]), 2)
    row["meets target"] = bool(case.meets(row))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def sensitivity_plot() -> Path:
    model, data, _ = _baseline("lenet5_caffe")
    result = sensitivity_analysis(model, data.loader("val", 512), progress=False)
    return plot_sensitivity(
        result,
        DOC.parent / "sensitivity_lenet5_caffe.png",
        title="Caffe LeNet-5 on Fashion-MNIST: each layer pruned alone",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    args = parser.parse_args()
    rows = [run_case(key, args.seeds) for key in args.cases]
    png = sensitivity_plot()
    publish(
        "prune",
        "Pruning on Fashion-MNIST",
        rows,
        COLUMNS,
        notes=f"Medians over the seeds (the retraining's); the incremental case takes no "
        f"gradient step and so runs once, the filter-pruning case runs the first seed "
        f"only (minutes a seed). `removed`: fraction of conv/linear "
        f"weights that are zero (filters: fraction of parameters removed). "
        f"`state bytes`: what netshrink's checkpoint stores; `torch.prune bytes`: the "
        f"state dict of `torch.nn.utils.prune` (which keeps `weight_orig` and "
        f"`weight_mask`). Sensitivity plot: ![sensitivity]({png.name})",
    )


if __name__ == "__main__":
    main()
