"""Post-training dynamic fixed point (Ristretto, Gysel et al. 2016; Al-Hami et al.; Kim et al.):
fold batch norm, trace, insert activation quantizers (netshrink.quant.plan), calibrate their
ranges on a slice of the training set, and put every weight and bias on a grid of its own.

Formats. Weights: `bits` with Ristretto's FL from max|w| per layer. Activations: from the
calibration method (min-max, percentile, KL, MSE). Biases: added to the accumulator, whose
fractional length is FL_w + FL_in, so a bias takes FL = min(its own range's FL, FL_w + FL_in):
it then shifts into the accumulator exactly. The result is a new model (a torch.fx
GraphModule keeping the module names), whose formats are recorded as one structural edit
(netshrink.edits.FixedPointFormats): checkpoints and files rebuild it without pickles.
"""

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from itertools import chain
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize

from ..config import Settings, takes_mappings
from ..data import DataSplits
from ..device import model_device, to_model
from ..edits import (
    ActivationSpec,
    FixedPointFormats,
    FormatSpec,
    edit_list,
    record_edits,
    structural_edits,
)
from ..errors import ConfigError, UnsupportedLayerError
from ..fold import batchnorms_as_convs, converted_batchnorms, fold_batchnorm
from ..graph import own_layer_calls, plain_layers, trace
from ..layers import copy_model, unwrap
from ..loaders import LoaderSplits
from ..stage import Stage
from .calibrate import CalibrationMethod, RangeObserver
from .fixed import FixedPoint, Rounding, Ties, format_for, frac_for_range
from .modules import ActQuant, WeightQuant
from .plan import (
    QuantPlan,
    avg_pool_divisor,
    mean_dims,
    plan_points,
    uneven_pool_input,
    window_divisors,
)

Batches = DataSplits | LoaderSplits | torch.Tensor | Iterable[torch.Tensor]
Bits = Annotated[int, Field(ge=2, le=16)]
# A BatchNorm that folds into no layer runs as a per-channel multiply (a depthwise 1x1 conv).
# Its scales spread over decades across channels, so one power-of-two grid at 8 bits would
# zero the small ones: they keep 16 bits unless `layer_weights` names the layer.
BATCHNORM_BITS = 16


class QuantConfig(Settings):
    """Bit widths and calibration of a fixed-point model.

    `weights` / `activations`: default bits; `layer_weights` / `layer_activations` override them
    per layer (an activation override names the layer or op that produces the value, or the
    quantizer itself). `bias` and `accumulator` bits; `calibrate` picks activation ranges over
    `calibration_images` training images; `float_layers` stay in floating point. `rounding`:
    in training ("stochastic": Gupta et al.); `ties`: where round-to-nearest sends a value halfway
    between two integers, "up" (a device's add-and-shift) or "even" (ONNX Runtime's
    QuantizeLinear: an int8 ONNX file then agrees with the integer path at ties too).
    """

    weights: int = Field(8, ge=2, le=16)
    activations: int = Field(8, ge=2, le=16)
    bias: int = Field(16, ge=2, le=32)
    accumulator: int = Field(32, ge=8, le=64)
    calibrate: CalibrationMethod = "minmax"
    percentile: float = Field(99.99, gt=0, le=100)
    calibration_images: int = Field(1024, ge=1)
    float_layers: tuple[str, ...] = ()
    layer_weights: dict[str, Bits] = {}
    layer_activations: dict[str, Bits] = {}
    rounding: Rounding = "nearest"
    ties: Ties = "up"


@takes_mappings
def quantize(
    model: nn.Module, calibration: Batches, config: QuantConfig = QuantConfig()
) -> fx.GraphModule:
    """The fixed-point version of `model` (left as it was), calibrated on `calibration`: a
    DataSplits or LoaderSplits (its training split), a tensor of normalized images, or an
    iterable of batches (of images, or of `(x, y)`), on the model's device.

    Example:
        >>> qmodel = quantize(model, data, QuantConfig(weights=8, activations=8, calibrate="kl"))
        >>> print(qmodel)  # the layers, and an ActQuant(fmt=u8.4) after each
    """
    root = unwrap(model)
    if is_quantized(root):
        raise ConfigError("the model is already fixed point; quantize its float original")
    batches = calibration_batches(calibration, config.calibration_images)
    first = next(batches)
    shape = tuple(first.shape[1:])  # what a forward that reads sizes is traced with
    root = batchnorms_as_convs(_folded(copy_model(root).eval(), shape))
    device = model_device(root)
    graph_module = _traced(root, input_shape=shape)
    ShapeProp(graph_module).propagate(first[:1].to(device))
    plan = plan_points(graph_module, config.float_layers)
    _check_overrides(plan, config)
    divisors = _divisors(graph_module, plan)  # before the quantizers: it reads the shapes
    _insert_quantizers(graph_module, plan)
    graph_module.to(device)  # the quantizers join the model where it computes
    activations = _calibrate(graph_module, plan, chain([first], batches), config, divisors)
    weights = {n: _weight_format(graph_module, n, config) for n in plan.layers}
    formats = FixedPointFormats(
        weights=weights,
        biases=_bias_formats(graph_module, plan, weights, activations, config.bias),
        activations=activations,
        accumulator=config.accumulator,
        float_layers=config.float_layers,
        ties=config.ties,
    )
    _attach(graph_module, plan, formats, config.rounding)
    record_edits(graph_module, [formats])
    return graph_module


