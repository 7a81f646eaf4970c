"""Training and evaluation: the one `fit` and the one `evaluate` that every stage reuses.

Compression methods are parametrizations, so retraining a pruned, clustered or quantized model is
this same `fit`: the optimizer only sees parameters that require a gradient (a codebook freezes its
dense original), and `step_hooks` let a schedule (gradual pruning) act after every step.

Both compute on the model's device (`netshrink.device`): each batch follows the model, and
`device=` moves the model first. Under `torchrun --nproc_per_node=N` the same call trains with
DistributedDataParallel, over NCCL on CUDA (one GPU a rank, by LOCAL_RANK) and gloo on the CPU:
each rank sees its shard of every epoch, the global batch stays `batch_size`, and the weights
stay identical on all ranks.

The data is netshrink's (`load_data`) or the user's own (`netshrink.loaders`): a Dataset, a
DataLoader or a list of batches, e.g. `fit(model, train_loader, val=val_loader, epochs=3)`.
"""

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, model_serializer, model_validator
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import Settings, takes_mappings, to_config
from .data import DataSplits
from .device import model_device, place, to_model
from .errors import ConfigError, DivergedError
from .loaders import LoaderSplits, as_data, batch_pair, batches_of, length_of
from .progress import make_progress
from .train_state import (
    clear_train_state,
    load_train_state,
    save_train_state,
    state_paths,
)

# (logits, targets, inputs) -> scalar loss; inputs are there for distillation's teacher.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
StepHook = Callable[[int], None]


class FitConfig(Settings):
    """How to train: optimizer, learning-rate schedule, regularisation, length and seed.
    `mixed_precision`: the forward and backward passes in bfloat16 (float16 with loss scaling
    where the GPU has no bfloat16) on CUDA, the weights and their updates in float32; CUDA only.
    Never used by evaluation, calibration or the integer path, which must be exact."""

    epochs: int = Field(10, ge=0)
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    # Linear learning-rate warm-up over the first epochs (Goyal et al. 2017), then the schedule
    # over the rest: from scratch at lr 0.05, a network without batch norm (LeNet-5) grows its
    # weights ~6x in its first 60 steps, where a harder loss (soft targets) can send it to NaN.
    warmup_epochs: float = Field(0.0, ge=0)
    # Rescale a step's gradient to at most this L2 norm (all parameters together; Pascanu et al.
    # 2013): bounds the steps of a loss that outgrows cross-entropy early (soft targets at T=4
    # step about T times harder while the student is far from its teacher). None: no clipping.
    clip_grad_norm: float | None = Field(None, gt=0)
    seed: int = 0
    mixed_precision: bool = False

    @model_validator(mode="after")
    def _warmup_inside(self):
        if self.epochs and self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs {self.warmup_epochs:g} leaves none of the {self.epochs} epochs "
                "to the schedule: make it shorter than the training"
            )
        return self

    @model_serializer(mode="wrap")
    def _defaults_unwritten(self, handler):
        # options added later are left out at their defaults, so the keys of cached baselines
        # and finished stages (hashes of these dumps) are those of the runs made before them
        data = handler(self)
        for key, default in (
            ("mixed_precision", False),
            ("warmup_epochs", 0.0),
            ("clip_grad_norm", None),
        ):
            if key in data and data[key] == default:
                del data[key]
        return data


@dataclass(frozen=True)
class EvalResult:
    """Top-1 and top-k accuracy in [0, 1], mean cross-entropy, and how many examples were seen."""

    top1: float
    top5: float
    loss: float
    count: int


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    train_top1: float
    val: EvalResult | None
    lr: float
    seconds: float


@dataclass
class History:
    """What `fit` did, one record an epoch; `final` is the last validation result."""

    epochs: list[EpochRecord] = field(default_factory=list)

    @property
    def final(self) -> EvalResult | None:
        return self.epochs[-1].val if self.epochs else None


