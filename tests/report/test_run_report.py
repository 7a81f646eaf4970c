import json
import shutil

import pytest
import torch
from torch import nn

from netshrink.checkpoint import CheckpointMeta, save_checkpoint
from netshrink.codec import pack, summarize, unpack
from netshrink.errors import ConfigError
from netshrink.measure import Measurement
from netshrink.models import ModelSpec, build_model
from netshrink.prune import LayerSparsity, PruneMagnitudeConfig, prune_magnitude
from netshrink.report import (
    distinct_levels,
    layer_rows,
    read_run_report,
    render_report,
    report_markdown,
)
from netshrink.share import ShareKmeansConfig, share_kmeans

PNG = b"\x89PNG\r\n\x1a\n"
SENSITIVITY = {
    "baseline_top1": 0.9,
    "sparsities": [0.0, 0.5, 0.9],
    "curves": {"fc1": [0.9, 0.89, 0.7], "fc2": [0.9, 0.88, 0.5], "fc3": [0.9, 0.85, 0.3]},
}


def _measurement(stage: str, size: int, top1: float | None) -> dict:
    """A made-up Measurement of lenet300_100 at 8x8 input; latency never measured (nulls)."""
    return Measurement(
        stage=stage,
        top1=top1,
        top5=None if top1 is None else min(1.0, top1 + 0.08),
        params=50_610,
        nonzero_params=50_610 if stage == "baseline" else 41_010,
        size_bytes=size,
        bits_per_weight=8 * size / 50_610,
        compression_ratio=202_440 / size,
        macs=50_200,
        sparse_macs=40_600,
        latency_ms_b1=None,
        latency_ms_b64=None,
    ).to_json()


def _stage(name: str, method: str, size: int, top1: float | None, checkpoint=None) -> dict:
    return {
        "name": name,
        "method": method,
        "measurement": _measurement(name, size, top1),
        "val_top1": top1,
        "seconds": 1.5,
        "checkpoint": checkpoint,
    }


def _report(packed_bytes: int, sensitivity=None) -> dict:
    return {
        "format": "netshrink-report",
        "version": 1,
        "name": "tiny-deep-compression",
        "recipe": "recipes/tiny.yaml",
        "model": "lenet300_100",
        "data": "digits",
        "date": "2026-11-25T12:00:00Z",
        "stages": [
            _stage("baseline", "baseline", 202_440, 0.93, "stages/00-baseline"),
            _stage("prune", "prune_magnitude", 60_000, 0.92),
            _stage("share", "share_kmeans", 9_000, None),  # a stage that measured no accuracy
            _stage("packed", "pack", packed_bytes, 0.91),
        ],
        "final": {"file": "model.nsk", "bytes": packed_bytes, "top1": 0.91, "top5": 0.99},
        "sensitivity": sensitivity,
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory written by hand: a dense baseline checkpoint, and fc1 pruned to 50%,
    every layer shared among 8 values and packed."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    spec = ModelSpec(name="lenet300_100")
    model = build_model(spec, num_classes=10, in_channels=1, input_size=8)
    meta = CheckpointMeta(model=spec, input_shape=(1, 8, 8), num_classes=10)
    save_checkpoint(model, run / "stages/00-baseline", meta)
    prune_magnitude(
        model, PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.5)), layers=["fc1"]
    )
    share_kmeans(model, ShareKmeansConfig(bits=3), progress=False)
    pack(model, run / "model.nsk", meta=meta)
    size = (run / "model.nsk").stat().st_size
    (run / "report.json").write_text(json.dumps(_report(size)))
    return run


@pytest.fixture(scope="module")
def written(run_dir):
    return render_report(run_dir)


def test_render_report_writes_markdown_and_pngs(run_dir, written):
    names = [p.name for p in written]
    assert names == ["report.md", "accuracy_vs_size.png", "layers.png", "weights.png"]
    for path in written[1:]:
        assert path.read_bytes()[:8] == PNG
    md = (run_dir / "report.md").read_text()
    for stage in ("baseline", "prune", "share", "packed"):
        assert f"| {stage} |" in md
    size = (run_dir / "model.nsk").stat().st_size
    assert f"{size:,} bytes" in md
    assert "measured on the model decoded from model.nsk" in md
    for name in names[1:]:
        assert f"]({name})" in md  # embedded with a relative link
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes leave no temporaries