def apply_formats(root: nn.Module, formats: FixedPointFormats) -> fx.GraphModule:
    """Rebuild the fixed-point model that `formats` describes on `root` (a structural edit's
    replay: checkpoints and files); the values are loaded afterwards."""
    graph_module = _traced(root, keep_edits=False)
    plan = plan_points(graph_module, formats.float_layers)
    names = {p.name for p in plan.points}
    if names != set(formats.activations) or set(plan.layers) != set(formats.weights):
        raise ConfigError(
            "the fixed-point formats do not fit this model's graph (quantizers "
            f"{sorted(names ^ set(formats.activations))} or layers "
            f"{sorted(set(plan.layers) ^ set(formats.weights))} differ)"
        )
    _insert_quantizers(graph_module, plan)
    _attach(graph_module, plan, formats, "nearest")
    return graph_module


def is_quantized(model: nn.Module) -> bool:
    """Whether `model` is a fixed-point model (has activation quantizers)."""
    return any(isinstance(m, ActQuant) for m in unwrap(model).modules())


def fixed_point_formats(model: nn.Module) -> FixedPointFormats:
    """The formats of a fixed-point model as they are now (QAT may have moved them)."""
    root = unwrap(model)
    found = [e for e in structural_edits(root) if isinstance(e, FixedPointFormats)]
    if not found:
        raise ConfigError("the model is not fixed point: run netshrink.quant.quantize first")
    recorded = found[-1]
    weights, biases, activations = {}, {}, {}
    for name in recorded.weights:
        module = root.get_submodule(name)
        weights[name] = _spec(weight_quant(module, "weight").fmt)
        if weight_quant(module, "bias") is not None:
            biases[name] = _spec(weight_quant(module, "bias").fmt)
    for name, old in recorded.activations.items():
        quantizer = root.get_submodule(name)
        activations[name] = ActivationSpec(
            **_spec(quantizer.fmt).model_dump(),
            divisor=quantizer.divisor,
            input_frac=quantizer.input_frac,
            pool_input=quantizer.pool_input,
        )
    return recorded.model_copy(
        update={"weights": weights, "biases": biases, "activations": activations}
    )


def sync_formats(model: nn.Module) -> None:
    """Record the model's current formats in its structural edits (after changing any)."""
    root = unwrap(model)
    current = fixed_point_formats(root)
    edits = edit_list(root)
    last = max(i for i, e in enumerate(edits) if isinstance(e, FixedPointFormats))
    edits[last] = current


def set_bits(
    model: nn.Module,
    *,
    weights: Mapping[str, int] | None = None,
    activations: Mapping[str, int] | None = None,
) -> None:
    """Give layers of a fixed-point model new bit widths, in place, with the fractional lengths
    `quantize` would choose: weights from the tensor under their parametrization (Ristretto's
    rule), activations from the calibration statistics kept since `quantize` (a reloaded model
    has none: quantize its float original again). Biases follow their layer's new scales.
    `activations` keys name a quantizer or the layer / op before it.

    Example:
        >>> set_bits(qmodel, weights={"fc1": 4}, activations={"conv1": 6})
    """
    root = unwrap(model)
    formats = fixed_point_formats(root)
    for name, bits in {**(weights or {}), **(activations or {})}.items():
        if not isinstance(bits, int) or not 2 <= bits <= 16:
            raise ConfigError(f"{name}: bit widths go from 2 to 16, not {bits!r}")
    for name, bits in (weights or {}).items():
        if name not in formats.weights:
            raise ConfigError(
                f"{name} is not a quantized layer; choose from {list(formats.weights)}"
            )
        quant = weight_quant(root.get_submodule(name))
        quant.fmt = format_for(parametrized_input(root.get_submodule(name), "weight", quant), bits)
    points = _points_by_source(root, formats)
    for name, bits in (activations or {}).items():
        quantizer = root.get_submodule(points.get(name, name)) if name in points else None
        if quantizer is None:
            raise ConfigError(f"{name} has no activation quantizer; choose from {sorted(points)}")
        if quantizer.statistics is None:
            raise ConfigError(
                f"{name}'s quantizer has no calibration statistics (a reloaded model): quantize "
                "the float model again with the new bit widths"
            )
        quantizer.fmt = quantizer.statistics.choose(bits, quantizer.fmt.signed)
    _refresh_dependents(root, formats)
    _keep_ties(root, formats)
    sync_formats(root)