def evaluate(
    model: nn.Module,
    loader,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
    description: str = "evaluate",
) -> EvalResult:
    """Top-1, top-5 (top-k for fewer than 5 classes) and mean loss of `model` over `loader`: any
    iterable of `(x, y)` batches (a netshrink loader, a DataLoader) or a Dataset, on the model's
    device (moved to `device` first when given)."""
    place(model, device)
    loader = batches_of(loader)
    was_training = model.training
    model.eval()
    correct1 = correct5 = seen = 0
    loss_sum = 0.0
    with torch.inference_mode(), make_progress(progress) as bar:
        task = bar.add_task(description, total=length_of(loader), status="")
        for batch in loader:
            x, y = to_model(model, *batch_pair(batch))
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hits = top.eq(y[:, None])
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            seen += y.numel()
            bar.advance(task)
    model.train(was_training)
    if seen == 0:
        raise ConfigError("cannot evaluate on an empty split: check --limit and the data set")
    return EvalResult(correct1 / seen, correct5 / seen, loss_sum / seen, seen)


@takes_mappings
def fit(
    model: nn.Module,
    data: DataSplits | LoaderSplits,
    config: FitConfig | None = None,
    *,
    val=None,
    device: str | torch.device | None = None,
    loss_fn: LossFn | None = None,
    step_hooks: Sequence[StepHook] = (),
    progress: bool = True,
    resume: Path | None = None,
    **fields,
) -> History:
    """Train `model` in place on the training split, validating after every epoch.

    `data`: netshrink's splits (`load_data`), a `LoaderSplits`, or the training data itself (a
    Dataset, a DataLoader, a list of `(x, y)` batches) with `val=` beside it. `config` (a
    FitConfig or a dict) with any of its fields given as keywords over it: `fit(model,
    train_loader, val=val_loader, epochs=3, lr=0.01)`. `device`: where to train (the model is
    moved there; by default it trains where it is).

    SGD with momentum or Adam, a per-step cosine (or constant) learning rate, weight decay, seeded
    shuffling. Runs under torchrun with DDP when WORLD_SIZE > 1. With `resume`, the state is saved
    there after every epoch and a run that was interrupted continues from its last epoch (the
    state is removed when the run completes). Returns the history.
    """
    config = config or FitConfig()
    if fields:  # keywords over the config, validated as one
        config = to_config(FitConfig, {**config.model_dump(), **fields})
    data = as_data(data, val=val)
    place(model, device)
    device = model_device(model)
    if config.mixed_precision and device.type != "cuda":
        raise ConfigError(f"mixed_precision trains on CUDA only; the model is on {device}")
    rank, world = init_distributed(device)
    torch.manual_seed(config.seed)  # dropout and anything else random in the forward pass
    if config.batch_size % world:
        raise ConfigError(f"batch size {config.batch_size} does not split over {world} processes")
    train = data.loader(
        "train", config.batch_size // world, rank=rank, world_size=world, seed=config.seed
    )
    val = data.loader("val", 256) if data.has("val") else None
    optimizer = _make_optimizer([p for p in model.parameters() if p.requires_grad], config)
    total_steps = max(1, config.epochs * len(train))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config, len(train)))
    settings = {"fit": config.model_dump(mode="json"), "world": world, "steps": len(train)}
    history, first = _restore(resume, model, optimizer, scheduler, settings)
    net = _distributed(model) if world > 1 else model
    loss_fn = loss_fn or (lambda logits, y, x: F.cross_entropy(logits, y))
    precision = _Precision(config.mixed_precision, config.clip_grad_norm)
    with make_progress(progress) as bar:
        task = bar.add_task("train", total=total_steps, completed=first * len(train), status="")
        for epoch in range(first, config.epochs):
            start = time.perf_counter()
            train.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            loss, top1 = _train_epoch(
                net,
                train,
                optimizer,
                scheduler,
                loss_fn,
                step_hooks,
                epoch * len(train),
                lambda: bar.advance(task),
                precision,
            )
            result = evaluate(model, val) if val is not None else None
            history.epochs.append(
                EpochRecord(epoch, loss, top1, result, lr, time.perf_counter() - start)
            )
            bar.update(task, status=_status(epoch, loss, result))
            if resume is not None and is_main_process():
                save_train_state(
                    resume,
                    model,
                    optimizer,
                    scheduler,
                    epoch + 1,
                    [asdict(r) for r in history.epochs],
                    settings,
                )
    if resume is not None and is_main_process():
        clear_train_state(resume)
    return history


