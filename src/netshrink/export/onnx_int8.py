"""Integer weights in a QDQ ONNX graph: each weight stored as integers feeding a
DequantizeLinear, as ONNX Runtime's own quantizer writes them (the "QDQ format" of its
quantization tool) and as the deployment stage of Kim et al. needs: the file holds the 8-bit
weights, not float ones beside a quantizer.

`integer_weights`: the torch exporter leaves each int8 weight a float initializer followed by
QuantizeLinear -> DequantizeLinear; each such QuantizeLinear is folded into its initializer. The
integers are computed as ONNX QuantizeLinear computes them (x / scale in float32, rounded half to
even, plus the zero point, saturated to the zero point's type), so the graph computes the same
values, bit for bit; on a fixed-point model the weights already lie on their grid and nothing
rounds. Biases stay float: an int32 bias takes the same four bytes, and ONNX Runtime quantizes a
float bias beside QDQ inputs to int32 at in_scale * w_scale itself, where it is exact.

`wide_weights_as_int16`: a weight of 9 to 16 bits (torch exports no Q/DQ pair wider than 8) was
a float initializer, which ONNX Runtime's optimizer quantized again to int8 to fuse the layer
into QLinearConv / QGemm, off the model's grid. As INT16 through a DequantizeLinear (opset 21;
the file is converted to it) it takes half the bytes, and ONNX Runtime, which fuses no 16-bit
weight on the CPU, runs the layer in float on the exact grid values.

`quantize_after_reshapes`: a Flatten or Reshape between a DequantizeLinear (through max pools,
transposes: ops that keep the values on its grid) and a layer (the model's own order: an
activation quantizer, a max pool, then `flatten` before the first fc layer) keeps ONNX Runtime
from fusing that layer into an int8 kernel: it dequantizes the layer's weights on every run
instead (the DC LeNet-300-100's int8 file in `bench/deploy.py --cases compressed`: 19,364
images/s at batch 1 without the pass, 49,628 with it). A QuantizeLinear / DequantizeLinear pair
at the same scale after it, which changes no value (the values are on that grid already), is the
pattern ONNX Runtime fuses, as its own quantizer writes it.

`unsigned_integers`: every signed 8-bit value (weights, activations before a ReLU) stored as
uint8 at zero point 128, the same values, so ONNX Runtime picks its uint8 x uint8 kernels,
exact on every CPU; its uint8 x int8 kernels saturate on x86 CPUs without VNNI (the
deployment test's LeNet-300-100 on digits under `qemu-x86_64 -cpu Haswell`:
tests/export/test_int8_without_vnni.py), and cost less time only where they do not.

    >>> model = integer_weights(onnx.load("lenet5.int8.onnx"))
    >>> model = wide_weights_as_int16(model, {"bn1_conv.weight": 12})
"""

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

# The first opset whose DequantizeLinear reads INT16.
INT16_OPSET = 21
# The integer types a QuantizeLinear may produce, with their saturation range (ONNX, opset 21).
_RANGES = {
    np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max)
    for t in (np.int8, np.uint8, np.int16, np.uint16)
}


def integer_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace in `model` (changed in place and returned) every QuantizeLinear whose input is an
    initializer and whose scale and zero point are constants by an integer initializer of its
    output, then drop the initializers and Constant nodes that nothing reads any more."""
    graph = model.graph
    constants = _constant_values(graph)
    initializers = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if node.output[0] not in outputs and _is_weight_quantizer(node, initializers, constants):
            values = [constants[name] for name in node.input]
            integers = quantize_linear(*values, axis=_axis(node))
            _replace_quantizer(graph, node, integers)
    _remove_unused(graph)
    return model


def quantize_after_reshapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """After every Flatten / Reshape that reads a per-tensor DequantizeLinear's values (directly
    or through max pools, transposes: _ON_GRID), a QuantizeLinear / DequantizeLinear pair at the
    same scale and zero point; `model` is changed in place and returned."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    scales = _constant_values(graph)
    order = []
    for node in graph.node:
        order.append(node)
        dq = _grid_source(producer, node.input[0]) if node.op_type in _RESHAPES else None
        scale = None if dq is None else scales.get(dq.input[1])
        if scale is not None and np.size(scale) == 1:  # per tensor only
            order += _requantize(graph, node, list(dq.input[1:]))
    del graph.node[:]
    graph.node.extend(order)
    return model


_RESHAPES = ("Flatten", "Reshape")
# what leaves values on their quantizer's grid and within its range (a max picks one of them)
_ON_GRID = (*_RESHAPES, "MaxPool", "Transpose", "Squeeze", "Unsqueeze", "Identity")


def _grid_source(producer: dict, name: str):
    """The DequantizeLinear whose values `name` holds, through ops that keep them on its grid;
    None when there is none."""
    node = producer.get(name)
    while node is not None and node.op_type in _ON_GRID:
        node = producer.get(node.input[0])
    return node if node is not None and node.op_type == "DequantizeLinear" else None


