"""`netshrink prune` and `netshrink sensitivity`: the pruning family on the command line.

Each `--method` is a face of one method of netshrink.methods: its flags set the fields of that
method's stage (the `FACES` table), and the stage runs as in a recipe (`apply.run_stages`).
"""

from pathlib import Path

from ..checkpoint import checkpoint_paths
from ..errors import ConfigError
from ..files import atomic_write, refuse_overwrite_input
from ..prune.sensitivity import budget_sparsities, plot_sensitivity, sensitivity_analysis
from ..report import console, layer_table
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
from .common import add_checkpoint_args, load_for_command

FLAGS = {
    "ratio": Flag("--ratio", "threshold.ratio", "std: threshold = RATIO * std(W)"),
    "sparsity": Flag("--sparsity", "threshold.sparsity", "sparsity/global/gradual: fraction pruned"),
    "final": Flag("--sparsity", "final_sparsity", ""),
    "budget": Flag("--budget", "budget", "incremental: top-1 points it may lose (validation)"),
    "kl_scale": Flag("--kl-scale", "kl_scale", "variational: KL weight (above 1 prunes harder)"),
    "amount": Flag("--amount", "amount", "filters: fraction of channels removed"),
    "target_macs": Flag("--target-macs", "target_macs", "filters: fraction of MACs to remove"),
    "criterion": Flag(
        "--criterion", "criterion", "filters: channel score", type=str,
        choices=("l1", "l2", "bn_scale"),
    ),
    "residual": Flag(
        "--residual", "residual", "filters: prune residual groups together, or leave them whole",
        type=str, choices=("group", "skip"),
    ),
}  # fmt: skip

# --method: (the method it runs, fixed fields of its config, the flags it reads)
FACES = {
    "std": ("prune_magnitude", {"threshold.kind": "std"}, ("ratio",)),
    "sparsity": ("prune_magnitude", {"threshold.kind": "sparsity"}, ("sparsity",)),
    "global": ("prune_magnitude", {"threshold.kind": "global"}, ("sparsity",)),
    "incremental": ("prune_incremental", {}, ("budget",)),
    "gradual": ("prune_gradual", {}, ("final",)),
    "variational": ("prune_variational", {}, ("kl_scale",)),
    "filters": ("prune_filters", {}, ("amount", "target_macs", "criterion", "residual")),
}


def add_commands(commands) -> None:
    """Register `prune` and `sensitivity` on the top-level sub-command parser."""
    p = commands.add_parser(
        "prune",
        help="prune a checkpoint (magnitude, iterative, incremental, gradual, variational, filters)",
        description="Prune a checkpoint and save the result. std: |w| < RATIO * std(W) per layer "
        "(Han et al.); sparsity: per-layer percentile; global: one threshold over all layers; "
        "--steps N > 1 makes any of these iterative with retraining between steps; incremental: "
        "per-layer ratios under an accuracy --budget, no retraining (Al-Hami et al.); gradual: "
        "cubic schedule to --sparsity while training (Zhu & Gupta); variational: a dropout "
        "rate learned per weight, --kl-scale (Molchanov et al.); filters: remove whole "
        "channels (Li et al.), --amount or --target-macs. Defaults are the methods' own "
        "(netshrink apply METHOD sets any field).",
    )
    p.add_argument("--method", choices=tuple(FACES), required=True)
    uses = [
        (face, method, FLAGS[name].under("config"))
        for face, (method, _, names) in FACES.items()
        for name in names
    ]
    add_flags(p, list(FLAGS.values()), uses)
    p.add_argument(
        "--steps",
        type=int,
        help="std/sparsity/global: N steps, retraining between (default: 1, one shot)",
    )
    p.add_argument(
        "--retrain-epochs",
        type=int,
        help="epochs of retraining after pruning (after each step with --steps; gradual, "
        "variational: the training it prunes during)",
    )
    p.add_argument("--retrain-lr", type=float, help="learning rate of that retraining")
    add_stage_options(p, finetune=False)
    p.set_defaults(run=run_prune, build=build_prune)

    s = commands.add_parser(
        "sensitivity",
        help="accuracy of each layer pruned alone at 0..95%% sparsity",
        description="Prune each layer alone at sparsities 0..95%% and measure validation "
        "accuracy; writes sensitivity.json, sensitivity.png and the per-layer sparsities that "
        "stay within --budget.",
    )
    add_checkpoint_args(s)
    s.add_argument("--layers", type=lambda t: [n for n in t.split(",") if n])
    s.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="top-1 points a layer may lose, for the table printed",
    )
    s.add_argument("--out", type=Path, required=True, help="output directory")
    s.set_defaults(run=run_sensitivity)


def build_prune(args) -> list[Stage]:
    """The one stage `prune --method ...` describes."""
    method, fixed, names = FACES[args.method]
    flags = [FLAGS[name] for name in names]
    refuse_other_flags(args, flags, list(FLAGS.values()))
    retrain = {"epochs": args.retrain_epochs, "lr": args.retrain_lr}
    retrain = {k: v for k, v in retrain.items() if v is not None}
    if args.steps is not None and args.steps > 1:
        if method != "prune_magnitude":
            raise ConfigError(f"--steps is for std, sparsity or global, not {args.method}")
        fixed = {f"prune.{k}": v for k, v in fixed.items()} | {"steps": args.steps}
        fixed |= {f"retrain.{k}": v for k, v in retrain.items()}
        flags = [flag.under("prune") for flag in flags]
        return [_stage("prune_iterative", flags, args, fixed, {})]
    if method == "prune_gradual":
        if args.retrain_epochs is None:
            raise ConfigError("--method gradual prunes while it trains: give --retrain-epochs")
        return [_stage(method, flags, args, fixed, {f"fit.{k}": v for k, v in retrain.items()})]
    if method == "prune_variational":  # its training is its config's `fit`
        return [
            _stage(method, flags, args, fixed | {f"fit.{k}": v for k, v in retrain.items()}, {})
        ]
    return [_stage(method, flags, args, fixed, {f"finetune.{k}": v for k, v in retrain.items()})]


def _stage(method: str, flags, args, fixed: dict, other: dict) -> Stage:
    config = [flag.under("config") for flag in flags]
    fixed = {f"config.{k}": v for k, v in fixed.items()}
    return flag_stage(method, config, args, **fixed, **other, **stage_options(args, finetune=False))


def run_prune(args) -> None:
    run_stages(args, build_prune(args), title=f"pruned ({args.method})", tables=[_print_layers])


def _print_layers(model, ctx, data, args) -> None:
    console().print(layer_table(model, data.input_shape, title="pruned layers"))


def run_sensitivity(args) -> None:
    outputs = [args.out / "sensitivity.json", args.out / "sensitivity.png"]
    refuse_overwrite_input(outputs, checkpoint_paths(args.checkpoint))
    model, meta, data = load_for_command(args)
    result = sensitivity_analysis(model, data.loader("val", args.batch_size), layers=args.layers)
    args.out.mkdir(parents=True, exist_ok=True)
    text = result.to_json()
    atomic_write(args.out / "sensitivity.json", lambda tmp: tmp.write_text(text))
    png = plot_sensitivity(
        result,
        args.out / "sensitivity.png",
        title=f"{meta.model.name}: pruning sensitivity, one layer at a time",
    )
    table = budget_sparsities(result, args.budget)
    print(f"wrote {args.out / 'sensitivity.json'} and {png}")
    print(f"largest sparsity per layer within {args.budget:g} pt of {result.baseline_top1:.2%}:")
    for name, sparsity in table.items():
        print(f"  {name}: {sparsity:.0%}")
