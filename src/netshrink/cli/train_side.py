"""`netshrink distill` and `netshrink compressive`: the training-side family on the command line.

    netshrink distill --teacher vgg.ckpt --student lenet5 --kd 2.0,0.5 --epochs 10 --out OUT
    netshrink distill --teacher vgg.ckpt --student lenet5 --ab conv1:features.1,fc1:classifier.1
    netshrink distill --teacher vgg.ckpt --student vgg.ckpt --ab ... --sparsity 0.8 --bits 8
    netshrink compressive CHECKPOINT --global-sparsity 0.8 --budget 1.0 --out OUT

`--student` is a zoo name (trained from scratch, seeded) or a checkpoint (trained on from its
weights); the data set is the teacher's unless --data says otherwise. `--sparsity` prunes the
student on the cubic schedule during the distillation and `--bits` makes it fixed point first,
so that one run does Shin & Oh's pruning + QAT + distillation. Each command prints the stage
table and the per-step details, and saves the student as a checkpoint.
"""

from pathlib import Path

import torch
from pydantic import ValidationError
from rich.table import Table

from .checkpoint import CheckpointMeta, checkpoint_paths, load_checkpoint, save_checkpoint
from .cli import (
    add_checkpoint_args,
    add_data_args,
    data_config,
    load_for_command,
    make_config,
    measure_stage,
    refuse_overwriting_checkpoint,
    retrain_config,
)
from .compressive import CompressiveConfig, Levels, LowRank, SparseSupport, train_compressive
from .data import load_data
from .distill import DistillConfig, distill
from .errors import ConfigError
from .measure import dense_bytes
from .models import ModelSpec, build_model
from .prune.gradual import (
    GRADUAL_SHARE,
    GradualPruner,
    PruneGradualConfig,
    spread_over,
    training_steps,
)
from .report import console, print_measurements
from .train import FitConfig


