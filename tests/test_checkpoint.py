import json

import pytest
import torch

from netshrink.checkpoint import (
    CheckpointMeta,
    checkpoint_paths,
    load_checkpoint,
    save_checkpoint,
)
from netshrink.data import DataConfig
from netshrink.errors import CorruptFileError, LimitError
from netshrink.models import ModelSpec, build_model, lenet300_100


def _saved(tmp_path, name="vgg_small", args=None):
    spec = ModelSpec(name=name, args=args or {})
    torch.manual_seed(1)
    model = build_model(spec)
    with torch.no_grad():  # non-trivial BN statistics, so buffers are checked too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
    meta = CheckpointMeta(
        model=spec,
        input_shape=(1, 28, 28),
        num_classes=10,
        data=DataConfig(source="digits", image_size=28),
        metrics={"test_top1": 0.5},
    )
    return model, save_checkpoint(model, tmp_path / "ckpt", meta), meta


def test_round_trip_is_bit_identical(tmp_path):
    model, stem, meta = _saved(tmp_path, args={"width": 0.5})
    loaded, loaded_meta = load_checkpoint(stem)
    assert loaded_meta == meta
    original = model.state_dict()
    restored = loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert original[key].dtype == restored[key].dtype
        assert torch.equal(original[key], restored[key]), key
    # Either file, or the stem, names the checkpoint.
    load_checkpoint(stem.with_suffix(".json"))
    load_checkpoint(str(stem) + ".safetensors")


def test_a_pickle_is_refused(tmp_path):
    model, stem, _ = _saved(tmp_path)
    weights = stem.with_name(stem.name + ".safetensors")
    torch.save(model.state_dict(), weights)
    with pytest.raises(CorruptFileError, match="never unpickles"):
        load_checkpoint(stem)
    import pickle

    weights.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(CorruptFileError, match="never unpickles"):
        load_checkpoint(stem)


def test_a_safetensors_header_length_starting_with_0x80_is_not_a_pickle(tmp_path):
    from safetensors.torch import save_file

    from netshrink.files import read_safetensors

    # Pad the tensor name until the little-endian header length's first byte is 0x80.
    for pad in range(300):
        path = tmp_path / f"{pad}.safetensors"
        save_file({"w" + "x" * pad: torch.ones(3)}, str(path))
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length whose low byte is 0x80")
    assert torch.equal(read_safetensors(path)["w" + "x" * pad], torch.ones(3))


@pytest.mark.parametrize("damage", ["truncate", "header", "empty"])
def test_damaged_weights_raise_corrupt_file_error(tmp_path, damage):
    _, stem, _ = _saved(tmp_path)
    weights = stem.with_name(stem.name + ".safetensors")
    data = weights.read_bytes()
    damaged = {
        "truncate": data[: len(data) // 2],
        "header": b"\xff" * 16 + data[16:],
        "empty": b"",
    }[damage]
    weights.write_bytes(damaged)
    with pytest.raises(CorruptFileError, match="ckpt.safetensors"):
        load_checkpoint(stem)


def test_bad_sidecar_or_mismatched_architecture(tmp_path):
    _, stem, _ = _saved(tmp_path)
    sidecar = stem.with_name(stem.name + ".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text("{not json")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_checkpoint(stem)
    sidecar.write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(CorruptFileError, match="not a netshrink checkpoint"):
        load_checkpoint(stem)
    meta["model"]["args"] = {"width": 0.5}
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CorruptFileError, match="do not fit the architecture"):
        load_checkpoint(stem)
    with pytest.raises(CorruptFileError, match="no such"):
        load_checkpoint(tmp_path / "missing")


def test_parametrized_model_is_stored_as_what_it_computes(tmp_path):
    from safetensors.torch import load_file
    from torch.nn.utils import parametrize

    class Mask(torch.nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, w):
            return w * self.mask

    spec = ModelSpec(name="lenet300_100")
    model = build_model(spec)
    mask = (torch.rand_like(model.fc1.weight) > 0.9).float()
    parametrize.register_parametrization(model.fc1, "weight", Mask(mask))
    meta = CheckpointMeta(model=spec, input_shape=(1, 28, 28), num_classes=10)
    stem = save_checkpoint(model, tmp_path / "pruned", meta)
    stored = load_file(str(stem) + ".safetensors")
    assert sorted(stored) == sorted(build_model(spec).state_dict())  # no original, no mask
    loaded, _ = load_checkpoint(stem)
    assert torch.equal(loaded.fc1.weight, model.fc1.weight)
    assert int((loaded.fc1.weight != 0).sum()) == int(mask.sum())
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))


def test_a_sidecar_is_bounded_like_a_header(tmp_path):
    """num_classes, input_shape, the edit count and the sidecar's size are checked before any
    model is built from them."""
    meta = CheckpointMeta(
        model=ModelSpec(name="lenet300_100"), input_shape=(1, 8, 8), num_classes=10
    )
    stem = save_checkpoint(
        lenet300_100(num_classes=10, in_channels=1, input_size=8), tmp_path / "c", meta
    )
    sidecar = checkpoint_paths(stem)[1]
    good = json.loads(sidecar.read_text())
    edit = {"kind": "factor", "module": "fc1", "rank": 1}
    for field, value in (
        ("num_classes", 1 << 40),
        ("input_shape", [1, 1 << 30, 1 << 30]),
        ("edits", [edit] * 20_000),
    ):
        sidecar.write_text(json.dumps({**good, field: value}))
        with pytest.raises(CorruptFileError, match=field):
            load_checkpoint(stem)
    sidecar.write_text(json.dumps({**good, "metrics": {"x": 0.0}}) + " " * (5 << 20))
    with pytest.raises(LimitError, match="too large"):
        load_checkpoint(stem)
