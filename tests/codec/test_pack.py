"""pack -> unpack: every zoo model computes exactly what it computed, pruned and filter-pruned
models included; the bytes are deterministic; arbitrary modules and import paths are handled as
the format promises."""

import sys

import pytest
import torch
from torch import nn

from netshrink.checkpoint import CheckpointMeta
from netshrink.codec import PackConfig, load_packed, pack, summarize, unpack
from netshrink.edits import structural_edits
from netshrink.errors import ConfigError
from netshrink.mask import get_mask
from netshrink.models import ModelSpec, build_model, resnet20
from netshrink.prune import (
    PruneFiltersConfig,
    PruneMagnitudeConfig,
    StdThreshold,
    prune_filters,
    prune_magnitude,
)

CIFAR, MNIST = (3, 32, 32), (1, 28, 28)
ZOO = {
    "lenet300_100": ({}, MNIST),
    "lenet5": ({}, MNIST),
    "lenet5_caffe": ({}, MNIST),
    "vgg_small": ({"width": 0.5}, MNIST),
    "resnet20": ({}, CIFAR),
    "mobilenet_v2": ({"width": 0.5}, CIFAR),
}


def _built(name: str, args: dict, shape) -> tuple[nn.Module, ModelSpec]:
    torch.manual_seed(0)
    spec = ModelSpec(name=name, args=args)
    model = build_model(spec, num_classes=10, in_channels=shape[0], input_size=shape[1])
    with torch.no_grad():  # non-trivial BatchNorm statistics, so buffers are checked too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval(), spec


def _same_outputs(a: nn.Module, b: nn.Module, shape) -> bool:
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_models_round_trip_exactly(name, tmp_path):
    args, shape = ZOO[name]
    model, spec = _built(name, args, shape)
    path = pack(model, tmp_path / "m.nsk", spec=spec, input_shape=shape, num_classes=10)
    restored = unpack(path)
    assert not restored.training
    assert _same_outputs(model, restored, shape)
    original = model.state_dict()
    assert all(torch.equal(original[k], v) for k, v in restored.state_dict().items())


def test_pruned_model_round_trips_and_is_small(tmp_path):
    model, spec = _built("lenet300_100", {}, MNIST)
    prune_magnitude(model, PruneMagnitudeConfig(threshold=StdThreshold(ratio=1.5)))
    path = pack(model, tmp_path / "p.nsk", spec=spec, input_shape=MNIST, num_classes=10)
    assert _same_outputs(model, unpack(path), MNIST)
    plain = unpack(path, bake=True)
    assert get_mask(plain.fc1) is None
    masked = unpack(path)
    assert torch.equal(get_mask(masked.fc1).mask.bool(), get_mask(model.fc1).mask.bool())
    # ~13% of fc1 kept: fp32 values plus ~4.2-bit relative indices, far below 32 bits a weight
    summary = summarize(path)
    fc1 = next(t for t in summary.tensors if t.name == "fc1.weight")
    assert fc1.encoding == "sparse b=5" and fc1.bits_per_weight < 6
    assert summary.size < summary.dense_bytes / 5


def test_filter_pruned_resnet20_round_trips_with_its_edits(tmp_path):
    model, spec = _built("resnet20", {}, CIFAR)
    prune_filters(model, PruneFiltersConfig(amount=0.3), CIFAR)
    edits = structural_edits(model)
    assert edits
    path = pack(model, tmp_path / "f.nsk", spec=spec, input_shape=CIFAR, num_classes=10)
    restored = unpack(path)
    assert structural_edits(restored) == edits
    assert _same_outputs(model, restored, CIFAR)
    # model= overrides the architecture; the edits are still replayed on it
    fresh = unpack(path, model=resnet20())
    assert _same_outputs(model, fresh, CIFAR)
    with pytest.raises(ConfigError, match="freshly built"):
        other = resnet20()
        prune_filters(other, PruneFiltersConfig(amount=0.5), CIFAR)
        unpack(path, model=other)


def test_two_packs_give_identical_bytes(tmp_path):
    model, spec = _built("lenet5", {}, MNIST)
    prune_magnitude(model, PruneMagnitudeConfig(threshold=StdThreshold(ratio=1.0)))
    a = pack(model, tmp_path / "a.nsk", spec=spec, input_shape=MNIST, num_classes=10)
    b = pack(model, tmp_path / "b.nsk", spec=spec, input_shape=MNIST, num_classes=10)
    assert a.read_bytes() == b.read_bytes()


