"""Product and residual quantization of weight matrices (Gong et al. 2014, "Compressing Deep
Convolutional Networks using Vector Quantization", sections 3.3 and 3.4).

A Linear weight is its matrix; a Conv2d weight is reshaped to (out, in * kh * kw). Sub-vectors
of `segment` entries run along rows (`axis="rows"`: each row cut into pieces, one codebook per
column segment) or along columns (`axis="columns"`). The codebooks become the trainable tensor
(the dense original is frozen), and a pruned layer keeps its zeros.
"""

from typing import Literal

from pydantic import Field
from torch import nn

from ..config import Settings, takes_mappings
from ..errors import ConfigError
from ..layers import LayerFilter
from ..progress import track
from .codebooks import CodebookStage, VectorCodebook, attach, chosen_layers, take_weight
from .vq import Axis, residual_quantize


class SharePqConfig(Settings):
    """`k` centres in each segment of `segment` entries along `axis` (Gong et al.'s PQ)."""

    segment: int = Field(4, ge=1)
    k: int = Field(256, ge=1)
    axis: Axis = "rows"
    seed: int = 0


class ShareRqConfig(Settings):
    """`stages` rounds of `k` centres on the residuals; `segment=None` takes whole rows (or
    columns), as Gong et al.'s RQ does."""

    stages: int = Field(2, ge=1)
    k: int = Field(16, ge=1)
    segment: int | None = Field(None, ge=1)
    axis: Axis = "rows"
    seed: int = 0


@takes_mappings
def share_pq(
    model: nn.Module, config: SharePqConfig, *, layers: LayerFilter = None, progress: bool = True
) -> nn.Module:
    """Product-quantize each chosen layer's weight (Gong et al. 2014, section 3.3); returns model.

    Stores, per segment, a k x segment codebook and a log2(k)-bit index per sub-vector.
    """
    return _quantize(model, layers, config.segment, config.k, 1, config.axis, config.seed, progress)


@takes_mappings
def share_rq(
    model: nn.Module, config: ShareRqConfig, *, layers: LayerFilter = None, progress: bool = True
) -> nn.Module:
    """Residual-quantize each chosen layer's weight (Gong et al. 2014, section 3.4); returns model.

    Stage t quantizes what stages 1..t-1 left; the weight is the sum of the stages' decodes.
    """
    return _quantize(
        model, layers, config.segment, config.k, config.stages, config.axis, config.seed, progress
    )


def _quantize(model, layers, segment, k, stages, axis, seed, progress) -> nn.Module:
    chosen = chosen_layers(model, layers)
    for name, module in track(chosen, "vector quantization", enabled=progress):
        value, keep = take_weight(module, name)
        matrix = value.reshape(value.shape[0], -1)
        length = matrix.shape[1] if axis == "rows" else matrix.shape[0]
        size = length if segment is None else segment
        if size > length:
            raise ConfigError(
                f"segment {size} is longer than layer {name}'s {axis} ({length} entries): "
                "choose a smaller segment"
            )
        codes = residual_quantize(matrix, segment=size, k=k, stages=stages, axis=axis, seed=seed)
        attach(module, VectorCodebook(codes.codebooks, codes.indices, keep.to(value.dtype), axis))
    return model


class SharePqStage(CodebookStage):
    """Product quantization of the weight matrices (Gong et al. 2014)."""

    method: Literal["share_pq"]
    config: SharePqConfig = SharePqConfig()

    def share(self, model, ctx):
        return share_pq(model, self.config, layers=self.layers, progress=ctx.progress)


class ShareRqStage(CodebookStage):
    """Residual quantization (Gong et al. 2014)."""

    method: Literal["share_rq"]
    config: ShareRqConfig = ShareRqConfig()

    def share(self, model, ctx):
        return share_rq(model, self.config, layers=self.layers, progress=ctx.progress)
