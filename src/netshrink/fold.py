"""Batch-norm folding: a BatchNorm after a convolution is an affine map per channel, so a device
folds it into the convolution's weights and bias before quantizing (Jacob et al. 2018, section
3.2; Ristretto quantizes the folded layer as well). In eval mode

    bn(conv(x)) = conv'(x),  W' = W * g / sqrt(var + eps),  b' = (b - mean) * g / sqrt(var + eps) + beta

per output channel. The BatchNorm becomes an nn.Identity and the fold is recorded as a
structural edit (netshrink.edits.FoldBatchNorm), so a checkpoint or file rebuilds the folded
model. A pruning mask survives folding (a zero times a scale is a zero); a weight-sharing codebook
does not (each channel would scale its shared values differently), so fold before sharing.
"""

from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from .config import Settings
from .edits import BatchNormAsConv, FoldBatchNorm, record_edits, structural_edits
from .errors import UnsupportedLayerError
from .graph import own_layer_calls, trace
from .layers import unwrap
from .mask import Mask
from .stage import Stage


def fold_batchnorm(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Fold every BatchNorm that directly and solely follows a Conv2d or Linear into it, in place
    (the model keeps its class and module names); returns `model`. BatchNorms elsewhere (before
    a convolution, after an addition) are left alone. `input_shape` (one input, no batch), where
    known, is what a forward that reads sizes is traced with (netshrink.graph.trace).

    Example:
        >>> model = fold_batchnorm(vgg_small().eval())  # every conv + bn pair becomes one conv
    """
    root = unwrap(model)
    pairs = foldable_pairs(root, input_shape)
    for conv, bn in pairs:  # every pair checked before any changes: all or nothing
        try:
            check_foldable(root.get_submodule(conv), root.get_submodule(bn))
        except UnsupportedLayerError as exc:
            raise UnsupportedLayerError(f"cannot fold {bn} into {conv}: {exc}") from None
    for conv, bn in pairs:
        fold_into(root, conv, bn)
    record_edits(root, [FoldBatchNorm(conv=conv, bn=bn) for conv, bn in pairs])
    return model


def foldable_pairs(model: nn.Module, input_shape=None) -> list[tuple[str, str]]:
    """(conv, bn) names where the BatchNorm's only input is the layer's output, used nowhere else."""
    graph_module = trace(model, "batch-norm folding", input_shape)
    own_layer_calls(graph_module, model)  # Conv2dSame's F.conv2d as its layer (only read here)
    modules = dict(graph_module.named_modules())
    pairs = []
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
            continue
        source = node.args[0]
        if (
            getattr(source, "op", None) == "call_module"
            and isinstance(modules[source.target], (nn.Conv2d, nn.Linear))
            and len(source.users) == 1
        ):
            pairs.append((source.target, node.target))
    return pairs


def check_foldable(conv: nn.Module, bn: nn.Module) -> None:
    """Raise UnsupportedLayerError unless `bn` can be folded into `conv`."""
    if not isinstance(conv, (nn.Conv2d, nn.Linear)) or not isinstance(bn, _BatchNorm):
        raise UnsupportedLayerError(
            f"can fold a BatchNorm into a Conv2d or Linear, not a {type(bn).__name__} into a "
            f"{type(conv).__name__}"
        )
    if bn.running_mean is None:
        raise UnsupportedLayerError(
            "this BatchNorm keeps no running statistics (track_running_stats=False): "
            "there is nothing to fold"
        )
    if bn.num_features != conv.weight.shape[0]:
        raise UnsupportedLayerError(
            f"the BatchNorm has {bn.num_features} channels but the layer {conv.weight.shape[0]}"
        )
    for name in ("weight", "bias"):
        chain = conv.parametrizations[name] if parametrize.is_parametrized(conv, name) else []
        if any(not isinstance(p, Mask) for p in chain):
            raise UnsupportedLayerError(
                f"its {name} is weight-shared or quantized; fold batch norm before sharing "
                "(netshrink share --fold-batchnorm, netshrink.fold_batchnorm in Python; a "
                "recipe's sharing stage does it by itself when fixed point follows)"
            )
    if parametrize.is_parametrized(conv, "bias"):
        # The folded bias is (b - mean) * scale + beta: a pruned bias would zero that shift.
        raise UnsupportedLayerError(
            "its bias is pruned; fold batch norm before pruning biases (include_bias)"
        )


@torch.no_grad()
def fold_into(root: nn.Module, conv_name: str, bn_name: str) -> None:
    """Fold the BatchNorm `bn_name` into the layer `conv_name` of `root`, in place."""
    conv, bn = root.get_submodule(conv_name), root.get_submodule(bn_name)
    check_foldable(conv, bn)
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    dense = _dense(conv, "weight")
    dense.mul_(scale.reshape(-1, *([1] * (dense.dim() - 1))))
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.clone())
    else:
        bias = _dense(conv, "bias")
        bias.copy_(bias * scale + shift)
    root.set_submodule(bn_name, nn.Identity())


def batchnorms_as_convs(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d left in the (folded) model by a depthwise 1x1 Conv2d with the
    same per-channel scale and shift, in place, and record it; returns `model`. What a device does
    with a pre-activation BatchNorm (DenseNet, pre-activation ResNets), which follows an addition
    or a concatenation and so folds into no layer: a per-channel multiply-add, which fixed point
    then runs on its own grids like any layer."""
    root = unwrap(model)
    names = [n for n, m in root.named_modules() if isinstance(m, nn.BatchNorm2d)]
    for name in names:  # every one checked before any changes: all or nothing
        check_convertible(root.get_submodule(name), name)
    for name in names:
        batchnorm_as_conv(root, name)
    record_edits(root, [BatchNormAsConv(bn=name) for name in names])
    return model


def check_convertible(bn: nn.Module, name: str) -> None:
    """UnsupportedLayerError unless `bn` is a BatchNorm2d with running statistics."""
    if not isinstance(bn, nn.BatchNorm2d):
        raise UnsupportedLayerError(f"{name} is a {type(bn).__name__}, not a BatchNorm2d")
    if bn.running_mean is None:
        raise UnsupportedLayerError(
            f"{name} keeps no running statistics (track_running_stats=False): its scale is "
            "computed from each batch, which fixed point cannot do"
        )


@torch.no_grad()
def batchnorm_as_conv(root: nn.Module, name: str) -> None:
    """Replace the BatchNorm2d `name` of `root` by its depthwise 1x1 Conv2d, in place."""
    bn = root.get_submodule(name)
    check_convertible(bn, name)
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    channels = bn.num_features
    conv = nn.Conv2d(channels, channels, 1, groups=channels, bias=True)
    conv = conv.to(device=scale.device, dtype=scale.dtype)
    conv.weight.copy_(scale.reshape(channels, 1, 1, 1))
    conv.bias.copy_(shift)
    root.set_submodule(name, conv)


def converted_batchnorms(model: nn.Module) -> set[str]:
    """The layers of `model` that were BatchNorms (`batchnorms_as_convs`)."""
    return {e.bn for e in structural_edits(model) if isinstance(e, BatchNormAsConv)}


def _dense(module: nn.Module, name: str) -> torch.Tensor:
    # Under a mask the stored tensor is the dense one; scaling it scales the masked weight.
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


class FoldBatchnormConfig(Settings):
    """Batch-norm folding has no options: every BatchNorm that solely follows a conv or linear
    layer is folded into it (the others are left alone)."""


class FoldBatchnormStage(Stage):
    """Fold batch norm into the preceding layers (Jacob et al. 2018), so that weight sharing and
    fixed point act on the weights the device computes with."""

    method: Literal["fold_batchnorm"]
    takes_layers: ClassVar[bool] = False
    config: FoldBatchnormConfig = FoldBatchnormConfig()

    def apply(self, model, ctx):
        return fold_batchnorm(model.eval())
