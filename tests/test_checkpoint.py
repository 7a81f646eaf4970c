import json
from pathlib import Path

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


# ---- vector codebooks (product / residual quantization) ---------------------------------------

SMALL_MLP = ModelSpec(name="lenet300_100")
SMALL_META = CheckpointMeta(model=SMALL_MLP, input_shape=(1, 8, 8), num_classes=10)


def _vector_quantized(method: str):
    """LeNet-300-100 for 8x8 inputs with fc1 and fc2 product or residual quantized (fc2 half
    pruned first, so its codebook carries a mask with zeros)."""
    from netshrink.share import share_pq, share_rq

    torch.manual_seed(2)
    model = lenet300_100(num_classes=10, in_channels=1, input_size=8)
    with torch.no_grad():
        model.fc2.weight[:, ::2] = 0
    if method == "pq":
        share_pq(model, {"k": 8, "segment": 4, "axis": "columns"}, layers=["fc1", "fc2"],
                 progress=False)  # fmt: skip
    else:
        share_rq(model, {"stages": 2, "k": 4, "segment": 4}, layers=["fc1", "fc2"], progress=False)
    return model.eval()


@pytest.mark.parametrize("method", ["pq", "rq"])
def test_a_vector_codebook_survives_a_checkpoint(tmp_path, method):
    from netshrink.codec import packed_bytes
    from netshrink.share.codebooks import VectorCodebook

    model = _vector_quantized(method)
    stem = save_checkpoint(model, tmp_path / "vq", SMALL_META)
    loaded, meta = load_checkpoint(stem)
    assert meta.version == 2 and [v.layer for v in meta.vector] == ["fc1", "fc2"]
    for name in ("fc1", "fc2"):
        before = getattr(model, name).parametrizations.weight
        after = getattr(loaded, name).parametrizations.weight
        assert [type(p) for p in after] == [VectorCodebook]
        assert after[0].axis == before[0].axis
        for tensor in ("codebooks", "indices", "mask"):
            assert torch.equal(getattr(after[0], tensor), getattr(before[0], tensor)), tensor
        assert torch.equal(getattr(loaded, name).weight, getattr(model, name).weight)
    assert not loaded.fc2.parametrizations.weight[0].mask.all()  # the pruned half stays masked
    assert packed_bytes(loaded, meta=SMALL_META) == packed_bytes(model, meta=SMALL_META)
    # and again: a loaded codebook is saved as it was
    again = save_checkpoint(loaded, tmp_path / "again", meta)
    for suffix in (".safetensors", ".json"):
        assert Path(str(again) + suffix).read_bytes() == Path(str(stem) + suffix).read_bytes()


def test_a_checkpoint_without_vector_codebooks_is_written_as_before(tmp_path):
    """Version 1 and no `vector` key: the sidecar and tensors of a model without a
    VectorCodebook are what they always were."""
    from safetensors.torch import load_file

    model = lenet300_100(num_classes=10, in_channels=1, input_size=8)
    stem = save_checkpoint(model, tmp_path / "plain", SMALL_META)
    sidecar = json.loads(checkpoint_paths(stem)[1].read_text())
    assert sidecar["version"] == 1 and "vector" not in sidecar
    assert sorted(load_file(str(stem) + ".safetensors")) == sorted(model.state_dict())


def test_an_old_checkpoint_of_a_vector_model_loads_its_values(tmp_path):
    """A checkpoint written before vector codebooks were stored: its values, no codebook."""
    from safetensors.torch import load_file, save_file

    model = _vector_quantized("pq")
    stem = save_checkpoint(model, tmp_path / "vq", SMALL_META)
    weights, sidecar = checkpoint_paths(stem)
    old = {k: v for k, v in load_file(str(weights)).items() if "parametrizations" not in k}
    save_file(old, str(weights), metadata={"format": "netshrink-checkpoint"})
    fields = json.loads(sidecar.read_text())
    del fields["vector"]
    sidecar.write_text(json.dumps({**fields, "version": 1}))
    loaded, meta = load_checkpoint(stem)
    assert not meta.vector and not hasattr(loaded.fc1, "parametrizations")
    assert torch.equal(loaded.fc1.weight, model.fc1.weight)