def _requantize(graph: onnx.GraphProto, node: onnx.NodeProto, params: list[str]) -> list:
    """x -> node -> y  becomes  x -> node -> Q -> DQ -> y (at `params`: scale, zero point)."""
    y = node.output[0]
    raw, quantized = unused_name(graph, f"{y}_r"), unused_name(graph, f"{y}_q")
    node.output[0] = raw
    return [
        helper.make_node("QuantizeLinear", [raw, *params], [quantized]),
        helper.make_node("DequantizeLinear", [quantized, *params], [y]),
    ]


def wide_weights_as_int16(model: onnx.ModelProto, fracs: Mapping[str, int]) -> onnx.ModelProto:
    """Store each float initializer named in `fracs` (its fractional length: values k * 2**-frac)
    as INT16 integers through a DequantizeLinear at scale 2**-frac, zero point 0, where that is
    exact; the model is converted to opset 21 first when it is older. Returns the model (a new
    one when converted); one without such an initializer comes back unchanged."""
    weights = {t.name: t for t in model.graph.initializer if t.name in fracs}
    exact = {n: q for n, t in weights.items() if (q := _int16_grid(t, fracs[n])) is not None}
    if not exact:
        return model
    if model_opset(model) < INT16_OPSET:
        model = version_converter.convert_version(model, INT16_OPSET)
    for name, integers in exact.items():
        _dequantize_initializer(model.graph, name, integers, fracs[name])
    return model


def _dequantize_initializer(graph: onnx.GraphProto, name: str, integers, frac: int) -> None:
    """The float initializer `name` becomes DequantizeLinear(integers, 2**-frac, 0) -> `name`,
    so its readers read the same tensor name."""
    graph.initializer.remove(next(t for t in graph.initializer if t.name == name))
    scale = np.array(2.0**-frac, np.float32)
    zero = np.zeros((), integers.dtype)
    tensors = [(integers, f"{name}_quantized"), (scale, f"{name}_scale")]
    tensors.append((zero, f"{name}_zero_point"))
    graph.initializer.extend(numpy_helper.from_array(v, n) for v, n in tensors)
    dequantize = helper.make_node("DequantizeLinear", [n for _, n in tensors], [name])
    graph.node.insert(0, dequantize)  # before every reader: the graph stays sorted


def _int16_grid(tensor: onnx.TensorProto, frac: int) -> np.ndarray | None:
    """The INT16 integers of a float initializer on the grid 2**-frac; None where it is not on
    that grid (scaled back in float32, as DequantizeLinear computes) or does not fit."""
    values = numpy_helper.to_array(tensor)
    if values.dtype != np.float32:
        return None
    scaled = np.rint(values.astype(np.float64) * 2.0**frac)
    low, high = _RANGES[np.dtype(np.int16)]
    if scaled.size and (scaled.min() < low or scaled.max() > high):
        return None
    integers = scaled.astype(np.int16)
    back = integers.astype(np.float32) * np.float32(2.0**-frac)
    return integers if np.array_equal(back, values) else None


def model_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def quantize_linear(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None, *, axis: int = 1
) -> np.ndarray:
    """ONNX QuantizeLinear on numpy: saturate(round_half_to_even(x / scale) + zero_point) in the
    zero point's integer type (uint8 without one); a 1-D scale is per slice along `axis`."""
    if zero_point is None:
        zero_point = np.zeros_like(scale, dtype=np.uint8)
    low, high = _RANGES[zero_point.dtype]
    shape = [1] * x.ndim
    if scale.ndim == 1:  # per axis: scale and zero point broadcast along `axis`
        shape[axis] = -1
    scale = scale.astype(np.float32).reshape(shape if scale.size > 1 else ())
    zero = zero_point.astype(np.int64).reshape(shape if zero_point.size > 1 else ())
    rounded = np.rint(x.astype(np.float32) / scale).astype(np.int64)  # rint: ties to even
    return np.clip(rounded + zero, low, high).astype(zero_point.dtype)


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Every initializer and every Constant node's output (of a `value` tensor), by name."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _is_weight_quantizer(node: onnx.NodeProto, initializers: set[str], constants: dict) -> bool:
    """A QuantizeLinear of an initializer at a constant scale and an integer zero point."""
    if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx"):
        return False
    if any(a.name in ("block_size", "output_dtype") for a in node.attribute):
        return False  # opset 21's blocked scales and typed outputs: left as they are
    if node.input[0] not in initializers or not all(n in constants for n in node.input[1:]):
        return False
    zero_type = constants[node.input[2]].dtype if len(node.input) > 2 else np.dtype(np.uint8)
    return zero_type in _RANGES


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _replace_quantizer(graph: onnx.GraphProto, node: onnx.NodeProto, integers) -> None:
    """The QuantizeLinear's output becomes an initializer of `integers` under a name of its own
    (the float initializer's, plus "_quantized"); its readers read that, and the node goes."""
    name = unused_name(graph, f"{node.input[0]}_quantized")
    graph.initializer.append(numpy_helper.from_array(integers, name))
    for reader in graph.node:
        for i, tensor in enumerate(reader.input):
            if tensor == node.output[0]:
                reader.input[i] = name
    for info in [i for i in graph.value_info if i.name == node.output[0]]:
        graph.value_info.remove(info)
    graph.node.remove(node)


