"""Weight-sharing benchmark on Fashion-MNIST, against the cached baselines (bench/baselines.py).

    python bench/share.py [--cases kmeans gong speed] [--seeds 0]

Cases (the weight-sharing issue's table):

- kmeans: Caffe LeNet-5 and LeNet-300-100 pruned as bench/prune.py prunes them (iterative std
  thresholds: bench/pipeline.py), then per-layer k-means (conv 8 / fc 5 bits, then 4
  bits everywhere, linear init) and 2 epochs of centroid fine-tuning (Han et al. 2016);
- gong: Gong et al. 2014's comparison on the fully connected layers of LeNet-300-100 and the
  small VGG, no retraining: top-1 against compression rate for KM, PQ along x and y, RQ,
  binarization and SVD; a table and docs/share_gong.png like the paper's figure;
- speed: netshrink's 1-D k-means against scikit-learn's KMeans on 1M weights, 16 and 256 clusters.

Writes bench/results/share.json and the share section of docs/benchmarks.md. The pruned models
are cached next to the baselines (share-bench/), keyed by what made them.
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DOC, publish  # noqa: E402
from netshrink.codec import packed_bytes, summarize_model  # noqa: E402
from netshrink.layers import select_layers  # noqa: E402
from netshrink.measure import dense_bytes  # noqa: E402
from netshrink.share import (  # noqa: E402
    FactorSvdConfig,
    ShareBinaryConfig,
    ShareKmeansConfig,
    SharePqConfig,
    ShareRqConfig,
    factor_svd,
    kmeans_1d,
    share_binary,
    share_kmeans,
    share_pq,
    share_rq,
)
from netshrink.stage import Stage  # noqa: E402
from netshrink.train import FitConfig, evaluate, fit  # noqa: E402
from pipeline import baseline, pruned_baseline  # noqa: E402

COLUMNS = [
    "case",
    "method",
    "top-1 ref",
    "top-1 shared",
    "top-1 final",
    "loss pt",
    "ratio",
    "target",
    "meets target",
    "netshrink s",
    "sklearn s",
    "speed-up",
    "inertia ratio",
]
BITS = {
    "lenet300_100": [("fc 5 bits", {"fc_bits": 5}), ("4 bits", {"bits": 4})],
    "lenet5_caffe": [
        ("conv 8 / fc 5 bits", {"conv_bits": 8, "fc_bits": 5}),
        ("4 bits", {"bits": 4}),
    ],
}
LABELS = {
    "lenet300_100": "LeNet-300-100",
    "lenet5_caffe": "Caffe LeNet-5",
    "vgg_small": "small VGG",
}
# Centroid fine-tuning at the stages' default rate (the baselines trained at 0.05)
FINETUNE = FitConfig(epochs=2, lr=0.05 / Stage.finetune_lr_divisor, batch_size=128)
# Rates at which the families are compared: b-bit sharing reaches a little under 32 / b.
RATES = (3.75, 7.5, 10, 15, 20, 30)
FAMILIES = ("KM", "PQ-x", "PQ-y", "PQ", "RQ", "binary", "SVD")  # prefixes: PQ = PQ-x or PQ-y
TIE = 0.001  # 10 of the 10,000 test images: closer than this, an ordering is noise


def _baseline(name: str):
    model, data, _ = baseline(name)
    return model, data


def _top1(model, data) -> float:
    return evaluate(model, data.loader("test", 512)).top1


def kmeans_rows(name: str, seeds: list[int]) -> list[dict]:
    """The pruned model, then each bit setting: k-means, then centroid fine-tuning."""
    dense, pruned, data = pruned_baseline(name, seeds[0])
    dense_size, pruned_top1 = dense_bytes(dense), _top1(pruned, data)
    rows = [
        {
            "case": f"{LABELS[name]} pruned (start)",
            "method": "iterative std + retrain, as bench/prune.py",
            "top-1 ref": _top1(dense, data),
            "top-1 final": pruned_top1,
            "ratio": dense_size / len(packed_bytes(pruned)),
        }
    ]
    for label, bits in BITS[name]:
        shared = share_kmeans(copy.deepcopy(pruned), ShareKmeansConfig(**bits), progress=False)
        tuned = []
        for seed in seeds:
            model = copy.deepcopy(shared)
            fit(model, data, FINETUNE.model_copy(update={"seed": seed}), progress=False)
            tuned.append(_top1(model, data))
        top1 = statistics.median(tuned)
        rows.append(
            {
                "case": f"{LABELS[name]} pruned + k-means",
                "method": f"{label}, linear init, {FINETUNE.epochs} ep centroid fine-tuning",
                "top-1 ref": pruned_top1,
                "top-1 shared": _top1(shared, data),
                "top-1 final": top1,
                "loss pt": 100 * (pruned_top1 - top1),
                "ratio": dense_size / len(packed_bytes(shared)),
                "target": "<= 0.3 pt vs pruned",
                "meets target": 100 * (pruned_top1 - top1) <= 0.3,
            }
        )
    return rows


def gong_settings() -> list[tuple]:
    """(family, setting, method, config) for every point of the comparison."""
    km = [("KM", f"k={2**b}", share_kmeans, ShareKmeansConfig(bits=b, init="kmeans++"))
          for b in range(1, 9)]  # fmt: skip
    pq = [
        (f"PQ-{tag} s={s}", f"k={k}", share_pq, SharePqConfig(segment=s, k=k, axis=axis))
        for axis, tag in (("rows", "x"), ("columns", "y"))
        for s in range(1, 5)
        for k in (8, 16, 32, 64, 128, 256)
    ]
    rq = [("RQ s=4 t=2", f"k={k}", share_rq, ShareRqConfig(stages=2, k=k, segment=4))
          for k in (4, 8, 16, 32, 64)]  # fmt: skip
    rq += [("RQ rows k=16", f"t={t}", share_rq, ShareRqConfig(stages=t, k=16)) for t in range(1, 5)]
    binary = [
        ("binary", "layer", share_binary, ShareBinaryConfig(scale="layer")),
        ("binary", "channel", share_binary, ShareBinaryConfig(scale="channel")),
        ("binary", "ternary", share_binary, ShareBinaryConfig(scale="channel", ternary=True)),
    ]
    svd = [
        (f"SVD{tag}", f"ratio={r}", factor_svd, FactorSvdConfig(ratio=r))
        for tag in ("", ", output kept")
        for r in (1.5, 2, 4, 8, 16, 32)
    ]
    return km + pq + rq + binary + svd


def _head(name: str):
    """The fully connected part of a baseline and its test inputs (VGG: cached features)."""
    model, data = _baseline(name)
    batches = list(data.loader("test", 512))
    if name == "vgg_small":
        with torch.inference_mode():
            batches = [(model.features(x), y) for x, y in batches]
        return model.classifier.eval(), batches
    return model, batches


def _accuracy(head, batches) -> float:
    with torch.inference_mode():
        hits = sum(int((head(x).argmax(1) == y).sum()) for x, y in batches)
    return hits / sum(len(y) for _, y in batches)


def _weight_bits(head) -> int:
    """Bits of the weights in the head's .nsk file (a PQ / RQ layer as its codebooks and codes,
    the `vector` encoding; a per-channel binary one as scales and signs, `sign`)."""
    return sum(8 * r.nbytes for r in summarize_model(head).tensors if r.name.endswith("weight"))


def gong_points(name: str) -> tuple[float, list[dict]]:
    """Top-1 and compression rate of the FC weights (the dense fp32 bits of the baseline's FC
    weights over the bits the compressed ones need) at every setting."""
    head, batches = _head(name)
    reference, dense_bits = _accuracy(head, batches), _weight_bits(head)
    points = []
    # "output kept": factor every FC layer but the small classifier layer, which stays at fp32
    hidden = [n for n, _ in select_layers(head)][:-1]
    for family, setting, method, config in gong_settings():
        layers = hidden if family.endswith("output kept") else None
        model = method(copy.deepcopy(head), config, layers=layers, progress=False).eval()
        points.append(
            {
                "family": family,
                "setting": setting,
                "rate": round(dense_bits / _weight_bits(model), 3),
                "top-1": _accuracy(model, batches),
            }
        )
    return reference, points


def best_at(points: list[dict], family_prefix: str, rate: float) -> float | None:
    """The best top-1 of a family (all its variants) among settings reaching `rate`."""
    hits = [
        p["top-1"] for p in points if p["family"].startswith(family_prefix) and p["rate"] >= rate
    ]
    return max(hits) if hits else None


def gong_rows(names: list[str]) -> tuple[list[dict], str, Path]:
    """One row a model (target: PQ >= KM > SVD at every rate all three reach), the table of best
    top-1 by family and rate, a line a model on where the ordering breaks and on RQ, the plot."""
    rows, curves, notes = [], {}, []
    lines = ["| model | family | " + " | ".join(f">= {r}x" for r in RATES) + " |"]
    lines += ["| " + " | ".join(["---"] * (2 + len(RATES))) + " |"]
    for name in names:
        reference, points = gong_points(name)
        curves[name] = (reference, points)
        best = {f: [best_at(points, f, r) for r in RATES] for f in FAMILIES}
        lines += [
            f"| {LABELS[name]} | {f} | " + " | ".join(_cell(c) for c in cells) + " |"
            for f, cells in best.items()
        ]
        by_rate = {
            r: (pq, km, svd)
            for r, pq, km, svd in zip(RATES, best["PQ"], best["KM"], best["SVD"])
            if None not in (pq, km, svd)
        }
        pq_below = [r for r, (pq, km, _) in by_rate.items() if pq < km - TIE]
        svd_level = [r for r, (_, km, svd) in by_rate.items() if svd >= km - TIE]
        rows.append(
            {
                "case": f"Gong et al. comparison, {LABELS[name]} FC layers",
                "method": "KM, PQ-x/y, RQ, binary, SVD; no retraining",
                "top-1 ref": reference,
                "target": f"PQ >= KM - {100 * TIE:g} pt > SVD at equal rate; report RQ",
                "meets target": bool(by_rate)
                and not pq_below
                and all(km > svd for _, km, svd in by_rate.values()),
                "PQ below KM at rates": pq_below,
                "SVD within 0.1 pt of KM at rates": svd_level,
                "points": points,
            }
        )
        notes.append(_gong_note(LABELS[name], best, pq_below, svd_level))
    png = plot_gong(curves, DOC.parent / "share_gong.png")
    return rows, "\n".join(lines) + "\n\n" + "\n\n".join(notes), png


def _gong_note(label: str, best: dict, pq_below: list, svd_level: list) -> str:
    pq = f"PQ below KM by more than {100 * TIE:g} pt at " + (
        ", ".join(f">= {r}x" for r in pq_below) or "no rate"
    )
    if all(v is None for v in best["PQ"]):
        pq = "PQ reaches no rate (stored dense)"
    parts = [
        f"{label}: {pq}",
        "SVD within it of KM at " + (", ".join(f">= {r}x" for r in svd_level) or "no rate"),
        "RQ minus PQ / minus KM: "
        + (
            ", ".join(
                f">= {r}x {100 * (rq - pq):+.2f} / {100 * (rq - km):+.2f} pt"
                for r, rq, pq, km in zip(RATES, best["RQ"], best["PQ"], best["KM"])
                if rq is not None
            )
            or "none (RQ reaches no rate)"
        ),
    ]
    return "; ".join(parts) + "."


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def plot_gong(curves: dict, path: Path) -> Path:
    """Top-1 against compression rate, one panel a model, like Gong et al.'s figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6.5 * len(curves), 4.8), squeeze=False)
    for ax, (name, (reference, points)) in zip(axes[0], curves.items()):
        families = list(dict.fromkeys(p["family"] for p in points))
        for family in families:
            mine = sorted((p["rate"], 100 * p["top-1"]) for p in points if p["family"] == family)
            style = _style(family)
            ax.plot(*zip(*mine), label=family, markersize=3, linewidth=1, **style)
        ax.axhline(100 * reference, color="grey", linestyle=":", linewidth=1, label="uncompressed")
        ax.set_xscale("log", base=2)
        ax.set(
            xlabel="compression rate of the FC weights",
            ylabel="top-1 (%)",
            title=f"{LABELS[name]} on Fashion-MNIST, FC layers, no retraining",
            xlim=(1, 64),
            ylim=(max(0, 100 * reference - 20), 100 * reference + 1),
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _style(family: str) -> dict:
    if family.startswith("PQ"):
        shade = int(family[-1]) / 4
        color = plt_color("Blues" if "-x" in family else "Oranges", 0.35 + 0.6 * shade)
        return {"color": color, "marker": "o", "linestyle": "-" if "-x" in family else "--"}
    fixed = {
        "KM": ("black", "s"),
        "SVD": ("red", "^"),
        "SVD, output kept": ("firebrick", "x"),
        "binary": ("green", "D"),
        "RQ s=4 t=2": ("purple", "v"),
        "RQ rows k=16": ("magenta", "P"),
    }
    color, marker = fixed.get(family, ("purple", "v"))
    return {"color": color, "marker": marker, "linestyle": "-" if family != "binary" else "none"}


def plt_color(cmap: str, value: float):
    import matplotlib

    return matplotlib.colormaps[cmap](value)


def speed_rows(seeds=(0, 1, 2)) -> list[dict]:
    """netshrink's 1-D k-means against scikit-learn's on 1M real weights (the small VGG's and
    Caffe LeNet-5's), one thread each, medians over `seeds` of time and inertia."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    weights = []
    for name in ("vgg_small", "lenet5_caffe"):
        model, _ = _baseline(name)
        weights += [m.weight.detach().flatten() for _, m in select_layers(model)]
    x = torch.cat(weights)[:1_000_000].double().numpy()
    rows = []
    for k in (16, 256):
        ours = [_timed(lambda s=s: kmeans_1d(x, k, init="kmeans++", seed=s)) for s in seeds]
        with threadpool_limits(1):
            theirs = [
                _timed(
                    lambda s=s: KMeans(k, init="k-means++", n_init=1, random_state=s).fit(
                        x[:, None]
                    )
                )
                for s in seeds
            ]
        inertia = statistics.median(r.inertia for _, r in ours)
        reference = statistics.median(r.inertia_ for _, r in theirs)
        seconds = statistics.median(t for t, _ in ours)
        sklearn_s = statistics.median(t for t, _ in theirs)
        rows.append(
            {
                "case": f"k-means speed, {x.size:,} weights, k={k}",
                "method": f"kmeans_1d vs sklearn KMeans, both k-means++ (n_init=1), 1 thread, "
                f"median of {len(seeds)} seeds",
                "netshrink s": seconds,
                "sklearn s": sklearn_s,
                "speed-up": sklearn_s / seconds,
                "inertia ratio": inertia / reference,
                "linear-init inertia ratio": kmeans_1d(x, k, init="linear").inertia / reference,
                "target": "inertia within 1%, time ratio",
                "meets target": inertia <= 1.01 * reference,
            }
        )
    return rows


def _timed(run):
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=("kmeans", "gong", "speed"),
        default=["kmeans", "gong", "speed"],
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="fine-tuning seeds (median); the pruning uses the first",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # other jobs share the two cores: oversubscribed threads crawl
    rows, notes = [], []
    started = time.perf_counter()
    if "kmeans" in args.cases:
        for name in ("lenet300_100", "lenet5_caffe"):
            rows += kmeans_rows(name, args.seeds)
        notes.append(
            f"k-means rows: `top-1 final` is after {FINETUNE.epochs} epochs of centroid "
            f"fine-tuning at lr {FINETUNE.lr:g} (the CLI's default, the baseline's / "
            f"{Stage.finetune_lr_divisor:g}: a centroid moves by its members' mean gradient), median over seeds {args.seeds}; "
            "on the start rows it is the pruned model. `ratio`: dense fp32 bytes over the bytes "
            "of the model's .nsk file (netshrink.codec.packed_bytes: header, relative positions, "
            "codebooks and entropy-coded indices as the file holds them)."
        )
    if "gong" in args.cases:
        gong, table, png = gong_rows(["lenet300_100", "vgg_small"])
        rows += gong
        notes.append(
            "Gong et al. comparison: best top-1 of each family among the settings that reach a "
            "compression rate (the FC weights' dense fp32 bytes over their bytes in the .nsk "
            "file, netshrink.codec.summarize_model; no retraining. PQ and RQ layers are stored "
            "as codebooks plus codes (the `vector` encoding), per-channel binary and ternary as "
            "scales plus sign symbols (`sign`); each point's rate is in the JSON; "
            "PQ = the better of PQ-x and PQ-y; SVD = the better of SVD at the same ratio in "
            "every FC layer and SVD that keeps the 10-way output layer at fp32, which truncation "
            "ruins; KM with k-means++ starts). Every point is in "
            f"bench/results/share.json.\n\n{table}\n\n![Gong et al. comparison]({png.name})"
        )
    if "speed" in args.cases:
        rows += speed_rows()
        notes.append(
            "Speed rows: both single-threaded, medians over 3 seeds; `linear-init inertia ratio` "
            "in the JSON is Han et al.'s linear start, which keeps centroids on the rare large "
            "weights and so leaves more squared error by design."
        )
    rows = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    notes.append(
        f"Torch on 1 thread (other jobs share the cores); whole run "
        f"{time.perf_counter() - started:.0f} s."
    )
    publish("share", "Weight sharing on Fashion-MNIST", rows, COLUMNS, notes="\n\n".join(notes))


if __name__ == "__main__":
    main()
