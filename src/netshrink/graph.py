"""The model as a torch.fx graph, for the methods that read or rewrite its dataflow: filter
pruning's channel analysis (netshrink.prune.channel_graph), batch-norm folding and fixed-point
quantization (netshrink.quant). A neutral module, so that no method family imports another
for it.

A forward that makes a Python number from a tensor's size (ShuffleNetV2's `c = int(x.size(1) *
0.5)`) or loops over the parts of a split (MixNet's `zip(convs, torch.split(x, sizes, 1))`)
defeats plain symbolic tracing, though it is as static as any network. When plain tracing fails,
`trace` traces again and reads each number Python asks for (int(), a condition, a loop's length)
off two example batches the model runs on, of different batch sizes (and image sizes, where the
model takes two): a number that is a function of sizes alone and the same for both becomes a
constant of the graph. So a channel split is baked in, while `x.view(x.size(0), -1)`, which
Python never turns into a number, stays a graph op that follows the batch. A number that changes
with the batch or image size, or that is computed from tensor values, stays untraceable, and the
error says which.
"""

import operator
import types

import torch
from torch import fx, nn
from torch.fx.proxy import TraceError
from torch.nn.utils import parametrize

from netshrink.errors import UnsupportedLayerError

# Image sides to find example inputs with; two sides that the model takes, where it takes two.
_SIDES = (32, 224, 28, 8, 12, 16, 64, 96, 128, 299)
# Graph ops that read a size, and ops on numbers: what a size-derived number is computed with.
_SIZE_READS = {"size", "dim", "numel", "nelement"}
_NUMBER_OPS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod,
    operator.pow, operator.neg, operator.pos, operator.abs, operator.getitem, operator.eq,
    operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.and_, operator.or_,
    operator.not_,
}  # fmt: skip


class _Tracer(fx.Tracer):
    """An fx tracer that remembers whose forward it is in, to name it when tracing fails, and
    the first layer that reads the model's input, to make example inputs from."""

    def __init__(self) -> None:
        super().__init__()
        self.inside: list[str] = []
        self.first_reader: nn.Module | None = None

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m)
        if self.first_reader is None and self.is_leaf_module(m, path) and _reads_input(args):
            self.first_reader = m
        self.inside.append(path)
        out = super().call_module(m, forward, args, kwargs)
        self.inside.pop()  # not popped when tracing fails, so the failing module stays on top
        return out

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # A parametrized layer (a pruning mask, a codebook) is an instance of a class made on
        # the fly in torch.nn.utils.parametrize, which fx takes for a torch.nn leaf: decide by
        # its own class, so that a subclass with its own forward (timm's Conv2dSame) is
        # traced into, as it is unparametrized, rather than taken for a plain conv.
        if parametrize.is_parametrized(m):
            original = type(m).__bases__[0]
            return original.__module__.startswith(("torch.nn", "torch.ao.nn")) and not issubclass(
                original, nn.Sequential
            )
        return super().is_leaf_module(m, qualname)

    def where(self, model: nn.Module) -> str:
        """The module whose forward the trace was in (when it failed)."""
        return f"module {self.inside[-1]!r}" if self.inside else f"{type(model).__name__}.forward"


class _SizeError(TraceError):
    """A number Python asked for that the graph cannot hold: its message says why."""


class _SizeProxy(fx.Proxy):
    """A Proxy that Python may turn into a number or take the length of (see _SizeTracer)."""

    def __int__(self) -> int:
        return int(self.tracer.number(self, "int()"))

    def __float__(self) -> float:
        return float(self.tracer.number(self, "float()"))

    def __index__(self) -> int:
        return operator.index(self.tracer.number(self, "an index or range()"))

    def __len__(self) -> int:
        return self.tracer.length(self, "len()")


