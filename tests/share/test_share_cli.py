"""`netshrink share` end to end on a digits checkpoint: each method writes a checkpoint that
loads, prints the per-layer storage table, and user mistakes are one-line ConfigErrors."""

import pytest
import torch

from helpers import train_cli_baseline
from netshrink.checkpoint import load_checkpoint
from netshrink.cli import build_parser
from netshrink.cli.share import build_share
from netshrink.errors import ConfigError


def share(argv):
    """Run `netshrink share ARGV` through the sub-command that share.cli registers."""
    args = build_parser().parse_args(["share", *argv])
    args.run(args)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return train_cli_baseline(tmp_path_factory.mktemp("share_cli") / "base", epochs=3)


def test_kmeans_with_bits_by_type_and_layer_and_finetuning(base, tmp_path, capsys):
    out = tmp_path / "km"
    share(
        [
            str(base),
            "--method",
            "kmeans",
            "--bits",
            "fc=3,fc3=4",
            "--finetune-epochs",
            "1",
            "--out",
            str(out),
            "--no-latency",
        ]
    )
    text = capsys.readouterr().out
    assert "shared layers" in text and "kmeans" in text and "shared (kmeans)" in text
    model, meta = load_checkpoint(out)
    for name, k in (("fc1", 8), ("fc2", 8), ("fc3", 16)):
        assert torch.unique(getattr(model, name).weight).numel() <= k
    assert meta.fit == load_checkpoint(base)[1].fit  # the training it came from, not the tuning
    assert 0 < meta.metrics["test_top1"] <= 1


def test_svd_and_pq_write_loadable_checkpoints(base, tmp_path):
    share(
        [
            str(base),
            "--method",
            "svd",
            "--energy",
            "0.9",
            "--out",
            str(tmp_path / "svd"),
            "--no-latency",
        ]
    )
    model, meta = load_checkpoint(tmp_path / "svd")
    assert [e.kind for e in meta.edits] == ["factor"] * 3
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    share(
        [
            str(base),
            "--method",
            "pq",
            "--k",
            "4",
            "--segment",
            "2",
            "--axis",
            "columns",
            "--layers",
            "fc2",
            "--out",
            str(tmp_path / "pq"),
            "--no-latency",
        ]
    )
    model, _ = load_checkpoint(tmp_path / "pq")
    assert torch.unique(model.fc2.weight[:2].T, dim=0).shape[0] <= 4


def test_mistakes_are_config_errors(base, tmp_path):
    with pytest.raises(ConfigError, match="exactly one of rank, ratio or energy"):
        share([str(base), "--method", "svd", "--out", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match="--k"):
        share([str(base), "--method", "rq", "--k", "0", "--out", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match="conv=8,fc=5"):
        share_stage(base, "--bits", "conv=eight")
    config = share_stage(base, "--bits", "conv=8,fc=5").config
    assert config.bits_for("conv1", torch.nn.Conv2d(1, 1, 1)) == 8
    config = share_stage(base, "--bits", "6", "--init", "density").config
    assert (config.bits, config.init) == (6, "density")


def share_stage(base, *flags):
    """The stage `netshrink share BASE --method kmeans FLAGS` would run."""
    args = build_parser().parse_args(
        ["share", str(base), "--method", "kmeans", *flags, "--out", "x"]
    )
    return build_share(args)[0]


def test_pack_after_share_pq_stores_codebooks_and_codes(base, tmp_path):
    """`netshrink share --method pq` then `netshrink pack`: the checkpoint keeps the
    VectorCodebooks, so the file stores fc1 and fc2 as codebooks and codes."""
    from netshrink.cli import main
    from netshrink.codec import packed_bytes, summarize

    out = tmp_path / "pq"
    share([str(base), "--method", "pq", "--k", "16", "--segment", "4", "--axis", "columns",
           "--layers", "fc1,fc2", "--out", str(out), "--no-latency"])  # fmt: skip
    model, meta = load_checkpoint(out)
    for files, ckpt in (("base.nsk", base), ("pq.nsk", out)):
        assert main(["pack", str(ckpt), "-o", str(tmp_path / files)]) == 0
    size = (tmp_path / "pq.nsk").stat().st_size
    assert size == len(packed_bytes(model, meta=meta))
    assert size < (tmp_path / "base.nsk").stat().st_size / 4
    encodings = {t.name: t.encoding.split()[0] for t in summarize(tmp_path / "pq.nsk").tensors}
    assert encodings["fc1.weight"] == encodings["fc2.weight"] == "vector"
