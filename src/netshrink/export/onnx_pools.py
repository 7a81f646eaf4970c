"""ONNX pools as PyTorch computes them: every AveragePool and MaxPool of an exported file takes
PyTorch's windows and divides as PyTorch does under every ONNX Runtime kernel (ceil_mode,
count_include_pad; see exact_pools), divisor_override and adaptive windows that do not tile the
input included (pools_exported). Used by every export (netshrink.export.onnx)."""

import contextlib

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch.onnx import symbolic_helper

from ..errors import UnsupportedLayerError
from ..quant.plan import adaptive_windows
from .onnx_int8 import model_opset, unused_name


def exact_pools(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make every AveragePool and MaxPool of `model` (changed in place and returned) take
    PyTorch's windows, and every AveragePool divide each by what PyTorch divides it by, under
    every kernel ONNX Runtime may run.

    ONNX Runtime's int8 QLinearAveragePool, which its optimizer makes of a DequantizeLinear ->
    AveragePool -> QuantizeLinear, divides a ceil_mode window that hangs over the edge by the
    whole kernel when count_include_pad is set, where PyTorch and ONNX Runtime's float
    AveragePool divide by the part inside the (padded) input (conv -> AvgPool2d(3, 3,
    ceil_mode=True): logits 0.05 apart, top-1 78%). And ONNX's shape inference gives a
    ceil_mode pool with padding one window more than PyTorch where PyTorch's last window would
    start in the end padding, so that file fails its check. Hence, without padding,
    count_include_pad is cleared (there is nothing to include); and a ceil_mode pool becomes a
    floor-mode one whose extra end padding reaches as far as PyTorch's last window and is not
    counted (a max pool never counts padding), an average pool's counted padding
    (count_include_pad) a Pad before it. Raises UnsupportedLayerError naming the pool where that
    needs its input's size and it is unknown."""
    shapes = None
    for node in list(model.graph.node):
        if node.op_type not in _POOLS or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        counted = node.op_type == "AveragePool" and attrs.get("count_include_pad")
        padded = any(attrs.get("pads", []))
        if counted and not padded:
            _set_attribute(node, "count_include_pad", 0)
            counted = False
        if not attrs.get("ceil_mode"):
            continue
        if shapes is None:
            shapes = _spatial_sizes(model)
        sizes = shapes.get(node.input[0])
        if sizes and all(isinstance(size, int) for size in sizes):
            _floor_mode_pool(model, node, attrs, sizes, counted)
        elif counted:
            raise UnsupportedLayerError(
                f"cannot export the average pool {node.name or node.output[0]} exactly: "
                "ceil_mode with counted padding needs its input's height and width, which are "
                "not fixed"
            )
    return model


_POOLS = ("AveragePool", "MaxPool")


def _floor_mode_pool(model: onnx.ModelProto, node, attrs: dict, sizes: list[int], counted):
    """PyTorch's ceil_mode pool `node` as a floor-mode one with uncounted end padding as far as
    PyTorch's last window reaches; its `counted` padding, if any, a Pad before it (with a
    QuantizeLinear / DequantizeLinear pair after it where a DequantizeLinear feeds the pool,
    so that ONNX Runtime still runs the pool in int8)."""
    rank = len(sizes)
    pads = list(attrs.get("pads", [0] * 2 * rank))
    strides = attrs.get("strides", [1] * rank)
    dilations = attrs.get("dilations", [1] * rank)
    spans = [d * (k - 1) + 1 for k, d in zip(attrs["kernel_shape"], dilations, strict=True)]
    ends = [
        _ceil_overhang(size, span, stride, pads[i], pads[i + rank])
        for i, (size, span, stride) in enumerate(zip(sizes, spans, strides, strict=True))
    ]
    # counted padding moves into a Pad: the pool's own padding is then only the overhang
    own = [0] * 2 * rank if counted else pads
    ends = [tail + end for tail, end in zip(own[rank:], ends, strict=True)]
    if any(end >= kernel for end, kernel in zip(ends, attrs["kernel_shape"], strict=True)):
        return  # ONNX Runtime refuses padding as wide as the kernel: a dilated max pool's
    if counted:
        _pad_before(model, node, pads)
    _set_attribute(node, "pads", own[:rank] + ends)
    _set_attribute(node, "ceil_mode", 0)
    if node.op_type == "AveragePool":
        _set_attribute(node, "count_include_pad", 0)


def _pad_before(model: onnx.ModelProto, node, pads: list[int]) -> None:
    """x -> node  becomes  x -> Pad(zeros, `pads`) [-> Q -> DQ where x is dequantized] -> node."""
    graph, rank = model.graph, len(pads) // 2
    padded = unused_name(graph, f"{node.input[0]}_padded")
    values = np.array([0, 0, *pads[:rank], 0, 0, *pads[rank:]], np.int64)
    new = [_pad_node(model, node.input[0], padded, values)]
    producer = next((n for n in graph.node if node.input[0] in n.output), None)
    if producer is not None and producer.op_type == "DequantizeLinear":
        quantized = unused_name(graph, f"{padded}_q")
        requantized = unused_name(graph, f"{padded}_dq")
        params = list(producer.input[1:])  # zero is on every grid: the pair changes no value
        new.append(helper.make_node("QuantizeLinear", [padded, *params], [quantized]))
        new.append(helper.make_node("DequantizeLinear", [quantized, *params], [requantized]))
        padded = requantized
    node.input[0] = padded
    at = list(graph.node).index(node)
    for offset, extra in enumerate(new):
        graph.node.insert(at + offset, extra)


def _ceil_overhang(size: int, kernel: int, stride: int, head: int, tail: int) -> int:
    """How far PyTorch's last ceil_mode window reaches past the padded input (its rule: a
    window starts inside the input or its head padding)."""
    count = -(-(size + head + tail - kernel) // stride) + 1
    if (count - 1) * stride >= size + head:
        count -= 1
    return max(0, (count - 1) * stride + kernel - (size + head + tail))


def _pad_node(model: onnx.ModelProto, source: str, output: str, pads: np.ndarray):
    if model_opset(model) < 11:  # Pad's pads were an attribute before opset 11
        return helper.make_node("Pad", [source], [output], pads=pads.tolist(), mode="constant")
    name = unused_name(model.graph, f"{output}_pads")
    model.graph.initializer.append(numpy_helper.from_array(pads, name))
    return helper.make_node("Pad", [source, name], [output], mode="constant")


def _spatial_sizes(model: onnx.ModelProto) -> dict[str, list]:
    """Every tensor's sizes after its first two axes (ints where fixed), by shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    sizes = {}
    for info in (*inferred.input, *inferred.value_info, *inferred.output):
        dims = info.type.tensor_type.shape.dim
        sizes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims[2:]]
    return sizes


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    for attribute in [a for a in node.attribute if a.name == name]:
        node.attribute.remove(attribute)
    node.attribute.append(helper.make_attribute(name, value))


@contextlib.contextmanager
def pools_exported(opset: int):
    """While open, torch's TorchScript exporter writes the average pools its own symbolics get
    wrong or refuse. avg_pool2d's divisor_override, which torch drops without a word
    (AvgPool2d(2, divisor_override=1), a sum pool, exported as a mean: every logit wrong):
    such a pool becomes a floor-mode AveragePool that counts every padded position, so each
    window divides by the whole kernel, then a Mul by kernel area / divisor. An adaptive
    average pool whose windows do not tile its input (torchvision's VGG head on 32 x 32, 8 ->
    3), which torch refuses: each window's sum by a MatMul of the flattened maps with a 0 / 1
    matrix, then a Div by its count. Other pools export as torch's own symbolics write them."""
    symbolics = {"aten::avg_pool2d": _avg_pool2d, "aten::adaptive_avg_pool2d": _adaptive_avg_pool2d}
    for name, symbolic in symbolics.items():
        torch.onnx.register_custom_op_symbolic(name, symbolic, opset)
    try:
        yield
    finally:
        for name in symbolics:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


@symbolic_helper.parse_args("v", "is")
def _adaptive_avg_pool2d(g, x, output_size):
    oh, ow = _pair(output_size)
    if (oh, ow) == (1, 1):
        return g.op("GlobalAveragePool", x)
    sizes = _traced_sizes(g, x)[-3:]
    if len(sizes) != 3 or None in sizes:
        raise UnsupportedLayerError(
            f"cannot export adaptive_avg_pool2d to {oh} x {ow} to ONNX: its input's channels, "
            "height and width are not fixed"
        )
    c, h, w = sizes
    if h % oh == 0 and w % ow == 0:
        kernel = [h // oh, w // ow]
        return g.op("AveragePool", x, kernel_shape_i=kernel, strides_i=kernel)
    # each window's sum (exact: a 0 / 1 matrix), then divided by its count as PyTorch divides
    # it, so that a quotient halfway between two integers of an int8 grid stays a tie
    members = _window_members(h, w, oh, ow)
    flat = g.op("Reshape", x, g.op("Constant", value_t=torch.tensor([-1, c, h * w])))
    sums = g.op("MatMul", flat, g.op("Constant", value_t=members))
    means = g.op("Div", sums, g.op("Constant", value_t=members.sum(0)))
    return g.op("Reshape", means, g.op("Constant", value_t=torch.tensor([-1, c, oh, ow])))


def _traced_sizes(g, x) -> list:
    """`x`'s sizes as ONNX's shape inference knows them, or else as torch traced them (an
    F.pad before leaves ONNX's shape of it unknown)."""
    sizes = symbolic_helper._get_tensor_sizes(x) or []
    if sizes and None not in sizes[-3:]:
        return sizes
    try:
        return list(g.original_node.inputsAt(0).type().sizes())
    except (AttributeError, RuntimeError):  # no traced type: sizes unknown
        return sizes


def _window_members(h: int, w: int, oh: int, ow: int) -> torch.Tensor:
    """[h * w, oh * ow], 1 where input (y, x) lies in PyTorch's adaptive window (i, j)."""
    matrix = torch.zeros(h, w, oh, ow)
    for i, r in enumerate(adaptive_windows(h, oh)):
        for j, c in enumerate(adaptive_windows(w, ow)):
            matrix[r.start : r.stop, c.start : c.stop, i, j] = 1
    return matrix.reshape(h * w, oh * ow)


@symbolic_helper.parse_args("v", "is", "is", "is", "i", "i", "v")
def _avg_pool2d(g, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor):
    kernel, stride, head = (_pair(v) for v in (kernel, list(stride) or kernel, padding))
    if symbolic_helper._is_none(divisor):
        return g.op(
            "AveragePool", x, ceil_mode_i=ceil_mode, count_include_pad_i=count_include_pad,
            kernel_shape_i=kernel, pads_i=head * 2, strides_i=stride,
        )  # fmt: skip
    divisor = symbolic_helper._get_const(divisor, "i", "divisor_override")
    tail = head
    if ceil_mode:  # PyTorch's last windows as floor-mode ones over more (counted) end padding
        sizes = _traced_sizes(g, x)[-2:]
        if len(sizes) != 2 or None in sizes:
            raise UnsupportedLayerError(
                "cannot export avg_pool2d with divisor_override and ceil_mode exactly: it needs "
                "its input's height and width, which are not fixed"
            )
        tail = [
            pad + _ceil_overhang(size, k, s, pad, pad)
            for size, k, s, pad in zip(sizes, kernel, stride, head, strict=True)
        ]
    mean = g.op(
        "AveragePool", x, ceil_mode_i=0, count_include_pad_i=1, kernel_shape_i=kernel,
        pads_i=head + tail, strides_i=stride,
    )  # fmt: skip
    area = torch.tensor(kernel[0] * kernel[1] / divisor, dtype=torch.float32)
    return g.op("Mul", mean, g.op("Constant", value_t=area))


def _pair(values) -> list[int]:
    return list(values) * 2 if len(values) == 1 else list(values)
