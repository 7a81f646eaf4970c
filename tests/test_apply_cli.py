"""`netshrink apply CHECKPOINT METHOD --set PATH=VALUE`: any method on a checkpoint, its fields
given as in a recipe stage; a mistake is one line naming the field."""

import pytest
import torch

from helpers import train_cli_baseline
from netshrink.checkpoint import load_checkpoint
from netshrink.cli import main


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return train_cli_baseline(tmp_path_factory.mktemp("apply_cli") / "base", epochs=2)


def test_apply_runs_a_method_with_the_fields_it_sets(base, tmp_path, capsys):
    out = tmp_path / "k2"
    argv = ["apply", str(base), "share_kmeans", "--set", "config.bits=2"]
    assert main(argv + ["--layers", "fc1,fc2", "--no-latency", "--out", str(out)]) == 0
    assert "share_kmeans" in capsys.readouterr().out
    model, _ = load_checkpoint(out)
    assert torch.unique(model.fc1.weight).numel() <= 4
    assert torch.unique(model.fc2.weight).numel() <= 4
    assert torch.unique(model.fc3.weight).numel() > 4  # not in --layers


@pytest.mark.parametrize(
    "settings, words",
    [
        (["config.bits=0"], "config.bits"),  # out of range: the field is named
        (["config.nope=1"], "config.nope"),  # unknown field
        (["config.bits"], "PATH=VALUE"),  # no value
    ],
)
def test_apply_mistakes_are_one_line(base, tmp_path, capsys, settings, words):
    argv = ["apply", str(base), "share_kmeans", *(f"--set={s}" for s in settings)]
    assert main(argv + ["--no-latency", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("netshrink: error:") and words in err
    assert len(err.strip().splitlines()) == 1


def test_sharing_survives_the_checkpoint_so_quantize_refuses_to_fold_it(tmp_path, capsys):
    """A conv followed by batch norm, shared by `netshrink share`: its checkpoint says which
    layers are shared, and `netshrink quantize` refuses to fold batch norm into them (it would
    scale each channel's shared values apart) rather than silently undo the sharing."""
    from netshrink.checkpoint import CheckpointMeta, save_checkpoint
    from netshrink.models import ModelSpec, build_model

    spec = ModelSpec.parse("vgg_small", '{"width": 0.125}')
    torch.manual_seed(0)
    model = build_model(spec, num_classes=10, in_channels=1, input_size=8)
    meta = CheckpointMeta(
        model=spec, input_shape=(1, 8, 8), num_classes=10, data={"source": "digits"}
    )
    base = save_checkpoint(model, tmp_path / "bn", meta)
    shared = tmp_path / "shared"
    argv = ["share", str(base), "--method", "kmeans", "--bits", "3", "--no-latency"]
    assert main(argv + ["--out", str(shared)]) == 0
    _, meta = load_checkpoint(shared)
    assert meta.shared and set(meta.shared) <= {name for name, _ in model.named_modules()}
    capsys.readouterr()
    assert main(["quantize", str(shared), "--no-latency", "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert "fold batch norm before sharing" in err and len(err.strip().splitlines()) == 1

    folded = tmp_path / "folded"  # what the error says: fold first, then share, then quantize
    assert main([*argv, "--fold-batchnorm", "--out", str(folded)]) == 0
    assert main(["quantize", str(folded), "--no-latency", "--out", str(tmp_path / "q")]) == 0
    quantized, _ = load_checkpoint(tmp_path / "q")
    convs = [m for m in quantized.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(torch.unique(m.weight).numel() <= 8 for m in convs)


def test_a_sidecar_naming_no_layer_as_shared_is_a_corrupt_file():
    from netshrink.checkpoint import restore_shared
    from netshrink.errors import CorruptFileError
    from netshrink.models import ModelSpec, build_model

    model = build_model(
        ModelSpec.parse("lenet300_100"), num_classes=10, in_channels=1, input_size=8
    )
    with pytest.raises(CorruptFileError, match="'relu'"):
        restore_shared(model, ["relu"])


def test_a_vector_codebook_survives_a_command_on_other_layers(tmp_path):
    """A pruned fc2, product quantized, in a checkpoint: a command on fc3 gets its
    VectorCodebook back (no mask stacked on it from its zeros) and saves it again."""
    from netshrink.checkpoint import CheckpointMeta, save_checkpoint
    from netshrink.models import ModelSpec, lenet300_100
    from netshrink.share import share_pq
    from netshrink.share.codebooks import VectorCodebook

    torch.manual_seed(0)
    model = lenet300_100(num_classes=10, in_channels=1, input_size=8)
    with torch.no_grad():
        model.fc2.weight[:, ::2] = 0
    share_pq(model, {"k": 4, "segment": 4}, layers=["fc2"], progress=False)
    meta = CheckpointMeta(
        model=ModelSpec(name="lenet300_100"), input_shape=(1, 8, 8), num_classes=10,
        data={"source": "digits"},
    )  # fmt: skip
    base = save_checkpoint(model, tmp_path / "pq", meta)
    argv = ["apply", str(base), "share_pq", "--set", "config.k=4", "--layers", "fc3"]
    assert main(argv + ["--no-latency", "--out", str(tmp_path / "more")]) == 0
    loaded, meta = load_checkpoint(tmp_path / "more")
    assert [v.layer for v in meta.vector] == ["fc2", "fc3"]
    assert [type(p) for p in loaded.fc2.parametrizations.weight] == [VectorCodebook]
    assert torch.equal(loaded.fc2.weight, model.fc2.weight)
