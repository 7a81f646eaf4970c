"""Export of layer styles that architectures users bring write and the zoo does not: an average
pool with ceil_mode (its edge windows hang over the input), and a kernel size read from the
input's shape (CBAM's channel gate), which torch exports only for a fixed batch. Each file agrees
with the model it came from, as ONNX Runtime runs it (every graph optimisation on: its fused
int8 kernels), or the export says why not."""

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.export.agreement import int8_agreement
from netshrink.export.onnx import (
    StaticBatchWarning,
    compare_onnx,
    export_onnx,
    onnx_logits,
    onnx_session,
)
from netshrink.export.qdq import export_onnx_int8
from netshrink.quant import QuantConfig, quantize

IMAGES = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
CALIBRATION = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))


class CeilPool(nn.Module):
    """conv -> ReLU -> AvgPool2d(3, 3, ceil_mode=True) -> fc: on 32x32 the last window of each
    row and column holds 2 of its 9 values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(3, 3, ceil_mode=True)
        self.fc = nn.Linear(8 * 11 * 11, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))


class SizedPool(nn.Module):
    """CBAM's channel gate's pooling: the kernel is the input's own height and width."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        size = (x.size(2), x.size(3))
        return self.fc(F.avg_pool2d(x, size, stride=size).flatten(1))


def _quantized(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    # ties="even": ONNX Runtime's rounding, so that the file can agree exactly
    return quantize(model.eval(), CALIBRATION, QuantConfig(ties="even"))


def test_a_ceil_mode_average_pool_agrees_in_onnx_runtimes_int8_kernel(tmp_path):
    torch.manual_seed(0)
    qmodel = _quantized(CeilPool())
    path = export_onnx_int8(qmodel, tmp_path / "ceil.int8.onnx", (3, 32, 32))
    theirs = onnx_logits(onnx_session(path, threads=1), IMAGES)
    with torch.no_grad():
        ours = qmodel(IMAGES).numpy()
    # was 0.05 apart (of 0.4) at a 78-89% top-1: the fused pool divided edge windows by 9
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5)
    # the integer path divides each window by its own count, as the fake-quantized model
    result = int8_agreement(qmodel, path, IMAGES)
    assert result.against == "the integer path"
    assert result.first is None and result.top1 == 1.0


class SoftmaxGate(SizedPool):
    """SizedPool's layers with a softmax over the channels as a gate (an op the integer path
    lacks; the int8 file runs it in float between its quantizers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        return self.fc((x * torch.softmax(x, 1)).mean((2, 3)))


def test_the_int8_check_runs_against_the_fake_quantized_model_where_integers_cannot(tmp_path):
    qmodel = _quantized(SoftmaxGate())
    path = export_onnx_int8(qmodel, tmp_path / "softmax.int8.onnx", (3, 32, 32))
    result = int8_agreement(qmodel, path, IMAGES)
    assert result.against == "the fake-quantized model"
    assert result.top1 >= 0.9 and result.images == len(IMAGES)


@pytest.mark.parametrize(
    "pool",
    [
        nn.AvgPool2d(3, 3, ceil_mode=True),  # R2: count_include_pad without padding
        nn.AvgPool2d(3, 2, 1, ceil_mode=True),  # counted padding and a window past it
        # PyTorch drops the window that would start in the end padding; ONNX's shape
        # inference did not, and the file failed its check
        nn.AvgPool2d(2, 2, 1, ceil_mode=True, count_include_pad=False),
        nn.MaxPool2d(2, 2, 1, ceil_mode=True),
        nn.AvgPool2d(3, 1, 1),  # no ceil_mode: as torch exported it
        # torch's exporter dropped divisor_override: a sum pool became a mean
        nn.AvgPool2d(2, 2, divisor_override=1),
        nn.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=4),
        nn.AvgPool2d(3, 3, ceil_mode=True, count_include_pad=False, divisor_override=6),
        # torch refused adaptive windows that do not tile the input (7 -> 3 rows of 3 from 0,
        # 2, 4; 7 -> 9)
        nn.AdaptiveAvgPool2d(3),
        nn.AdaptiveAvgPool2d((9, 4)),
    ],
    ids=[
        "r2",
        "counted-padding",
        "uncounted-padding",
        "max-padding",
        "no-ceil",
        "sum",
        "divisor-ceil",
        "divisor-uncounted",
        "adaptive-uneven",
        "adaptive-upsampling",
    ],  # fmt: skip
)
def test_every_pool_style_agrees_in_fp32_and_int8(pool, tmp_path):
    size = 7  # odd: ceil_mode's last window hangs over the edge
    features = pool(torch.zeros(1, 4, size, size)).numel()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), pool, nn.Flatten(), nn.Linear(features, 10)
    ).eval()
    x = IMAGES[:, :, :size, :size]
    path = export_onnx(model, tmp_path / "pool.onnx", (3, size, size))
    with torch.no_grad():
        np.testing.assert_allclose(
            onnx_logits(onnx_session(path, threads=1), x), model(x).numpy(), rtol=0, atol=1e-5
        )
    qmodel = quantize(model, CALIBRATION[:, :, :size, :size], QuantConfig(ties="even"))
    path = export_onnx_int8(qmodel, tmp_path / "pool.int8.onnx", (3, size, size))
    with torch.no_grad():
        np.testing.assert_allclose(
            onnx_logits(onnx_session(path, threads=1), x), qmodel(x).numpy(), rtol=0, atol=1e-5
        )
    pools = [n for n in onnx.load(str(path)).graph.node if n.op_type.endswith("Pool")]
    # ONNX's own ceil_mode rule differs (an uneven adaptive pool is a MatMul, not a pool)
    assert all(_attribute(n, "ceil_mode") == 0 for n in pools)


def _attribute(node: onnx.NodeProto, name: str):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), 0)


def test_a_kernel_read_from_the_input_shape_exports_for_batch_1_and_says_why(tmp_path):
    torch.manual_seed(0)
    model = SizedPool().eval()
    with pytest.warns(StaticBatchWarning, match=r"batch of 1 only.*x\.size\(2\)"):
        path = export_onnx(model, tmp_path / "sized.onnx", (3, 32, 32))
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert "dynamic batch axis" in proto.doc_string
    session = onnx_session(path, threads=1)
    x = IMAGES[:5]  # more than the file's batch: run image by image
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits(session, x), model(x).numpy(), rtol=0, atol=1e-5)
    labels = torch.zeros(len(IMAGES), dtype=torch.long)
    batches = list(zip(IMAGES.split(8), labels.split(8), strict=True))
    result = compare_onnx(model, session, batches)
    assert result.count == len(IMAGES) and result.top1_agreement == 1.0


def test_its_int8_file_takes_batch_1_too_and_agrees(tmp_path):
    qmodel = _quantized(SizedPool())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_onnx_int8(qmodel, tmp_path / "sized.int8.onnx", (3, 32, 32))
    assert [w.category for w in caught] == [StaticBatchWarning]
    with torch.no_grad():
        ours = qmodel(IMAGES).numpy()
    theirs = onnx_logits(onnx_session(path, threads=1), IMAGES)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5)
    result = int8_agreement(qmodel, path, IMAGES)  # batches of 256 on a batch-1 file
    assert result.against == "the integer path"
    assert result.first is None and result.top1 == 1.0
