"""Distillation from a teacher: soft targets (Hinton et al. 2015, "Distilling the Knowledge in a
Neural Network") and activation boundaries (Heo et al., AAAI 2019, "Knowledge Transfer via
Distillation of Activation Boundaries Formed by Hidden Neurons"), as Shin & Oh use them.

Both run inside the ordinary `fit`: the soft-target loss is its `loss_fn`, and the activation-
boundary (AB) stage is a `fit` of the student plus small connectors. So distillation combines in
one training run with gradual pruning (a step hook) and with quantization-aware training (a
fixed-point student from `netshrink.quant.quantize`).

AB distillation follows Heo et al.'s reference code (github.com/bhheo/AB_distillation): at each
chosen pair of layers the student's pre-ReLU response goes through a connector (1x1 conv + BN,
or linear + BN for vectors; none when the channels already agree) and the loss

    sum over neurons of (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0]

divided by the batch size teaches it the teacher's on/off pattern with margin m. The pairs are
listed shallow to deep and weighted 1/2^(n-1-i) (the deepest weighs 1), the sum scaled by
`ab_weight` (3/1000 in their CIFAR code). Stage 1 trains student and connectors on this loss
alone; stage 2 is classification training with soft targets (or cross-entropy with `alpha=0`).
The connectors are then dropped: they are never part of the student or its checkpoint.
"""

import math
import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from .config import Settings, takes_mappings
from .data import BatchLoader, DataSplits
from .device import model_device, place, to_model
from .errors import ConfigError
from .layers import select_layers, unwrap
from .loaders import LoaderSplits, as_data
from .progress import make_progress
from .prune.gradual import GradualPruner, PruneGradualConfig, gradual_schedule
from .stage import Stage
from .terminal import console
from .train import FitConfig, History, StepHook, fit

_PAIR = re.compile(r"^[^:\s]+:[^:\s]+$")
_HASH_PRIME = 2_147_483_647  # 2^31 - 1: products of two residues stay far inside int64


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    T: float,
    alpha: float,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton et al.'s distillation loss: `alpha * T^2 * CE(softmax(t / T), s / T)`, plus
    `(1 - alpha) * CE(s, targets)` when `targets` are given.

    The soft term is the cross-entropy of the student's tempered distribution against the
    teacher's (the KL divergence plus the teacher's entropy, a constant), times T^2 so that its
    gradients keep their size as T changes (Hinton et al., section 2). Batch mean.

    Example:
        >>> loss = kd_loss(student(x), teacher(x).detach(), T=4.0, alpha=0.9, targets=y)
    """
    soft = F.softmax(teacher_logits.detach() / T, dim=1)
    loss = alpha * T * T * F.cross_entropy(student_logits / T, soft)
    if targets is not None and alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, targets)
    return loss


def ab_loss(
    student_pre: torch.Tensor, teacher_pre: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Heo et al.'s activation-boundary loss between pre-ReLU responses of the same shape: a
    neuron the teacher turns off (t <= 0) costs (s + m)^2 while s > -m, one it turns on costs
    (s - m)^2 while s <= m; summed over neurons and averaged over the batch. It is zero when every
    student neuron is on the teacher's side by at least the margin."""
    t = teacher_pre.detach()
    off = (t <= 0) & (student_pre > -margin)
    on = (t > 0) & (student_pre <= margin)
    cost = (student_pre + margin).pow(2) * off + (student_pre - margin).pow(2) * on
    return cost.sum() / student_pre.shape[0]


def boundary_agreement(student_pre: torch.Tensor, teacher_pre: torch.Tensor) -> float:
    """Fraction of neurons that student and teacher turn on or off alike (Heo et al.'s metric)."""
    return float(((student_pre > 0) == (teacher_pre > 0)).float().mean())


