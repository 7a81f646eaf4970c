"""int8_agreement: the int8 ONNX file against the integer path, and where they first part. A
file whose scale at one quantizer is changed is caught at that quantizer, not downstream."""

import onnx
import pytest
import torch

from helpers import train_on_digits
from netshrink.export.agreement import AGREEMENT_TARGET, int8_agreement
from netshrink.export.qdq import export_onnx_int8
from netshrink.quant import QuantConfig, fixed_point_formats, quantize
from netshrink.train import FitConfig


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    trained = train_on_digits(digits, FitConfig(epochs=5, batch_size=64, lr=0.05))
    qmodel = quantize(trained, digits, QuantConfig(calibration_images=256))
    path = export_onnx_int8(qmodel, tmp_path_factory.mktemp("agree") / "q.onnx", (1, 8, 8))
    images = torch.cat([x for x, _ in digits.loader("test", 512)])
    return qmodel, path, images


def test_the_exported_file_agrees_and_says_so(exported):
    qmodel, path, images = exported
    result = int8_agreement(qmodel, path, images)
    assert result.images == len(images) and result.top1 >= 0.99
    text = result.describe()
    assert f"of {len(images)} images" in text
    assert ("first differs" in text) == (result.top1 < AGREEMENT_TARGET)


def test_a_changed_scale_is_found_at_its_quantizer(exported, tmp_path):
    qmodel, path, images = exported
    quantizers = list(fixed_point_formats(qmodel).activations)
    target = quantizers[1]  # after the first layer: the input quantizer agrees
    model = onnx.load(str(path))
    for node in model.graph.node:  # the scale constant that feeds this quantizer's pair
        if node.op_type == "Constant" and node.name.startswith(f"/{target}/"):
            value = onnx.numpy_helper.to_array(node.attribute[0].t)
            node.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(value * 4, node.output[0]))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    result = int8_agreement(qmodel, broken, images)
    assert result.first is not None and result.first.quantizer == target
    assert result.first.max_steps > 1 and "more than one step" in result.first.reason


def test_ties_to_even_make_the_file_agree_exactly(tmp_path):
    """Random weights put many values on rounding ties: with ties up the file parts from the
    integer path by one step there; quantized with ties="even" (ONNX Runtime's rule) every
    quantizer's values agree and so does top-1, and the integer path is still the fake-quantized
    model's and the C code's."""
    from helpers import randomize_batchnorms, require_gcc
    from netshrink.export.c import build_and_run, export_c, quantize_input
    from netshrink.models import build_model
    from netshrink.quant import IntegerModel

    require_gcc()
    torch.manual_seed(0)
    spec = {"name": "vgg_small", "args": {"width": 0.25}}
    model = randomize_batchnorms(build_model(spec, num_classes=10, in_channels=3, input_size=16))
    images = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    results = {}
    for ties in ("up", "even"):
        qmodel = quantize(model, images, QuantConfig(ties=ties))
        path = export_onnx_int8(qmodel, tmp_path / f"{ties}.onnx", (3, 16, 16))
        results[ties] = int8_agreement(qmodel, path, images)
        out = IntegerModel(qmodel).run(images)
        with torch.no_grad():
            assert torch.equal(out.logits, qmodel(images).double())
        export = export_c(qmodel, tmp_path / f"c_{ties}", (3, 16, 16))
        logits = build_and_run(export, quantize_input(images, export), tmp_path / f"b_{ties}")
        assert (logits == out.integers.numpy()).all()
    assert results["up"].first is not None and "tie" in results["up"].first.reason
    assert results["even"].first is None and results["even"].top1 == 1.0
