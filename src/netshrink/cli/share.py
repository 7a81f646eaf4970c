"""`netshrink share`: the weight-sharing family on the command line.

    netshrink share CHECKPOINT --method kmeans --bits conv=8,fc=5 --finetune-epochs 2 --out OUT
    netshrink share CHECKPOINT --method pq --k 256 --segment 4 --axis rows --out OUT
    netshrink share CHECKPOINT --method svd --energy 0.9 --finetune-epochs 1 --out OUT

Exact zeros of the checkpoint are taken as pruned (they stay zero). The checkpoint written holds
the decoded weights (what the forward pass computes); the tables show what its .nsk file holds
(netshrink.codec.summary): each layer's encoding and bytes, and the file's size.
"""

from pathlib import Path

from ..checkpoint import save_checkpoint
from ..cli import (
    add_checkpoint_args,
    load_for_command,
    make_config,
    measure_stage,
    refuse_overwriting_checkpoint,
    retrain_config,
)
from ..codec import summarize_model
from ..errors import ConfigError
from ..layers import select_layers
from ..measure import dense_bytes
from ..prune.mask import restore_masks
from ..report import console, layer_rows, print_measurements, storage_table
from ..train import fit
from .codebooks import CODEBOOK_LR_DIVISOR
from .kmeans import Init
from .product import SharePqConfig, ShareRqConfig, share_pq, share_rq
from .scalar import ShareBinaryConfig, ShareKmeansConfig, share_binary, share_kmeans
from .svd import FactorSvdConfig, factor_svd

METHODS = ("kmeans", "pq", "rq", "binary", "svd")


def add_commands(commands) -> None:
    """Register `share` on the top-level sub-command parser."""
    p = commands.add_parser(
        "share",
        help="weight sharing: k-means, product / residual quantization, binarization, SVD",
        description="Share the weights of a checkpoint's conv and linear layers and save the "
        "result. kmeans: 2**bits centroids per layer on the surviving weights, then centroid "
        "fine-tuning (Han et al. 2016); pq / rq: product / residual quantization of each weight "
        "matrix (Gong et al. 2014); binary: alpha * sign(W), or ternary; svd: low-rank factors "
        "(Denton et al. 2014).",
    )
    add_checkpoint_args(p)
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument(
        "--bits", default="5", help="kmeans: N, or per type / layer, e.g. conv=8,fc=5,fc3=6"
    )
    p.add_argument("--init", choices=Init.__args__, default="linear", help="kmeans start")
    p.add_argument("--k", type=int, help="pq / rq: centres per segment (default 256 / 16)")
    p.add_argument(
        "--segment", type=int, help="pq / rq: sub-vector length (default 4; rq: whole rows)"
    )
    p.add_argument(
        "--axis",
        choices=("rows", "columns"),
        default="rows",
        help="pq / rq: sub-vectors along each row (Gong et al.'s x) or column (y)",
    )
    p.add_argument("--stages", type=int, default=2, help="rq: residual stages")
    p.add_argument(
        "--scale",
        choices=("layer", "channel"),
        default="channel",
        help="binary: one alpha per layer or per output channel",
    )
    p.add_argument("--ternary", action="store_true", help="binary: {-1, 0, +1} * alpha")
    p.add_argument("--rank", type=int, help="svd: fixed rank")
    p.add_argument("--ratio", type=float, help="svd: weights / factor weights per layer")
    p.add_argument("--energy", type=float, help="svd: fraction of spectral energy kept")
    p.add_argument(
        "--layers",
        type=lambda s: [n for n in s.split(",") if n],
        help="comma-separated layer names (default: every conv and linear layer)",
    )
    p.add_argument("--seed", type=int, default=0, help="k-means starts and fine-tuning")
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="epochs of training after sharing: the codebooks (svd: the factors) learn",
    )
    p.add_argument(
        "--finetune-lr",
        type=float,
        help=f"default: the baseline's / {CODEBOOK_LR_DIVISOR} (svd: / 10)",
    )
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--out", type=Path, required=True, help="output checkpoint path (no suffix)")
    p.set_defaults(run=run_share)


def run_share(args) -> None:
    refuse_overwriting_checkpoint(args.out, args.checkpoint)
    model, meta, data = load_for_command(args)
    restore_masks(model, select_layers(model))  # a checkpoint's zeros are pruned weights
    dense = dense_bytes(model)
    rows = [measure_stage(model, "before", data, args, dense)]
    share_model(model, args)
    divisor = 10 if args.method == "svd" else CODEBOOK_LR_DIVISOR
    finetune = retrain_config(
        meta, epochs=args.finetune_epochs, lr=args.finetune_lr, lr_divisor=divisor, seed=args.seed
    )
    if finetune.epochs:
        fit(model, data, finetune)
    rows.append(measure_stage(model, f"shared ({args.method})", data, args, dense))
    metrics = {"test_top1": rows[1].top1, "test_top5": rows[1].top5}
    update = {"metrics": metrics} | ({"fit": finetune} if finetune.epochs else {})
    out = save_checkpoint(model, args.out, meta.model_copy(update=update))
    stored = layer_rows(summarize_model(model), model)  # what the .nsk file holds for each layer
    console().print(storage_table(stored, title="shared layers"))
    print_measurements(rows, title=f"share --method {args.method}: {out}")


def share_model(model, args) -> None:
    """Apply the method that `args` names, with its options, to `model`."""
    layers = args.layers
    if args.method == "kmeans":
        share_kmeans(model, kmeans_config(args.bits, args.init, args.seed), layers=layers)
    elif args.method == "pq":
        config = make_config(
            SharePqConfig, segment=args.segment, k=args.k, axis=args.axis, seed=args.seed
        )
        share_pq(model, config, layers=layers)
    elif args.method == "rq":
        config = make_config(
            ShareRqConfig,
            stages=args.stages,
            k=args.k,
            segment=args.segment,
            axis=args.axis,
            seed=args.seed,
        )
        share_rq(model, config, layers=layers)
    elif args.method == "binary":
        config = make_config(ShareBinaryConfig, scale=args.scale, ternary=args.ternary)
        share_binary(model, config, layers=layers)
    else:
        given = {"rank": args.rank, "ratio": args.ratio, "energy": args.energy}
        if sum(v is not None for v in given.values()) != 1:
            raise ConfigError("--method svd needs exactly one of --rank, --ratio or --energy")
        factor_svd(model, make_config(FactorSvdConfig, **given), layers=layers)


def kmeans_config(bits: str, init: str, seed: int) -> ShareKmeansConfig:
    """The k-means config for a `--bits` value: `N`, or `conv=N,fc=N,LAYER=N` in any mix."""
    fields: dict = {"per_layer": {}}
    try:
        for part in filter(None, bits.split(",")):
            name, _, value = part.rpartition("=")
            if not name:
                fields["bits"] = int(value)
            elif name in ("conv", "fc"):
                fields[f"{name}_bits"] = int(value)
            else:
                fields["per_layer"][name] = int(value)
    except ValueError:
        raise ConfigError(
            f"--bits {bits!r}: give N or a list like conv=8,fc=5,fc3=6 (bits are integers)"
        ) from None
    if len(fields) == 1 and not fields["per_layer"]:
        raise ConfigError("--bits is empty: give N or a list like conv=8,fc=5")
    return make_config(ShareKmeansConfig, init=init, seed=seed, **fields)
