"""The integer path: a fixed-point model executed on integers, as a device runs it (Ristretto's
"bit-accurate" emulation, Gysel et al. 2016; Kim et al.'s integer datapath).

Every value is an int64 tensor q with a fractional length f (value = q * 2**-f):

- conv / linear: acc = sum(w_q * x_q) at f = FL_w + FL_x, plus the bias shifted left to that
  scale; an accumulator of `accumulator` bits saturates, and each saturated value is counted;
- ReLU, max pooling, flatten: on the integers; a residual addition aligns both sides to the finer
  scale by a left shift, then adds (counted against the accumulator too);
- an average pool sums its window and the next quantizer divides once (netshrink.quant.fixed.
  requantize); a concatenation requantizes each part to the quantizer after it;
- each activation quantizer requantizes: arithmetic shift right with round-half-up, saturate.

The fake-quantized float model (netshrink.quant.quantize) computes the same numbers, so both give
identical logits as long as its float32 sums are exact: every partial sum below 2**24 units of
the accumulator's last bit, which 8-bit models meet; for wider formats run the float model in
float64 (`qmodel.double()`). This path is the reference that the C export must match bit for bit. Products
are summed in float64, which is exact for integers below 2**53 (checked per layer up front).
Layers left in float run in float32 on the dequantized input, exactly as in the float model.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import UnsupportedLayerError
from ..graph import describe
from .fixed import FixedPoint, from_integers, requantize, to_integers
from .modules import ActQuant
from .plan import (
    NO_DIVISORS,
    constant_value,
    keeps_dims,
    lut_input,
    mean_dims,
    node_kind,
    pool_options,
    static_value,
)
from .quantize import fixed_point_formats

EXACT_LIMIT = 2**53
LUT_BITS = 16  # the widest input an element-wise function's lookup table is indexed by


@dataclass
class IntValue:
    """Integers q at scale 2**-frac, divided by `divisor` (an average pool's pending window; a
    tensor [height, width] where the windows hold different numbers of values)."""

    q: torch.Tensor
    frac: int
    divisor: int | torch.Tensor = 1

    @property
    def whole(self) -> bool:
        """Whether the integers are the values (nothing left to divide)."""
        return not isinstance(self.divisor, torch.Tensor) and self.divisor == 1


@dataclass
class _Parts:
    """A concatenation waiting for its quantizer: each part is requantized on its own."""

    parts: list
    dim: int


@dataclass
class IntegerOutput:
    """Logits as float64 values; `integers` and `frac` when they are integers (the last layer
    quantized); `overflows`: accumulator values that saturated, per layer or addition."""

    logits: torch.Tensor
    integers: torch.Tensor | None
    frac: int | None
    overflows: dict[str, int] = field(default_factory=dict)


def _last_uses(graph: fx.Graph) -> dict[fx.Node, list[fx.Node]]:
    """For each node, the values no node after it reads (freed once it has run), so the integer
    path holds only the activations still to be used, as a device's buffer plan does."""
    frees: dict[fx.Node, list[fx.Node]] = {node: [] for node in graph.nodes}
    seen: set[fx.Node] = set()
    for node in reversed(graph.nodes):
        for used in node.all_input_nodes:
            if used not in seen:
                seen.add(used)
                frees[node].append(used)
    return frees


