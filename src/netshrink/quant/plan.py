"""Where a fixed-point model quantizes: the quantization points of a traced graph.

Every value that a quantized layer reads must be on a grid, and every operation that leaves the
grid must be followed by a quantizer. So, walking the torch.fx graph:

- values that *make* new numbers get an `ActQuant` after them: the model's input, each Conv2d /
  Linear, each addition (residual joins) and product of two tensors (gates), average pool,
  concatenation, element-wise function (sigmoid, SiLU, hard-swish, tanh, GELU, ...: a lookup
  table on a device), and any op the plan does not know (the integer path refuses those);
- an op that returns several tensors (topk, var_mean) is quantized at the float part the model
  picks from it; indices and boolean masks get no quantizer; a max or min over dimensions
  (CBAM's `torch.max(x, 1)[0]`) keeps values on their grid, a mean over any dimensions but the
  batch is an average pool;
- ops that keep values on their grid pass through: ReLU, max pooling, flatten / view, dropout,
  identity, reading a shape;
- a ReLU (or ReLU6) that is the only user of a layer is fused: the quantizer goes after it, with
  an unsigned format, the extra bit that Kim et al. and every int8 engine take for activations;
- a layer or addition whose value only reaches the model's output is not requantized: the logits
  are the accumulator (no argmax ties from a narrow output format);
- layers left in float (`float_layers`, Al-Hami et al.'s partial quantization) get no weight
  format, and a quantizer after them only when a quantized op reads them.
"""

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import ConfigError, UnsupportedLayerError

