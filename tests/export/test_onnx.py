import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import fx, nn
from torch.nn.utils import parametrize

from netshrink.errors import ConfigError, CorruptFileError, UnsupportedLayerError
from netshrink.export.onnx import (
    OnnxAgreement,
    compare_onnx,
    export_onnx,
    onnx_logits,
    onnx_session,
)
from netshrink.mask import apply_mask, get_mask
from netshrink.models import MODELS, lenet300_100, resnet20
from netshrink.prune.magnitude import LayerSparsity, PruneMagnitudeConfig, prune_magnitude
from netshrink.train import FitConfig, fit

# the smallest customary input of every zoo model, at its default width
ZOO = {
    "lenet300_100": ({}, (1, 28, 28)),
    "lenet5": ({}, (1, 28, 28)),
    "lenet5_caffe": ({}, (1, 28, 28)),
    "vgg_small": ({"in_channels": 3, "input_size": 32}, (3, 32, 32)),
    "resnet20": ({"input_size": 32}, (3, 32, 32)),
    "mobilenet_v2": ({"input_size": 32}, (3, 32, 32)),
    "vgg16": ({}, (3, 32, 32)),
    "googlenet": ({}, (3, 32, 32)),
    "densenet": ({}, (3, 32, 32)),
}


def _randomise_batch_norm(model: nn.Module) -> nn.Module:
    # non-trivial statistics, so that folding BatchNorm into the convolutions is really tested
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias, 0, 0.1)
    return model


def _torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


def _initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_zoo_covers_every_model():
    assert set(ZOO) == set(MODELS)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_exports_and_matches_torch(name, tmp_path):
    args, shape = ZOO[name]
    torch.manual_seed(0)
    model = _randomise_batch_norm(MODELS[name](**args))
    path = export_onnx(model, tmp_path / f"{name}.onnx", shape)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = torch.randn(8, *shape)  # exported at batch 2: the batch axis must be dynamic
    got = onnx_logits(onnx_session(path, threads=1), x)
    assert got.shape == (8, 10)
    np.testing.assert_allclose(got, _torch_logits(model, x), rtol=0, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx"]  # no temp file left


def test_export_is_silent_and_leaves_model_in_training_mode(tmp_path):
    model = lenet300_100().train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(model, tmp_path / "m.onnx", (1, 28, 28))
    assert [str(w.message) for w in caught] == []
    assert model.training


def test_pruned_model_exports_its_zeros_and_stays_parametrized(tmp_path):
    torch.manual_seed(0)
    model = lenet300_100()
    prune_magnitude(model, PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.9)))
    keep = get_mask(model.fc1).mask.bool()
    path = export_onnx(model, tmp_path / "pruned.onnx", (1, 28, 28))

    weights = [w for w in _initializers(path).values() if w.shape == tuple(keep.shape)]
    assert len(weights) == 1
    assert np.array_equal(weights[0] != 0, keep.numpy())
    assert np.count_nonzero(weights[0]) == round(0.1 * keep.numel())
    assert not any("parametrizations" in name for name in _initializers(path))
    # the caller's model is untouched: still masked, its dense tensor still under the mask
    assert parametrize.is_parametrized(model.fc1, "weight")
    assert get_mask(model.fc1) is not None
    assert torch.count_nonzero(model.fc1.parametrizations.weight.original) == keep.numel()
    x = torch.randn(8, 1, 28, 28)
    np.testing.assert_allclose(
        onnx_logits(onnx_session(path), x), _torch_logits(model, x), rtol=0, atol=1e-5
    )


def test_weight_and_bias_both_parametrized(tmp_path):
    model = lenet300_100()
    apply_mask(model.fc3, "weight", torch.rand_like(model.fc3.weight) > 0.5)
    apply_mask(model.fc3, "bias", torch.tensor([True, False] * 5))
    path = export_onnx(model, tmp_path / "m.onnx", (1, 28, 28))
    bias = [b for b in _initializers(path).values() if b.shape == (10,)]
    assert len(bias) == 1 and np.all(bias[0][1::2] == 0)
    assert parametrize.is_parametrized(model.fc3, "bias")
    x = torch.randn(4, 1, 28, 28)
    np.testing.assert_allclose(
        onnx_logits(onnx_session(path), x), _torch_logits(model, x), rtol=0, atol=1e-5
    )


class _Grid(nn.Module):
    """A stand-in for a fixed-point parametrization: weights on a 1/64 grid."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.round(weight * 64) / 64


def test_stacked_parametrizations_are_baked_to_their_value(tmp_path):
    torch.manual_seed(0)
    model = lenet300_100()
    apply_mask(model.fc2, "weight", torch.rand_like(model.fc2.weight) > 0.5)
    parametrize.register_parametrization(model.fc2, "weight", _Grid())
    path = export_onnx(model, tmp_path / "m.onnx", (1, 28, 28))
    exported = [w for w in _initializers(path).values() if w.shape == (100, 300)]
    assert len(exported) == 1
    assert np.array_equal(exported[0], model.fc2.weight.detach().numpy())
    assert len(model.fc2.parametrizations.weight) == 2  # both still on the caller's model


def test_fx_graph_module_exports(tmp_path):
    torch.manual_seed(0)
    model = _randomise_batch_norm(resnet20(width=8))
    apply_mask(model.conv1, "weight", torch.rand_like(model.conv1.weight) > 0.3)
    traced = fx.symbolic_trace(model.eval())
    assert isinstance(traced, fx.GraphModule)
    path = export_onnx(traced, tmp_path / "traced.onnx", (3, 32, 32))
    x = torch.randn(8, 3, 32, 32)
    np.testing.assert_allclose(
        onnx_logits(onnx_session(path), x), _torch_logits(model, x), rtol=0, atol=1e-4
    )


class _Histogram(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.histc(x, bins=10)[None]


def test_unsupported_operation_is_an_unsupported_layer_error(tmp_path):
    path = tmp_path / "h.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(UnsupportedLayerError, match="aten::histc"):
        export_onnx(_Histogram(), path, (1, 4, 4))
    assert path.read_bytes() == b"previous"  # a failed export replaces nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.onnx"]


def test_trained_lenet300_agrees_with_torch(digits, tmp_path):
    torch.manual_seed(0)
    model = lenet300_100(input_size=8)
    fit(model, digits, FitConfig(epochs=5, lr=0.05, batch_size=64), progress=False)
    path = export_onnx(model, tmp_path / "lenet.onnx", digits.input_shape)
    result = compare_onnx(model, onnx_session(path, threads=1), digits.loader("test", 128))
    assert isinstance(result, OnnxAgreement)
    assert result.count == len(digits.test)
    assert result.top1_agreement >= 0.999
    assert result.max_abs_diff < 1e-4
    assert result.top1 > 0.9


def test_corrupt_or_missing_file_is_a_corrupt_file_error(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a model" * 50)
    with pytest.raises(CorruptFileError, match="garbage.onnx"):
        onnx_session(garbage)
    good = export_onnx(lenet300_100(), tmp_path / "good.onnx", (1, 28, 28))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="truncated.onnx"):
        onnx_session(truncated)
    with pytest.raises(CorruptFileError, match="missing.onnx"):
        onnx_session(tmp_path / "missing.onnx")


def test_session_threads_are_settable(tmp_path):
    path = export_onnx(lenet300_100(), tmp_path / "m.onnx", (1, 28, 28))
    assert onnx_session(path, threads=2).get_session_options().intra_op_num_threads == 2
    assert onnx_session(path).get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="threads"):
        onnx_session(path, threads=0)
