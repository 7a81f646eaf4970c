"""onnx_int8: QuantizeLinear folded into integer initializers computes what ONNX's reference
QuantizeLinear computes (ties to even, saturation, zero points, per axis), and the rewrite leaves
no QuantizeLinear of an initializer, no unread constant and the same outputs."""

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from netshrink.export.onnx_int8 import (
    integer_weights,
    quantize_linear,
    unsigned_integers,
    wide_weights_as_int16,
)

_ZERO_TYPES = st.sampled_from([np.int8, np.uint8, np.int16, np.uint16])
_VALUES = hnp.arrays(np.float32, (3, 4), elements=st.floats(-300, 300, width=32))


def _reference_quantize(x, scale, zero, axis=1):
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=axis)
    return ReferenceEvaluator(node).run(None, {"x": x, "s": scale, "z": zero})[0]


@settings(max_examples=60, deadline=None)
@given(_VALUES, st.sampled_from([0.25, 0.5, 1.0, 2.0, 0.3]), _ZERO_TYPES, st.integers(-3, 3))
def test_quantize_linear_is_onnxs(x, scale, zero_type, zero):
    zero_point = np.array(max(zero, 0) if zero_type in (np.uint8, np.uint16) else zero, zero_type)
    scale = np.array(scale, np.float32)
    got = quantize_linear(x, scale, zero_point)
    assert got.dtype == zero_type
    assert np.array_equal(got, _reference_quantize(x, scale, zero_point))


def test_quantize_linear_rounds_ties_to_even_saturates_and_goes_per_axis():
    x = np.array([[0.5, 1.5, 2.5, -0.5, 500.0, -500.0]], np.float32)
    assert quantize_linear(x, np.array(1.0, np.float32), np.array(0, np.int8)).tolist() == [
        [0, 2, 2, 0, 127, -128]
    ]
    assert quantize_linear(x, np.array(1.0, np.float32)).tolist() == [[0, 2, 2, 0, 255, 0]]
    per_row = np.array([[2.0, 4.0], [2.0, 4.0]], np.float32)
    scale, zero = np.array([1.0, 2.0], np.float32), np.array([0, 1], np.int8)
    assert quantize_linear(per_row, scale, zero, axis=0).tolist() == [[2, 4], [2, 3]]


def _qdq_matmul(weight: np.ndarray, step: float) -> onnx.ModelProto:
    """y = x @ DQ(Q(weight)), the weight a float initializer, scale and zero point Constants."""
    nodes = [
        helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.float32(step))),
        helper.make_node("Constant", [], ["z"], value=numpy_helper.from_array(np.int8(0))),
        helper.make_node("Constant", [], ["unused"], value=numpy_helper.from_array(np.int8(1))),
        helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"]),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
        helper.make_node("MatMul", ["x", "wd"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_integer_weights_fold_the_quantizer_and_keep_the_outputs():
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.5, (6, 3)).astype(np.float32)  # off the grid: it rounds
    model = _qdq_matmul(weight, 2.0**-5)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    before = ReferenceEvaluator(model).run(None, {"x": x})[0]
    integer_weights(model)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Constant", "Constant", "DequantizeLinear", "MatMul"]  # Q and "unused" gone
    (stored,) = model.graph.initializer
    assert stored.data_type == TensorProto.INT8 and stored.name == "w_quantized"
    assert np.array_equal(ReferenceEvaluator(model).run(None, {"x": x})[0], before)


def test_wide_weights_become_int16_only_where_exact():
    rng = np.random.default_rng(1)
    on_grid = (rng.integers(-2000, 2000, (6, 3)) * 2.0**-10).astype(np.float32)
    model = _qdq_matmul(on_grid, 1.0)
    model.graph.node[-1].input[1] = "w"  # the weight straight into MatMul, as a wide one is
    x = rng.normal(size=(4, 6)).astype(np.float32)
    before = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert wide_weights_as_int16(model, {"w": 9}) is model  # off the 2**-9 grid: unchanged
    model = wide_weights_as_int16(model, {"w": 10})
    assert model.opset_import[0].version == 21
    onnx.checker.check_model(model, full_check=True)
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types["w_quantized"] == TensorProto.INT16 and "w" not in types
    assert np.array_equal(ReferenceEvaluator(model).run(None, {"x": x})[0], before)


def _int8_graph(extra_reader: bool) -> onnx.ModelProto:
    """x -> Q/DQ (int8, zero point 0) -> MatMul with int8 weights through a DequantizeLinear;
    with `extra_reader` the weight integers are also a graph output (not only dequantized)."""
    weight = np.array([[-128, 127], [5, -7]], np.int8)
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.array(0.5, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])]
    if extra_reader:
        nodes.append(helper.make_node("Identity", ["w"], ["w_out"]))
        outputs.append(helper.make_tensor_value_info("w_out", TensorProto.INT8, [2, 2]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])], outputs,
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_unsigned_integers_keep_the_values_and_skip_what_else_reads_them():
    x = np.array([[-64.0, 63.5], [3.0, -2.5], [-100.0, 100.0]], np.float32)
    for extra_reader in (False, True):
        before = _int8_graph(extra_reader)
        expected = ReferenceEvaluator(before).run(None, {"x": x})
        after = unsigned_integers(_int8_graph(extra_reader))
        onnx.checker.check_model(after, full_check=True)
        got = ReferenceEvaluator(after).run(None, {"x": x})
        assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
        types = {t.name: t.data_type for t in after.graph.initializer}
        # the weight stays int8 where an Identity also reads it; the activation moves either way
        assert types["w"] == (TensorProto.INT8 if extra_reader else TensorProto.UINT8)
        quantize = next(n for n in after.graph.node if n.op_type == "QuantizeLinear")
        assert types[quantize.input[2]] == TensorProto.UINT8