_LAYERS = (nn.Conv2d, nn.Linear)
_RELU = {nn.ReLU, F.relu, torch.relu, "relu", "relu_"}
_RELU6 = {nn.ReLU6, F.relu6}
_PASS = {
    nn.MaxPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    F.max_pool2d,
    F.adaptive_max_pool2d,
    F.dropout,
    torch.flatten,
    torch.reshape,
    "flatten",
    "view",
    "reshape",
    "contiguous",
    "clone",
    "squeeze",
    "unsqueeze",
    torch.squeeze,
    torch.unsqueeze,
}
# Ops that keep values but reorder them (channel shuffle's transpose): values stay on their grid,
# but a stored tensor is not merely relabelled (the C export gathers them into a copy).
# Broadcasts (an SE gate's `y.expand_as(x)`) repeat values, on their grid, the same way.
_REORDER = {torch.transpose, torch.permute, "transpose", "permute", "expand", "expand_as"}
# Ops that pick parts of a tensor (chunk, split, slicing by getitem): values stay on their grid.
_SELECT = {torch.chunk, torch.split, "chunk", "split"}
_PASS |= _REORDER | _SELECT
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
# The difference of two quantized tensors (a map minus its channel mean): exact in integers.
_SUB = {operator.sub, operator.isub, torch.sub, "sub", "sub_"}
# An element-wise product of two quantized tensors (a squeeze-and-excitation gate): exact in
# integers (the fractional lengths add), requantized after it.
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
# Element-wise functions of one tensor: on a device, a lookup table indexed by the input's
# integer (a 2**bits-entry table for a `bits`-bit input), filled offline by the float function;
# the integer path computes exactly those entries (the function on the grid value, in float32).
_LUT = {
    nn.Sigmoid, torch.sigmoid, F.sigmoid, "sigmoid",
    nn.Tanh, torch.tanh, F.tanh, "tanh",
    nn.SiLU, F.silu,
    nn.Hardswish, F.hardswish,
    nn.Hardsigmoid, F.hardsigmoid,
    nn.GELU, F.gelu,
    nn.ELU, F.elu,
    nn.LeakyReLU, F.leaky_relu,
    nn.Softplus, F.softplus,
    nn.Mish, F.mish,
    nn.Hardtanh, F.hardtanh,
    nn.SELU, F.selu, nn.CELU, F.celu, nn.Softsign, F.softsign, nn.LogSigmoid, F.logsigmoid,
    nn.Hardshrink, F.hardshrink, nn.Softshrink, F.softshrink, nn.Tanhshrink, F.tanhshrink,
    nn.Threshold, F.threshold, torch.abs, "abs", "sigmoid_", "tanh_",
    nn.PReLU, F.prelu,  # per-channel slopes: a table per channel in C
}  # fmt: skip
# Clamps between numbers (`x.clamp(min=0)`, `torch.clamp(x, 0, 6)`: ReLU and ReLU6 written out)
# are lookup tables too; a clamp to another tensor is not an element-wise function of one.
_CLAMP = {torch.clamp, "clamp", "clamp_", torch.clip, "clip", "clip_"}
_LUT |= _CLAMP
# Arithmetic with a number (GhostNet's functional hard sigmoid `relu6(x + 3.0) / 6.0`, a scaled
# branch `0.5 * y`): an element-wise function of one tensor like those above, a lookup table.
_ARITHMETIC = {
    operator.add, operator.iadd, torch.add, "add", "add_",
    operator.sub, operator.isub, torch.sub, "sub", "sub_", operator.mul, operator.imul,
    torch.mul, "mul", "mul_", operator.truediv, operator.itruediv, torch.div, "div", "div_",
}  # fmt: skip
_AVG_POOL = {nn.AvgPool2d, nn.AdaptiveAvgPool2d, F.avg_pool2d, F.adaptive_avg_pool2d}
_CAT = {torch.cat, torch.concat}
# A sum over dimensions is a mean that divides by 1: the same reduction on integers.
_SUM = {torch.sum, "sum"}
_MEAN = {torch.mean, "mean"} | _SUM
# Reductions that keep values on their grid: a max or min over dimensions (with a dim, torch.max
# gives (values, indices), whose values part the model picks).
_REDUCE = {torch.max, torch.min, "max", "min", torch.amax, torch.amin, "amax", "amin"}
_META = {getattr, "size", "dim"}
# Ops that return several tensors: (values, indices) pairs, and tuples of floats. The tuple holds
# no values of its own, so its quantizer goes on the float part the model picks (getitem or
# `.values`), and none on the indices (integers, not activations).
_VALUES_INDICES = {
    torch.max, torch.min, "max", "min", torch.median, "median", torch.nanmedian, "nanmedian",
    torch.mode, "mode", torch.kthvalue, "kthvalue", torch.topk, "topk", torch.sort, "sort",
    torch.cummax, "cummax", torch.cummin, "cummin", torch.frexp, "frexp",
}  # fmt: skip
_TUPLE_ONLY_WITH_DIM = {
    torch.max, torch.min, "max", "min", torch.median, "median", torch.nanmedian, "nanmedian",
}  # fmt: skip
_FLOAT_TUPLES = {torch.var_mean, torch.std_mean, torch.aminmax, "aminmax"}
# Ops whose output holds integers or booleans (indices, masks): no activation quantizer.
_INTEGER = {
    torch.argmax, torch.argmin, torch.argsort, "argmax", "argmin", "argsort",
    torch.nonzero, "nonzero", torch.bucketize, torch.searchsorted,
    torch.isnan, torch.isinf, torch.isfinite, "isnan", "isinf", "isfinite",
    torch.eq, torch.ne, torch.lt, torch.le, torch.gt, torch.ge,
    "eq", "ne", "lt", "le", "gt", "ge",
    operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
    torch.logical_and, torch.logical_or, torch.logical_not, torch.logical_xor,
    "long", "int", "short", "byte", "char", "bool",
}  # fmt: skip


@dataclass(frozen=True)
class QuantPoint:
    """An activation quantizer: module `name` placed after node `after`, quantizing the value
    that `source` (a layer name, or the fx node name of an op) produced."""

    name: str
    after: str
    source: str
    kind: str
    signed: bool
    divisor: int | None = None  # an average pool's constant window size, when it has one
    reads: str | None = None  # for an average pool: the point whose values it averages


@dataclass(frozen=True)
class QuantPlan:
    """The points in graph order, the layers whose weights are quantized, the layers left in
    float, and for each quantized layer the point whose format its input has."""

    points: tuple[QuantPoint, ...]
    layers: tuple[str, ...]
    float_layers: tuple[str, ...]
    inputs: dict[str, str]