class IntegerModel(nn.Module):
    """A snapshot of a fixed-point model's integer datapath; `run` gives the integers,
    `forward` the logits as float (so `netshrink.train.evaluate` measures it).

    Example:
        >>> out = IntegerModel(qmodel).run(images)
        >>> torch.equal(out.logits, qmodel(images).double())  # bit-identical
        True
    """

    def __init__(self, model: fx.GraphModule) -> None:
        super().__init__()
        formats = fixed_point_formats(model)
        self.graph_module = model
        self.accumulator = formats.accumulator
        self.float_layers = formats.float_layers
        modules = dict(model.named_modules())
        self._kinds = {n: node_kind(n, modules, formats.float_layers) for n in model.graph.nodes}
        self._by_name = modules
        self._layers = {
            name: self._integer_layer(name, modules[name], formats) for name in formats.weights
        }
        self._check_supported()
        self._frees = _last_uses(model.graph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x).logits.float()

    def train(self, mode: bool = True) -> "IntegerModel":
        # The integer path has no training mode; `evaluate` toggling it must not reach the
        # wrapped float model (its dropout would come alive).
        self.training = mode
        return self

    @torch.no_grad()
    def run(self, x: torch.Tensor, *, quantized: dict | None = None) -> IntegerOutput:
        """Run the integer datapath on a batch of normalized images. `quantized`, when given,
        receives each activation quantizer's output by module name, in graph order, as the
        values it stands for (integers * 2**-frac): what an export is compared with."""
        values, overflows = {}, {}
        for node in self.graph_module.graph.nodes:
            if node.op == "output":
                return self._output(_arg(node.args[0], values), overflows)
            values[node] = self._step(node, x, values, overflows)
            if quantized is not None and isinstance(self._by_name.get(node.target), ActQuant):
                quantized[node.target] = _dequantize(values[node])
            for done in self._frees[node]:  # int64 values of a whole batch: keep only live ones
                del values[done]
        raise AssertionError("an fx graph always ends in an output node")

    def input_kind(self, quantizer: str) -> str:
        """What produced the value the activation quantizer `quantizer` rounds: "layer",
        "add", "avg_pool", "cat", "relu", ... (netshrink.quant.plan.node_kind), looking through
        the ops that keep values (flatten, max pool)."""
        node = next(n for n in self.graph_module.graph.nodes if n.target == quantizer)
        source = node.args[0]
        while isinstance(source, fx.Node) and self._kinds[source] in ("pass", "relu", "relu6"):
            source = source.args[0]
        return self._kinds.get(source, "other") if isinstance(source, fx.Node) else "other"

    def _step(self, node: fx.Node, x, values, overflows):
        kind = self._kinds[node]
        args = [_arg(a, values) for a in node.args]
        if kind == "input":
            return x
        if kind == "constant":  # a tensor the model holds: its quantizer puts it on a grid
            return constant_value(self.graph_module, node)
        module = self._by_name.get(node.target) if node.op == "call_module" else None
        if isinstance(module, ActQuant):
            return _requantize(args[0], module)
        if kind == "layer":
            return self._layer(node.target, args[0], overflows)
        if kind == "float_layer":
            return module(_dequantize(args[0]))
        if kind in ("add", "sub"):
            return self._add(node.name, args[0], args[1], overflows, kind == "sub")
        if kind == "mul":
            return self._mul(node.name, args[0], args[1], overflows)
        if kind == "lut":
            return _lookup(node, module, args)
        if kind in ("relu", "relu6"):
            return _relu(args[0], 6 if kind == "relu6" else None)
        if kind == "avg_pool":
            return _pool_sum(node, module, args[0], self._divisor_after(node))
        if kind == "cat":
            dim = node.kwargs.get("dim", args[1] if len(args) > 1 else 0)
            return _Parts(list(args[0]), dim)
        if kind == "pass":
            return _on_integers(node, module, args)
        if kind == "meta":
            return call_node(node, module, [a.q if isinstance(a, IntValue) else a for a in args])
        raise AssertionError(f"unchecked node {node.name}")

    def _check_supported(self) -> None:
        bad = []
        for node, kind in self._kinds.items():
            module = self._by_name.get(node.target) if node.op == "call_module" else None
            if kind == "other" and not isinstance(module, ActQuant):
                bad.append(f"{node.name} ({describe(node, module)})")
            elif kind == "avg_pool" and self._divisor_after(node) is None:
                bad.append(f"{node.name} ({NO_DIVISORS})")
            elif kind == "lut" and not 0 < (self._quantizer_before(node) or 0) <= LUT_BITS:
                bad.append(
                    f"{node.name} ({describe(node, module)} of a value wider than {LUT_BITS} "
                    "bits: no lookup table)"
                )
        if bad:
            raise UnsupportedLayerError(
                "the integer path cannot run " + ", ".join(bad) + "; it supports conv, linear, "
                "ReLU / ReLU6, max and average pooling, residual add, products of two tensors, "
                f"element-wise functions of a value of up to {LUT_BITS} bits (sigmoid, SiLU, "
                "tanh, ...), "
                "concat and flatten (leave other layers in float with float_layers, or replace "
                "them)"
            )

    def _quantizer_before(self, node: fx.Node) -> int | None:
        """The bits of the quantizer whose values reach `node`'s input through ops that keep
        them (None when none does)."""
        source = node.args[lut_input(node)]
        while isinstance(source, fx.Node):
            module = self._by_name.get(source.target) if source.op == "call_module" else None
            if isinstance(module, ActQuant):
                return module.fmt.bits
            if self._kinds[source] not in ("pass", "relu", "relu6"):
                return None
            source = source.args[0]
        return None

    def _divisor_after(self, node: fx.Node) -> int | torch.Tensor | None:
        for user in node.users:
            module = self._by_name.get(user.target) if user.op == "call_module" else None
            if isinstance(module, ActQuant):  # input_frac: the plan knew the window size
                return module.pool_divisor if module.input_frac is not None else None
            if self._kinds[user] in ("relu", "relu6"):
                return self._divisor_after(user)
        return None

    def _integer_layer(self, name: str, module: nn.Module, formats) -> dict:
        weight_format = _fmt(formats.weights[name])
        weight = to_integers(module.weight.detach().double(), weight_format)
        bias_spec = formats.biases.get(name)
        bias = None
        if module.bias is not None and bias_spec is not None:
            bias = to_integers(module.bias.detach().double(), _fmt(bias_spec)).long()
        elif module.bias is not None:
            raise UnsupportedLayerError(f"{name} has a bias without a fixed-point format")
        return {
            "module": module,
            "weight": weight,
            "weight_frac": weight_format.frac,
            "bias": bias,
            "bias_frac": bias_spec.frac if bias_spec else None,
            "max_row": float(weight.abs().flatten(1).sum(1).max()) if weight.numel() else 0.0,
        }

    def _layer(self, name: str, x: IntValue, overflows) -> IntValue:
        layer = self._layers[name]
        if not isinstance(x, IntValue) or not x.whole:
            raise UnsupportedLayerError(f"{name} reads a value that is not on a fixed-point grid")
        bound = layer["max_row"] * float(x.q.abs().max()) if x.q.numel() else 0.0
        if bound >= EXACT_LIMIT:
            raise UnsupportedLayerError(
                f"{name}: sums of up to {bound:.3g} exceed float64's exact integers; use fewer bits"
            )
        module, frac = layer["module"], layer["weight_frac"] + x.frac
        if isinstance(module, nn.Conv2d):
            inputs, padding = x.q.double(), module.padding
            if module.padding_mode != "zeros":  # reflect / replicate / circular: copies first
                inputs, padding = unzero_padded(module, inputs), 0
            acc = F.conv2d(
                inputs, layer["weight"], None, module.stride, padding, module.dilation,
                module.groups,
            )  # fmt: skip
        else:
            acc = F.linear(x.q.double(), layer["weight"])
        acc = acc.long()
        if layer["bias"] is not None:  # along the channels of a conv, the last axis of a linear
            shape = (1, -1, 1, 1) if isinstance(module, nn.Conv2d) else (-1,)
            acc = acc + (layer["bias"] << (frac - layer["bias_frac"])).reshape(shape)
        return IntValue(self._saturate(name, acc, overflows), frac)

    def _add(self, name: str, a: IntValue, b: IntValue, overflows, subtract=False) -> IntValue:
        if not (isinstance(a, IntValue) and isinstance(b, IntValue) and a.whole and b.whole):
            raise UnsupportedLayerError(f"{name} adds values that are not on fixed-point grids")
        frac = max(a.frac, b.frac)
        other = b.q << (frac - b.frac)
        total = (a.q << (frac - a.frac)) + (-other if subtract else other)
        return IntValue(self._saturate(name, total, overflows), frac)

    def _mul(self, name: str, a: IntValue, b: IntValue, overflows) -> IntValue:
        if not (isinstance(a, IntValue) and isinstance(b, IntValue) and a.whole and b.whole):
            raise UnsupportedLayerError(
                f"{name} multiplies values that are not on fixed-point grids"
            )
        return IntValue(self._saturate(name, a.q * b.q, overflows), a.frac + b.frac)

    def _saturate(self, name: str, acc: torch.Tensor, overflows) -> torch.Tensor:
        high = (1 << (self.accumulator - 1)) - 1
        low = -high - 1
        outside = int(((acc > high) | (acc < low)).sum())
        if outside:
            overflows[name] = overflows.get(name, 0) + outside
            acc = acc.clamp(low, high)
        return acc

    @staticmethod
    def _output(value, overflows) -> IntegerOutput:
        if isinstance(value, IntValue) and value.whole:
            logits = torch.ldexp(value.q.double(), torch.tensor(-value.frac))
            return IntegerOutput(logits, value.q, value.frac, overflows)
        return IntegerOutput(_dequantize(value).double(), None, None, overflows)