def _forged(tmp_path, tensors=None, fields=None):
    """A saved PQ checkpoint whose tensors (name -> function of the stored tensor, or None to
    drop it) and sidecar fields are replaced."""
    from safetensors.torch import load_file, save_file

    stem = save_checkpoint(_vector_quantized("pq"), tmp_path / "forged", SMALL_META)
    weights, sidecar = checkpoint_paths(stem)
    stored = load_file(str(weights))
    for name, change in (tensors or {}).items():
        if change is None:
            del stored[name]
        else:
            stored[name] = change(stored[name]).contiguous()
    save_file(stored, str(weights), metadata={"format": "netshrink-checkpoint"})
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **(fields or {})}))
    return stem


BOOKS, CODES, MASK = (
    f"fc1.parametrizations.weight.0.{n}" for n in ("codebooks", "indices", "mask")
)


FC2 = {"layer": "fc2", "axis": "columns"}


def _past_k(codes):
    codes = codes.clone()
    codes[0, 0, 0] = 8  # k = 8: codes run 0..7
    return codes


def _other_book(books):
    books = books.clone()
    books[0, 0, 0, 0] += 1
    return books


@pytest.mark.parametrize(
    ("tensors", "fields", "match"),
    [
        ({BOOKS: lambda b: b[:, :-1]}, None, "shapes"),  # a segment short
        ({BOOKS: lambda b: b[..., :3]}, None, "shapes"),  # segments that do not cover a column
        ({BOOKS: lambda b: b[0]}, None, "rank"),
        ({BOOKS: lambda b: b.to(torch.int32)}, None, "dtype"),
        ({CODES: _past_k}, None, "outside its 8 codewords"),
        ({CODES: lambda c: c - 1}, None, "outside"),
        ({CODES: lambda c: c.to(torch.int32)}, None, "dtype"),
        ({CODES: lambda c: c[:, :, :-1]}, None, "shapes"),
        ({MASK: lambda m: m.float()}, None, "dtype"),
        ({MASK: lambda m: m.T}, None, "shapes"),
        ({BOOKS: _other_book}, None, "do not decode to its weight"),
        ({MASK: lambda m: ~m}, None, "do not decode to its weight"),
        ({BOOKS: None}, None, "lacks fc1.parametrizations.weight.0.codebooks"),
        ({BOOKS: lambda b: b.expand(17, -1, -1, -1)}, None, "shapes"),  # 17 stages
        (None, {"vector": [{"layer": "fc1", "axis": "rows"}, FC2]}, "shapes"),
        (None, {"vector": [FC2]}, "not part of the model"),  # fc1's tensors unlisted
        (None, {"vector": [{"layer": "relu1", "axis": "columns"}]}, "lacks relu1"),
        (None, {"vector": []}, "version 2"),
        (None, {"version": 1}, "version 2"),
        (None, {"vector": [{"layer": "fc1", "axis": "columns"}] * 2}, "twice"),
        (None, {"vector": [{"layer": "fc1", "axis": "diagonal"}]}, "axis"),
    ],
)
def test_a_forged_vector_codebook_is_refused(tmp_path, tensors, fields, match):
    stem = _forged(tmp_path, tensors, fields)
    with pytest.raises(CorruptFileError, match=match):
        load_checkpoint(stem)


def test_vector_tensors_for_a_layer_without_a_plain_weight_are_refused(tmp_path):
    """fc2's tensors listed as a module's that has no weight, or not listed at all."""
    keys = [f"fc2.parametrizations.weight.0.{n}" for n in ("codebooks", "indices", "mask")]
    renamed = {k: k.replace("fc2.", "relu1.") for k in keys}
    from safetensors.torch import load_file, save_file

    stem = save_checkpoint(_vector_quantized("pq"), tmp_path / "c", SMALL_META)
    weights, sidecar = checkpoint_paths(stem)
    stored = load_file(str(weights))
    save_file({renamed.get(k, k): v for k, v in stored.items()}, str(weights))
    fields = json.loads(sidecar.read_text())
    fields["vector"][1]["layer"] = "relu1"
    sidecar.write_text(json.dumps(fields))
    with pytest.raises(CorruptFileError, match="not a plain layer weight"):
        load_checkpoint(stem)
    fields["vector"] = fields["vector"][:1]
    sidecar.write_text(json.dumps(fields))
    with pytest.raises(CorruptFileError, match="not part of the model"):
        load_checkpoint(stem)


def test_vector_stage_bound_matches_the_file_format():
    from netshrink.checkpoint import MAX_VECTOR_STAGES
    from netshrink.codec.shared import MAX_STAGES

    assert MAX_VECTOR_STAGES == MAX_STAGES