def node_kind(node: fx.Node, modules: dict[str, nn.Module], float_layers=()) -> str:
    """What a node does to quantized values: input, constant, layer, float_layer, add, sub, mul,
    lut, avg_pool, cat, relu, relu6, pass, meta, output or other."""
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "get_attr":
        # a tensor the model holds (Fixup's scalar `self.bias1a`, a per-channel offset):
        # quantized once onto a grid of its own, then added or multiplied like any value
        return "constant"
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, _LAYERS):
            return "float_layer" if node.target in float_layers else "layer"
        key = type(module)
    else:
        key = node.target
    if key is operator.getitem:  # a size, a part of a chunk, or a slice: values kept
        source = node.args[0]
        return "meta" if isinstance(source, fx.Node) and _is_meta(source, modules) else "pass"
    if key is getattr and node.args[1] in ("values", "indices"):
        return "pass"  # a part of torch.max(x, 1)'s (values, indices), by name
    if key in _MEAN and mean_dims(node):
        return "avg_pool"  # x.mean((2, 3)): a global average pool; a mean over channels
    if key in _REDUCE and reduction(node):
        return "pass"  # the largest (smallest) of values on one grid is on it
    if key in _SIZE_ARITHMETIC and _on_sizes(node, modules):
        return "meta"  # c // groups of a channel shuffle: arithmetic on shapes, no tensor
    if key in _ARITHMETIC and _with_a_number(node):
        return "lut"
    if key in _CLAMP and any(
        isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values())
    ):
        return "other"  # bounds that are tensors
    if zero_pad(node) or gathers(node, modules.get(node.target)):
        return "pass"  # option-A ResNet shortcuts (zero is on every grid); copies of values
    for kind, members in (
        ("relu", _RELU),
        ("relu6", _RELU6),
        ("pass", _PASS),
        ("add", _ADD),
        ("sub", _SUB),
        ("mul", _MUL),
        ("lut", _LUT),
        ("avg_pool", _AVG_POOL),
        ("cat", _CAT),
        ("meta", _META),
    ):
        if key in members:
            if kind in ("add", "sub", "mul") and not _joins_two_tensors(node):
                return "other"  # x + y * 2 with an alpha, a tensor constant: unknown
            return kind
    return "other"


