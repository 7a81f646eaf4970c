"""`netshrink share`: the weight-sharing family on the command line.

    netshrink share CHECKPOINT --method kmeans --bits conv=8,fc=5 --finetune-epochs 2 --out OUT
    netshrink share CHECKPOINT --method pq --k 256 --segment 4 --axis rows --out OUT
    netshrink share CHECKPOINT --method svd --energy 0.9 --finetune-epochs 1 --out OUT

Each `--method` is a face of one method of netshrink.methods (the `FACES` table); the checkpoint
written holds the decoded weights (what the forward pass computes); the tables show what its .nsk
file holds (netshrink.codec.summary): each layer's encoding and bytes, and the file's size.
"""

from ..codec import summarize_model
from ..errors import ConfigError
from ..report import console, layer_rows, storage_table
from ..share.kmeans import Init
from ..stage import Stage
from .apply import (
    Flag,
    add_flags,
    add_stage_options,
    flag_stage,
    refuse_other_flags,
    run_stages,
    stage_options,
)


def bits_fields(text: str) -> dict:
    """The k-means fields of a `--bits` value: `N`, or `conv=N,fc=N,LAYER=N` in any mix."""
    fields: dict = {}
    try:
        for part in filter(None, text.split(",")):
            name, _, value = part.rpartition("=")
            if not name:
                fields["config.bits"] = int(value)
            elif name in ("conv", "fc"):
                fields[f"config.{name}_bits"] = int(value)
            else:
                fields.setdefault("config.per_layer", {})[name] = int(value)
    except ValueError:
        raise ConfigError(
            f"--bits {text!r}: give N or a list like conv=8,fc=5,fc3=6 (bits are integers)"
        ) from None
    if not fields:
        raise ConfigError("--bits is empty: give N or a list like conv=8,fc=5")
    return fields


FLAGS = {
    "bits": Flag(
        "--bits", "config.bits", "kmeans: N, or per type / layer, e.g. conv=8,fc=5,fc3=6", type=str,
        parse=bits_fields,
    ),
    "init": Flag("--init", "config.init", "kmeans start", type=str, choices=Init.__args__),
    "k": Flag("--k", "config.k", "pq / rq: centres per segment", type=int),
    "segment": Flag("--segment", "config.segment", "pq / rq: sub-vector length", type=int),
    "axis": Flag(
        "--axis", "config.axis", "pq / rq: sub-vectors along each row (Gong et al.'s x) or "
        "column (y)", type=str, choices=("rows", "columns"),
    ),
    "stages": Flag("--stages", "config.stages", "rq: residual stages", type=int),
    "scale": Flag(
        "--scale", "config.scale", "binary: one alpha per layer or per output channel", type=str,
        choices=("layer", "channel"),
    ),
    "ternary": Flag("--ternary", "config.ternary", "binary: {-1, 0, +1} * alpha", type=bool),
    "rank": Flag("--rank", "config.rank", "svd: fixed rank", type=int),
    "ratio": Flag("--ratio", "config.ratio", "svd: weights / factor weights per layer"),
    "energy": Flag("--energy", "config.energy", "svd: fraction of spectral energy kept"),
    "fold": Flag(
        "--fold-batchnorm", "fold_batchnorm", "fold batch norm into the layers first, so that a "
        "later quantize keeps the sharing", type=bool,
    ),
}  # fmt: skip

# --method: (the method it runs, the flags it reads)
FACES = {
    "kmeans": ("share_kmeans", ("bits", "init", "fold")),
    "pq": ("share_pq", ("k", "segment", "axis", "fold")),
    "rq": ("share_rq", ("stages", "k", "segment", "axis", "fold")),
    "binary": ("share_binary", ("scale", "ternary", "fold")),
    "svd": ("factor_svd", ("rank", "ratio", "energy")),
}


def add_commands(commands) -> None:
    """Register `share` on the top-level sub-command parser."""
    p = commands.add_parser(
        "share",
        help="weight sharing: k-means, product / residual quantization, binarization, SVD",
        description="Share the weights of a checkpoint's conv and linear layers and save the "
        "result. kmeans: 2**bits centroids per layer on the surviving weights, then centroid "
        "fine-tuning (Han et al. 2016); pq / rq: product / residual quantization of each weight "
        "matrix (Gong et al. 2014); binary: alpha * sign(W), or ternary; svd: low-rank factors "
        "(Denton et al. 2014). Exact zeros of the checkpoint are taken as pruned (they stay "
        "zero). Defaults are the methods' own (netshrink apply METHOD sets any field).",
    )
    p.add_argument("--method", choices=tuple(FACES), required=True)
    uses = [
        (face, method, FLAGS[name]) for face, (method, names) in FACES.items() for name in names
    ]
    add_flags(p, list(FLAGS.values()), uses)
    add_stage_options(p)
    p.set_defaults(run=run_share, build=build_share)


def build_share(args) -> list[Stage]:
    """The one stage `share --method ...` describes."""
    method, names = FACES[args.method]
    flags = [FLAGS[name] for name in names]
    refuse_other_flags(args, flags, list(FLAGS.values()))
    return [flag_stage(method, flags, args, **stage_options(args))]


def run_share(args) -> None:
    run_stages(args, build_share(args), title=f"shared ({args.method})", tables=[_print_storage])


def _print_storage(model, ctx, data, args) -> None:
    stored = layer_rows(summarize_model(model), model)  # what the .nsk file holds for each layer
    console().print(storage_table(stored, title="shared layers"))
