"""Structural edits: recorded on the model, replayed on a fresh architecture without any graph
analysis, and carried through checkpoints so restructured models reload without pickle."""

import copy
import json

import pytest
import torch
from pydantic import TypeAdapter, ValidationError
from torch import nn

from netshrink.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from netshrink.codec import pack, unpack
from netshrink.edits import (
    MAX_EDITS_PER_MODULE,
    Edit,
    KeepChannels,
    edit_list,
    record_edits,
    structural_edits,
)
from netshrink.errors import ConfigError, CorruptFileError, UnsupportedLayerError
from netshrink.models import ModelSpec, resnet20
from netshrink.prune.filters import PruneFiltersConfig, prune_filters
from netshrink.replay import replay_edits


def _pruned_resnet20():
    torch.manual_seed(3)
    model = resnet20()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.5)
                m.bias.normal_(0, 0.5)
    return prune_filters(model.eval(), PruneFiltersConfig(amount=0.4), (3, 32, 32))


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_replay_on_a_fresh_model_reproduces_the_pruned_shapes():
    pruned = _pruned_resnet20()
    edits = structural_edits(pruned)
    assert len(edits) == 63 and all(isinstance(e, KeepChannels) for e in edits)
    fresh = replay_edits(resnet20(), edits)
    assert _shapes(fresh) == _shapes(pruned)
    assert fresh.conv1.out_channels == pruned.conv1.out_channels == 10
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fresh.eval()(x), pruned(x))
    assert structural_edits(fresh) == edits


def test_checkpoint_round_trip_of_a_pruned_resnet20_is_bit_identical(tmp_path):
    pruned = _pruned_resnet20()
    meta = CheckpointMeta(model=ModelSpec(name="resnet20"), input_shape=(3, 32, 32), num_classes=10)
    stem = save_checkpoint(pruned, tmp_path / "pruned", meta)
    sidecar = json.loads(stem.with_suffix(".json").read_text())
    assert sidecar["edits"][0] == {
        "kind": "keep_channels",
        "module": "conv1",
        "dim": "out",
        "keep": list(structural_edits(pruned)[0].keep),
    }
    loaded, loaded_meta = load_checkpoint(stem)
    assert loaded_meta.edits == structural_edits(pruned) == structural_edits(loaded)
    original, restored = pruned.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded(x), pruned(x))
    # Saved again, the loaded model carries its edits forward.
    again, _ = load_checkpoint(save_checkpoint(loaded, tmp_path / "again", loaded_meta))
    assert torch.equal(again(x), pruned(x))


def test_edits_that_do_not_fit_the_architecture_are_a_corrupt_file(tmp_path):
    pruned = _pruned_resnet20()
    meta = CheckpointMeta(model=ModelSpec(name="resnet20"), input_shape=(3, 32, 32), num_classes=10)
    stem = save_checkpoint(pruned, tmp_path / "pruned", meta)
    sidecar = stem.with_suffix(".json")
    data = json.loads(sidecar.read_text())
    data["edits"][0]["module"] = "conv9"
    sidecar.write_text(json.dumps(data))
    with pytest.raises(CorruptFileError, match="conv9"):
        load_checkpoint(stem)
    data["edits"][0] = {"kind": "rotate", "module": "conv1"}
    sidecar.write_text(json.dumps(data))
    with pytest.raises(CorruptFileError, match="not a netshrink checkpoint"):
        load_checkpoint(stem)