def constant_value(graph_module: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    """The floating-point tensor a "constant" node (fx's get_attr) reads from the model.
    UnsupportedLayerError, naming it, for anything else (an integer buffer, a module)."""
    value = graph_module
    for part in node.target.split("."):
        value = getattr(value, part)
    if not (isinstance(value, torch.Tensor) and value.dtype.is_floating_point):
        raise UnsupportedLayerError(
            f"{node.name} reads {node.target}, which is not a floating-point tensor to quantize"
        )
    return value.detach()


def _with_a_number(node: fx.Node) -> bool:
    """Whether `node` is arithmetic between one tensor and a Python number (x + 3.0, 6 / x)."""
    operands = node.args[:2]
    nodes = [a for a in operands if isinstance(a, fx.Node)]
    numbers = [a for a in operands if isinstance(a, (int, float)) and not isinstance(a, bool)]
    return len(node.args) == 2 and not node.kwargs and len(nodes) == len(numbers) == 1


def zero_pad(node: fx.Node) -> bool:
    """Whether `node` is F.pad with zeros (the default), which keeps every value on its grid."""
    if node.op != "call_function" or node.target is not F.pad:
        return False
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
    return mode == "constant" and not value


# Ops that copy values to new places and make none (pixel shuffles, flips, rolls, tiles,
# reflection and replication padding): the values stay on their grid. See `gathers`.
_GATHER = {
    F.pixel_shuffle, F.pixel_unshuffle, nn.PixelShuffle, nn.PixelUnshuffle, torch.flip, "flip",
    torch.roll, "roll", "view_as", "reshape_as", "repeat", torch.tile, "tile",
    torch.repeat_interleave, "repeat_interleave", nn.ReflectionPad2d, nn.ReplicationPad2d,
    nn.CircularPad2d, nn.ZeroPad2d,
}  # fmt: skip
_NEAREST = ("nearest", "nearest-exact")


def gathers(node: fx.Node, module: nn.Module | None = None) -> bool:
    """Whether `node` only copies input values to new places (`_GATHER`, nearest-neighbour
    upsampling, F.pad other than with a non-zero constant, ConstantPad2d(.., 0)): values and
    grid kept; the C export copies them through a table of where each one comes from."""
    if node.op == "call_module":
        if isinstance(module, nn.Upsample):
            return module.mode in _NEAREST
        if isinstance(module, nn.ConstantPad2d):
            return module.value == 0
        return type(module) in _GATHER
    if node.op not in ("call_function", "call_method"):
        return False
    if node.target is F.interpolate:
        return node.kwargs.get("mode", node.args[3] if len(node.args) > 3 else "nearest") in (
            _NEAREST
        )
    if node.target is F.pad:
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        return mode != "constant"
    return node.target in _GATHER


def lut_input(node: fx.Node) -> int:
    """The position of the one tensor a lookup-table node reads among its arguments (0 but for
    a number first: 0.5 * y)."""
    return next(i for i, a in enumerate(node.args) if isinstance(a, fx.Node))


def _is_meta(node: fx.Node, modules) -> bool:
    return node_kind(node, modules) == "meta"


def _on_sizes(node: fx.Node, modules) -> bool:
    """Whether every value `node` reads is a shape or a number (none is a tensor)."""
    inputs = [a for a in node.args if isinstance(a, fx.Node)]
    return bool(inputs) and all(_is_meta(a, modules) for a in inputs)


def spatial_mean(node: fx.Node) -> bool:
    """Whether `node` is a mean over the two spatial dimensions of an NCHW tensor
    (`x.mean((2, 3))`, `torch.mean(x, dim=(-2, -1), keepdim=True)`): a global average pool."""
    dims = mean_dims(node)
    return dims is not None and len(dims) == 2 and {d % 4 for d in dims} == {2, 3}


def mean_dims(node: fx.Node) -> tuple[int, ...] | None:
    """The dimensions a mean (or a sum) reduces (`x.mean((2, 3))`, CBAM's `torch.mean(x, 1)` over
    the channels, `x.sum(1)`), when they are given and leave the batch; None for any other node.
    An average of values on one grid: a sum on integers, divided by the values' count (a sum's:
    1) where it is requantized."""
    return _reduced_dims(node, _MEAN)


def reduction(node: fx.Node) -> tuple[str, tuple[int, ...], bool] | None:
    """A max / min over given dimensions (CBAM's `torch.max(x, 1)[0]`, `x.amax((2, 3))`): (max or
    min, the dimensions, keepdim); values stay on their grid. None for any other node."""
    dims = _reduced_dims(node, _REDUCE)
    if dims is None:
        return None
    name = getattr(node.target, "__name__", node.target)
    return ("max" if "max" in name else "min"), dims, keeps_dims(node)


def keeps_dims(node: fx.Node) -> bool:
    """A reduction's keepdim argument."""
    return bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))


def _reduced_dims(node: fx.Node, targets) -> tuple[int, ...] | None:
    # The dimensions given to a reduction among `targets`; None when absent or the batch's.
    if node.op not in ("call_method", "call_function") or node.target not in targets:
        return None
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    dims = (dims,) if isinstance(dims, int) else dims
    if not isinstance(dims, (tuple, list)) or not dims:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d != 0 for d in dims):
        return None
    return tuple(dims)


def reorders(node: fx.Node) -> bool:
    """Whether `node` moves or picks values in memory (transpose, permute, chunk, split, a
    slice) rather than relabelling a tensor whole."""
    targets = _REORDER | _SELECT | {operator.getitem}
    return node.op in ("call_method", "call_function") and node.target in targets


def _joins_two_tensors(node: fx.Node) -> bool:
    # x + 1 (a constant) is not a residual join (nor x * 0.5 a gate).
    args = [a for a in node.args[:2]]
    return (
        len(args) == 2 and all(isinstance(a, fx.Node) for a in args) and "alpha" not in node.kwargs
    )