def _layer_cells(md: str) -> dict[str, list[str]]:
    """The cells of report.md's layer table, by layer."""
    start = md.index("| layer | shape |")
    lines = md[start:].split("\n\n")[0].splitlines()[2:]
    return {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines)}


def test_per_layer_table_shows_fc1_half_pruned(run_dir, written):
    cells = _layer_cells((run_dir / "report.md").read_text())
    assert cells["fc1"][1:5] == ["300x64", "19,200", "9,600", "50.0%"]
    assert cells["fc2"][4] == "0.0%"


def test_the_layer_table_and_plot_rows_are_inspects_rows_of_the_file(run_dir, written):
    inspected = {r.name: r for r in summarize(run_dir / "model.nsk").tensors}
    cells = _layer_cells((run_dir / "report.md").read_text())
    assert list(cells) == ["fc1", "fc2", "fc3"]
    for layer, row in cells.items():
        file_row = inspected[f"{layer}.weight"]
        encoding, nbytes, per_weight, per_nonzero = row[5:9]
        assert encoding == file_row.encoding
        assert nbytes == f"{file_row.nbytes:,}"
        assert per_weight == f"{file_row.bits_per_weight:.2f}"
        assert per_nonzero == f"{8 * file_row.nbytes / file_row.nonzero:.2f}"
    model = unpack(run_dir / "model.nsk")
    rows = layer_rows(summarize(run_dir / "model.nsk"), model)
    assert rows == [inspected[f"{layer}.weight"] for layer in cells]  # what layers.png draws


def test_layer_rows_and_levels_of_the_decoded_model(run_dir):
    model = unpack(run_dir / "model.nsk")
    rows = layer_rows(summarize(run_dir / "model.nsk"), model)
    assert [r.name for r in rows] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert rows[0].nonzero == 9_600
    levels = distinct_levels(model.fc1.weight)
    assert levels is not None and 2 <= levels.numel() <= 8
    assert bool((levels != 0).all()) and bool((levels[1:] > levels[:-1]).all())
    assert distinct_levels(torch.randn(100, 100)) is None  # a dense float layer has no levels


def test_missing_or_invalid_report_json_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="report.json: no such file"):
        render_report(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_run_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({**_report(10), "stages": []}))
    with pytest.raises(ConfigError, match="stages"):
        read_run_report(tmp_path)


def test_sensitivity_png_only_when_the_report_has_one(run_dir, written, tmp_path):
    assert not (run_dir / "sensitivity.png").exists()
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    report = json.loads((run / "report.json").read_text())
    (run / "report.json").write_text(json.dumps({**report, "sensitivity": SENSITIVITY}))
    paths = render_report(run)
    assert paths[-1] == run / "sensitivity.png"
    assert paths[-1].read_bytes()[:8] == PNG
    assert "](sensitivity.png)" in (run / "report.md").read_text()


def test_single_stage_report_without_baseline_checkpoint(run_dir, tmp_path):
    shutil.copy(run_dir / "model.nsk", tmp_path / "model.nsk")
    report = _report(1234)
    report["stages"] = [_stage("baseline", "baseline", 202_440, None, "stages/missing")]
    (tmp_path / "report.json").write_text(json.dumps(report))
    paths = render_report(tmp_path)
    assert [p.name for p in paths] == [
        "report.md",
        "accuracy_vs_size.png",
        "layers.png",
        "weights.png",
    ]
    assert "| baseline |" in (tmp_path / "report.md").read_text()


def test_markdown_of_a_model_without_conv_or_linear_layers(run_dir):
    report = read_run_report(run_dir)
    model = nn.Sequential(nn.Flatten(), nn.ReLU())
    md = report_markdown(report, model, [], ["accuracy_vs_size.png"])
    assert "no convolution or linear layers" in md
    assert "](accuracy_vs_size.png)" in md and "](weights.png)" not in md


def test_rendering_twice_gives_the_same_bytes(run_dir, written):
    before = {p.name: p.read_bytes() for p in written}
    assert {p.name: p.read_bytes() for p in render_report(run_dir)} == before
