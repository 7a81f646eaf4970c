"""Batch-norm folding (Jacob et al. 2018): in eval mode a folded model computes what the original
did to float precision, every BatchNorm becomes an nn.Identity recorded as a FoldBatchNorm edit,
a pruning mask keeps its zeros, a weight-shared layer is refused, and a checkpoint of a folded
model rebuilds it exactly."""

import copy

import pytest
import torch
from torch import nn

from netshrink.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from netshrink.edits import FoldBatchNorm, structural_edits
from netshrink.errors import ConfigError, UnsupportedLayerError
from netshrink.mask import get_mask
from netshrink.models import ModelSpec, build_model
from netshrink.prune.magnitude import LayerSparsity, PruneMagnitudeConfig, prune_magnitude
from netshrink.quant import fold_batchnorm
from netshrink.share.scalar import ShareKmeansConfig, share_kmeans

SIZE = 16


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _randomize_batchnorms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Statistics and affine parameters far from the identity, so folding has work to do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g) * 0.5)
    return model


def _model(name: str, **args) -> nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec(name=name, args=args)
    model = build_model(spec, num_classes=10, in_channels=3, input_size=SIZE)
    return _randomize_batchnorms(model).eval()


def _images(n: int = 8, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest difference relative to the output's scale."""
    return float((out - ref).abs().max() / ref.abs().max())


def _batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    return [(_prefix(n) + _conv_of(n), n) for n in names]


def _prefix(name: str) -> str:
    return name.rsplit(".", 1)[0] + "." if "." in name else ""


def _conv_of(bn_name: str) -> str:
    # vgg_small: features.<i> is conv, features.<i+1> its BN; resnet20: convK / bnK, shortcut.0/1
    leaf = bn_name.rsplit(".", 1)[-1]
    if leaf.isdigit():
        return str(int(leaf) - 1)
    return leaf.replace("bn", "conv")


@pytest.mark.parametrize(
    "name, args, batchnorms",
    [("vgg_small", {"width": 0.5}, 6), ("resnet20", {}, 21), ("mobilenet_v2", {"width": 0.5}, 52)],
)
def test_folding_preserves_outputs_in_float(name, args, batchnorms):
    model = _model(name, **args)
    x = _images()
    before = model(x)
    bn_names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bn_names) == batchnorms
    pairs = _batchnorm_pairs(model)
    assert fold_batchnorm(model) is model
    after = model(x)
    scale = before.abs().max()
    assert scale > 0.1
    assert float((after - before).abs().max()) <= 1e-5 * float(scale)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for bn in bn_names:
        assert type(model.get_submodule(bn)) is nn.Identity
    edits = structural_edits(model)
    assert all(isinstance(e, FoldBatchNorm) for e in edits)
    assert [e.bn for e in edits] == bn_names
    for edit in edits:  # each BN went into the layer that feeds it, which gained a bias
        conv = model.get_submodule(edit.conv)
        assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    if name != "mobilenet_v2":  # (its names follow another pattern)
        assert [(e.conv, e.bn) for e in edits] == pairs


def test_folding_is_the_formula_per_channel():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4, eps=1e-3)
    _randomize_batchnorms(bn, seed=3)
    model = nn.Sequential(conv, bn).eval()
    w, b = conv.weight.detach().clone(), conv.bias.detach().clone()
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + 1e-3)
    fold_batchnorm(model)
    assert torch.allclose(model[0].weight, w * scale.reshape(4, 1, 1, 1), rtol=1e-6, atol=0)
    expected_bias = (b - bn.running_mean) * scale + bn.bias.detach()
    assert torch.allclose(model[0].bias, expected_bias, rtol=1e-6, atol=1e-7)
    assert structural_edits(model) == [FoldBatchNorm(conv="0", bn="1")]


def test_batchnorms_that_do_not_follow_a_layer_alone_stay():
    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.pre = nn.BatchNorm2d(3)  # before a convolution: not foldable into it

        def forward(self, x):
            y = self.conv(self.pre(x))
            return self.bn(y) + y  # the conv's output is used twice

    model = _randomize_batchnorms(Branching()).eval()
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    fold_batchnorm(model)
    assert isinstance(model.bn, nn.BatchNorm2d) and isinstance(model.pre, nn.BatchNorm2d)
    assert structural_edits(model) == []
    assert torch.equal(model(x), before)


def test_a_masked_conv_keeps_exactly_its_zeros():
    model = _model("vgg_small", width=0.5)
    prune_magnitude(model, PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.7)))
    x = _images()
    before = model(x)
    zeros = {n: (m.weight == 0) for n, m in model.named_modules() if get_mask(m) is not None}
    assert len(zeros) == 8 and all(0.69 < float(z.float().mean()) < 0.71 for z in zeros.values())
    fold_batchnorm(model)
    after = model(x)
    assert _error(after, before) <= 1e-5
    for name, was_zero in zeros.items():
        module = model.get_submodule(name)
        assert get_mask(module) is not None  # still a pruned layer, retrainable as one
        assert torch.equal(module.weight == 0, was_zero), name