def plan_points(graph_module: fx.GraphModule, float_layers: tuple[str, ...] = ()) -> QuantPlan:
    """The quantization points of a traced (BatchNorm-folded) model."""
    modules = dict(graph_module.named_modules())
    unknown = [n for n in float_layers if not isinstance(modules.get(n), _LAYERS)]
    if unknown:
        raise ConfigError(
            f"float_layers names {', '.join(unknown)}, which is not a Conv2d or Linear of the model"
        )
    nodes = list(graph_module.graph.nodes)
    kinds = {node: node_kind(node, modules, float_layers) for node in nodes}
    points, anchors = [], {}
    for node in nodes:
        if node in anchors or not _needs_point(node, kinds):
            continue  # a fused ReLU6 already carries its layer's point
        anchor, signed = node, True
        users = list(node.users)
        if len(users) == 1 and kinds[users[0]] in ("relu", "relu6"):
            anchor, signed = users[0], False
        source = node.target if node.op == "call_module" else node.name
        name = _unique(f"{source.replace('.', '_')}_quant", modules, points)
        reads = _point_before(node.args[0], kinds, anchors) if kinds[node] == "avg_pool" else None
        point = QuantPoint(name, anchor.name, source, kinds[node], signed, None, reads)
        _check_float(node)
        points.append(point)
        anchors[anchor] = point
    layers = tuple(n.target for n in nodes if kinds[n] == "layer")
    inputs = {
        n.target: _point_before(n.args[0], kinds, anchors) for n in nodes if kinds[n] == "layer"
    }
    return QuantPlan(tuple(points), layers, tuple(float_layers), inputs)


def _needs_point(node: fx.Node, kinds) -> bool:
    kind = kinds[node]
    if kind in ("layer", "add", "sub", "mul"):
        return not _only_reaches(node, kinds, ("output",))
    if kind in ("input", "float_layer"):
        return not _only_reaches(node, kinds, ("output", "float_layer"))
    if kind in ("other", "constant") or _picks_from_tuple(node, kinds):
        return _output_type(node) == "float"
    return kind in ("avg_pool", "cat", "relu6", "lut")


def _check_float(node: fx.Node) -> None:
    """UnsupportedLayerError, naming the op, when ShapeProp saw `node` give something other than
    one floating-point tensor: _output_type's reading of the graph missed an op, and a quantizer
    there would fail in calibration as if the user's images were at fault."""
    if "type" not in node.meta:
        return  # no shapes recorded: a rebuilt model (its plan was checked when it was made)
    meta = node.meta.get("tensor_meta")
    if issubclass(node.meta["type"], torch.Tensor) and meta.dtype.is_floating_point:
        return
    dtype = getattr(meta, "dtype", None)
    what = f"{dtype} values" if dtype is not None else f"a {node.meta['type'].__name__}"
    raise UnsupportedLayerError(
        f"{node.name} ({getattr(node.target, '__name__', node.target)}) gives {what}, where "
        "fixed point needs floating-point activations to quantize; please report this model"
    )


def _picks_from_tuple(node: fx.Node, kinds) -> bool:
    """Whether `node` picks one result of an op that returns several and leaves the grid
    (torch.topk(x, 2, 1)[0], `x.median(1).values`): the values it picks are new ones, quantized
    here."""
    source = node.args[0] if node.args else None
    return (
        kinds[node] == "pass"
        and (node.target is operator.getitem or node.target is getattr)
        and isinstance(source, fx.Node)
        and kinds.get(source) == "other"
        and _output_type(source) == "tuple"
    )


def _output_type(node: fx.Node) -> str:
    """What an op outside the known ones gives: "tuple" (several tensors, picked apart by
    getitem), "integer" (indices, masks) or "float" (activations). Read from the graph alone,
    so that a rebuilt model (a file, a checkpoint), traced without an input, plans the same."""
    key = node.target
    if node.op not in ("call_function", "call_method"):
        return "float"
    if key is operator.getitem or key is getattr:
        return _part_type(node)
    if key in _INTEGER or _casts_to_integers(node):
        return "integer"
    if key in _FLOAT_TUPLES or (key in _VALUES_INDICES and _returns_pair(node)):
        return "tuple"
    users = list(node.users)
    if users and all(u.target is operator.getitem and isinstance(u.args[1], int) for u in users):
        return "tuple"  # an op we do not know, taken apart by index: it returns a tuple
    return "float"


def _part_type(node: fx.Node) -> str:
    # torch.max(x, 1)[1], .indices, frexp's exponents: integers; any other part: floats.
    source, part = node.args[0], node.args[1]
    pair = isinstance(source, fx.Node) and source.target in _VALUES_INDICES
    return "integer" if pair and part in (1, "indices") else "float"


