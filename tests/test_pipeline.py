"""The recipe pipeline end to end on digits: files, the decoded-file accuracy, resume after a
SIGKILL with identical bytes, budgets."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import require_gcc
from netshrink.codec import pack, summarize, unpack
from netshrink.data import load_data
from netshrink.errors import BudgetError
from netshrink.pipeline import _read_back, run_recipe
from netshrink.recipe import parse_recipe
from netshrink.train import evaluate

TINY = """\
name: tiny
data: {source: digits}
baseline:
  model: lenet300_100
  train: {epochs: 3, lr: 0.05, batch_size: 64}
stages:
  - method: prune_magnitude
    name: prune
    config: {threshold: {kind: std, ratio: 1.0}}
    finetune: {epochs: 1}
  - method: share_kmeans
    config: {bits: 4}
    finetune: {epochs: 1, lr: 0.001}
  - method: qat
    config: {quant: {weights: 6, activations: 8}, fit: {epochs: 25, lr: 0.001, batch_size: 32}}
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("run") / "tiny"
    return run_recipe(parse_recipe(TINY), out, cache_dir=cache, latency=False, progress=False)


def test_a_run_writes_the_file_the_checkpoints_and_the_report(finished):
    out = finished.directory
    for name in ("model.nsk", "state.json", "report.json", "report.md", "recipe.yaml"):
        assert (out / name).is_file(), name
    assert [r.name for r in finished.stages] == [
        "baseline",
        "prune",
        "share_kmeans",
        "qat",
        "packed",
    ]
    assert len(list((out / "stages").glob("*.safetensors"))) == 4
    packed = finished.stages[-1].measurement
    assert packed["size_bytes"] == (out / "model.nsk").stat().st_size
    assert packed["compression_ratio"] > 5  # 4-bit shared, pruned, 6-bit fixed point
    report = json.loads((out / "report.json").read_text())
    assert report["final"]["bytes"] == packed["size_bytes"]
    assert not list(out.rglob("*.tmp"))


def test_the_reported_accuracy_is_that_of_the_decoded_file(finished):
    data = load_data(parse_recipe(TINY).data)
    model = unpack(finished.directory / "model.nsk")
    independent = evaluate(model, data.loader("test", 100))
    report = json.loads((finished.directory / "report.json").read_text())
    assert report["final"]["top1"] == independent.top1
    assert independent.top1 > 0.85  # digits: the baseline reaches ~94%


def test_each_stage_size_is_the_file_its_model_packs_to(finished, tmp_path):
    # a stage's size_bytes is the .nsk file the recipe's pack config writes for the model that
    # stage passes on (its checkpoint read back as the next stage and pack read it: masks and
    # codebooks re-attached, which orders the file's tensors): the last one is model.nsk itself
    recipe = parse_recipe(TINY)
    stages = finished.stages[:-1]
    for record in stages:
        model, meta = _read_back(finished.directory, record, ())
        path = pack(model, tmp_path / f"{record.name}.nsk", recipe.pack, meta=meta)
        assert record.measurement["size_bytes"] == path.stat().st_size, record.name
    assert stages[-1].measurement["size_bytes"] == (finished.directory / "model.nsk").stat().st_size
    sizes = [r.measurement["size_bytes"] for r in stages]
    assert sizes[1] < sizes[0] / 2 and sizes[2] < sizes[1]  # pruned, then 4-bit codebooks


def test_the_reports_layer_table_is_inspects_rows_of_the_file(finished):
    md = (finished.directory / "report.md").read_text()
    table = md[md.index("| layer | shape |") :].split("\n\n")[0].splitlines()[2:]
    cells = {c[0]: c for c in ([x.strip() for x in row.strip("|").split("|")] for row in table)}
    inspected = summarize(finished.directory / "model.nsk")
    weights = [r for r in inspected.tensors if f"{r.name.removesuffix('.weight')}" in cells]
    assert [r.name for r in weights] == [f"{layer}.weight" for layer in cells] != []
    for row in weights:
        layer = cells[row.name.removesuffix(".weight")]
        assert layer[5:8] == [row.encoding, f"{row.nbytes:,}", f"{row.bits_per_weight:.2f}"]


