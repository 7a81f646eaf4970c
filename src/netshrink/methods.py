"""The one list of netshrink's methods. Each entry is a method's `Stage` class, which lives in
the method's own module beside its config and its function; recipes and Python validate a
method through it (the CLI's family commands follow in issue 16's next step).

Adding a method: write its config, function and `Stage` subclass in its module, add the class to
`METHODS` below, and a line to the method table in docs/recipes.md.
"""

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union, get_args

from pydantic import Field, TypeAdapter, ValidationError
from torch import nn

from .compressive import CompressiveStage
from .distill import DistillConfig, DistillStage, distill
from .errors import ConfigError
from .fold import FoldBatchnormStage
from .prune.filters import PruneFiltersStage
from .prune.gradual import PruneGradualStage
from .prune.incremental import PruneIncrementalStage
from .prune.iterative import PruneIterativeStage
from .prune.magnitude import PruneMagnitudeStage
from .prune.sensitivity import SensitivityStage
from .prune.variational import PruneVariationalStage
from .quant.qat import QatStage
from .quant.quantize import QuantizeStage
from .quant.search import SearchBitsStage
from .share.product import SharePqStage, ShareRqStage
from .share.scalar import ShareBinaryStage, ShareKmeansStage
from .share.soft import ShareSoftStage
from .share.svd import FactorSvdStage
from .stage import Stage, StageContext
from .train import fit

METHODS: tuple[type[Stage], ...] = (
    PruneMagnitudeStage,
    PruneIterativeStage,
    PruneIncrementalStage,
    PruneGradualStage,
    PruneVariationalStage,
    PruneFiltersStage,
    SensitivityStage,
    ShareKmeansStage,
    SharePqStage,
    ShareRqStage,
    ShareBinaryStage,
    ShareSoftStage,
    FactorSvdStage,
    FoldBatchnormStage,
    QuantizeStage,
    SearchBitsStage,
    QatStage,
    DistillStage,
    CompressiveStage,
)

# Any method's stage, chosen by its `method:` field (what a recipe's `stages:` list holds).
AnyStage = Annotated[Union[METHODS], Field(discriminator="method")]  # noqa: UP007
_ADAPTER = TypeAdapter(AnyStage)


def method_name(cls: type[Stage]) -> str:
    """The `method:` value of a stage class (its function's name)."""
    return get_args(cls.model_fields["method"].annotation)[0]


METHOD_NAMES: tuple[str, ...] = tuple(method_name(cls) for cls in METHODS)


def stage_class(method: str) -> type[Stage]:
    """The stage class of `method`, or a ConfigError listing the methods."""
    for cls in METHODS:
        if method_name(cls) == method:
            return cls
    raise ConfigError(f"unknown method {method!r}; the methods are: {', '.join(METHOD_NAMES)}")


def parse_stage(fields: dict[str, Any], names: Mapping[str, str] | None = None) -> Stage:
    """A stage from plain values (a recipe entry, the CLI's flags), validated by its method's
    own models; a mistake is one ConfigError naming the field, as in a recipe, or by the name the
    caller gave that field's dotted path in `names` (the CLI's `--weights` for `config.weights`)."""
    stage_class(fields.get("method", ""))  # an unknown method: say which exist
    try:
        return _ADAPTER.validate_python(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"][1:]]  # [0] is the method's tag
        name = _caller_name(loc, names or {})
        if name is not None:
            raise ConfigError(f"{name}: {err['msg']}") from None
        raise ConfigError(f"{fields['method']}: {'.'.join(loc) or 'stage'}: {err['msg']}") from None


def _caller_name(loc: list[str], names: Mapping[str, str]) -> str | None:
    """The name of the field at `loc`: its dotted path, or that path with the tags of tagged
    unions left out (`config.threshold.std.ratio` is `config.threshold.ratio`)."""
    for path, name in names.items():
        parts = path.split(".")
        if loc and loc[-1] == parts[-1] and [p for p in loc if p in parts] == parts:
            return name
    return None


def plan_stages(stages: Sequence[Stage]) -> list[Stage]:
    """The stages as a run executes them: a stage that leaves `fold_batchnorm` unset (the sharing
    stages) folds batch norm first when a later stage of the run folds it itself
    (`Stage.folds_batchnorm`: fixed point), which would otherwise scale shared values apart."""
    planned = []
    for index, stage in enumerate(stages):
        if "fold_batchnorm" in type(stage).model_fields and stage.fold_batchnorm is None:
            later = any(other.folds_batchnorm for other in stages[index + 1 :])
            stage = stage.model_copy(update={"fold_batchnorm": later})
        planned.append(stage)
    return planned


def run_stage(model: nn.Module, stage: Stage, ctx: StageContext) -> nn.Module:
    """Apply the stage's method, then its fine-tuning, as a recipe runs it. Returns the model (a
    new one for fixed point)."""
    model = stage.apply(model, ctx)
    finetune(model, stage, ctx)
    return model


def finetune(model: nn.Module, stage: Stage, ctx: StageContext) -> None:
    """The stage's fine-tuning, on the labels or on the baseline's soft targets."""
    config = stage.finetune_config(ctx.baseline_fit)
    if config is None or not config.epochs:
        return
    if stage.soft_targets is None:
        fit(model, ctx.data, config, progress=ctx.progress)
        return
    kd = DistillConfig(fit=config, **stage.soft_targets.model_dump())
    distill(model, ctx.baseline, ctx.data, kd, progress=ctx.progress)