def _arg(arg, values):
    if isinstance(arg, fx.Node):
        return values[arg]
    if isinstance(arg, (list, tuple)):
        return type(arg)(_arg(a, values) for a in arg)
    return arg


def _requantize(value, quantizer: ActQuant):
    fmt = quantizer.fmt
    if isinstance(value, _Parts):
        parts = [_requantize(part, quantizer).q for part in value.parts]
        return IntValue(torch.cat(parts, value.dim), fmt.frac)
    if isinstance(value, IntValue):
        return IntValue(requantize(value.q, value.frac, fmt, value.divisor), fmt.frac)
    return IntValue(to_integers(value, fmt).long(), fmt.frac)  # float in: the same rounding


def _dequantize(value) -> torch.Tensor:
    if isinstance(value, IntValue):
        return from_integers(value.q, FixedPoint(32, value.frac)) / value.divisor
    return value


def _relu(value, ceiling: int | None):
    if isinstance(value, _Parts):
        return _Parts([_relu(p, ceiling) for p in value.parts], value.dim)
    if not isinstance(value, IntValue):
        return F.relu(value) if ceiling is None else F.relu6(value)
    if ceiling is None:
        return IntValue(value.q.clamp(min=0), value.frac, value.divisor)
    top = torch.as_tensor(ceiling * value.divisor * 2.0**value.frac, dtype=torch.float64)
    if not bool((top == top.round()).all()):
        raise UnsupportedLayerError(f"ReLU6 at a scale 2**-{value.frac} where 6 is off the grid")
    q = torch.minimum(value.q.clamp(min=0), top.long().to(value.q.device))
    return IntValue(q, value.frac, value.divisor)