class DistillConfig(Settings):
    """Stage 2 trains with `fit` on `alpha * T^2 * soft CE + (1 - alpha) * CE` at temperature
    `temperature` (alpha=0: plain cross-entropy, no teacher). With `ab_pairs`
    ("student_layer:teacher_layer", shallow to deep), stage 1 first trains `ab_epochs` epochs on
    the AB loss alone, with `fit`'s settings otherwise (`ab_lr`: its own learning rate; a
    student without batch norm needs a low one, as the connector's batch norm makes the loss
    blind to the scale of the student's response, which then grows). `cache_teacher`: keep the
    teacher's logits of the un-augmented training images instead of running it on every batch."""

    fit: FitConfig = FitConfig()
    # T=2, alpha=0.5 were chosen on Fashion-MNIST's validation split (bench/train_side.py):
    # the common T=4, alpha=0.9 sends early gradients ~T times cross-entropy's (the student is
    # far from the teacher, and the T^2 factor only cancels near agreement), which at a usual
    # lr of 0.05 left LeNet-5 at chance.
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    ab_pairs: tuple[str, ...] = ()
    ab_epochs: int = Field(2, ge=0)
    margin: float = Field(1.0, gt=0)
    ab_weight: float = Field(3e-3, gt=0)
    ab_lr: float | None = Field(None, gt=0)
    cache_teacher: bool = True

    @field_validator("ab_pairs")
    @classmethod
    def _pairs(cls, pairs: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in pairs if not _PAIR.match(p)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not student_layer:teacher_layer")
        return pairs

    @model_validator(mode="after")
    def _stage(self):
        if self.ab_pairs and not self.ab_epochs:
            raise ValueError("ab_pairs need ab_epochs >= 1 (the AB stage)")
        return self

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [tuple(p.split(":")) for p in self.ab_pairs]


class TeacherLogits:
    """The teacher's logits for a batch. With `data`, those of its un-augmented training images
    are computed once and found again by content: each image's bytes are hashed, and a hit is
    confirmed by rebuilding the image from the data set (so a collision is never used). Any
    other image (augmented, or from elsewhere) goes through the teacher. The teacher runs in eval
    mode without gradients: it is frozen."""

    def __init__(self, teacher: nn.Module, data: DataSplits | None = None, *, progress=False):
        self.teacher, self.data = teacher, data
        self.keys = torch.empty(0, dtype=torch.int64)
        self.order = torch.empty(0, dtype=torch.int64)
        self.logits = torch.empty(0)
        if data is not None:
            self._fill(data, progress)

    @torch.no_grad()
    def _fill(self, data: DataSplits, progress: bool) -> None:
        loader = data.loader("train", 512, shuffle=False, augment=False)
        keys, logits = [], []
        with _frozen(self.teacher), make_progress(progress) as bar:
            task = bar.add_task("teacher logits", total=len(loader), status="")
            for x, _ in loader:
                keys.append(image_hash(x))
                logits.append(self.teacher(to_model(self.teacher, x)))
                bar.advance(task)
        self.keys, self.order = torch.sort(torch.cat(keys), stable=True)
        self.logits = torch.cat(logits)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        hit, index = self._lookup(x)  # on the CPU, where the keys are
        if bool(hit.all()):
            return to_model(self.teacher, self.logits[index])
        with _frozen(self.teacher):
            out = self.teacher(to_model(self.teacher, x))
        if bool(hit.any()):
            out[to_model(self.teacher, hit)] = self.logits[index[hit]].to(out.device)
        return out

    def _lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(found, row of the cache) for each image of `x`."""
        if not len(self.keys):
            return torch.zeros(len(x), dtype=torch.bool), torch.zeros(len(x), dtype=torch.int64)
        keys = image_hash(x)
        pos = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        index = self.order[pos]
        hit = self.keys[pos] == keys
        if bool(hit.any()):
            d = self.data
            images = d.train.take(index[hit])
            rebuilt, _ = next(iter(BatchLoader(images, int(hit.sum()), mean=d.mean, std=d.std)))
            hit[hit.clone()] = (rebuilt == x.cpu()[hit]).flatten(1).all(1)
        return hit, index


def image_hash(x: torch.Tensor) -> torch.Tensor:
    """One int64 key per image of `x`: its float32 bits, hashed with fixed random weights modulo
    2^31 - 1 (exact integer arithmetic, so the same pixels always give the same key), on the CPU."""
    bits = x.detach().cpu().float().contiguous().flatten(1).view(torch.int32).long() % _HASH_PRIME
    gen = torch.Generator().manual_seed(0)
    weights = torch.randint(1, _HASH_PRIME, (bits.shape[1],), generator=gen, dtype=torch.int64)
    return ((bits * weights) % _HASH_PRIME).sum(1) % _HASH_PRIME


@takes_mappings
def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: DataSplits | LoaderSplits,
    config: DistillConfig,
    *,
    device: str | torch.device | None = None,
    step_hooks: Sequence[StepHook] = (),
    teacher_logits: TeacherLogits | None = None,
    progress: bool = True,
) -> History:
    """Train `student` in place from `teacher` (any architecture that takes the same images):
    the AB stage when `config.ab_pairs` are given (Heo et al.), then `fit` with the soft-target
    loss (Hinton et al.). `step_hooks` (gradual pruning, ...) run in stage 2. A fixed-point
    student trains through its rounding as in QAT, its formats as calibrated. `teacher_logits`
    reuses a cache over several runs (netshrink's data only: a user's transforms may change an
    image from one epoch to the next). `data` may be the user's own (`netshrink.loaders`); both
    models compute on the student's device (`device` moves the student first). Returns the
    history, stage 1's epochs first (their train loss is the AB loss).

    Example:
        >>> distill(lenet, vgg, data, DistillConfig(ab_pairs=("conv1:features.1",)))
    """
    data = as_data(data)
    place(student, device)
    teacher.to(model_device(student))
    first = History()
    if config.ab_pairs:
        first = _ab_stage(student, teacher, data, config, progress)
    if config.alpha == 0 or not config.fit.epochs:
        loss_fn = None
    else:
        if teacher_logits is None:
            own = isinstance(data, DataSplits)
            augmented = own and (data.config.crop_padding > 0 or data.config.hflip)
            use_cache = config.cache_teacher and own and not augmented
            teacher_logits = TeacherLogits(teacher, data if use_cache else None, progress=progress)
        T, alpha = config.temperature, config.alpha

        def loss_fn(logits, y, x):
            return kd_loss(logits, teacher_logits(x), T, alpha, y)

    second = fit(
        student, data, config.fit, loss_fn=loss_fn, step_hooks=step_hooks, progress=progress
    )
    shift = len(first.epochs)
    return History(first.epochs + [replace(r, epoch=r.epoch + shift) for r in second.epochs])


class _ABStudent(nn.Module):
    """The student with its connectors, for stage 1: its forward returns the student's logits
    and keeps the connected pre-ReLU responses for the loss."""

    def __init__(self, student: nn.Module, names: list[str], connectors: nn.ModuleList) -> None:
        super().__init__()
        self.student, self.names, self.connectors = student, names, connectors
        self.connected: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with capture(self.student, self.names) as found:
            logits = self.student(x)
        self.connected = [c(found[n]) for c, n in zip(self.connectors, self.names)]
        return logits


def _ab_stage(student, teacher, data, config: DistillConfig, progress: bool) -> History:
    s_names, t_names = (list(names) for names in zip(*config.pairs))
    connectors = nn.ModuleList(_connectors(student, teacher, data, config.pairs))
    connectors.to(model_device(student))
    wrapper = _ABStudent(student, s_names, connectors)
    n = len(t_names)
    weights = [config.ab_weight / 2 ** (n - 1 - i) for i in range(n)]

    def loss_fn(logits, y, x):
        with torch.no_grad(), _frozen(teacher), capture(teacher, t_names) as found:
            teacher(x)
        terms = zip(weights, wrapper.connected, t_names)
        return sum(w * ab_loss(s, found[t], config.margin) for w, s, t in terms)

    lr = config.ab_lr or config.fit.lr
    stage = config.fit.model_copy(update={"epochs": config.ab_epochs, "lr": lr})
    before = _agreement(wrapper, teacher, data, t_names)
    history = fit(wrapper, data, stage, loss_fn=loss_fn, progress=progress)
    after = _agreement(wrapper, teacher, data, t_names)
    if progress:
        console().print(_agreement_line(before, after, lr), soft_wrap=True)
    return history


# The AB stage teaches boundaries: a stage that leaves fewer neurons on the teacher's side
# (by more than this) did harm, and says so.
_AGREEMENT_DROP = 0.01


@torch.no_grad()
def _agreement(wrapper: "_ABStudent", teacher, data, teacher_names: list[str]) -> float:
    """Heo et al.'s boundary agreement of the student's connected responses with the teacher's,
    averaged over the AB pairs, on one batch of 256 un-augmented validation (else training)
    images, both models in eval mode."""
    x, _ = next(iter(data.loader("val" if data.has("val") else "train", 256, augment=False)))
    with _frozen(teacher), capture(teacher, teacher_names) as found:
        teacher(to_model(teacher, x))
    with _frozen(wrapper):
        wrapper(to_model(wrapper.student, x))
    pairs = zip(wrapper.connected, teacher_names, strict=True)
    shares = [boundary_agreement(s.float().cpu(), found[t].float().cpu()) for s, t in pairs]
    return sum(shares) / len(shares)


def _agreement_line(before: float, after: float, lr: float) -> str:
    line = f"AB stage: boundary agreement with the teacher {before:.1%} -> {after:.1%}"
    if after < before - _AGREEMENT_DROP:
        line += (
            f"; it fell: ab_lr {lr:g} may be too high for this network (the AB loss diverges), "
            "or the student already shares the teacher's boundaries (one that starts as the "
            "teacher), where the margin only moves neurons that agree: lower ab_lr, or leave "
            "out ab_pairs"
        )
    return line


@torch.no_grad()
def _connectors(student, teacher, data, pairs) -> list[nn.Module]:
    """A connector a pair, from the shapes one batch of training images gives each layer."""
    x, _ = next(iter(data.loader("val" if data.has("val") else "train", 2, augment=False)))
    shapes = {}
    for model, names in ((student, [s for s, _ in pairs]), (teacher, [t for _, t in pairs])):
        with _frozen(model), capture(model, names) as found:
            model(to_model(model, x))
        shapes[id(model)] = {n: tuple(v.shape[1:]) for n, v in found.items()}
    return [make_connector(s, shapes[id(student)][s], t, shapes[id(teacher)][t]) for s, t in pairs]


def make_connector(student_layer, student_shape, teacher_layer, teacher_shape) -> nn.Module:
    """Heo et al.'s connector from a student response of `student_shape` (C, H, W) or (C,) to the
    teacher's: 1x1 conv (or linear) without bias + batch norm; none when the shapes agree.
    ConfigError when the sizes other than channels differ: a 1x1 connector cannot bridge them."""
    if student_shape == teacher_shape:
        return nn.Identity()
    if len(student_shape) != len(teacher_shape) or student_shape[1:] != teacher_shape[1:]:
        raise ConfigError(
            f"AB pair {student_layer}:{teacher_layer}: the student's {student_layer} gives "
            f"{_shape(student_shape)} but the teacher's {teacher_layer} gives "
            f"{_shape(teacher_shape)}; a 1x1 connector only maps channels, so pair layers "
            "whose outputs have the same height and width"
        )
    c_s, c_t = student_shape[0], teacher_shape[0]
    if len(student_shape) == 3:
        layer, norm = nn.Conv2d(c_s, c_t, kernel_size=1, bias=False), nn.BatchNorm2d(c_t)
    elif len(student_shape) == 1:
        layer, norm = nn.Linear(c_s, c_t, bias=False), nn.BatchNorm1d(c_t)
    else:
        raise ConfigError(
            f"AB pair {student_layer}:{teacher_layer}: responses of shape "
            f"{_shape(student_shape)} are neither feature maps nor vectors"
        )
    nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / c_t))  # as Heo et al. initialize it
    return nn.Sequential(layer, norm)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "a scalar"


@contextmanager
def capture(model: nn.Module, names: Sequence[str]):
    """Within the block, `found[name]` is the latest output of each named module of `model`."""
    modules = dict(select_layers(model, list(dict.fromkeys(names))))
    found: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda module, inputs, output: found.__setitem__(name, output)

    handles = [module.register_forward_hook(keep(n)) for n, module in modules.items()]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _frozen(model: nn.Module):
    """`model` in eval mode for the block, back in its own mode afterwards."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class DistillStage(Stage):
    """Train the model from the dense baseline: activation boundaries then soft targets (Heo et
    al., Hinton et al.), with gradual pruning meanwhile when `prune` is given (Shin & Oh)."""

    method: Literal["distill"]
    takes_layers: ClassVar[bool] = False
    config: DistillConfig = DistillConfig()
    prune: PruneGradualConfig | None = None

    def apply(self, model, ctx):
        hooks = []
        if self.prune is not None:
            config = gradual_schedule(self.prune, self.config.fit, ctx.data)
            hooks.append(GradualPruner(model, config))
        distill(model, ctx.baseline, ctx.data, self.config, step_hooks=hooks, progress=ctx.progress)
        return model
