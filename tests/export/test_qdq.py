"""int8 QDQ export: the fixed-point model's own power-of-two scales in the graph, run by ONNX
Runtime, agreeing with the integer path on real data; formats wider than int8 refused."""

import numpy as np
import onnx
import pytest

from helpers import train_on_digits
from netshrink.errors import UnsupportedLayerError
from netshrink.export.onnx import onnx_logits, onnx_session
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


def test_wide_activations_are_refused_and_wide_weights_stay_float(trained, digits, tmp_path):
    qmodel = quantize(trained, digits, QuantConfig(activations=10))
    with pytest.raises(UnsupportedLayerError, match="activations of at most 8 bits"):
        export_onnx_int8(qmodel, tmp_path / "q.onnx", digits.input_shape)
    assert not (tmp_path / "q.onnx").exists()
    qmodel = quantize(trained, digits, QuantConfig(weights=12))  # float initializers, on grid
    session = onnx_session(export_onnx_int8(qmodel, tmp_path / "w.onnx", digits.input_shape))
    x = next(iter(digits.loader("test", 64)))[0]
    ort, ours = onnx_logits(session, x), qmodel(x).detach().numpy()
    assert (ort.argmax(1) == ours.argmax(1)).mean() > 0.95 and np.abs(ort - ours).max() < 0.1