def test_a_killed_run_resumes_and_writes_the_identical_file(finished, tmp_path, cache):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "netshrink.cli", "run", str(recipe), "--out", str(out)]
    command += ["--cache", str(cache), "--no-latency"]
    env = {**os.environ, "NETSHRINK_PROGRESS": "0"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / "state.json"
    while process.poll() is None:  # kill it as soon as stage 2 of 3 is on disk
        if state.is_file() and len(json.loads(state.read_text())["stages"]) == 3:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "model.nsk").exists()
    kept = {p: p.stat().st_mtime_ns for p in (out / "stages").glob("0[0-2]-*.safetensors")}
    assert len(kept) == 3

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "model.nsk").read_bytes() == (finished.directory / "model.nsk").read_bytes()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # stages 0-2 were not run again


def test_a_stage_over_its_budget_stops_the_run_and_an_edited_recipe_resumes(tmp_path, cache):
    harsh = TINY.split("  - method: share_kmeans")[0] + (
        "  - method: share_binary\n    budget: 0.5\n"
    )
    out = tmp_path / "run"
    with pytest.raises(BudgetError, match="share_binary .* below the baseline"):
        run_recipe(parse_recipe(harsh), out, cache_dir=cache, latency=False, progress=False)
    state = json.loads((out / "state.json").read_text())
    assert [s["name"] for s in state["stages"]] == ["baseline", "prune"]
    pruned = (out / "stages" / "01-prune.safetensors").stat().st_mtime_ns

    relaxed = harsh.replace("budget: 0.5", "budget: 100")
    result = run_recipe(parse_recipe(relaxed), out, cache_dir=cache, latency=False, progress=False)
    assert [r.name for r in result.stages] == ["baseline", "prune", "share_binary", "packed"]
    assert (out / "stages" / "01-prune.safetensors").stat().st_mtime_ns == pruned


def test_a_sensitivity_stage_reaches_the_report_also_when_the_run_is_resumed(tmp_path, cache):
    text = TINY.split("  - method: prune_magnitude")[0] + (
        "  - method: sensitivity\n    sparsities: [0.0, 0.5, 0.9]\n"
        "  - method: prune_magnitude\n    config: {threshold: {kind: std, ratio: 0.5}}\n"
    )
    out = tmp_path / "run"
    for _ in range(2):  # the second run reuses every stage
        run_recipe(parse_recipe(text), out, cache_dir=cache, latency=False, progress=False)
        report = json.loads((out / "report.json").read_text())
        assert report["sensitivity"]["sparsities"] == [0.0, 0.5, 0.9]
        assert set(report["sensitivity"]["curves"]) == {"fc1", "fc2", "fc3"}
        assert (out / "sensitivity.png").is_file()


SMALL = """\
name: small
data: {source: digits}
baseline:
  model: lenet300_100
  train: {epochs: 1, batch_size: 64}
stages:
  - method: prune_magnitude
    config: {threshold: {kind: std, ratio: 1.0}}
"""


def test_two_fresh_runs_give_identical_bytes(tmp_path):
    """Each run trains its own baseline (its own cache), so the wall-clock values differ; none of
    them reaches the file."""
    files = []
    for name in ("a", "b"):
        recipe = parse_recipe(SMALL)
        out = tmp_path / name
        run_recipe(recipe, out, cache_dir=tmp_path / f"cache-{name}", progress=False)
        files.append((out / "model.nsk").read_bytes())
    assert files[0] == files[1]


def test_a_run_says_where_its_baseline_and_stages_come_from(tmp_path, capsys):
    recipe, out, cache = parse_recipe(SMALL), tmp_path / "run", tmp_path / "cache"
    run_recipe(recipe, out, cache_dir=cache, latency=False)
    first = capsys.readouterr().out
    assert "baseline: training lenet300_100, 1 epoch(s)" in first
    run_recipe(recipe, out, cache_dir=cache, latency=False)
    again = capsys.readouterr().out
    assert "baseline: resumed from" in again and "stage 1/1 prune_magnitude: resumed" in again
    run_recipe(recipe, tmp_path / "other", cache_dir=cache, latency=False)
    assert "baseline: lenet300_100 loaded from the cache" in capsys.readouterr().out


