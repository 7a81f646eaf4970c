"""The stages a recipe chains: each is one method of netshrink with its own config model, plus
what every stage may add (a name, the layers it touches, fine-tuning, soft targets from the
baseline, an accuracy budget). `apply` runs the method on the model; the pipeline does the
rest (fine-tuning, measuring, saving).

A stage is chosen in YAML by `method:`, the name of the function it runs:

    prune_magnitude  prune_iterative  prune_incremental  prune_gradual  prune_filters  sensitivity
    share_kmeans  share_pq  share_rq  share_binary  factor_svd
    quantize  search_bits  qat  distill  compressive
"""

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from .budget import Points
from .compressive import CompressiveConfig, train_compressive
from .data import DataSplits
from .distill import DistillConfig, distill
from .layers import select_layers
from .prune import (
    GradualPruner,
    PruneFiltersConfig,
    PruneGradualConfig,
    PruneIncrementalConfig,
    PruneIterativeConfig,
    PruneMagnitudeConfig,
    bake_masks,
    prune_filters,
    prune_gradual,
    prune_incremental,
    prune_iterative,
    prune_magnitude,
    restore_masks,
    sensitivity_analysis,
    spread_over,
    training_steps,
)
from .prune.sensitivity import DEFAULT_SPARSITIES
from .quant import QuantConfig, quantize
from .quant.qat import QatConfig, train_quantized
from .quant.search import BitSearchConfig, search_bits
from .share import (
    FactorSvdConfig,
    ShareBinaryConfig,
    ShareKmeansConfig,
    SharePqConfig,
    ShareRqConfig,
    factor_svd,
    share_binary,
    share_kmeans,
    share_pq,
    share_rq,
)
from .train import FitConfig, fit

# Gradual pruning reaches its final sparsity after this share of the training steps, then the
# model trains on at that sparsity (Zhu & Gupta 2017 stop pruning well before the end).
GRADUAL_SHARE = 0.75


@dataclass
class StageContext:
    """What a stage may use besides the model: the data, the dense baseline (the teacher of
    distillation) and its training settings, and `notes` for the report (sensitivity curves)."""

    data: DataSplits
    baseline: nn.Module
    baseline_fit: FitConfig
    progress: bool = True
    notes: dict = field(default_factory=dict)


