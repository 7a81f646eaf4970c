"""Scalar weight sharing: per-layer k-means (Han et al. 2016, "trained quantization"; Kim et al.,
"synapse grouping"; Al-Hami et al., "K-means quantization") and binarization / ternarization
(Gong et al. 2014; ternary after Li & Liu 2016).

Both cluster only the surviving weights of a pruned layer and carry its mask, so zeros stay
zero; both leave a codebook as the layer's only trainable weight tensor, so fine-tuning with the
ordinary `fit` is Deep Compression's centroid fine-tuning.
"""

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from ..config import Settings, takes_mappings
from ..errors import ConfigError
from ..layers import LayerFilter
from ..progress import track
from .codebooks import (
    CodebookStage,
    ScalarCodebook,
    SignCodebook,
    attach,
    chosen_layers,
    take_weight,
)
from .kmeans import Init, kmeans_1d

Bits = Annotated[int, Field(ge=1, le=16)]


class ShareKmeansConfig(Settings):
    """`2**bits` shared values a layer: `per_layer` bits by name, else `conv_bits` / `fc_bits` by
    type, else `bits`. `init` as in Han et al. (linear is their best); `seed` for random init."""

    bits: Bits = 5
    conv_bits: Bits | None = None
    fc_bits: Bits | None = None
    per_layer: dict[str, Bits] = {}
    init: Init = "linear"
    seed: int = 0
    max_iter: int = Field(1000, ge=1)

    def bits_for(self, name: str, module: nn.Module) -> int:
        """The bit width of layer `name`."""
        by_type = self.conv_bits if isinstance(module, nn.Conv2d) else self.fc_bits
        return self.per_layer.get(name, by_type if by_type is not None else self.bits)


class ShareBinaryConfig(Settings):
    """`alpha * sign(W)` with one `alpha` per layer or per output channel; `ternary` also zeroes
    weights under `threshold * mean|W|` (Li & Liu 2016 use 0.7)."""

    scale: Literal["layer", "channel"] = "channel"
    ternary: bool = False
    threshold: float = Field(0.7, gt=0, lt=1.5)


@takes_mappings
def share_kmeans(
    model: nn.Module,
    config: ShareKmeansConfig,
    *,
    layers: LayerFilter = None,
    progress: bool = True,
) -> nn.Module:
    """Share each chosen layer's surviving weights among `2**bits` k-means centroids; returns
    model. Follows Han et al. 2016 (Deep Compression, section 3).

    Each weight becomes `centroids[indices] * mask` with `centroids` the only trainable tensor:
    fine-tune with `fit` to move each centroid by the mean of its members' gradients (Han et al.
    sum them; netshrink.share.gather says why the mean).

    Example:
        >>> share_kmeans(model, ShareKmeansConfig(conv_bits=8, fc_bits=5))  # doctest: +SKIP
    """
    chosen = chosen_layers(model, layers, config.per_layer)
    empty = [name for name, module in chosen if not bool(module.weight.detach().any())]
    if empty:  # checked before any layer changes
        raise ConfigError(f"layer {', '.join(empty)} has no surviving weights: leave it out")
    for name, module in track(chosen, "k-means", enabled=progress):
        value, keep = take_weight(module, name)
        result = kmeans_1d(
            value[keep],
            2 ** config.bits_for(name, module),
            init=config.init,
            seed=config.seed,
            max_iter=config.max_iter,
        )
        indices = torch.zeros(value.shape, dtype=torch.long, device=value.device)
        indices[keep] = torch.as_tensor(result.labels, device=value.device)
        centroids = torch.as_tensor(result.centroids, dtype=value.dtype, device=value.device)
        attach(module, ScalarCodebook(centroids, indices, keep.to(value.dtype)))
    return model


@takes_mappings
def share_binary(
    model: nn.Module,
    config: ShareBinaryConfig,
    *,
    layers: LayerFilter = None,
    progress: bool = True,
) -> nn.Module:
    """Binarize (or ternarize) each chosen layer as `alpha * sign(W)`; returns model.

    Gong et al. 2014 (section 3.1, binarization) with a scale: `alpha` is the mean magnitude of the
    layer's (or channel's) surviving weights, the least-squares scale of a sign pattern. Ternary
    after Li & Liu 2016. The scales are the trainable tensor; pruned weights stay zero.
    """
    chosen = chosen_layers(model, layers)
    for name, module in track(chosen, "binarize", enabled=progress):
        value, keep = take_weight(module, name)
        scales, signs = binarize(value, keep, config)
        attach(module, SignCodebook(scales, signs, keep.to(value.dtype), config.ternary))
    return model


def binarize(
    weight: torch.Tensor, keep: torch.Tensor, config: ShareBinaryConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales, signs) with `scales * signs` the least-squares fit of `weight` on `keep`."""
    rows = weight.shape[0] if config.scale == "channel" else 1
    w = weight.reshape(rows, -1)
    k = keep.reshape(rows, -1).to(w.dtype)
    magnitude = w.abs() * k
    signs = torch.where(w >= 0, 1.0, -1.0).to(w.dtype) * k
    if config.ternary:
        delta = (
            config.threshold * magnitude.sum(1, keepdim=True) / k.sum(1, keepdim=True).clamp(min=1)
        )
        signs = signs * (magnitude > delta)
    # the mean magnitude of what stays non-zero minimises ||w - alpha * signs|| per row
    used = signs.abs()
    scales = (magnitude * used).sum(1) / used.sum(1).clamp(min=1)
    return scales, signs.reshape(weight.shape)


class ShareKmeansStage(CodebookStage):
    """Trained scalar codebooks by k-means (Han et al. 2016, Gong et al. 2014)."""

    method: Literal["share_kmeans"]
    config: ShareKmeansConfig = ShareKmeansConfig()

    def share(self, model, ctx):
        return share_kmeans(model, self.config, layers=self.layers, progress=ctx.progress)


class ShareBinaryStage(CodebookStage):
    """Binarization (or ternarization) with scales (Gong et al. 2014's sign coding)."""

    method: Literal["share_binary"]
    config: ShareBinaryConfig = ShareBinaryConfig()

    def share(self, model, ctx):
        return share_binary(model, self.config, layers=self.layers, progress=ctx.progress)
