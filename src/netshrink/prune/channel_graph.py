"""Which channels are coupled: the analysis half of filter pruning (Li et al. 2017, "Pruning
Filters for Efficient ConvNets"), kept apart from the surgery as in Torch-Pruning.

The model is traced with torch.fx and run once on an example batch (ShapeProp). Every Conv2d and
Linear creates a *channel space* (its output channels); channel-preserving ops (BatchNorm,
activations, pooling, dropout, flatten) pass it on; `x + y` merges two spaces into one residual
group; a depthwise conv's output is its input's space. Each space lists its producers (whose
output channels are cut) and consumers (whose inputs are cut). An op the analysis does not know
(cat, slicing, reshapes other than flatten, grouped convs, custom channel arithmetic) LOCKS the
spaces it touches, as does the model's input and output: those channels are never pruned.
"""

import math
import operator
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm

from netshrink.errors import ConfigError
from netshrink.graph import first_line, own_layer_calls, trace

Value = tuple[int, int] | None  # (space id, features per channel: H*W after a flatten, else 1)

_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
    nn.ZeroPad2d,  # 2d pads pad the height and width only
    nn.ConstantPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
)
_PASS_OPS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.dropout,
    F.dropout2d,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    operator.neg,
    "relu",
    "relu_",
    "sigmoid",
    "tanh",
    "contiguous",
    "clone",
    torch.clamp,
    torch.clip,
    "clamp",
    "clamp_",
    "clip",
    F.interpolate,
}
# Elementwise between two tensors of one space (residual adds, gates): the spaces merge.
_BINARY_OPS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.mul,
    torch.add,
    torch.sub,
    torch.mul,
    "add",
    "add_",
    "sub",
    "mul",
    "mul_",
}
_FLATTEN_OPS = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}
_MEAN_OPS = {torch.mean, "mean"}
_SHAPE_OPS = {getattr, operator.getitem, "size", "dim"}  # reading a shape touches no channel


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a space, and how to slice it; `factor` is the number of features per
    channel when a Linear reads a flattened map (H*W), else 1."""

    module: str
    dim: Literal["in", "depthwise", "batchnorm"]
    factor: int = 1


@dataclass
class ChannelSpace:
    """Channels that must be pruned together: the outputs of `producers`, read by `consumers`.
    `locked_by` holds why it cannot be pruned (the node and op), empty when it can."""

    size: int
    producers: list[str] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    locked_by: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return bool(self.producers) and not self.locked_by


@dataclass(frozen=True)
class ChannelGraph:
    """The channel spaces of a model, and the BatchNorm that directly follows each producer."""

    spaces: tuple[ChannelSpace, ...]
    bn_after: dict[str, str]

    def space_of(self, producer: str) -> ChannelSpace:
        """The space whose channels `producer` outputs; KeyError if it produces none."""
        for space in self.spaces:
            if producer in space.producers:
                return space
        raise KeyError(producer)


def analyze_channels(model: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
    """Trace `model` and compute its channel spaces for inputs of `input_shape` (one image,
    without the batch dimension). Raises UnsupportedLayerError when fx cannot trace it.

    Example:
        >>> analyze_channels(resnet20(), (3, 32, 32)).space_of("conv1").producers[:2]
        ['conv1', 'layer1.0.conv2']
    """
    graph_module = trace(model, "filter pruning", input_shape)
    _propagate_shapes(model, graph_module, input_shape)
    own_layer_calls(graph_module, model)  # after the shapes: the graph is only read from here
    builder = _Builder(dict(graph_module.named_modules()))
    for node in graph_module.graph.nodes:
        builder.visit(node)
    return builder.finish()


def _propagate_shapes(model: nn.Module, graph_module: fx.GraphModule, input_shape) -> None:
    # Eval mode: BatchNorm must not update its statistics, nor fail on a tiny batch.
    modes = {m: m.training for m in model.modules()}
    reference = next(model.parameters(), torch.zeros(()))
    # A batch of 2, so that a flatten (N, C*H*W) is told apart from other reshapes.
    example = torch.zeros(2, *input_shape, dtype=reference.dtype, device=reference.device)
    graph_module.eval()
    try:
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example)
    except Exception as exc:  # noqa: BLE001 - the user's model refused the input shape
        raise ConfigError(
            f"the model does not run on inputs of shape {tuple(input_shape)} ({first_line(exc)});"
            " give input_shape as the (channels, height, width) of one image"
        ) from None
    finally:
        for module, training in modes.items():
            module.training = training


def _literal_features(node: fx.Node) -> int | None:
    """The feature count a view / reshape to (N, features) asks for when it is a literal int
    (not -1, not read from a size); None for flatten and for sizes computed at run time."""
    if node.target in (torch.flatten, "flatten"):
        return None
    shape = node.args[1:] if node.op == "call_method" else node.args[1:2]
    shape = shape or (node.kwargs.get("shape") or node.kwargs.get("size"),)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    if len(shape) != 2:  # only (N, features) flattens a conv's channels into features
        return None
    return shape[1] if isinstance(shape[1], int) and shape[1] != -1 else None


def _spatial_pad(node: fx.Node) -> bool:
    """Whether an F.pad call pads the last two dimensions only (a 4-D map's height and width)."""
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    return isinstance(pad, (list, tuple)) and len(pad) <= 4 and len(_shape(node) or ()) == 4


def _channel_free_constant(arg, out: tuple[int, ...] | None) -> bool:
    """Whether `arg` is a number, or a tensor of the model (fx get_attr) that broadcasts
    over the channels of an output of shape `out` (no channel axis of its own, or one of 1)."""
    if not isinstance(arg, fx.Node):
        return True
    shape = _shape(arg)
    if arg.op != "get_attr" or shape is None or out is None or len(out) < 2:
        return False
    at = 1 - (len(out) - len(shape))  # numpy's rule: shapes aligned on the right
    return at < 0 or shape[at] == 1


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _label(node: fx.Node, module: nn.Module | None = None) -> str:
    if module is not None:
        return f"{node.target} ({type(module).__name__})"
    if node.op == "call_method":
        return f"{node.name} (.{node.target}())"
    return f"{node.name} ({getattr(node.target, '__name__', node.target)})"


class _Builder:
    """Walks the fx graph once, giving each tensor-valued node its channel space."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.parent: list[int] = []
        self.spaces: list[ChannelSpace] = []
        self.values: dict[fx.Node, Value] = {}
        self.calls: Counter[str] = Counter()
        self.touched: dict[str, list[int]] = defaultdict(list)
        self.bn_after: dict[str, str] = {}

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            value = self._fresh(node, lock=f"{node.name} (model input)")
        elif node.op == "output":
            self._lock_inputs(node, f"{node.name} (model output: classes are never pruned)")
            value = None
        elif node.op == "call_module":
            value = self._module(node, node.target, self.modules[node.target])
        elif node.op in ("call_function", "call_method"):
            value = self._function(node, _label(node))
        else:  # get_attr: a tensor of the model, not data flowing through channels
            value = None
        self.values[node] = value

    def finish(self) -> ChannelGraph:
        for name, count in self.calls.items():
            if count > 1:  # one weight tensor serving two inputs cannot be cut for one of them
                for space in self.touched[name]:
                    self._lock(space, f"{name} (called {count} times)")
        roots = sorted({self._find(i) for i in range(len(self.spaces))})
        return ChannelGraph(tuple(self.spaces[r] for r in roots), dict(self.bn_after))

    def _module(self, node: fx.Node, name: str, module: nn.Module) -> Value:
        src = self._value(node.args[0] if node.args else None)
        if isinstance(module, nn.Conv2d):
            value = self._conv(node, name, module, src)
        elif isinstance(module, nn.Linear):
            value = self._linear(node, name, module, src)
        elif isinstance(module, _BatchNorm):
            value = self._batchnorm(node, name, module, src)
        elif isinstance(module, _PASS_MODULES):
            return self._pass(node, _label(node, module))
        elif isinstance(module, nn.Flatten):
            return self._flatten(node, _label(node, module))
        else:
            return self._unknown(node, _label(node, module))
        self.calls[name] += 1
        self.touched[name] += [v[0] for v in (src, value) if v is not None]
        return value

    def _conv(self, node, name: str, conv: nn.Conv2d, src: Value) -> Value:
        if conv.groups == 1:
            self._consume(src, Consumer(name, "in"))
            return self._fresh(node, producer=name)
        if conv.groups == conv.in_channels == conv.out_channels:
            self._consume(src, Consumer(name, "depthwise"))  # channel i only ever sees channel i
            return src
        label = f"{name} (Conv2d with groups={conv.groups}: channels are tied within groups)"
        return self._unknown(node, label, producer=name)

    def _linear(self, node, name: str, linear: nn.Linear, src: Value) -> Value:
        shape = _shape(node.args[0])
        if shape is None or len(shape) != 2:
            return self._unknown(node, _label(node, linear) + " on a non-2-d input", producer=name)
        self._consume(src, Consumer(name, "in", factor=src[1] if src else 1))
        return self._fresh(node, producer=name)

    def _batchnorm(self, node, name: str, norm: _BatchNorm, src: Value) -> Value:
        if src is None or src[1] != 1:
            return self._unknown(node, _label(node, norm) + " on flattened features")
        self._consume(src, Consumer(name, "batchnorm"))
        before = node.args[0]
        if before.op == "call_module" and isinstance(
            self.modules[before.target], (nn.Conv2d, nn.Linear)
        ):
            self.bn_after[before.target] = name
        return src

    def _function(self, node: fx.Node, label: str) -> Value:
        target = node.target
        if target in _SHAPE_OPS and _shape(node) is None:
            return None
        if target in _BINARY_OPS:
            return self._binary(node, label)
        if target in _FLATTEN_OPS:
            return self._flatten(node, label)
        if target in _MEAN_OPS:
            return self._mean(node, label)
        if target in _PASS_OPS or (target is F.pad and _spatial_pad(node)):
            return self._pass(node, label)
        return self._unknown(node, label)

    def _pass(self, node: fx.Node, label: str, src_node=None) -> Value:
        src_node = src_node if src_node is not None else (node.args or [None])[0]
        src, inp, out = self._value(src_node), _shape(src_node), _shape(node)
        ok = src is not None and inp and out and len(inp) == len(out) and inp[1] == out[1]
        return src if ok else self._unknown(node, label)

    def _binary(self, node: fx.Node, label: str) -> Value:
        operands = list(node.args[:2])
        # a tensor of the model the same for every channel (Fixup's scalar `self.bias1a`)
        # acts like a number
        tensors = [a for a in operands if not _channel_free_constant(a, _shape(node))]
        if (
            len(tensors) == 1
            and len(operands) == 2
            and all(isinstance(a, (fx.Node, int, float)) for a in operands)
        ):
            return self._pass(node, label, tensors[0])  # x * 0.5, x + 1
        if len(tensors) != 2:
            return self._unknown(node, label)
        (a, b), (sa, sb) = map(self._value, tensors), map(_shape, tensors)
        out = _shape(node)
        if (
            a is None
            or b is None
            or a[1] != b[1]
            or not (sa and sb and out)
            or len(sa) != len(sb)
            or not sa[1] == sb[1] == out[1]
        ):
            return self._unknown(node, label)
        self._merge(a[0], b[0])
        return a

    def _flatten(self, node: fx.Node, label: str) -> Value:
        src, inp, out = self._value(node.args[0]), _shape(node.args[0]), _shape(node)
        fixed = _literal_features(node)
        if src is not None and fixed is not None:
            # x.view(-1, 2048): the feature count is a constant of the user's forward, which
            # no longer fits once channels are removed (a size read from the tensor does)
            self._lock(
                src[0],
                f"{label} reshapes to a literal {fixed} features (written as x.flatten(1) or "
                "x.view(x.size(0), -1) its channels could be removed)",
            )
            return None
        # (N, C, H, W) -> (N, C*H*W) in row-major order: channel c owns features [c*HW, (c+1)*HW)
        if (
            src is not None
            and inp
            and out
            and len(inp) >= 2
            and len(out) == 2
            and out[0] == inp[0]
            and out[1] == math.prod(inp[1:])
        ):
            return src[0], src[1] * math.prod(inp[2:])
        return self._unknown(node, label)

    def _mean(self, node: fx.Node, label: str) -> Value:
        # A mean over spatial dims is a global average pool; over channels it mixes them.
        src, inp, out = self._value(node.args[0]), _shape(node.args[0]), _shape(node)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else dims
        if (
            src is not None
            and src[1] == 1
            and inp
            and out
            and isinstance(dims, (list, tuple))
            and all(isinstance(d, int) and d % len(inp) >= 2 for d in dims)
            and out[:2] == inp[:2]
        ):
            return src
        return self._unknown(node, label)

    def _unknown(self, node: fx.Node, label: str, producer: str | None = None) -> Value:
        self._lock_inputs(node, label)
        return self._fresh(node, producer=producer, lock=label)

    def _fresh(self, node: fx.Node, producer: str | None = None, lock: str | None = None) -> Value:
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        self.parent.append(len(self.spaces))
        self.spaces.append(
            ChannelSpace(
                size=shape[1],
                producers=[producer] if producer else [],
                locked_by=[lock] if lock else [],
            )
        )
        return len(self.spaces) - 1, 1

    def _value(self, node) -> Value:
        return self.values.get(node) if isinstance(node, fx.Node) else None

    def _consume(self, src: Value, consumer: Consumer) -> None:
        if src is not None:
            self.spaces[self._find(src[0])].consumers.append(consumer)

    def _lock_inputs(self, node: fx.Node, reason: str) -> None:
        for source in node.all_input_nodes:
            value = self._value(source)
            if value is not None:
                self._lock(value[0], reason)

    def _lock(self, space: int, reason: str) -> None:
        locks = self.spaces[self._find(space)].locked_by
        if reason not in locks:
            locks.append(reason)

    def _find(self, space: int) -> int:
        while self.parent[space] != space:
            space = self.parent[space]
        return space

    def _merge(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        keep, gone = self.spaces[min(ra, rb)], self.spaces[max(ra, rb)]
        keep.producers += gone.producers
        keep.consumers += gone.consumers
        keep.locked_by += [r for r in gone.locked_by if r not in keep.locked_by]
        self.parent[max(ra, rb)] = min(ra, rb)