class SoftTargets(BaseModel):
    """Fine-tune on Hinton et al.'s soft targets from the baseline instead of the labels alone."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)


class _Stage(BaseModel):
    """Options every stage has. `finetune` trains after the method, with the baseline's
    settings for every field it does not give (the learning rate: the baseline's / 10);
    `soft_targets` makes that fine-tuning distil from the baseline; `budget` stops the run when
    validation top-1 has fallen more than that many points below the baseline's."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    takes_layers: ClassVar[bool] = True

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
        given = self.finetune.model_dump(include=self.finetune.model_fields_set)
        return FitConfig(**{**base.model_dump(), "lr": base.lr / 10, **given})


def _gradual_schedule(config: PruneGradualConfig, fit_config: FitConfig, data: DataSplits):
    """The config with `interval` spread over the training, when the recipe does not set it."""
    if "interval" in config.model_fields_set:
        return config
    return spread_over(config, training_steps(data, fit_config), GRADUAL_SHARE)


class PruneMagnitudeStage(_Stage):
    """One-shot magnitude pruning (Han et al. 2015's std-scaled threshold, or a sparsity)."""

    method: Literal["prune_magnitude"]
    config: PruneMagnitudeConfig

    def apply(self, model, ctx):
        return prune_magnitude(model, self.config, layers=self.layers)


class PruneIterativeStage(_Stage):
    """Prune and retrain in steps (Han et al. 2015)."""

    method: Literal["prune_iterative"]
    config: PruneIterativeConfig

    def apply(self, model, ctx):
        return prune_iterative(
            model, ctx.data, self.config, layers=self.layers, progress=ctx.progress
        )


class PruneIncrementalStage(_Stage):
    """Raise each layer's std ratio while validation accuracy holds, no retraining (Alhami)."""

    method: Literal["prune_incremental"]
    config: PruneIncrementalConfig = PruneIncrementalConfig()

    def apply(self, model, ctx):
        loader = ctx.data.loader("val" if len(ctx.data.val) else "train", 256)
        return prune_incremental(model, loader, self.config, layers=self.layers)


class PruneGradualStage(_Stage):
    """Prune on Zhu & Gupta's cubic schedule while training with `fit`; unless the config sets
    `interval`, the sparsity is reached after 75% of the steps."""

    method: Literal["prune_gradual"]
    config: PruneGradualConfig
    fit: FitConfig

    def apply(self, model, ctx):
        config = _gradual_schedule(self.config, self.fit, ctx.data)
        return prune_gradual(
            model, ctx.data, config, self.fit, layers=self.layers, progress=ctx.progress
        )


class PruneFiltersStage(_Stage):
    """Remove whole filters (Li et al. 2017), residual blocks kept consistent."""

    method: Literal["prune_filters"]
    config: PruneFiltersConfig

    def apply(self, model, ctx):
        bake_masks(model)  # surgery edits plain tensors; earlier zeros are masked again below
        prune_filters(model, self.config, ctx.data.input_shape, layers=self.layers)
        restore_masks(model, select_layers(model))
        return model


class SensitivityStage(_Stage):
    """Measure each layer pruned alone at each sparsity (validation top-1); the model is left
    as it is and the curves go to the report."""

    method: Literal["sensitivity"]
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES

    def apply(self, model, ctx):
        loader = ctx.data.loader("val" if len(ctx.data.val) else "test", 256)
        result = sensitivity_analysis(
            model, loader, layers=self.layers, sparsities=self.sparsities, progress=ctx.progress
        )
        ctx.notes["sensitivity"] = dataclasses.asdict(result)
        return model


class ShareKmeansStage(_Stage):
    """Trained scalar codebooks by k-means (Han et al. 2016, Gong et al. 2014)."""

    method: Literal["share_kmeans"]
    config: ShareKmeansConfig = ShareKmeansConfig()

    def apply(self, model, ctx):
        return share_kmeans(model, self.config, layers=self.layers, progress=ctx.progress)


class SharePqStage(_Stage):
    """Product quantization of the weight matrices (Gong et al. 2014)."""

    method: Literal["share_pq"]
    config: SharePqConfig = SharePqConfig()

    def apply(self, model, ctx):
        return share_pq(model, self.config, layers=self.layers, progress=ctx.progress)


class ShareRqStage(_Stage):
    """Residual quantization (Gong et al. 2014)."""

    method: Literal["share_rq"]
    config: ShareRqConfig = ShareRqConfig()

    def apply(self, model, ctx):
        return share_rq(model, self.config, layers=self.layers, progress=ctx.progress)


class ShareBinaryStage(_Stage):
    """Binarization (or ternarization) with scales (Gong et al. 2014's sign coding)."""

    method: Literal["share_binary"]
    config: ShareBinaryConfig = ShareBinaryConfig()

    def apply(self, model, ctx):
        return share_binary(model, self.config, layers=self.layers, progress=ctx.progress)


class FactorSvdStage(_Stage):
    """Low-rank factorization by truncated SVD (Gong et al. 2014's baseline)."""

    method: Literal["factor_svd"]
    config: FactorSvdConfig

    def apply(self, model, ctx):
        return factor_svd(model, self.config, layers=self.layers, progress=ctx.progress)


class QuantizeStage(_Stage):
    """Dynamic fixed point after training (Ristretto's rule; Kim et al.'s layer outputs)."""

    method: Literal["quantize"]
    takes_layers: ClassVar[bool] = False
    config: QuantConfig = QuantConfig()

    def apply(self, model, ctx):
        return quantize(model, ctx.data, self.config)


class SearchBitsStage(_Stage):
    """Per-layer bit widths within an accuracy budget (Alhami's hybrid search)."""

    method: Literal["search_bits"]
    takes_layers: ClassVar[bool] = False
    config: BitSearchConfig = BitSearchConfig()

    def apply(self, model, ctx):
        return search_bits(model, ctx.data, self.config, progress=ctx.progress).model


class QatStage(_Stage):
    """Quantization-aware training at fixed bit widths."""

    method: Literal["qat"]
    takes_layers: ClassVar[bool] = False
    config: QatConfig = QatConfig()

    def apply(self, model, ctx):
        return train_quantized(model, ctx.data, self.config, progress=ctx.progress)[0]


class DistillStage(_Stage):
    """Train the model from the dense baseline: activation boundaries then soft targets (Heo et
    al., Hinton et al.), with gradual pruning meanwhile when `prune` is given (Shin & Oh)."""

    method: Literal["distill"]
    takes_layers: ClassVar[bool] = False
    config: DistillConfig = DistillConfig()
    prune: PruneGradualConfig | None = None

    def apply(self, model, ctx):
        hooks = []
        if self.prune is not None:
            config = _gradual_schedule(self.prune, self.config.fit, ctx.data)
            hooks.append(GradualPruner(model, config))
        distill(model, ctx.baseline, ctx.data, self.config, step_hooks=hooks, progress=ctx.progress)
        return model


class CompressiveStage(_Stage):
    """Layer-wise compressive training within its budget (Grimaldi et al. 2019)."""

    method: Literal["compressive"]
    config: CompressiveConfig = CompressiveConfig()

    def apply(self, model, ctx):
        train_compressive(model, ctx.data, self.config, layers=self.layers, progress=ctx.progress)
        return model


Stage = (
    PruneMagnitudeStage
    | PruneIterativeStage
    | PruneIncrementalStage
    | PruneGradualStage
    | PruneFiltersStage
    | SensitivityStage
    | ShareKmeansStage
    | SharePqStage
    | ShareRqStage
    | ShareBinaryStage
    | FactorSvdStage
    | QuantizeStage
    | SearchBitsStage
    | QatStage
    | DistillStage
    | CompressiveStage
)


def finetune(model: nn.Module, stage: _Stage, ctx: StageContext) -> None:
    """The stage's fine-tuning, on the labels or on the baseline's soft targets."""
    config = stage.finetune_config(ctx.baseline_fit)
    if config is None or not config.epochs:
        return
    if stage.soft_targets is None:
        fit(model, ctx.data, config, progress=ctx.progress)
        return
    kd = DistillConfig(fit=config, **stage.soft_targets.model_dump())
    distill(model, ctx.baseline, ctx.data, kd, progress=ctx.progress)