def _keep_ties(root: nn.Module, formats: FixedPointFormats) -> None:
    """Every quantizer's format with the model's tie rule (new formats are chosen without it)."""
    quantizers = [root.get_submodule(name) for name in formats.activations]
    for name in formats.weights:
        module = root.get_submodule(name)
        quantizers += [q for t in ("weight", "bias") if (q := weight_quant(module, t)) is not None]
    for quantizer in quantizers:
        quantizer.fmt = replace(quantizer.fmt, ties=formats.ties)


def reestimate_weight_formats(model: nn.Module) -> None:
    """Re-derive every weight's fractional length from its current values, keeping its bits
    (quantization-aware training: the ranges move as the weights train)."""
    formats = fixed_point_formats(model)
    set_bits(model, weights={name: spec.bits for name, spec in formats.weights.items()})


def parametrized_input(module: nn.Module, name: str, stop: nn.Module) -> torch.Tensor:
    """The tensor that parametrization `stop` of `module.<name>` receives (the dense weight,
    masked or shared by the parametrizations before it)."""
    chain = module.parametrizations[name]
    value = chain.original
    for parametrization in chain:
        if parametrization is stop:
            return value.detach()
        value = parametrization(value)
    raise ValueError(f"{stop} does not parametrize {name}")


def _points_by_source(root: nn.Module, formats: FixedPointFormats) -> dict[str, str]:
    # quantizer name -> itself, and the producing layer or op -> its quantizer
    names = {name: name for name in formats.activations}
    for name in formats.activations:
        if name.endswith("_quant"):
            names.setdefault(name[: -len("_quant")], name)
    modules = dict(root.named_modules())
    for module_name in formats.weights:
        key = module_name.replace(".", "_") + "_quant"
        if key in names and module_name in modules:
            names[module_name] = key
    return names


def _refresh_dependents(root: nn.Module, formats: FixedPointFormats) -> None:
    # Average pools divide values of the point before them; biases sit at FL_w + FL_in.
    plan_inputs = _layer_inputs(root, formats)
    for name, spec in formats.activations.items():
        quantizer = root.get_submodule(name)
        if quantizer.divides and quantizer.input_frac is not None:
            quantizer.input_frac = root.get_submodule(plan_inputs[name]).fmt.frac
    for name in formats.biases:
        module = root.get_submodule(name)
        quant = weight_quant(module, "bias")
        accumulator = weight_quant(module).fmt.frac + root.get_submodule(plan_inputs[name]).fmt.frac
        own = frac_for_range(
            parametrized_input(module, "bias", quant).abs().max().item(), quant.fmt.bits
        )
        quant.fmt = FixedPoint(quant.fmt.bits, min(own, accumulator))


def _layer_inputs(root: fx.GraphModule, formats: FixedPointFormats) -> dict[str, str]:
    """For each quantized layer and each average pool's quantizer: the quantizer whose values
    it reads, found by walking the graph back through ops that keep values."""
    modules = dict(root.named_modules())
    inputs = {}
    for node in root.graph.nodes:
        if node.op != "call_module":
            continue
        module = modules[node.target]
        if node.target in formats.weights or (isinstance(module, ActQuant) and module.divides):
            source = node.args[0]
            if isinstance(module, ActQuant):  # the pool before it, then the pool's input
                while not _is_pool_node(source, modules):
                    source = source.args[0]
                source = source.args[0]
            while not (source.op == "call_module" and isinstance(modules[source.target], ActQuant)):
                source = source.args[0]
            inputs[node.target] = source.target
    return inputs


def _is_pool_node(node: fx.Node, modules) -> bool:
    if node.op == "call_module":
        return _is_pool(modules[node.target])
    return node.target in (F.avg_pool2d, F.adaptive_avg_pool2d) or mean_dims(node) is not None