def test_header_keeps_meta_measurement_and_options(tmp_path):
    model, spec = _built("lenet5", {}, MNIST)
    meta = CheckpointMeta(model=spec, input_shape=MNIST, num_classes=10, metrics={"test_top1": 0.9})
    path = pack(
        model,
        tmp_path / "m.nsk",
        PackConfig(index_bits="best", float16=True),
        meta=meta,
        measurement={"stage": "baseline", "top1": 0.9, "size_bytes": 123},
    )
    restored, header = load_packed(path)
    assert header.model == spec and header.input_shape == MNIST and header.num_classes == 10
    assert header.metrics == {"test_top1": 0.9} and header.measurement["stage"] == "baseline"
    assert _outputs_close(model, restored)


def _outputs_close(a, b) -> bool:
    x = torch.randn(2, *MNIST)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-2)


def test_an_arbitrary_module_needs_model_to_unpack(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    path = pack(model, tmp_path / "any.nsk")
    with pytest.raises(ConfigError, match="model="):
        unpack(path)
    fresh = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    restored = unpack(path, model=fresh)
    assert restored is fresh and torch.equal(restored[0].weight, model[0].weight)
    with pytest.raises(ConfigError, match="do not fit"):
        unpack(path, model=nn.Linear(6, 4))


FACTORY = """
from torch import nn
IMPORTED = True
def make(width=4, num_classes=10):
    return nn.Linear(width, num_classes)
"""


def test_an_import_path_is_built_only_when_allowed(tmp_path, monkeypatch):
    (tmp_path / "nsk_codec_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "nsk_codec_factory", raising=False)
    model = nn.Linear(4, 3)
    spec = ModelSpec(name="nsk_codec_factory:make", args={"width": 4})
    path = pack(model, tmp_path / "i.nsk", spec=spec, num_classes=3)
    # Only the exact factory is trusted: not True, not its module or package, not a sibling.
    refusals = ((), ["other_pkg:make"], ["nsk_codec_factory:other"], True, ["nsk_codec_factory"])
    for refused in refusals:
        with pytest.raises(ConfigError, match="allow"):
            unpack(path, allow_import=refused)
    assert "nsk_codec_factory" not in sys.modules  # refused before anything was imported
    restored = unpack(path, allow_import=["nsk_codec_factory:make"])
    assert torch.equal(restored.weight, model.weight)


def test_shared_and_factored_models_round_trip(tmp_path):
    """What netshrink.share attaches (a k-means codebook; SVD factors, a structural edit) is
    stored as the values the forward pass computes and rebuilt exactly."""
    share = pytest.importorskip("netshrink.share")
    model, spec = _built("lenet300_100", {}, MNIST)
    prune_magnitude(model, PruneMagnitudeConfig(threshold=StdThreshold(ratio=1.0)))
    share.share_kmeans(model, share.ShareKmeansConfig(bits=5), layers=["fc1"], progress=False)
    share.factor_svd(model, share.FactorSvdConfig(rank=8), layers=["fc2"], progress=False)
    path = pack(model, tmp_path / "s.nsk", spec=spec, input_shape=MNIST, num_classes=10)
    restored = unpack(path)
    assert _same_outputs(model, restored, MNIST)
    fc1 = next(t for t in summarize(path).tensors if t.name == "fc1.weight")
    assert "k=" in fc1.encoding and fc1.bits_per_weight < 4  # 32 shared values and the zeros


def test_shared_model_comes_back_with_its_codebooks(tmp_path):
    from netshrink.share import ScalarCodebook, ShareKmeansConfig, share_kmeans

    model, spec = _built("lenet300_100", {}, MNIST)
    prune_magnitude(model, PruneMagnitudeConfig(threshold=StdThreshold(ratio=1.0)))
    share_kmeans(model, ShareKmeansConfig(bits=4), progress=False)
    path = pack(model, tmp_path / "s.nsk", spec=spec, input_shape=MNIST, num_classes=10)
    restored = unpack(path)
    book = restored.fc1.parametrizations.weight[0]
    assert isinstance(book, ScalarCodebook) and book.centroids.numel() <= 16
    weight = model.fc1.weight.detach()
    assert torch.equal(book.centroids.detach(), torch.unique(weight[weight != 0]))
    assert torch.equal(book.mask.bool(), model.fc1.weight.detach() != 0)
    assert _same_outputs(model, restored, MNIST)
    assert not restored.fc1.parametrizations.weight.original.requires_grad
