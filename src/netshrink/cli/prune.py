"""`netshrink prune` and `netshrink sensitivity`: the pruning family on the command line."""

from pathlib import Path

from ..checkpoint import checkpoint_paths, save_checkpoint
from ..cli import (
    add_checkpoint_args,
    load_for_command,
    make_config,
    measure_stage,
    refuse_overwriting_checkpoint,
    retrain_config,
)
from ..errors import ConfigError
from ..files import atomic_write, refuse_overwrite_input
from ..layers import select_layers
from ..report import console, layer_table, print_measurements
from ..train import FitConfig, fit
from .filters import PruneFiltersConfig, prune_filters
from .gradual import GRADUAL_SHARE, PruneGradualConfig, prune_gradual, spread_over, training_steps
from .incremental import PruneIncrementalConfig, prune_incremental
from .iterative import PruneIterativeConfig, prune_iterative
from .magnitude import (
    GlobalSparsity,
    LayerSparsity,
    PruneMagnitudeConfig,
    StdThreshold,
    prune_magnitude,
)
from .mask import restore_masks
from .sensitivity import budget_sparsities, plot_sensitivity, sensitivity_analysis

METHODS = ("std", "sparsity", "global", "incremental", "gradual", "filters")


def add_commands(commands) -> None:
    """Register `prune` and `sensitivity` on the top-level sub-command parser."""
    p = commands.add_parser(
        "prune",
        help="prune a checkpoint (magnitude, iterative, incremental, gradual, filters)",
        description="Prune a checkpoint and save the result. std: |w| < RATIO * std(W) per layer "
        "(Han et al.); sparsity: per-layer percentile; global: one threshold over all layers; "
        "--steps N > 1 makes any of these iterative with retraining between steps; incremental: "
        "per-layer ratios under an accuracy --budget, no retraining (Al-Hami et al.); gradual: "
        "cubic schedule to --sparsity while training (Zhu & Gupta); filters: remove whole "
        "channels (Li et al.), --amount or --target-macs.",
    )
    add_checkpoint_args(p)
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--ratio", type=float, help="std: threshold = RATIO * std(W)")
    p.add_argument("--sparsity", type=float, help="sparsity/global/gradual: fraction pruned")
    p.add_argument("--steps", type=int, default=1, help="prune in N steps, retraining between")
    p.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="incremental: top-1 points it may lose on the validation split (default 1.0)",
    )
    p.add_argument("--amount", type=float, help="filters: fraction of channels removed")
    p.add_argument("--target-macs", type=float, help="filters: fraction of MACs to remove")
    p.add_argument("--criterion", choices=("l1", "l2", "bn_scale"), default="l1")
    p.add_argument(
        "--residual",
        choices=("group", "skip"),
        default="group",
        help="filters: prune residual groups together, or leave them whole",
    )
    p.add_argument(
        "--layers",
        type=lambda s: [n for n in s.split(",") if n],
        help="comma-separated layer names (default: every conv and linear layer)",
    )
    p.add_argument(
        "--retrain-epochs",
        type=int,
        default=0,
        help="epochs of retraining after pruning (gradual: the training run)",
    )
    p.add_argument("--retrain-lr", type=float, help="learning rate (default: baseline's / 10)")
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--out", type=Path, required=True, help="output checkpoint path (no suffix)")
    p.set_defaults(run=run_prune)

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
        help="top-1 points a layer may lose, for the table printed (default 1.0)",
    )
    s.add_argument("--out", type=Path, required=True, help="output directory")
    s.set_defaults(run=run_sensitivity)


def run_prune(args) -> None:
    refuse_overwriting_checkpoint(args.out, args.checkpoint)
    model, meta, data = load_for_command(args)
    rows = [measure_stage(model, "before", data, args)]
    retrain = retrain_config(meta, epochs=args.retrain_epochs, lr=args.retrain_lr, lr_divisor=10)
    if args.method == "gradual":  # it retrains while pruning: earlier zeros must stay zero
        restore_masks(model, select_layers(model))
    _prune(model, data, args, retrain)
    # after the method (filter surgery needs unmasked layers): earlier zeros stay zero in retraining
    restore_masks(model, select_layers(model))
    if args.method != "gradual" and args.steps == 1 and retrain.epochs:
        fit(model, data, retrain)
    rows.append(measure_stage(model, f"pruned ({args.method})", data, args, rows[0].size_bytes))
    metrics = {"test_top1": rows[1].top1, "test_top5": rows[1].top5}
    out = save_checkpoint(
        model, args.out, meta.model_copy(update={"fit": retrain, "metrics": metrics})
    )
    console().print(layer_table(model, data.input_shape, title="pruned layers"))
    print_measurements(rows, title=f"prune --method {args.method}: {out}")


def _prune(model, data, args, retrain: FitConfig) -> None:
    if args.method in ("std", "sparsity", "global"):
        config = PruneMagnitudeConfig(threshold=_threshold(args))
        iterative = make_config(
            PruneIterativeConfig, prune=config, steps=args.steps, retrain=retrain
        )
        if args.steps > 1:
            prune_iterative(model, data, iterative, layers=args.layers)
        else:
            prune_magnitude(model, config, layers=args.layers)
    elif args.method == "incremental":
        config = make_config(PruneIncrementalConfig, budget=args.budget)
        prune_incremental(model, data.loader("val", 256), config, layers=args.layers)
    elif args.method == "gradual":
        total = training_steps(data, retrain)
        if total < 2:
            raise ConfigError("gradual pruning happens while training: give --retrain-epochs")
        # prune over the first three quarters of training, then train on at the final sparsity
        config = make_config(
            PruneGradualConfig, final_sparsity=_required(args, "sparsity"), steps=10
        )
        config = spread_over(config, total, GRADUAL_SHARE)
        prune_gradual(model, data, config, retrain, layers=args.layers)
    else:
        config = make_config(
            PruneFiltersConfig,
            amount=args.amount,
            target_macs=args.target_macs,
            criterion=args.criterion,
            residual=args.residual,
        )
        prune_filters(model, config, data.input_shape, layers=args.layers)


def _threshold(args):
    if args.method == "std":
        return make_config(StdThreshold, ratio=_required(args, "ratio"))
    if args.method == "sparsity":
        return make_config(LayerSparsity, sparsity=_required(args, "sparsity"))
    return make_config(GlobalSparsity, sparsity=_required(args, "sparsity"))


def _required(args, name: str) -> float:
    value = getattr(args, name)
    if value is None:
        raise ConfigError(f"--method {args.method} needs --{name.replace('_', '-')}")
    return value


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
