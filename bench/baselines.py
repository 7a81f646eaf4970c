"""Baselines benchmark: the zoo's Fashion-MNIST baselines, trained once (cached) and measured.

    python bench/baselines.py [--models lenet5 vgg_small] [--cache DIR]

Writes bench/results/baselines.json and the table in docs/benchmarks.md. Each row carries its
target band; `meets target` says whether the trained model reached it.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import publish  # noqa: E402
from netshrink.baseline import BASELINES, cached_baseline  # noqa: E402
from netshrink.data import load_data  # noqa: E402
from netshrink.measure import measure  # noqa: E402

# Top-1 bands on Fashion-MNIST that the foundation issue sets for each baseline.
TARGETS = {
    "lenet300_100": 0.88,
    "lenet5": 0.89,
    "lenet5_caffe": 0.90,
    "vgg_small": 0.92,
    "resnet20": 0.92,
}
COLUMNS = [
    "model",
    "top-1",
    "target top-1",
    "meets target",
    "top-5",
    "params",
    "fp32 bytes",
    "MACs",
    "ms @1",
    "ms @64",
    "epochs",
    "train s",
]


def run(name: str, cache: Path | None) -> dict:
    spec, data_config, fit_config = BASELINES[name]
    data = load_data(data_config)
    model, meta, _ = cached_baseline(spec, data, fit_config, cache_dir=cache)
    row = measure(
        model, stage=name, input_shape=data.input_shape, test=data.loader("test", 256), threads=2
    )
    return {
        "model": name,
        "top-1": round(row.top1, 4),
        "target top-1": TARGETS[name],
        "meets target": row.top1 >= TARGETS[name],
        "top-5": round(row.top5, 4),
        "params": row.params,
        "fp32 bytes": row.size_bytes,
        "MACs": row.macs,
        "ms @1": round(row.latency_ms_b1, 3),
        "ms @64": round(row.latency_ms_b64, 3),
        "epochs": fit_config.epochs,
        "train s": round(meta.metrics.get("train_seconds", 0), 1),
        "augmentation": {"crop_padding": data_config.crop_padding, "hflip": data_config.hflip},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(BASELINES), default=list(BASELINES))
    parser.add_argument("--cache", type=Path, default=None, help="baseline cache directory")
    args = parser.parse_args()
    rows = [run(name, args.cache) for name in args.models]
    publish(
        "baselines",
        "Baselines on Fashion-MNIST",
        rows,
        COLUMNS,
        notes="Latency: PyTorch, 2 threads, median of repeated runs after warm-up. "
        "`train s` is the time of the cached training run (0 when unknown).",
    )


if __name__ == "__main__":
    main()
