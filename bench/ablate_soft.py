"""Soft weight-sharing (Ullrich et al. 2017) on real data, taken apart on the validation split:
what the retraining under the mixture prior costs, and what the hardening costs after it.

    python bench/ablate_soft.py [--model lenet300_100] [--set KEY=VALUE ...] [--finetune EPOCHS]
                                [--threads N]

From the cached baseline of `--model`, `netshrink.share.soft.train_soft` retrains every conv /
linear layer under the prior with ShareSoftConfig's defaults, each `--set` replacing one
(`--set epochs=4 --set pi_zero=0.99`); `harden_soft` then merges the components and snaps each
weight to its most responsible component's mean, pruning the zero component's. One row per
settings: validation top-1 of the baseline, of the soft-trained model (weights continuous) and
of the hardened one; of the soft-trained model with only the zero component's weights pruned
(the others left continuous: what pruning alone costs); with `--finetune`, of the hardened
model after that many epochs of training its components' means (as a recipe stage's
`finetune: {epochs: N}` does); the share of weights pruned; the learned zero component's std
beside the weights' own; the nonzero components' means after merging; the packed file's bytes
and ratio
(fp32 codebooks, no fixed point). The test split is not read. Writes
bench/results/ablate_soft.json (a rerun of other settings keeps the published rows) and its
section of docs/benchmarks.md.
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import merge_published, publish  # noqa: E402
from netshrink.codec import PackConfig, packed_bytes  # noqa: E402
from netshrink.measure import count_parameters, dense_bytes  # noqa: E402
from netshrink.share.soft import (  # noqa: E402
    ShareSoftConfig,
    assign_components,
    harden_soft,
    train_soft,
)
from netshrink.stage import Stage, relative_fit  # noqa: E402
from netshrink.train import FitConfig, evaluate, fit  # noqa: E402
from pipeline import baseline  # noqa: E402

PACK = PackConfig(index_bits="best", coders=("huffman", "ans"))
COLUMNS = [
    "model",
    "settings",
    "val top-1 base",
    "soft-trained",
    "hardened",
    "zeros pruned only",
    "fine-tuned",
    "pruned",
    "zero std / weights' std",
    "means after merging",
    "bytes",
    "ratio",
    "seconds",
]


def parse_settings(pairs: list[str]) -> dict:
    """`KEY=VALUE` pairs as ShareSoftConfig fields (values read as YAML scalars)."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE")
        settings[key] = yaml.safe_load(value)
    ShareSoftConfig(**settings)  # unknown keys and bad values fail here, before any training
    return settings


def val_top1(model, data) -> float:
    return round(100 * evaluate(model, data.loader("val", 500)).top1, 2)


def zeros_pruned(training) -> torch.nn.Module:
    """A copy of the soft-trained model with only the zero component's weights set to 0."""
    model = copy.deepcopy(training.model).eval()
    _, components = assign_components(training)
    with torch.no_grad():
        for (name, _), keep, component in zip(training.chosen, training.keeps, components):
            weight = model.get_submodule(name).weight
            kept = weight[keep]
            weight[keep] = torch.where(component == 0, torch.zeros_like(kept), kept)
    return model


def ablate(name: str, settings: dict, finetune: int) -> dict:
    model, data, base_fit = baseline(name)
    config = ShareSoftConfig(**settings)
    start = time.perf_counter()
    training = train_soft(copy.deepcopy(model), data, config)
    seconds = time.perf_counter() - start
    soft_val = val_top1(training.model, data)
    zeros_val = val_top1(zeros_pruned(training), data)
    weights = torch.cat([m.weight.detach().reshape(-1) for _, m in training.chosen])
    zero_std = float(training.prior.log_variances.detach()[0].div(2).exp())
    hardened = harden_soft(training).eval()
    count = count_parameters(hardened)
    codebooks = sorted({round(float(v), 3) for _, m in training.chosen
                        for v in m.weight.detach().unique() if v != 0})  # fmt: skip
    hardened_val = val_top1(hardened, data)
    tuned_val = None
    if finetune:
        fit(
            hardened,
            data,
            relative_fit(FitConfig(epochs=finetune), base_fit, Stage.finetune_lr_divisor),
        )
        tuned_val = f"{val_top1(hardened.eval(), data)} ({finetune} ep)"
    raw = packed_bytes(hardened, PACK)
    return {
        "model": name,
        "settings": ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) or "defaults",
        "val top-1 base": val_top1(model, data),
        "soft-trained": soft_val,
        "hardened": hardened_val,
        "zeros pruned only": zeros_val,
        "fine-tuned": tuned_val,
        "pruned": round(1 - count.nonzero / count.total, 4),
        "zero std / weights' std": f"{zero_std:.4f} / {float(weights.std()):.4f}",
        "means after merging": ", ".join(f"{v:g}" for v in codebooks[:20]),
        "bytes": len(raw),
        "ratio": round(dense_bytes(model) / len(raw), 1),
        "seconds": round(seconds),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet300_100")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--finetune", type=int, default=0, metavar="EPOCHS",
        help="train the hardened model's means this many epochs (default 0: not measured)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [ablate(args.model, parse_settings(args.set), args.finetune)]
    rows, earlier = merge_published(
        "ablate_soft", rows, lambda r: (r["model"], r["settings"]), lambda part: part
    )
    notes = (
        "Validation split (the test split is not read); one seed (ShareSoftConfig's). "
        "`soft-trained`: the model right after the retraining under the prior, its weights "
        "still continuous; `hardened`: after merging and snapping (share_soft's result); "
        "`fine-tuned`: the hardened model after training its means as a recipe's `finetune` "
        "does (SGD at the baseline's rate / 10, each mean moved by its members' mean gradient; "
        "rows made before that change (2026-12-07, 15:00 UTC) summed the gradients at 0.0005), "
        "the bytes are then its file's. "
        "`pruned`: share of all parameters that are zero. Bytes: the packed .nsk of the hardened "
        f"model (fp32 codebooks, no fixed point); torch on {args.threads} thread(s)." + earlier
    )
    publish(
        "ablate_soft",
        "Soft weight-sharing taken apart on real data (bench/ablate_soft.py)",
        rows,
        COLUMNS,
        notes,
    )


if __name__ == "__main__":
    main()