def weight_quant(module: nn.Module, name: str = "weight") -> WeightQuant | None:
    """The WeightQuant parametrizing `module.<name>`, or None."""
    if not parametrize.is_parametrized(module, name):
        return None
    found = [p for p in module.parametrizations[name] if isinstance(p, WeightQuant)]
    return found[0] if found else None


def calibration_batches(
    calibration: Batches, images: int, batch_size: int = 256
) -> Iterator[torch.Tensor]:
    """Up to `images` normalized images, batch by batch, read as they are needed (calibration
    holds one batch at a time, however many images it sees): the first of a seeded shuffle of
    the training split for netshrink's or the user's splits, else the given tensor or batches
    (a batch may be `(x, y)`). ConfigError when there is no image at all."""
    if isinstance(calibration, (DataSplits, LoaderSplits)):
        loader = calibration.loader("train", batch_size, shuffle=True, augment=False)
        calibration = (x for x, _ in loader)
    elif isinstance(calibration, torch.Tensor):
        calibration = calibration.split(batch_size)
    seen = 0
    for batch in calibration:
        batch = batch[0] if isinstance(batch, (tuple, list)) else batch
        batch = batch[: images - seen]
        if len(batch):
            seen += len(batch)
            yield batch
        if seen >= images:
            return
    if seen == 0:
        raise ConfigError("calibration needs at least one image; the calibration data is empty")


def _folded(root: nn.Module, input_shape=None) -> nn.Module:
    try:
        return fold_batchnorm(root, input_shape)
    except UnsupportedLayerError as exc:  # name the method the user called
        raise UnsupportedLayerError(
            f"fixed-point quantization folds batch norm first: {exc}"
        ) from None


def _traced(root: nn.Module, keep_edits: bool = True, input_shape=None) -> fx.GraphModule:
    graph_module = trace(root, "fixed-point quantization", input_shape)
    # a layer subclass that convolves itself (timm's Conv2dSame): a layer call (root is ours)
    plain_layers(graph_module, own_layer_calls(graph_module, root))
    _drop_identities(graph_module)
    graph_module.train(root.training)
    if keep_edits:
        record_edits(graph_module, structural_edits(root))
    return graph_module


def _drop_identities(graph_module: fx.GraphModule) -> None:
    # A folded BatchNorm is an nn.Identity; without it a layer's ReLU is its only user again.
    modules = dict(graph_module.named_modules())
    for node in list(graph_module.graph.nodes):
        if node.op == "call_module" and isinstance(modules[node.target], nn.Identity):
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
    graph_module.recompile()


def _check_overrides(plan: QuantPlan, config: QuantConfig) -> None:
    sources = {p.source for p in plan.points} | {p.name for p in plan.points}
    for field, known in (("layer_weights", set(plan.layers)), ("layer_activations", sources)):
        unknown = sorted(set(getattr(config, field)) - known)
        if unknown:
            raise ConfigError(
                f"{field} names {', '.join(unknown)}, which the fixed-point model does not "
                f"quantize; choose from {', '.join(sorted(known))}"
            )


def _insert_quantizers(graph_module: fx.GraphModule, plan: QuantPlan) -> None:
    nodes = {node.name: node for node in graph_module.graph.nodes}
    for point in plan.points:
        anchor = nodes[point.after]
        graph_module.add_submodule(point.name, ActQuant(None))
        with graph_module.graph.inserting_after(anchor):
            quantized = graph_module.graph.call_module(point.name, (anchor,))
        if "tensor_meta" in anchor.meta:  # a quantizer keeps the shape: later shape reads see it
            quantized.meta["tensor_meta"] = anchor.meta["tensor_meta"]
        anchor.replace_all_uses_with(quantized, delete_user_cb=lambda user: user is not quantized)
    graph_module.recompile()


def _divisors(graph_module: fx.GraphModule, plan: QuantPlan) -> dict[str, tuple]:
    """For each average pool's quantizer: (the pool's divisor, or None where its windows differ
    in size; then the height and width it reads, for window_divisors)."""
    divisors = {}
    for point in plan.points:
        if point.kind == "avg_pool":
            node, pool = _pool_before(graph_module, point)
            divisors[point.name] = (avg_pool_divisor(node, pool), uneven_pool_input(node, pool))
    return divisors


def _pool_before(graph_module: fx.GraphModule, point) -> tuple[fx.Node, nn.Module | None]:
    """The average pool (its node, its module or None) whose values quantization point
    `point` rounds."""
    node = next(n for n in graph_module.graph.nodes if n.name == point.after)
    modules = dict(graph_module.named_modules())
    while node.op == "call_module" and not _is_pool(modules[node.target]):
        node = node.args[0]  # from a fused ReLU back to the pool
    return node, modules.get(node.target) if node.op == "call_module" else None