def _returns_pair(node: fx.Node) -> bool:
    # torch.max(x) and torch.max(x, y) give a tensor; torch.max(x, 1) gives (values, indices).
    if node.target not in _TUPLE_ONLY_WITH_DIM:
        return True
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    return isinstance(dim, int)


def _casts_to_integers(node: fx.Node) -> bool:
    # x.to(torch.long), x.type(torch.int32): integers from then on.
    if node.target not in ("to", "type"):
        return False
    dtypes = [a for a in (*node.args[1:], *node.kwargs.values()) if isinstance(a, torch.dtype)]
    return any(not (d.is_floating_point or d.is_complex) for d in dtypes)


def _only_reaches(node: fx.Node, kinds, ends: tuple[str, ...]) -> bool:
    # True when every path from node, through ops that keep values, ends at one of `ends`.
    for user in node.users:
        kind = kinds[user]
        if kind in ends:
            continue
        if kind in ("pass", "relu", "meta") and _only_reaches(user, kinds, ends):
            continue
        return False
    return True


def _point_before(node, kinds, anchors) -> str:
    # The quantization point whose values reach `node` through ops that keep them.
    while isinstance(node, fx.Node):
        if node in anchors:
            return anchors[node].name
        if kinds[node] not in ("pass", "relu"):
            break
        node = node.args[0]
    raise ConfigError(f"internal: no quantization point feeds {node}; please report this model")


def _unique(name: str, modules, points) -> str:
    taken = set(modules) | {p.name for p in points}
    candidate, number = name, 1
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    return candidate


# Why the integer path and C refuse an average pool whose quantizer does not know what to divide
# by: a file made before netshrink recorded the input size of a pool with uneven windows.
NO_DIVISORS = (
    "an average pool whose windows differ in size, quantized before netshrink recorded their "
    "divisors: quantize the float model again"
)


