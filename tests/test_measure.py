import ast
import importlib
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from netshrink.measure import (
    count_macs,
    count_parameters,
    deep_compression_rate,
    dense_bytes,
    measure,
    measure_latency,
)
from netshrink.models import ModelSpec, build_model
from netshrink.report import measurements_json, measurements_markdown


class _Mask(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x):
        return x * self.mask


def test_lenet300_counts():
    model = build_model(ModelSpec(name="lenet300_100"))
    assert count_parameters(model).total == 266_610
    macs = count_macs(model, (1, 28, 28))
    assert [r.macs for r in macs] == [784 * 300, 300 * 100, 100 * 10]
    assert dense_bytes(model) == 4 * 266_610


def test_caffe_lenet5_conv_macs():
    model = build_model(ModelSpec(name="lenet5_caffe"))
    macs = {r.name: r.macs for r in count_macs(model, (1, 28, 28))}
    assert 20 * 25 * 24 * 24 in macs.values()  # conv1: 20 filters of 5x5 at 24x24
    assert 50 * 20 * 25 * 8 * 8 in macs.values()  # conv2: 50 filters of 20x5x5 at 8x8
    assert sum(macs.values()) == 288_000 + 1_600_000 + 800 * 500 + 500 * 10


def test_grouped_and_depthwise_macs():
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 3, padding=1, groups=2)
    )
    rows = count_macs(model, (8, 10, 10))
    assert [r.macs for r in rows] == [8 * 9 * 100, 16 * 4 * 9 * 100]


def test_parametrized_weights_are_counted_as_the_forward_pass_sees_them():
    model = build_model(ModelSpec(name="lenet300_100"))
    mask = (torch.rand_like(model.fc1.weight) > 0.75).float()
    parametrize.register_parametrization(model.fc1, "weight", _Mask(mask))
    counts = count_parameters(model)
    assert counts.total == 266_610  # the dense `original` is not counted twice, nor the mask
    kept = int(mask.sum())
    assert counts.nonzero == 266_610 - 784 * 300 + kept
    assert dense_bytes(model) == 4 * 266_610
    fc1 = count_macs(model, (1, 28, 28))[0]
    assert fc1.macs == 784 * 300 and fc1.sparse_macs == kept


def test_batchnorm_statistics_count_as_stored_bytes():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    params = 4 * 9 + 4 + 4 + 4
    assert count_parameters(model).total == params
    assert dense_bytes(model) == 4 * (params + 8)


def test_measure_record_and_tables(digits):
    model = build_model(ModelSpec(name="lenet300_100"), input_size=8)
    row = measure(
        model,
        stage="baseline",
        input_shape=(1, 8, 8),
        test=digits.loader("test", 128),
        baseline_bytes=2 * dense_bytes(model),
    )
    assert 0 <= row.top1 <= row.top5 <= 1
    assert row.params == 64 * 300 + 300 + 30_100 + 1010
    assert row.compression_ratio == pytest.approx(2.0)
    assert row.bits_per_weight == pytest.approx(32.0)
    assert row.latency_ms_b1 > 0 and row.latency_ms_b64 > row.latency_ms_b1 / 10
    markdown = measurements_markdown([row, row])
    assert markdown.count("\n") == 4 and "| baseline |" in markdown
    assert '"stage": "baseline"' in measurements_json([row])


def test_latency_restores_thread_count():
    before = torch.get_num_threads()
    ms = measure_latency(nn.Linear(10, 10), (10,), threads=1, repeats=3)
    assert ms > 0 and torch.get_num_threads() == before


def test_the_papers_toy_example():
    # Han et al. 2016, figure 3: 16 weights shared among 4 centroids
    assert deep_compression_rate(16, 4) == pytest.approx(16 * 32 / (16 * 2 + 4 * 32))
    with pytest.raises(ValueError):
        deep_compression_rate(0, 4)


def test_measure_sits_below_the_codec_and_takes_the_size_it_is_given(digits):
    # measure.py is a core module below the codec: it imports none of it; callers pass sizes in
    source = Path(importlib.import_module("netshrink.measure").__file__).read_text()
    tree = ast.parse(source)
    imported = [
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    assert imported and not [m for m in imported if "codec" in m.split(".")]
    model = build_model(ModelSpec(name="lenet300_100"), input_size=8)
    row = measure(model, stage="s", input_shape=(1, 8, 8), size_bytes=1234, latency=False)
    assert row.size_bytes == 1234 and row.bits_per_weight == 8 * 1234 / row.params
    dense = measure(model, stage="s", input_shape=(1, 8, 8), latency=False)
    assert dense.size_bytes == dense_bytes(model)
