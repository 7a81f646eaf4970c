"""`netshrink distill` and `netshrink compressive`: the training-side family on the command line.

    netshrink distill --teacher vgg.ckpt --student lenet5 --kd 2.0,0.5 --epochs 10 --out OUT
    netshrink distill --teacher vgg.ckpt --student lenet5 --ab conv1:features.1,fc1:classifier.1
    netshrink distill --teacher vgg.ckpt --student vgg.ckpt --ab ... --sparsity 0.8 --bits 8
    netshrink compressive CHECKPOINT --global-sparsity 0.8 --budget 1.0 --out OUT

Each is a face of a method of netshrink.methods (`distill`, `compressive`): its flags set that
stage's fields (the `FLAGS` tables), and the stage runs as in a recipe, where the teacher is the
recipe's baseline. `--student` is a zoo name (trained from scratch, seeded) or a checkpoint
(trained on from its weights); the data set is the teacher's unless --data says otherwise.
`--sparsity` prunes the student on the cubic schedule during the distillation and `--bits` makes
it fixed point first (a `quantize` stage before it), so that one run does Shin & Oh's pruning +
QAT + distillation. Each command prints the stage table and saves the student as a checkpoint.
"""

from pathlib import Path

import torch
from rich.table import Table

from ..checkpoint import CheckpointMeta, checkpoint_paths, load_checkpoint
from ..data import load_data
from ..device import resolve_device
from ..errors import ConfigError
from ..models import ModelSpec, build_model
from ..report import console
from ..stage import Stage, StageContext
from ..train import FitConfig
from .apply import (
    Flag,
    StageInput,
    add_flags,
    add_stage_options,
    flag_stage,
    run_stages,
    stage_options,
)
from .common import add_data_args, add_device_arg, data_config, refuse_overwriting_checkpoint


def kd_fields(text: str) -> dict:
    """The soft-target fields of a `--kd T,ALPHA` value."""
    try:
        T, alpha = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--kd wants T,ALPHA such as 4.0,0.9, not {text!r}") from None
    return {"config.temperature": T, "config.alpha": alpha}


def constraint_fields(text: str) -> dict:
    return {"config.constraint.kind": text.replace("-", "_")}


DISTILL_FLAGS = (
    Flag(
        "--kd", "", "T,ALPHA: temperature and soft-target weight (alpha 0: plain "
        "cross-entropy); T=4 with alpha=0.9 needs a lower rate (from scratch also --warmup-epochs 1)",
        type=str, parse=kd_fields,
    ),
    Flag(
        "--ab", "config.ab_pairs", "student_layer:teacher_layer,... (pre-ReLU outputs)",
        type=lambda s: [p for p in s.split(",") if p],
    ),
    Flag("--ab-epochs", "config.ab_epochs", "epochs of the AB stage", type=int),
    Flag("--margin", "config.margin", "AB margin"),
    Flag("--ab-lr", "config.ab_lr", "AB stage learning rate (default: the fit's)"),
    Flag("--sparsity", "prune.final_sparsity", "gradual pruning to this sparsity meanwhile"),
    Flag("--epochs", "config.fit.epochs", "epochs of distillation", type=int),
    Flag("--lr", "config.fit.lr", "learning rate of the distillation"),
    Flag("--warmup-epochs", "config.fit.warmup_epochs", "linear learning-rate warm-up first"),
    Flag("--clip-grad-norm", "config.fit.clip_grad_norm", "rescale each step's gradient to at "
         "most this L2 norm"),
    Flag("--batch-size", "config.fit.batch_size", "batch size of the distillation", type=int),
)  # fmt: skip

# distill --bits: a `quantize` stage before the distillation, at these weight and activation bits
BITS = Flag(
    "--bits", "config.weights", "make the student fixed point first (weights and activations)",
    type=int, parse=lambda bits: {"config.weights": bits, "config.activations": bits},
)  # fmt: skip

COMPRESSIVE_FLAGS = (
    Flag("--global-sparsity", "config.global_sparsity", "step 1: one global sparsity"),
    Flag("--budget", "config.budget", "top-1 points it may lose (validation)"),
    Flag(
        "--constraint", "config.constraint.kind", "what a constrained layer must satisfy",
        type=str, choices=("sparse", "levels", "low-rank"), parse=constraint_fields,
    ),
    Flag("--layer-sparsity", "config.constraint.sparsity", "sparse: a constrained layer's sparsity"),
    Flag("--levels", "config.constraint.count", "levels: non-zero values a layer keeps", type=int),
    Flag("--rank-fraction", "config.constraint.rank_fraction", "low-rank: rank / min(matrix sides)"),
    Flag(
        "--ranking", "config.ranking", "the order layers join in", type=str,
        choices=("sparsity", "size", "sensitivity"),
    ),
    Flag("--prune-epochs", "config.prune_fit.epochs", "retraining after the pruning", type=int),
    Flag("--epochs", "config.layer_fit.epochs", "epochs after each layer joins", type=int),
    Flag("--lr", "config.layer_fit.lr", "learning rate after each layer joins"),
)  # fmt: skip