def avg_pool_divisor(node: fx.Node, module: nn.Module | None) -> int | None:
    """The constant number of values each output of an average pool averages, or None when
    windows differ in size (padding not counted, ceil mode, uneven adaptive windows). Needs the
    shapes that torch.fx's ShapeProp leaves in `node.meta`."""
    in_meta = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
    out_meta = node.meta.get("tensor_meta")
    if in_meta is None or out_meta is None:
        return None
    if dims := mean_dims(node):
        return 1 if node.target in _SUM else math.prod(int(in_meta.shape[d]) for d in dims)
    (h, w), (oh, ow) = tuple(in_meta.shape[-2:]), tuple(out_meta.shape[-2:])
    if isinstance(module, nn.AdaptiveAvgPool2d) or node.target is F.adaptive_avg_pool2d:
        return (h // oh) * (w // ow) if h % oh == 0 and w % ow == 0 else None
    options = pool_options(node, module)
    if options["divisor_override"]:
        return int(options["divisor_override"])
    kh, kw = _pair(options["kernel_size"])
    ph, pw = _pair(options["padding"])
    sh, sw = _pair(options["stride"] or options["kernel_size"])
    if options["ceil_mode"] and ((h + 2 * ph - kh) % sh or (w + 2 * pw - kw) % sw):
        return None
    if (ph or pw) and not options["count_include_pad"]:
        return None
    return kh * kw


def uneven_pool_input(node: fx.Node, module: nn.Module | None) -> tuple[int, int] | None:
    """The height and width an average pool reads where its windows hold different numbers of
    values (ceil mode's last windows, padding not counted, adaptive windows that do not tile
    the input), from ShapeProp's `node.meta`: what window_divisors needs. None for a pool whose
    windows are even, a mean, or a node without shapes."""
    if mean_dims(node) or avg_pool_divisor(node, module) is not None:
        return None
    meta = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
    return None if meta is None else tuple(int(d) for d in meta.shape[-2:])


def window_divisors(node: fx.Node, module: nn.Module | None, size: tuple[int, int]):
    """What PyTorch divides each output of an average pool by, for an input of height and width
    `size`: an int64 tensor [out height, out width], each the window's rows times its columns.
    Adaptive windows run from floor(i * H / OH) to ceil((i + 1) * H / OH); a sliding window's
    count along an axis (padding counted or not, as the pool says) is read off the pool run on
    ones along that axis alone."""
    h, w = size
    if isinstance(module, nn.AdaptiveAvgPool2d) or node.target is F.adaptive_avg_pool2d:
        out = module.output_size if module is not None else node.args[1]
        oh, ow = _pair(out)
        counts = [_adaptive_counts(n, o or n) for n, o in ((h, oh), (w, ow))]
        return torch.outer(*counts)
    options = pool_options(node, module)
    kernel = _pair(options["kernel_size"])
    stride, padding = _pair(options["stride"] or kernel), _pair(options["padding"])
    # PyTorch's divisor is the window's rows times its columns: one axis at a time (a file's
    # size costs memory along each axis only, and the outputs' count)
    counts = []
    for axis, size in enumerate((h, w)):
        shape = [1, 1, 1, 1]
        shape[2 + axis] = size

        def pick(value, other, axis=axis):  # `value` along this axis, `other` along the other
            return (value, other) if axis == 0 else (other, value)

        args = (
            pick(kernel[axis], 1), pick(stride[axis], 1), pick(padding[axis], 0),
            options["ceil_mode"], options["count_include_pad"],
        )  # fmt: skip
        ones = torch.ones(shape, dtype=torch.float64)
        sums = F.avg_pool2d(ones, *args, divisor_override=1)
        counts.append((sums / F.avg_pool2d(ones, *args)).round().long().flatten())
    return torch.outer(*counts)


def adaptive_windows(size: int, out: int) -> list[range]:
    """PyTorch's adaptive pooling windows along an axis of `size` made `out`: window i runs from
    floor(i * size / out) to ceil((i + 1) * size / out)."""
    return [range(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _adaptive_counts(size: int, out: int) -> torch.Tensor:
    return torch.tensor([len(window) for window in adaptive_windows(size, out)])


def pool_options(node: fx.Node, module) -> dict:
    """An AvgPool2d's settings, from its module or from the F.avg_pool2d call's arguments."""
    names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
    defaults = (None, None, 0, False, True)
    if module is not None:
        options = {n: getattr(module, n) for n in names}
        options["divisor_override"] = module.divisor_override
        return options
    options = dict(zip(names, defaults), divisor_override=None)
    options.update(zip(names, node.args[1:]))
    options.update(node.kwargs)
    return {name: static_value(value, node) for name, value in options.items()}


# Arithmetic on sizes that a traced graph may do before it calls a pool or pads (h // 2, k * 2,
# TensorFlow's 'SAME' padding: -(-h // s), max(..., 0)).
_SIZE_ARITHMETIC = {
    operator.floordiv, operator.mul, operator.add, operator.sub, operator.getitem, operator.neg,
    operator.mod, max, min,
}  # fmt: skip


def static_value(value, user: fx.Node):
    """A pool setting as a constant: as given, or computed from tensor shapes that are fixed for
    the traced input shape (`F.avg_pool2d(x, x.size(3))`), read from ShapeProp's `node.meta`.
    UnsupportedLayerError, naming `user`, for a setting that depends on values."""
    if isinstance(value, (list, tuple)):
        return type(value)(static_value(v, user) for v in value)
    if not isinstance(value, fx.Node):
        return value
    if value.op == "call_method" and value.target == "size":
        shape = _shape_of(value.args[0])
        if shape is not None:
            dim = value.args[1] if len(value.args) > 1 else value.kwargs.get("dim")
            return shape if dim is None else shape[dim]
    elif value.op == "call_function" and value.target is getattr and value.args[1] == "shape":
        shape = _shape_of(value.args[0])
        if shape is not None:
            return shape
    elif value.op == "call_function" and value.target in _SIZE_ARITHMETIC:
        return value.target(*(static_value(a, user) for a in value.args))
    raise UnsupportedLayerError(
        f"{user.name}: its setting {value.name} ({value.format_node()}) is computed while the "
        "model runs and is not a fixed shape; give the pool a constant window (or use "
        "nn.AdaptiveAvgPool2d)"
    )


def _shape_of(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return None if meta is None else tuple(int(d) for d in meta.shape)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)