BN_CHAIN = """\
name: bn-chain
data: {source: digits}
baseline:
  model: vgg_small(width=0.125)
  train: {epochs: 2, lr: 0.05, batch_size: 64}
stages:
  - method: prune_magnitude
    config: {threshold: {kind: std, ratio: 0.5}}
  - method: share_kmeans
    config: {bits: 3}
  - method: quantize
    config: {calibration_images: 128}
"""


def test_prune_share_quantize_on_a_batchnorm_network_keeps_every_conv_shared(tmp_path):
    """Han et al.'s chain then fixed point, on a network with batch norm after every conv: the
    sharing stage folds batch norm first (a fixed-point stage follows), so quantize has nothing
    to fold into shared weights and every conv keeps at most 2**bits distinct values."""
    result = run_recipe(
        parse_recipe(BN_CHAIN), tmp_path / "run", cache_dir=tmp_path / "cache", latency=False,
        progress=False,
    )  # fmt: skip
    model = result.model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) >= 4
    for conv in convs:
        values = conv.weight.detach()
        assert torch.unique(values[values != 0]).numel() <= 8
    assert result.stages[-1].measurement["top1"] > 0.5  # digits: it still classifies


def test_an_export_section_deploys_c_and_int8_beside_the_file(finished, tmp_path, cache):
    # the stages are resumed from the finished run: only packing and the exports run
    require_gcc()
    out = tmp_path / "tiny"
    shutil.copytree(finished.directory, out)
    recipe = parse_recipe(TINY + "export: {c: true, int8: true}\n")
    result = run_recipe(recipe, out, cache_dir=cache, latency=False, progress=False)
    assert (out / "c" / "model.c").is_file() and (out / "model.int8.onnx").is_file()
    c, int8 = result.artifacts
    images = len(load_data(recipe.data).test)
    assert c.check == f"bit-exact with the integer path on {images}/{images}"
    assert c.flash_bytes >= c.bytes > 0 and c.ram_bytes > 0 and c.images_per_second > 0
    assert int8.bytes == (out / "model.int8.onnx").stat().st_size
    assert "agreement with the integer path" in int8.check
    assert c.top1 > 0.85 and int8.top1 > 0.85  # digits: the decoded model reaches ~94%
    report = json.loads((out / "report.json").read_text())
    assert [a["artifact"] for a in report["artifacts"]] == [".nsk", "C99", "int8 ONNX"]
    assert report["artifacts"][0]["bytes"] == (out / "model.nsk").stat().st_size
    assert "## Deployed" in (out / "report.md").read_text()


VQ = """\
name: vq
data: {source: digits}
baseline:
  model: lenet300_100
  train: {epochs: 1, batch_size: 64}
stages:
  - method: share_pq
    name: pq
    layers: [fc1, fc2]
    config: {segment: 4, k: 16, axis: columns}
pack: {index_bits: best}
"""


def test_a_product_quantized_run_packs_the_file_its_stage_reports(tmp_path):
    """The stage checkpoint keeps the VectorCodebooks, so model.nsk, packed from it, stores
    codebooks and codes: the packed row's size is the pq row's, far below dense."""
    result = run_recipe(
        parse_recipe(VQ), tmp_path / "run", cache_dir=tmp_path / "cache", latency=False,
        progress=False,
    )  # fmt: skip
    baseline, pq, packed = (r.measurement for r in result.stages)
    assert packed["size_bytes"] == pq["size_bytes"] == result.file.stat().st_size
    assert packed["size_bytes"] < baseline["size_bytes"] / 5
    encodings = {t.name: t.encoding.split()[0] for t in summarize(result.file).tensors}
    assert encodings["fc1.weight"] == encodings["fc2.weight"] == "vector"