def unused_name(graph: onnx.GraphProto, name: str) -> str:
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    candidate, count = name, 0
    while candidate in taken:
        count += 1
        candidate = f"{name}_{count}"
    return candidate


def _remove_unused(graph: onnx.GraphProto) -> None:
    """Drop initializers and Constant nodes that no node or graph output reads, with their
    graph inputs and value_info; repeated until nothing more goes."""
    while True:
        read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
        read |= {t for n in graph.node for a in n.attribute for t in _subgraph_reads(a)}
        dead = [t for t in graph.initializer if t.name not in read]
        dead_nodes = [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in read]
        if not dead and not dead_nodes:
            break
        gone = {t.name for t in dead} | {n.output[0] for n in dead_nodes}
        for tensor in dead:
            graph.initializer.remove(tensor)
        for node in dead_nodes:
            graph.node.remove(node)
        for field in (graph.input, graph.value_info):
            for info in [i for i in field if i.name in gone]:
                field.remove(info)


def _subgraph_reads(attribute: onnx.AttributeProto) -> set[str]:
    """What a control-flow node's subgraphs (If, Loop, Scan) read from the outer graph, or may."""
    graphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
    return {t for g in graphs for n in g.node for t in n.input}


def unsigned_integers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store every int8 value of `model`'s QDQ pairs as uint8 at zero point + 128 (changed in
    place and returned): the same values exactly, on the same grid and range, so that ONNX
    Runtime runs its uint8 x uint8 kernels. Its uint8 x int8 kernels, on an x86 CPU without
    VNNI (AVX2 only), multiply-add byte pairs into 16 bits with VPMADDUBSW, which saturates
    (ONNX Runtime's quantization docs); the uint8 x uint8 kernels widen to 16 bits first and do
    not, so the file computes the same integers on every CPU. An int8 tensor (an initializer, a
    QuantizeLinear's output) changes only where every reader is a DequantizeLinear with a
    constant zero point; activations already uint8 (after a ReLU) are left as they are."""
    graph = model.graph
    constants = _constant_values(graph)
    readers = _readers(graph)
    outputs = {o.name for o in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    shifted: dict[str, str] = {}  # an int8 zero point's name -> its uint8 counterpart's

    def unsigned_zero(name: str) -> str:
        if name not in shifted:
            shifted[name] = unused_name(graph, f"{name}_uint8")
            zero = numpy_helper.from_array(_to_uint8(constants[name]), shifted[name])
            graph.initializer.append(zero)
        return shifted[name]

    for tensor, writer in _int8_sources(graph, constants):
        users = readers.get(tensor, [])
        if tensor in outputs or not users:
            continue
        if not all(_dequantizes_int8(node, tensor, constants) for node in users):
            continue
        for node in users + ([] if writer is None else [writer]):
            node.input[2] = unsigned_zero(node.input[2])
        if writer is None:  # an initializer: its values move by 128
            values = numpy_helper.from_array(_to_uint8(constants[tensor]), tensor)
            initializers[tensor].CopyFrom(values)
    _drop_integer_value_info(graph)
    _remove_unused(graph)
    return model


def _int8_sources(graph: onnx.GraphProto, constants: dict) -> list[tuple[str, object]]:
    """(tensor, the QuantizeLinear writing it, or None for an initializer) for every int8
    initializer and every QuantizeLinear with a constant int8 zero point."""
    sources = [(t.name, None) for t in graph.initializer if constants[t.name].dtype == np.int8]
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and _int8_zero_point(node, constants):
            sources.append((node.output[0], node))
    return sources


def _int8_zero_point(node: onnx.NodeProto, constants: dict) -> bool:
    zero = constants.get(node.input[2]) if len(node.input) > 2 else None
    return zero is not None and zero.dtype == np.int8


def _dequantizes_int8(node: onnx.NodeProto, tensor: str, constants: dict) -> bool:
    """Whether `node` is a DequantizeLinear of `tensor` at a constant int8 zero point."""
    return (
        node.op_type == "DequantizeLinear"
        and node.input[0] == tensor
        and _int8_zero_point(node, constants)
    )


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.int16) + 128).astype(np.uint8)


def _readers(graph: onnx.GraphProto) -> dict[str, list]:
    readers: dict[str, list] = {}
    for node in graph.node:
        for tensor in node.input:
            readers.setdefault(tensor, []).append(node)
    return readers


def _drop_integer_value_info(graph: onnx.GraphProto) -> None:
    """Forget the recorded types of 8-bit tensors (shape inference finds them again)."""
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    for info in [i for i in graph.value_info if i.type.tensor_type.elem_type in eight_bit]:
        graph.value_info.remove(info)