def _is_pool(module: nn.Module) -> bool:
    return isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d))


@torch.no_grad()
def _calibrate(graph_module, plan, batches, config, divisors) -> dict[str, ActivationSpec]:
    quantizers = {p.name: graph_module.get_submodule(p.name) for p in plan.points}
    for quantizer in quantizers.values():
        quantizer.observer = RangeObserver(config.calibrate, percentile=config.percentile)
    graph_module.eval()
    for batch in batches:
        graph_module(to_model(graph_module, batch))
    specs = {}
    for point in plan.points:
        quantizer = quantizers[point.name]
        observer = quantizer.statistics = quantizer.observer
        quantizer.observer = None
        bits = config.layer_activations.get(
            point.name, config.layer_activations.get(point.source, config.activations)
        )
        fmt = observer.choose(bits, point.signed)
        divisor, pool_input = divisors.get(point.name, (None, None))
        divides = (divisor or pool_input) and point.reads
        specs[point.name] = ActivationSpec(
            **_spec(fmt).model_dump(),
            divisor=divisor or 1,
            input_frac=specs[point.reads].frac if divides else None,
            pool_input=pool_input if divides else None,
        )
    return specs


def _weight_format(graph_module: fx.GraphModule, name: str, config: QuantConfig) -> FormatSpec:
    weight = graph_module.get_submodule(name).weight
    default = config.weights
    if name in converted_batchnorms(graph_module):  # a per-channel scale: see BATCHNORM_BITS
        default = max(BATCHNORM_BITS, config.weights)
    return _spec(format_for(weight, config.layer_weights.get(name, default)))


def _bias_formats(graph_module, plan, weights, activations, bits: int) -> dict[str, FormatSpec]:
    formats = {}
    for name in plan.layers:
        bias = graph_module.get_submodule(name).bias
        if bias is None:
            continue
        accumulator_frac = weights[name].frac + activations[plan.inputs[name]].frac
        own = frac_for_range(bias.detach().abs().max().item(), bits)
        formats[name] = FormatSpec(bits=bits, frac=min(own, accumulator_frac))
    return formats


def _attach(graph_module, plan: QuantPlan, formats: FixedPointFormats, rounding: Rounding) -> None:
    for point in plan.points:
        spec = formats.activations[point.name]
        quantizer = graph_module.get_submodule(point.name)
        quantizer.fmt = _format(spec, formats.ties)
        quantizer.divisor, quantizer.input_frac = spec.divisor, spec.input_frac
        quantizer.pool_input, quantizer.divisors = spec.pool_input, None
        if spec.pool_input is not None:
            node, pool = _pool_before(graph_module, point)
            divisors = window_divisors(node, pool, spec.pool_input)
            device = next((p.device for p in graph_module.parameters()), divisors.device)
            quantizer.divisors = divisors.to(device)
        quantizer.rounding = rounding
    for name in plan.layers:
        module = graph_module.get_submodule(name)
        tensors = {"weight": formats.weights[name], "bias": formats.biases.get(name)}
        for tensor, spec in tensors.items():
            if spec is None:
                continue
            if weight_quant(module, tensor) is not None:
                weight_quant(module, tensor).fmt = _format(spec, formats.ties)
            else:
                quant = WeightQuant(_format(spec, formats.ties), rounding)
                parametrize.register_parametrization(module, tensor, quant, unsafe=True)


def _spec(fmt: FixedPoint) -> FormatSpec:
    return FormatSpec(bits=fmt.bits, frac=fmt.frac, signed=fmt.signed)


def _format(spec: FormatSpec, ties: Ties = "up") -> FixedPoint:
    return FixedPoint(spec.bits, spec.frac, spec.signed, ties)


def layer_formats(model: nn.Module) -> Mapping[str, FixedPoint]:
    """Weight format of every quantized layer, by layer name."""
    formats = fixed_point_formats(model)
    return {name: _format(spec, formats.ties) for name, spec in formats.weights.items()}


class QuantizeStage(Stage):
    """Dynamic fixed point after training (Ristretto's rule; Kim et al.'s layer outputs)."""

    folds_batchnorm: ClassVar[bool] = True
    fixed_point: ClassVar[bool] = True
    method: Literal["quantize"]
    takes_layers: ClassVar[bool] = False
    config: QuantConfig = QuantConfig()

    def apply(self, model, ctx):
        return quantize(model, ctx.data, self.config)