class _SizeTracer(_Tracer):
    """An fx tracer that answers the numbers Python asks for from the model run on `examples`
    (the graph traced so far, evaluated node by node), when they come from sizes alone and are
    the same for every example; otherwise _SizeError."""

    def __init__(self, examples: list[torch.Tensor]) -> None:
        super().__init__()
        self.examples = examples
        self.envs: list[dict[fx.Node, object]] = [{} for _ in examples]
        self.evaluating = False  # while true, module calls run and parameters are themselves

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _SizeProxy(node, self)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self.evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m, forward, args, kwargs):
        if self.evaluating:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(self.number(obj, "a condition (if, while, and, or)"))

    def iter(self, obj: fx.Proxy):
        return iter([obj[i] for i in range(self.length(obj, "a loop over it (for, zip, *)"))])

    def number(self, proxy: fx.Proxy, use: str):
        """The value of `proxy` for `use`, a number made of tensor sizes."""
        if not _from_sizes(proxy.node):
            raise _SizeError(
                f"{use} needs the value of {_label(proxy.node)}, which is computed from "
                "tensor values, not only from their sizes: a traced graph cannot branch on or "
                "count with those; write it with torch ops (torch.where, a mask)"
            )
        return self._same(proxy.node, lambda value: value, use)

    def length(self, proxy: fx.Proxy, use: str) -> int:
        """The length of `proxy`'s value (the parts of a split, a tensor's first dimension)."""
        return self._same(proxy.node, len, use)

    def _same(self, node: fx.Node, read, use: str):
        seen = [read(value) for value in self._values(node)]
        if any(value != seen[0] for value in seen):
            raise _SizeError(
                f"{use} needs the value of {_label(node)}, which changes with the batch "
                f"size or image size ({seen[0]} and {seen[1]} on two example inputs): keep it "
                "in tensor ops (x.view(x.size(0), -1) traces) or compute it in __init__ from "
                "layer sizes"
            )
        return seen[0]

    @torch.no_grad()
    def _values(self, node: fx.Node) -> list:
        # The model is in eval mode while traced (trace): BatchNorm keeps its statistics.
        self.evaluating = True
        try:
            return [self._run_to(node, env, x) for env, x in zip(self.envs, self.examples)]
        except _SizeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the model failed on an example input
            raise _SizeError(
                f"computing {_label(node)} on an example input failed ({first_line(exc)})"
            ) from None
        finally:
            self.evaluating = False

    def _run_to(self, node: fx.Node, env: dict, example: torch.Tensor):
        interpreter = fx.Interpreter(self.root, garbage_collect_values=False, graph=self.graph)
        interpreter.env = env
        for current in self.graph.nodes:
            if current not in env:
                env[current] = self._run_node(interpreter, current, example)
            if current is node:
                return env[current]
        raise AssertionError(f"{node} is not in the graph being traced")

    def _run_node(self, interpreter: fx.Interpreter, node: fx.Node, example: torch.Tensor):
        if node.op != "placeholder":
            return interpreter.run_node(node)
        if node is next(iter(self.graph.nodes)):
            return example
        if node.args:  # an argument with a default value
            return node.args[0]
        raise _SizeError("the forward takes more than one input, and one example input was made")