def add_commands(commands) -> None:
    """Register `distill` and `compressive` on the top-level sub-command parser."""
    p = commands.add_parser(
        "distill",
        help="train a student from a teacher: soft targets and activation boundaries",
        description="Train a student from a teacher checkpoint with Hinton et al.'s soft targets "
        "(--kd T,ALPHA), after an activation-boundary stage (Heo et al.) when --ab pairs "
        "student layers with teacher layers. Defaults are the method's own (netshrink apply "
        "distill sets any field).",
    )
    p.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint")
    p.add_argument("--student", required=True, help="zoo name (from scratch) or checkpoint")
    p.add_argument("--student-args", metavar="JSON", help="model arguments for a zoo student")
    add_flags(p, DISTILL_FLAGS, [("", "distill", f) for f in DISTILL_FLAGS])
    BITS.add_to(p)
    p.add_argument("--seed", type=int, default=0, help="fills every seed the method leaves unset")
    add_data_args(p, default=None)
    add_device_arg(p)
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--out", type=Path, required=True, help="output checkpoint path (no suffix)")
    p.set_defaults(run=run_distill, build=build_distill)

    c = commands.add_parser(
        "compressive",
        help="layer-wise compressive training within an accuracy budget",
        description="Grimaldi et al.: prune to one global sparsity, rank layers by their own "
        "sparsity, then train the least significant ones with projected SGD onto a constrained "
        "set, one more layer at a time while validation top-1 stays within --budget points. "
        "Defaults are the method's own (netshrink apply compressive sets any field).",
    )
    add_flags(c, COMPRESSIVE_FLAGS, [("", "compressive", f) for f in COMPRESSIVE_FLAGS])
    add_stage_options(c, finetune=False)
    c.set_defaults(run=run_compressive, build=build_compressive)


def build_distill(args) -> list[Stage]:
    """The stages `distill` describes: `quantize` at --bits first if given, then `distill`."""
    stages = [flag_stage("distill", DISTILL_FLAGS, args)]
    if args.bits is not None:
        stages.insert(0, flag_stage("quantize", [BITS], args))
    return stages


def run_distill(args) -> None:
    refuse_overwriting_checkpoint(args.out, args.teacher, args.student)  # a zoo name is no file
    stages = build_distill(args)
    device = resolve_device(args.device)
    teacher, t_meta = load_checkpoint(args.teacher, allow_import=args.allow_import)
    data = load_data(data_config(args, t_meta.data))
    student, s_meta = _student(args, data, t_meta)
    teacher.to(device), student.to(device)
    args.batch_size = stages[-1].config.fit.batch_size  # what measure_stage evaluates with
    ctx = StageContext(data, teacher, t_meta.fit or FitConfig())
    s_meta = s_meta.model_copy(update={"fit": stages[-1].config.fit})
    given = StageInput(student, s_meta, data, ctx, before="teacher")
    title = f"distill {args.student} from {args.teacher}"
    run_stages(args, stages, title=title, given=given, label="student (distilled)")


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


def build_compressive(args) -> list[Stage]:
    """The stage `compressive` describes."""
    return [
        flag_stage("compressive", COMPRESSIVE_FLAGS, args, **stage_options(args, finetune=False))
    ]


def run_compressive(args) -> None:
    run_stages(args, build_compressive(args), title="compressive", tables=[_print_steps])


def _print_steps(model, ctx, data, args) -> None:
    result = ctx.notes.get("compressive")
    if result is not None:
        console().print(steps_table(result))


def steps_table(notes: dict) -> Table:
    """The greedy search (`compressive.search_notes`): each layer that joined, validation top-1
    after it, kept or reverted."""
    table = Table(
        title=f"compressive training: val top-1 {notes['reference_top1']:.2%} as given, "
        f"{notes['pruned_top1']:.2%} after global pruning"
    )
    for column in ("layer", "sparsity", "val top-1", "kept"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for step in notes["steps"]:
        table.add_row(
            step["layer"],
            f"{step['sparsity']:.1%}",
            f"{step['top1']:.2%}",
            "yes" if step["accepted"] else "no (reverted)",
        )
    return table