def test_a_pruned_bias_folds_to_the_same_outputs_or_is_refused():
    # The folded bias is (b - mean) * g / sqrt(var + eps) + beta: where b was pruned, the BN's
    # shift is still there, so the bias's mask must not zero it again.
    torch.manual_seed(0)
    model = _randomize_batchnorms(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))).eval()
    config = PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.5), include_bias=True)
    prune_magnitude(model, config)
    assert int((model[0].bias == 0).sum()) == 4
    x = torch.randn(4, 3, 8, 8)
    before = model(x)
    try:
        fold_batchnorm(model)
    except UnsupportedLayerError:
        assert isinstance(model[1], nn.BatchNorm2d) and torch.equal(model(x), before)
        return
    after = model(x)
    assert _error(after, before) <= 1e-5


def test_a_weight_shared_conv_is_refused_and_nothing_changes():
    model = _model("vgg_small", width=0.5)
    share_kmeans(model, ShareKmeansConfig(bits=3), layers=["features.3"], progress=False)
    x = _images()
    before = model(x)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedLayerError, match="fold batch norm before sharing"):
        fold_batchnorm(model)
    # refused before any change: the first conv + BN pair (foldable) is not folded either, so the
    # model and its recorded edits still agree
    assert structural_edits(model) == []
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6
    assert model.state_dict().keys() == state.keys()
    assert torch.equal(model(x), before)


def test_a_weight_shared_first_conv_is_refused():
    model = _model("vgg_small", width=0.5)
    share_kmeans(model, ShareKmeansConfig(bits=3), layers=["features.0"], progress=False)
    with pytest.raises(UnsupportedLayerError, match="weight-shared"):
        fold_batchnorm(model)
    assert isinstance(model.features[1], nn.BatchNorm2d) and structural_edits(model) == []


@pytest.mark.parametrize("name, args", [("vgg_small", {}), ("resnet20", {"width": 6})])
def test_a_checkpoint_of_a_folded_model_reproduces_it_exactly(tmp_path, name, args):
    model = fold_batchnorm(_model(name, **args))
    x = _images()
    spec = ModelSpec(name=name, args=args)
    meta = CheckpointMeta(model=spec, input_shape=(3, SIZE, SIZE), num_classes=10)
    loaded, loaded_meta = load_checkpoint(save_checkpoint(model, tmp_path / "folded", meta))
    assert loaded_meta.edits == structural_edits(model) == structural_edits(loaded)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    assert torch.equal(loaded(x), model(x))
    assert loaded.state_dict().keys() == model.state_dict().keys()


def test_a_pruned_folded_model_round_trips_through_a_checkpoint(tmp_path):
    model = _model("resnet20", width=4)
    prune_magnitude(model, PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.5)))
    fold_batchnorm(model)
    spec = ModelSpec(name="resnet20", args={"width": 4})
    meta = CheckpointMeta(model=spec, input_shape=(3, SIZE, SIZE), num_classes=10)
    loaded, _ = load_checkpoint(save_checkpoint(model, tmp_path / "pruned", meta))
    x = _images()
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.layer2[0].conv1.weight == 0, model.layer2[0].conv1.weight == 0)


def test_a_safetensors_file_whose_header_length_starts_with_0x80_is_not_a_pickle(tmp_path):
    # Found checkpointing a folded resnet20(width=8) at 16x16 (header 3712 bytes = 0x0e80): a
    # safetensors file starts with its header length, little-endian, and the checkpoint reader
    # takes a first byte 0x80 for a pickle's PROTO opcode. Headers are padded to 8 bytes, so one
    # file in 32 has that byte. Vary a tensor name until the header length hits 0x..80.
    from safetensors.torch import save_file

    from netshrink.files import read_safetensors

    tensors = {"conv.weight": torch.arange(6.0).reshape(2, 3)}
    for n in range(1, 257):
        tensors = {"w" * n: torch.arange(6.0).reshape(2, 3)}
        save_file(tensors, str(tmp_path / "t.safetensors"), metadata={"format": "x"})
        if (tmp_path / "t.safetensors").read_bytes()[0] == 0x80:
            break
    assert (tmp_path / "t.safetensors").read_bytes()[0] == 0x80
    loaded = read_safetensors(tmp_path / "t.safetensors")
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_fold_batchnorm_is_a_method_a_recipe_can_name():
    from netshrink.methods import METHOD_NAMES, parse_stage

    assert "fold_batchnorm" in METHOD_NAMES
    stage = parse_stage({"method": "fold_batchnorm"})
    with pytest.raises(ConfigError, match="takes no layers"):
        parse_stage({"method": "fold_batchnorm", "layers": ["conv1"]})
    model, x = _model("vgg_small", width=0.25), _images()
    reference = model(x)
    folded = stage.apply(model, ctx=None)  # folding needs no data
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert _error(folded(x), reference) < 1e-4
    assert {type(e) for e in structural_edits(folded)} == {FoldBatchNorm}


def test_a_sharing_stage_folds_first_when_fixed_point_follows():
    from netshrink.methods import parse_stage, plan_stages

    share, quant = parse_stage({"method": "share_kmeans"}), parse_stage({"method": "quantize"})
    kept = parse_stage({"method": "share_kmeans", "fold_batchnorm": False})
    assert [getattr(s, "fold_batchnorm", None) for s in plan_stages([share, quant])] == [True, None]
    assert plan_stages([share])[0].fold_batchnorm is False  # nothing folds after it
    assert plan_stages([kept, quant])[0].fold_batchnorm is False  # asked not to