def trace(
    model: nn.Module, purpose: str, input_shape: tuple[int, ...] | None = None
) -> fx.GraphModule:
    """`torch.fx.symbolic_trace`, with an UnsupportedLayerError that names the failing module
    and what needed the trace (`purpose`, e.g. "filter pruning"). A forward that makes Python
    numbers from tensor sizes is traced with them as constants (see the module docstring), read
    off example inputs of `input_shape` (one input, no batch dimension) where the caller knows
    it, else of a shape guessed from the first layer.

    The model is traced in eval mode (its modes restored after): what a forward reads from
    `self.training` (F.dropout(x, training=self.training), stochastic depth) becomes a constant
    of the graph, so every trace of a model is the model as it deploys, whatever mode it was in
    (a file's fixed-point model is rebuilt on a fresh model, which is in training mode)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        return _trace(model, purpose, input_shape)
    finally:
        for module, training in modes.items():
            module.training = training


def _trace(model: nn.Module, purpose: str, input_shape) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's forward means "untraceable"
        plain = exc
    else:
        return fx.GraphModule(tracer.root, graph)
    examples = _examples(model, tracer.first_reader, input_shape)
    if examples is None:
        raise _untraceable(model, purpose, tracer, plain) from None
    sized = _SizeTracer(examples)
    try:
        graph = sized.trace(model)
    except _SizeError as exc:
        raise _untraceable(model, purpose, sized, exc) from None
    except Exception:  # noqa: BLE001 - the first failure is the one to report
        raise _untraceable(model, purpose, tracer, plain) from None
    _drop_unused_numbers(graph)
    return fx.GraphModule(sized.root, graph)


def _untraceable(model, purpose: str, tracer: _Tracer, exc: Exception) -> UnsupportedLayerError:
    if isinstance(exc, _SizeError):
        cause = str(exc)
    elif _made_a_number(exc):
        cause = (
            f"{first_line(exc)}: the forward makes a Python number or loop from a traced value "
            "(int(x.size(1) * 0.5), zip over torch.split(...)), and no example input that the "
            "model runs on was found to read it from; compute it in __init__ from layer sizes, "
            "or unpack the parts (a, b = torch.split(...))"
        )
    else:
        cause = (
            f"{first_line(exc)}; torch.fx.symbolic_trace(model) must succeed, so write control "
            "flow on tensor values there with torch ops"
        )
    return UnsupportedLayerError(
        f"{purpose} needs an fx-traceable forward, but torch.fx failed in "
        f"{tracer.where(model)}: {cause}"
    )


def _made_a_number(exc: Exception) -> bool:
    # int(proxy), float(proxy), len(proxy), iterating or branching on a proxy.
    text = str(exc)
    return "'Proxy'" in text or "cannot be iterated" in text or "'len' is not supported" in text


def _reads_input(args) -> bool:
    return any(isinstance(a, fx.Proxy) and a.node.op == "placeholder" for a in args)


def _examples(model: nn.Module, first_reader, input_shape) -> list[torch.Tensor] | None:
    """Two batches that the model runs on, of 2 and 3 inputs, of two different image sizes
    where the model takes two; None when no input shape that it takes was found. The first
    shape tried is `input_shape` where given, then shapes the first layer reads."""
    layer = first_reader or next(
        (m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))), None
    )
    shapes = ([tuple(input_shape)] if input_shape else []) + _input_shapes(layer)
    first = next((s for s in shapes if _runs(model, s)), None)
    if first is None:
        return None
    wider = (first[0], *(side + 32 for side in first[1:]))
    second = wider if len(first) > 1 and _runs(model, wider) else first
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(n, *shape, generator=generator) for n, shape in ((2, first), (3, second))
    ]
    return [batch.to(**_like_parameters(model)) for batch in batches]


def _input_shapes(layer: nn.Module | None) -> list[tuple[int, ...]]:
    # One input without the batch dimension, as the first layer reads it.
    if isinstance(layer, nn.Linear):
        return [(layer.in_features,)]
    if isinstance(layer, nn.Conv1d):
        return [(layer.in_channels, side) for side in _SIDES]
    if isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):
        channels = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.num_features
        return [(channels, side, side) for side in _SIDES]
    return []


@torch.no_grad()
def _runs(model: nn.Module, shape: tuple[int, ...]) -> bool:
    # In eval mode (trace), so that BatchNorm keeps its statistics.
    try:
        model(torch.zeros(2, *shape, **_like_parameters(model)))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not this shape"
        return False


def _like_parameters(model: nn.Module) -> dict:
    reference = next(iter(model.parameters()), None)
    return {} if reference is None else {"dtype": reference.dtype, "device": reference.device}


def _from_sizes(node: fx.Node) -> bool:
    """Whether `node` is a number computed from tensor sizes alone (x.size(1) // 2)."""
    if node.op == "call_method":
        return node.target in _SIZE_READS
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return node.args[1] in ("shape", "ndim")
    if node.target in _NUMBER_OPS or getattr(node.target, "__module__", None) == "math":
        return all(_from_sizes(a) for a in node.all_input_nodes)
    return False


def _drop_unused_numbers(graph: fx.Graph) -> None:
    # The size reads a baked number was computed from: no op reads them any more.
    for node in reversed(list(graph.nodes)):
        if not node.users and _from_sizes(node):
            graph.erase_node(node)


_CONV_CALLS = {torch.conv2d, nn.functional.conv2d}
_LINEAR_CALLS = {nn.functional.linear}


def own_layer_calls(graph_module: fx.GraphModule, root: nn.Module) -> list[str]:
    """Make each F.conv2d / F.linear call that reads a Conv2d's / Linear's own weight and bias
    with its own settings a call of that module, in place; returns those modules' names. Such
    calls come from a layer subclass whose forward does something first and then convolves
    itself (timm's Conv2dSame: 'SAME' padding from the input's size, then F.conv2d(x,
    self.weight, self.bias, self.stride, 0, ...)): fx traces into it, and the methods would
    see a function of two constants rather than a layer. The caller must then run each named
    module as its plain class (its own forward would pad again): see plain_layers. `root`: the
    model traced (the graph module holds only the attributes its graph reads)."""
    modules = dict(root.named_modules())
    names = []
    for node in list(graph_module.graph.nodes):
        name = _own_layer(node, modules)
        if name is None:
            continue
        graph_module.add_submodule(name, modules[name])  # was a holder of its weight and bias
        with graph_module.graph.inserting_before(node):
            call = graph_module.graph.call_module(name, (node.args[0],))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        graph_module.graph.erase_node(node)
        names.append(name)
    for node in reversed(list(graph_module.graph.nodes)):  # what made the weights, now unread
        made = node.op == "get_attr" or ".parametrizations." in str(node.target)
        if made and not node.users:
            graph_module.graph.erase_node(node)
    graph_module.recompile()
    return names


def plain_layers(graph_module: fx.GraphModule, names: list[str]) -> None:
    """Run each module in `names` (own_layer_calls') as a plain nn.Conv2d / nn.Linear: its
    forward is replaced by the plain class's on the instance (its class stays: a mask's or a
    codebook's parametrization lives in it), so call this on a model the caller owns (a copy)."""
    for name in names:
        module = graph_module.get_submodule(name)
        plain = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
        module.forward = types.MethodType(plain.forward, module)


def _own_layer(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The name of the Conv2d / Linear whose own weight, bias and settings the function call
    `node` computes with, or None."""
    if node.op != "call_function" or node.target not in _CONV_CALLS | _LINEAR_CALLS:
        return None
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    args = dict(zip(names, node.args)) | dict(node.kwargs)
    owner = _tensor_owner(args.get("weight"), "weight")
    module = modules.get(owner)
    kind = nn.Conv2d if node.target in _CONV_CALLS else nn.Linear
    if owner is None or type(module) is kind or not isinstance(module, kind):
        return None  # a plain layer's call is a module call already
    bias = args.get("bias")
    if module.bias is None and bias is not None:
        return None
    if module.bias is not None and _tensor_owner(bias, "bias") != owner:
        return None
    if kind is nn.Conv2d and not _same_settings(module, args):
        return None
    return owner


def _tensor_owner(value, name: str) -> str | None:
    """The module whose tensor `name` the graph value `value` is: read as an attribute
    (`conv.weight`), or made by its parametrization (a pruning mask: a call of
    `conv.parametrizations.weight`); None for anything else."""
    if not isinstance(value, fx.Node):
        return None
    if value.op == "get_attr":
        owner, _, attribute = value.target.rpartition(".")
        return owner if attribute == name else None
    suffix = f".parametrizations.{name}"
    if value.op == "call_module" and value.target.endswith(suffix):
        return value.target[: -len(suffix)]
    return None


def _same_settings(conv: nn.Conv2d, args: dict) -> bool:
    def pair(value):
        return tuple(value) if isinstance(value, (list, tuple)) else (value, value)

    padding = args.get("padding", 0)
    padding = padding if isinstance(padding, str) else pair(padding)
    return (
        conv.padding_mode == "zeros"
        and pair(args.get("stride", 1)) == tuple(conv.stride)
        and padding == (conv.padding if isinstance(conv.padding, str) else tuple(conv.padding))
        and pair(args.get("dilation", 1)) == tuple(conv.dilation)
        and args.get("groups", 1) == conv.groups
    )


def describe(node: fx.Node, module: nn.Module | None = None) -> str:
    """What `node` computes, for a message: the class of its layer (`module`), or its function
    with the module whose forward calls it (`add in layer2.1.se`: fx names alone, `add_3`,
    cannot be found in a large network)."""
    if module is not None:
        return type(module).__name__
    what = getattr(node.target, "__name__", str(node.target))
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]  # the innermost module: (path, class)
        return f"{what} in {path}" if path else what
    return what


def _label(node: fx.Node) -> str:
    """`name (what it computes)`, for a message (see describe)."""
    return f"{node.name} ({describe(node)})"


def first_line(exc: Exception) -> str:
    """`Type: first line of the message`, for error messages that quote a failure."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
