"""What every method's stage entry has. A method of netshrink is one module holding three things
side by side: its config model (the one place its defaults live), its function, and a `Stage`
subclass naming it for recipes (and, as issue 16 goes on, the CLI) and Python.
`netshrink.methods` lists them all.

A stage adds to its method what a pipeline step needs: a name, the layers it touches,
fine-tuning after it, soft targets from the baseline and an accuracy budget. `apply` runs the
method; `netshrink.methods.run_stage` runs a stage (apply, then fine-tuning).
"""

from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import BaseModel, Field, model_validator
from torch import nn

from .budget import Points
from .config import Settings
from .data import DataSplits
from .train import FitConfig


@dataclass
class StageContext:
    """What a stage may use besides the model: the data, the dense baseline (the teacher of
    distillation) and its training settings, and `notes` for the report (sensitivity curves)."""

    data: DataSplits
    baseline: nn.Module
    baseline_fit: FitConfig
    progress: bool = True
    notes: dict = field(default_factory=dict)


class SoftTargets(Settings):
    """Fine-tune on Hinton et al.'s soft targets from the baseline instead of the labels alone."""

    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)


class Stage(Settings):
    """Options every stage has. `finetune` trains after the method, with the baseline's
    settings for every field it does not give (the learning rate: the baseline's divided by
    the method's `finetune_lr_divisor`); `soft_targets` makes that fine-tuning distil from the
    baseline; `budget` stops the run when validation top-1 has fallen more than that many points
    below the baseline's.

    A subclass sets `method: Literal["its_function_name"]`, its `config`, and `apply`.
    """

    takes_layers: ClassVar[bool] = True
    # The method folds batch norm into the layers before it (fixed point does, as a device does):
    # a sharing stage before it folds first, so that it shares the weights that will be kept.
    folds_batchnorm: ClassVar[bool] = False
    # The method leaves a fixed-point model (what the C and int8 exports take).
    fixed_point: ClassVar[bool] = False
    # Fine-tuning steps are this much smaller than the baseline's unless `finetune.lr` is given.
    finetune_lr_divisor: ClassVar[float] = 10

    name: str | None = Field(None, min_length=1, pattern=r"^[\w.-]+$")
    layers: list[str] | None = None
    finetune: FitConfig | None = None
    soft_targets: SoftTargets | None = None
    budget: Points | None = None

    @model_validator(mode="after")
    def _options(self):
        if self.layers is not None and not self.takes_layers:
            raise ValueError(f"method {self.method} takes no layers")
        if self.soft_targets is not None and self.finetune is None:
            raise ValueError("soft_targets shape the fine-tuning: give finetune too")
        return self

    @property
    def title(self) -> str:
        return self.name or self.method

    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        """Run the method on `model`; returns the model (a new one for the fixed-point family)."""
        raise NotImplementedError

    def finetune_config(self, base: FitConfig) -> FitConfig | None:
        """`finetune` over the baseline's settings, or None."""
        if self.finetune is None:
            return None
        return relative_fit(self.finetune, base, self.finetune_lr_divisor)


def relative_fit(given: FitConfig, base: FitConfig, lr_divisor: float) -> FitConfig:
    """The fields `given` sets, over `base`'s settings with its learning rate / `lr_divisor`:
    how a stage trains on from a baseline it did not train itself."""
    fields = given.model_dump(include=given.model_fields_set)
    return FitConfig(**{**base.model_dump(), "lr": base.lr / lr_divisor, **fields})


def with_seed(config: BaseModel, seed: int) -> BaseModel:
    """`config` with every `seed` field it leaves unset, at any depth (the order of a training,
    a k-means start), set to the recipe's `seed`: one number changes every random choice."""
    update = {}
    for name in type(config).model_fields:
        value = getattr(config, name)
        if name == "seed" and name not in config.model_fields_set:
            update[name] = seed
        elif isinstance(value, BaseModel):
            update[name] = with_seed(value, seed)
    return config.model_copy(update=update) if update else config