def _restore(resume, model, optimizer, scheduler, settings) -> tuple[History, int]:
    """The history so far and the first epoch to run: from a saved state, or a fresh start."""
    if resume is None or not state_paths(resume)[1].is_file():
        return History(), 0
    done, records = load_train_state(resume, model, optimizer, scheduler, settings)
    epochs = [
        EpochRecord(**{**r, "val": EvalResult(**r["val"]) if r["val"] else None}) for r in records
    ]
    return History(epochs), done


class _Precision:
    """Mixed precision on CUDA (torch.autocast, and a gradient scaler for float16), or nothing."""

    def __init__(self, enabled: bool, clip_norm: float | None = None) -> None:
        bf16 = enabled and torch.cuda.is_bf16_supported()
        self.enabled, self.dtype = enabled, torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if enabled and not bf16 else None
        self.clip_norm = clip_norm

    def autocast(self):
        return torch.autocast("cuda", dtype=self.dtype, enabled=self.enabled)

    def step(self, loss: torch.Tensor, optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            self._clip(optimizer)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
        self._clip(optimizer)
        self.scaler.step(optimizer)
        self.scaler.update()

    def _clip(self, optimizer) -> None:
        if self.clip_norm is not None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)


def _train_epoch(
    net, loader, optimizer, scheduler, loss_fn, step_hooks, first_step, advance, precision
):
    """One pass over `loader`; returns this rank's mean loss and top-1 on the training batches."""
    net.train()
    loss_sum = correct = seen = 0.0
    for i, (x, y) in enumerate(loader):
        x, y = to_model(net, x, y)
        with precision.autocast():
            logits = net(x)
            loss = loss_fn(logits, y, x)
        if not torch.isfinite(loss):
            raise DivergedError(f"training diverged (loss {loss.item()}): lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        precision.step(loss, optimizer)
        scheduler.step()
        for hook in step_hooks:
            hook(first_step + i + 1)
        loss_sum += loss.item() * y.numel()
        correct += logits.argmax(1).eq(y).sum().item()
        seen += y.numel()
        advance()
    return loss_sum / max(seen, 1), correct / max(seen, 1)


def _make_optimizer(params, config: FitConfig) -> torch.optim.Optimizer:
    if not params:
        raise ConfigError("the model has no trainable parameters")
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.momentum > 0,
    )


def _lr_factor(config: FitConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate's factor at each step: the linear warm-up, then cosine or constant over
    the steps after it."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total - 1, round(config.warmup_epochs * steps_per_epoch))
    rest = total - warmup

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, rest) / rest))

    return factor


def _status(epoch: int, loss: float, result: EvalResult | None) -> str:
    text = f"epoch {epoch + 1} loss {loss:.3f}"
    return text + (f" val top-1 {result.top1:.2%}" if result else "")


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the process group that torchrun describes, once: NCCL when the
    model is on CUDA, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":  # NCCL's collectives (barriers too) run on the current GPU
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def close_distributed(*, wait: bool = True) -> None:
    """Leave the process group that `init_distributed` joined (nothing outside torchrun): every
    rank waits for the others (`wait`), then the group is destroyed. A rank that exits with its
    gloo group alive can abort in the group's threads while another rank still tears down
    ("terminate called without an active exception", seen under load). `wait=False` after an
    error, where the other ranks may never reach the barrier."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()


def _distributed(model: nn.Module) -> DistributedDataParallel:
    device = model_device(model)
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DistributedDataParallel(model, device_ids=ids)


def is_main_process() -> bool:
    """True on rank 0 or outside torchrun: the process that writes files and prints."""
    return int(os.environ.get("RANK", "0")) == 0