def add_commands(commands) -> None:
    """Register `distill` and `compressive` on the top-level sub-command parser."""
    p = commands.add_parser(
        "distill",
        help="train a student from a teacher: soft targets and activation boundaries",
        description="Train a student from a teacher checkpoint with Hinton et al.'s soft targets "
        "(--kd T,ALPHA), after an activation-boundary stage (Heo et al.) when --ab pairs "
        "student layers with teacher layers.",
    )
    p.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint")
    p.add_argument("--student", required=True, help="zoo name (from scratch) or checkpoint")
    p.add_argument("--student-args", metavar="JSON", help="model arguments for a zoo student")
    p.add_argument(
        "--kd",
        default="2.0,0.5",
        help="T,ALPHA: temperature and soft-target weight (alpha 0: plain cross-entropy); "
        "T=4 with alpha=0.9 needs a learning rate several times lower",
    )
    p.add_argument("--ab", default="", help="student_layer:teacher_layer,... (pre-ReLU outputs)")
    p.add_argument("--ab-epochs", type=int, default=2, help="epochs of the AB stage")
    p.add_argument("--margin", type=float, default=1.0, help="AB margin")
    p.add_argument("--ab-lr", type=float, help="AB stage learning rate (default: --lr's)")
    p.add_argument("--sparsity", type=float, help="gradual pruning to this sparsity meanwhile")
    p.add_argument("--bits", type=int, help="make the student fixed point (weights and acts)")
    _add_training(p, epochs=10)
    add_data_args(p, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default: the teacher's")
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--out", type=Path, required=True, help="output checkpoint path (no suffix)")
    p.set_defaults(run=run_distill)

    c = commands.add_parser(
        "compressive",
        help="layer-wise compressive training within an accuracy budget",
        description="Grimaldi et al.: prune to one global sparsity, rank layers by their own "
        "sparsity, then train the least significant ones with projected SGD onto a constrained "
        "set, one more layer at a time while validation top-1 stays within --budget points.",
    )
    add_checkpoint_args(c)
    c.add_argument("--global-sparsity", type=float, default=0.8)
    c.add_argument("--budget", type=float, default=1.0, help="top-1 points it may lose (val)")
    c.add_argument("--constraint", choices=("sparse", "levels", "low-rank"), default="sparse")
    c.add_argument("--layer-sparsity", type=float, help="sparse: a constrained layer's sparsity")
    c.add_argument("--levels", type=int, help="levels: non-zero values a layer keeps")
    c.add_argument("--rank-fraction", type=float, help="low-rank: rank / min(matrix sides)")
    c.add_argument("--ranking", choices=("sparsity", "size", "sensitivity"), default="sparsity")
    c.add_argument("--prune-epochs", type=int, default=1, help="retraining after the pruning")
    c.add_argument("--layers", type=lambda s: [n for n in s.split(",") if n])
    _add_training(c, epochs=1, help_epochs="epochs after each layer joins")
    c.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    c.add_argument("--out", type=Path, required=True, help="output checkpoint path (no suffix)")
    c.set_defaults(run=run_compressive)


def _add_training(p, *, epochs: int, help_epochs: str = "epochs of distillation") -> None:
    p.add_argument("--epochs", type=int, default=epochs, help=help_epochs)
    p.add_argument("--lr", type=float, help="default: the checkpoint's (compressive: / 10)")
    p.add_argument("--seed", type=int, default=0)


def run_distill(args) -> None:
    refuse_overwriting_checkpoint(args.out, args.teacher, args.student)  # a zoo name is no file
    teacher, t_meta = load_checkpoint(args.teacher, allow_import=args.allow_import)
    data = load_data(data_config(args, t_meta.data))
    student, s_meta = _student(args, data, t_meta)
    base = t_meta.fit or FitConfig()
    fit_config = make_config(
        FitConfig,
        **{
            **base.model_dump(),
            "epochs": args.epochs,
            "seed": args.seed,
            "lr": args.lr or base.lr,
            "batch_size": args.batch_size or base.batch_size,
        },
    )
    config = make_config(
        DistillConfig,
        fit=fit_config,
        **_kd(args.kd),
        ab_pairs=tuple(p for p in args.ab.split(",") if p),
        ab_epochs=args.ab_epochs,
        ab_lr=args.ab_lr,
        margin=args.margin,
    )
    args.batch_size = fit_config.batch_size  # measure_stage reads it
    dense = dense_bytes(teacher)
    rows = [measure_stage(teacher, "teacher", data, args, dense)]
    if args.bits:
        from .quant import QuantConfig, quantize

        student = quantize(student, data, QuantConfig(weights=args.bits, activations=args.bits))
    hooks = _pruner(student, data, fit_config, args.sparsity)
    distill(student, teacher, data, config, step_hooks=hooks, progress=True)
    rows.append(measure_stage(student, "student (distilled)", data, args, dense))
    metrics = {"test_top1": rows[-1].top1, "test_top5": rows[-1].top5}
    out = save_checkpoint(
        student, args.out, s_meta.model_copy(update={"fit": fit_config, "metrics": metrics})
    )
    print_measurements(rows, title=f"distill {args.student} from {args.teacher}: {out}")


def _student(args, data, t_meta) -> tuple[torch.nn.Module, CheckpointMeta]:
    """A checkpoint's model, or a fresh zoo model for `data` seeded by --seed."""
    if all(p.is_file() for p in checkpoint_paths(args.student)):
        return load_checkpoint(args.student, allow_import=args.allow_import)
    spec = ModelSpec.parse(args.student, args.student_args)
    torch.manual_seed(args.seed)
    c, h, _ = data.input_shape
    model = build_model(  # the user typed this name: that names the factory they trust
        spec,
        num_classes=data.num_classes,
        in_channels=c,
        input_size=h,
        allow_import=[*args.allow_import, spec.name],
    )
    meta = CheckpointMeta(
        model=spec, input_shape=data.input_shape, num_classes=data.num_classes, data=data.config
    )
    return model, meta


def _kd(text: str) -> dict:
    try:
        T, alpha = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--kd wants T,ALPHA such as 4.0,0.9, not {text!r}") from None
    return {"temperature": T, "alpha": alpha}


def _pruner(model, data, fit_config: FitConfig, sparsity: float | None) -> list:
    """Gradual pruning to `sparsity` within GRADUAL_SHARE of the steps (Zhu & Gupta), or none."""
    if sparsity is None:
        return []
    steps = training_steps(data, fit_config)
    updates = max(1, min(20, steps // 2))
    config = make_config(PruneGradualConfig, final_sparsity=sparsity, steps=updates)
    return [GradualPruner(model, spread_over(config, steps, GRADUAL_SHARE))]


def run_compressive(args) -> None:
    refuse_overwriting_checkpoint(args.out, args.checkpoint)
    model, meta, data = load_for_command(args)
    dense = dense_bytes(model)
    rows = [measure_stage(model, "before", data, args, dense)]
    fit_config = retrain_config(meta, epochs=args.epochs, lr=args.lr, lr_divisor=10, seed=args.seed)
    config = make_config(
        CompressiveConfig,
        global_sparsity=args.global_sparsity,
        budget=args.budget,
        constraint=_constraint(args),
        ranking=args.ranking,
        prune_fit=fit_config.model_copy(update={"epochs": args.prune_epochs}),
        layer_fit=fit_config,
    )
    result = train_compressive(model, data, config, layers=args.layers, progress=True)
    stage = f"compressive ({result.compression_rate:.1f}x)"
    rows.append(measure_stage(model, stage, data, args, dense))
    metrics = {"test_top1": rows[-1].top1, "test_top5": rows[-1].top5}
    out = save_checkpoint(
        model, args.out, meta.model_copy(update={"fit": fit_config, "metrics": metrics})
    )
    console().print(steps_table(result))
    print_measurements(rows, title=f"compressive: {out}")


def _constraint(args):
    """The constraint the flags name, its value from its own flag (or the config's default)."""
    cls, flag, field, value = {
        "sparse": (SparseSupport, "--layer-sparsity", "sparsity", args.layer_sparsity),
        "levels": (Levels, "--levels", "count", args.levels),
        "low-rank": (LowRank, "--rank-fraction", "rank_fraction", args.rank_fraction),
    }[args.constraint]
    try:
        return cls(**({} if value is None else {field: value}))
    except ValidationError as exc:
        raise ConfigError(f"{flag}: {exc.errors()[0]['msg']}") from None


def steps_table(result) -> Table:
    """The greedy search: each layer that joined, validation top-1 after it, kept or reverted."""
    table = Table(
        title=f"compressive training: val top-1 {result.reference_top1:.2%} as given, "
        f"{result.pruned_top1:.2%} after global pruning"
    )
    for column in ("layer", "sparsity", "val top-1", "kept"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for step in result.steps:
        table.add_row(
            step.layer,
            f"{result.sparsity[step.layer]:.1%}",
            f"{step.top1:.2%}",
            "yes" if step.accepted else "no (reverted)",
        )
    return table
