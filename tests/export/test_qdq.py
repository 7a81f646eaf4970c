"""int8 QDQ export: the fixed-point model's own power-of-two scales in the graph, run by ONNX
Runtime, agreeing with the integer path on real data; formats wider than int8 refused. Weights
are stored as integers (no float copy): the file is smaller than the fp32 one and than ONNX
Runtime's own quantize_static's, and computes what the float-initializer graph computed."""

import numpy as np
import onnx
import pytest
import torch

from helpers import train_on_digits
from netshrink.errors import ConfigError, UnsupportedLayerError
from netshrink.export import qdq
from netshrink.export.onnx import export_onnx, onnx_logits, onnx_session
from netshrink.export.qdq import export_onnx_int8
from netshrink.quant import IntegerModel, QuantConfig, fixed_point_formats, quantize
from netshrink.train import FitConfig


@pytest.fixture(scope="module")
def trained(digits):
    return train_on_digits(digits, FitConfig(epochs=5, batch_size=64, lr=0.05))


def test_qdq_graph_carries_the_formats_and_agrees_with_the_integer_path(trained, digits, tmp_path):
    qmodel = quantize(trained, digits, QuantConfig(weights=6))
    path = export_onnx_int8(qmodel, tmp_path / "q.onnx", digits.input_shape)
    graph = onnx.load(str(path)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    scales = _quantize_scales(graph)
    formats = fixed_point_formats(qmodel)
    assert {2.0**-s.frac for s in formats.activations.values()} <= scales
    session, integer = onnx_session(path, threads=1), IntegerModel(qmodel)
    agree = total = 0
    for x, _ in digits.loader("test", 128):
        agree += int(
            (onnx_logits(session, x).argmax(1) == integer.run(x).logits.argmax(1).numpy()).sum()
        )
        total += len(x)
    assert agree / total >= 0.99


def _quantize_scales(graph) -> set[float]:
    """The scale of every QuantizeLinear, from an initializer or a Constant node."""
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    return {float(values[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear"}


def test_onnx_rounds_ties_to_even_but_otherwise_matches(trained, digits, tmp_path):
    qmodel = quantize(trained, digits)
    session = onnx_session(export_onnx_int8(qmodel, tmp_path / "q.onnx", digits.input_shape))
    x = next(iter(digits.loader("test", 64)))[0]
    ort, ours = onnx_logits(session, x), qmodel(x).detach().numpy()
    step = 2.0 ** -max(s.frac for s in fixed_point_formats(qmodel).weights.values())
    assert np.abs(ort - ours).max() < 50 * step  # a few LSBs from tie rounding, no more


def test_wide_activations_are_refused_and_wide_weights_are_exact_int16(trained, digits, tmp_path):
    qmodel = quantize(trained, digits, QuantConfig(activations=10))
    with pytest.raises(UnsupportedLayerError, match="activations of at most 8 bits"):
        export_onnx_int8(qmodel, tmp_path / "q.onnx", digits.input_shape)
    assert not (tmp_path / "q.onnx").exists()
    qmodel = quantize(trained, digits, QuantConfig(weights=12, ties="even"))
    path = export_onnx_int8(qmodel, tmp_path / "w.onnx", digits.input_shape)
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 21  # INT16 DequantizeLinear
    assert _weight_types(model) == {onnx.TensorProto.INT16}
    x = next(iter(digits.loader("test", 64)))[0]
    ort = onnx_logits(onnx_session(path), x)
    # exact: ONNX Runtime runs the 12-bit layers in float on the grid values (as float
    # initializers, its optimizer quantized them again to int8: up to 0.0016 off on LeNet-5)
    assert np.array_equal(ort, IntegerModel(qmodel).run(x).logits.numpy().astype(np.float32))


def test_weights_are_integers_and_compute_what_the_float_graph_computed(
    trained, digits, tmp_path, monkeypatch
):
    qmodel = quantize(trained, digits)
    path = export_onnx_int8(qmodel, tmp_path / "q.onnx", digits.input_shape)
    model = onnx.load(str(path))
    assert _weight_types(model) == {onnx.TensorProto.UINT8}
    initializers = {t.name for t in model.graph.initializer}
    quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert not any(n.input[0] in initializers for n in quantizers)
    with monkeypatch.context() as patch:  # the file as the exporter wrote it
        patch.setattr(qdq, "integer_weights", lambda model: model)
        before = export_onnx_int8(qmodel, tmp_path / "float.onnx", digits.input_shape)
    assert _weight_types(onnx.load(str(before))) == {onnx.TensorProto.FLOAT}
    x = torch.cat([x for x, _ in digits.loader("test", 512)])
    for threads in (1, None):
        got = onnx_logits(onnx_session(path, threads=threads), x)
        assert np.array_equal(got, onnx_logits(onnx_session(before, threads=threads), x))


def test_signed_values_are_stored_unsigned_unless_asked(trained, digits, tmp_path):
    # uint8 at zero point 128 (ONNX Runtime's exact uint8 x uint8 kernels on every CPU) holds
    # the same values as int8 at zero point 0: the two files compute the same logits here
    qmodel = quantize(trained, digits, QuantConfig(ties="even"))
    unsigned = export_onnx_int8(qmodel, tmp_path / "u.onnx", digits.input_shape)
    signed = export_onnx_int8(qmodel, tmp_path / "s.onnx", digits.input_shape, integers="int8")
    assert _weight_types(onnx.load(str(signed))) == {onnx.TensorProto.INT8}
    graph = onnx.load(str(unsigned)).graph
    zero_points = {n.input[2] for n in graph.node if n.op_type == "DequantizeLinear"}
    types = {t.name: t.data_type for t in graph.initializer if t.name in zero_points}
    assert set(types.values()) == {onnx.TensorProto.UINT8}  # the input's zero point: 128
    x = next(iter(digits.loader("test", 256)))[0]
    expected = IntegerModel(qmodel).run(x).logits.numpy().astype(np.float32)
    assert np.array_equal(onnx_logits(onnx_session(unsigned, threads=1), x), expected)
    assert _fused_int8_ops(unsigned, tmp_path) == _fused_int8_ops(signed, tmp_path)
    with pytest.raises(ConfigError, match="integers must be one of"):
        export_onnx_int8(qmodel, tmp_path / "x.onnx", digits.input_shape, integers="int4")


def test_the_int8_file_is_smaller_than_fp32_and_onnx_runtimes_quantize_static(
    trained, digits, tmp_path
):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            x = next(iter(digits.loader("train", 32)))[0].numpy()
            self.batches = iter([{"input": x[i : i + 8]} for i in range(0, 32, 8)])

        def get_next(self):
            return next(self.batches, None)

    fp32 = export_onnx(trained, tmp_path / "fp32.onnx", digits.input_shape)
    theirs = tmp_path / "static.onnx"
    quantize_static(str(fp32), str(theirs), Images(), quant_format=QuantFormat.QDQ)
    ours = export_onnx_int8(quantize(trained, digits), tmp_path / "q.onnx", digits.input_shape)
    assert ours.stat().st_size < 0.3 * fp32.stat().st_size  # ~1/4: one byte a weight, not four
    assert ours.stat().st_size <= theirs.stat().st_size


def _weight_names(model) -> list[str]:
    """The initializer behind the weight input of each Conv / Gemm (through Q / DQ nodes)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    names = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            tensor = node.input[1]
            while tensor in producers:
                tensor = producers[tensor].input[0]
            names.append(tensor)
    return names


def _weight_types(model) -> set[int]:
    """The element types of the initializers that hold the Conv / Gemm weights."""
    types = {t.name: t.data_type for t in model.graph.initializer}
    return {types[name] for name in _weight_names(model)}


def test_a_layer_after_a_flatten_runs_in_an_int8_kernel(trained, digits, tmp_path, monkeypatch):
    # LeNet-300-100 flattens its quantized input before fc1: ONNX Runtime fused no int8 kernel
    # there and dequantized fc1's weights on every run; a Q/DQ pair after the Flatten (the same
    # values) lets it fuse fc1 as it fuses fc2 (fc3 gives float logits: no kernel takes that)
    qmodel = quantize(trained, digits)
    path = export_onnx_int8(qmodel, tmp_path / "q.onnx", digits.input_shape)
    with monkeypatch.context() as patch:
        patch.setattr(qdq, "quantize_after_reshapes", lambda model: model)
        before = export_onnx_int8(qmodel, tmp_path / "before.onnx", digits.input_shape)
    assert _fused_int8_ops(path, tmp_path) == ["QGemm", "QGemm"]
    assert _fused_int8_ops(before, tmp_path) == ["QGemm"]
    x = torch.cat([x for x, _ in digits.loader("test", 512)])
    got = onnx_logits(onnx_session(path, threads=1), x)
    assert np.array_equal(got, onnx_logits(onnx_session(before, threads=1), x))


def _fused_int8_ops(path, tmp_path) -> list[str]:
    """The int8 kernels of the graph ONNX Runtime optimises `path` into."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    nodes = onnx.load(str(tmp_path / "optimized.onnx")).graph.node
    return [n.op_type for n in nodes if n.op_type.startswith(("QGemm", "QLinear"))]