def test_a_bad_edit_list_raises_and_changes_nothing():
    model = resnet20()
    state = copy.deepcopy(model.state_dict())
    good = KeepChannels(module="layer1.0.conv1", dim="out", keep=(0, 1, 2))
    cases = [
        ([good, KeepChannels(module="layer1.0.nope", dim="in", keep=(0,))], ConfigError, "nope"),
        (
            [good, KeepChannels(module="layer1.0.conv1", dim="out", keep=(0, 5))],
            ConfigError,
            "index 5 .* has 3",
        ),  # in range of the original 16, not after the first edit
        (
            [good, KeepChannels(module="layer1.0.conv2", dim="batchnorm", keep=(0,))],
            UnsupportedLayerError,
            "layer1.0.conv2.*not a BatchNorm",
        ),
        (
            [good, KeepChannels(module="fc", dim="depthwise", keep=(0,))],
            UnsupportedLayerError,
            "not a depthwise",
        ),
    ]
    for edits, error, message in cases:
        with pytest.raises(error, match=message):
            replay_edits(model, edits)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        assert structural_edits(model) == []


def test_keep_channels_is_validated_and_the_union_parses():
    for keep in ((), (2, 1), (1, 1), (-1, 2)):
        with pytest.raises(ValidationError):
            KeepChannels(module="conv1", dim="out", keep=keep)
    with pytest.raises(ValidationError):
        KeepChannels(module="conv1", dim="sideways", keep=(0,))
    edit = TypeAdapter(Edit).validate_python(
        {"kind": "keep_channels", "module": "fc", "dim": "in", "keep": [0, 3]}
    )
    assert edit == KeepChannels(module="fc", dim="in", keep=(0, 3))
    with pytest.raises(ValidationError):
        edit.keep = (1,)  # frozen


def test_record_edits_is_plain_visible_state():
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    assert structural_edits(model) == []
    edit = KeepChannels(module="0", dim="out", keep=(1, 2))
    record_edits(model, [edit])
    assert model.structural_edits == [edit]
    structural_edits(model).append(edit)  # a copy: the model's list is not changed through it
    assert len(model.structural_edits) == 1
    assert copy.deepcopy(model).structural_edits == [edit]
    assert "structural_edits" not in model.state_dict()


def test_rounds_of_filter_pruning_leave_one_edit_a_module_and_dimension(tmp_path):
    """Twenty rounds would have been 20+ edits on one module, past what a reader accepts
    (MAX_EDITS_PER_MODULE); merged, the file stays readable and decodes to the same model."""
    torch.manual_seed(0)
    model = resnet20(num_classes=10, in_channels=1, input_size=8)
    for _ in range(20):
        prune_filters(model, PruneFiltersConfig(amount=0.05), (1, 8, 8))
    edits = structural_edits(model)
    keys = [(e.module, e.dim) for e in edits]
    assert len(keys) == len(set(keys)) and len(edits) < 20 * 4
    spec = ModelSpec(name="resnet20")
    path = pack(model, tmp_path / "m.nsk", spec=spec, input_shape=(1, 8, 8), num_classes=10)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(unpack(path)(x), model.eval()(x), atol=1e-5)
    assert max(keys.count(k) for k in keys) <= MAX_EDITS_PER_MODULE


def test_pack_refuses_to_write_a_file_its_reader_would_refuse(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4))
    edit = KeepChannels(module="0", dim="out", keep=(0, 1, 2, 3))
    edit_list(model).extend([edit] * (MAX_EDITS_PER_MODULE + 1))  # bypasses record_edits' merge
    with pytest.raises(ConfigError, match="cannot pack.*allowed for one module"):
        pack(model, tmp_path / "m.nsk")
    assert not (tmp_path / "m.nsk").exists()


def test_a_pool_input_that_would_size_huge_divisors_is_refused():
    # a file's number: the divisors it sizes (one an output) stay within 4096 x 4096
    from netshrink.edits import MAX_POOL_SIDE, ActivationSpec

    assert ActivationSpec(bits=8, frac=4, pool_input=(MAX_POOL_SIDE, 3)).pool_input == (4096, 3)
    for bad in [(MAX_POOL_SIDE + 1, 3), (0, 3), (3,), (3, 3, 3)]:
        with pytest.raises(ValidationError):
            ActivationSpec(bits=8, frac=4, pool_input=bad)