def unzero_padded(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`x` padded as a Conv2d with padding_mode reflect / replicate / circular pads it (torch's
    own padding then, `_reversed_padding_repeated_twice`); the conv itself then pads nothing."""
    return F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)


def _pool_sum(node: fx.Node, module, value: IntValue, divisor) -> IntValue:
    if not isinstance(value, IntValue) or not value.whole:
        raise UnsupportedLayerError(f"{node.name} pools a value that is not on a fixed-point grid")
    x = value.q.double()
    if mean_dims(node):  # x.mean((2, 3)), x.mean(1): the sum over those dimensions, divided later
        sums = x.sum(dim=mean_dims(node), keepdim=keeps_dims(node))
        return IntValue(sums.round().long(), value.frac, divisor)
    if isinstance(module, nn.AdaptiveAvgPool2d) or node.target is F.adaptive_avg_pool2d:
        size = module.output_size if module is not None else node.args[1]
        oh, ow = (size, size) if isinstance(size, int) else size
        oh, ow = oh or x.shape[-2], ow or x.shape[-1]
        if isinstance(divisor, torch.Tensor):  # windows of different sizes: each its count
            sums = F.adaptive_avg_pool2d(x, (oh, ow)) * divisor  # exact after rounding
        else:
            kernel = (x.shape[-2] // oh, x.shape[-1] // ow)
            sums = F.avg_pool2d(x, kernel, kernel, divisor_override=1)
    else:
        options = pool_options(node, module)
        sums = F.avg_pool2d(
            x,
            options["kernel_size"],
            options["stride"] or options["kernel_size"],
            options["padding"],
            options["ceil_mode"],
            options["count_include_pad"],
            divisor_override=1,
        )
    return IntValue(sums.round().long(), value.frac, divisor)


def _lookup(node: fx.Node, module, args) -> torch.Tensor:
    """An element-wise function (sigmoid, SiLU, x + 3.0, ...) of a value on a grid: what a
    device reads from a table indexed by the input integer, each entry the function of that grid
    value in float32 (the fake-quantized model's own computation); the quantizer after it
    rounds it."""
    at = lut_input(node)
    value = args[at]
    if not isinstance(value, IntValue) or not value.whole:
        raise UnsupportedLayerError(f"{node.name} reads a value that is not on a fixed-point grid")
    x = from_integers(value.q, FixedPoint(32, value.frac))
    return call_node(node, module, [*args[:at], x, *args[at + 1 :]])


def _on_integers(node: fx.Node, module, args):
    # Ops that keep values (max pool, flatten): run them on the integers, through float64 where
    # torch has no integer kernel (exact below 2**53). Dropout is the identity at inference.
    value = args[0]
    if isinstance(module, nn.Dropout | nn.Dropout2d) or node.target is F.dropout:
        return value
    if not isinstance(value, IntValue):  # a part of a chunk / split: getitem on the tuple
        return call_node(node, module, args)
    others = [a.q if isinstance(a, IntValue) else a for a in args[1:]]  # expand_as(x): a shape
    out = call_node(node, module, [value.q.double(), *others])
    if isinstance(out, (tuple, list)):  # chunk / split: every part keeps the format
        return tuple(IntValue(part.round().long(), value.frac, value.divisor) for part in out)
    return IntValue(out.round().long(), value.frac, value.divisor)


def call_node(node: fx.Node, module, args):
    """Run `node` (a module, method or function call of the fx graph) on `args`; a keyword
    argument read from a shape (max_pool2d(x, s, stride=s), s = x.size()[2:]) as its value
    for the traced input."""
    if node.op == "call_module":
        return module(*args)
    kwargs = {name: static_value(value, node) for name, value in node.kwargs.items()}
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _fmt(spec) -> FixedPoint:
    return FixedPoint(spec.bits, spec.frac, spec.signed)
