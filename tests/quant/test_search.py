"""The hybrid bit-width search: the returned configuration's measured loss never exceeds the
budget, `quantize` reproduces it, a start that already exceeds the budget is refused, and the
per-layer table covers every quantized layer and adds up."""

import pytest
import torch
from pydantic import ValidationError

from netshrink.errors import ConfigError
from netshrink.models import ModelSpec, build_model
from netshrink.quant import QuantConfig, fixed_point_formats, quantize
from netshrink.quant.search import BitSearchConfig, search_batches, search_bits
from netshrink.train import FitConfig, evaluate, fit


@pytest.fixture(scope="module")
def searched(mlp, digits):
    config = BitSearchConfig(budget=2.0, eval_images=None)
    return config, search_bits(mlp, digits, config, progress=False)


def _top1(model, digits, config):
    return evaluate(model, search_batches(digits, config)).top1


def test_the_loss_is_measured_and_within_the_budget(searched, mlp, digits):
    config, result = searched
    assert result.loss <= config.budget
    float_top1, top1 = _top1(mlp, digits, config), _top1(result.model, digits, config)
    assert (result.float_top1, result.top1) == (float_top1, top1)
    assert result.loss == pytest.approx(100 * (float_top1 - top1))
    assert result.evaluations > len(result.rows)


def test_quantize_with_the_returned_config_reproduces_the_model(searched, mlp, digits):
    config, result = searched
    again = quantize(mlp, digits, result.config)
    assert fixed_point_formats(again) == fixed_point_formats(result.model)
    x = search_batches(digits, config)[0][0]
    assert torch.equal(again(x), result.model(x))
    assert _top1(again, digits, config) == result.top1


def test_weights_go_below_the_start_and_the_table_adds_up(searched):
    config, result = searched
    formats = fixed_point_formats(result.model)
    layers = [r for r in result.rows if r.weight_bits is not None]
    assert [r.name for r in layers] == ["fc1", "fc2", "fc3"] == list(formats.weights)
    assert {r.name: r.weight_bits for r in layers} == result.config.layer_weights
    assert all(formats.weights[r.name].bits == r.weight_bits for r in layers)
    assert [r.params for r in layers] == [64 * 300, 300 * 100, 100 * 10]
    assert result.mean_weight_bits < config.start_weights
    mean = sum(r.params * r.weight_bits for r in layers) / sum(r.params for r in layers)
    assert result.mean_weight_bits == pytest.approx(mean)
    points = {r.activation: r for r in result.rows if r.activation is not None}
    assert set(points) == set(formats.activations) == set(result.config.layer_activations)
    assert {p: r.activation_values for p, r in points.items()} == {
        "x_quant": 64,
        "fc1_quant": 300,
        "fc2_quant": 100,
    }
    assert (
        result.activation_bytes
        == sum(r.activation_values * r.activation_bits for r in points.values()) / 8
    )
    assert all(config.min_weights <= r.weight_bits <= config.start_weights for r in layers)
    assert "| fc1 | 19200 |" in result.table()


def test_a_zero_budget_keeps_the_float_accuracy(mlp, digits):
    config = BitSearchConfig(budget=0.0, start_weights=12, start_activations=12)
    result = search_bits(mlp, digits, config, progress=False)
    assert result.loss <= 0.0
    assert result.top1 >= result.float_top1
    assert _top1(quantize(mlp, digits, result.config), digits, config) == result.top1


def test_a_start_beyond_the_budget_is_refused(mlp, digits):
    config = BitSearchConfig(budget=0.0, start_weights=2, start_activations=2, min_activations=2)
    with pytest.raises(ConfigError, match="already loses .* more than the budget"):
        search_bits(mlp, digits, config, progress=False)


def test_the_subset_is_fixed_seeded_and_capped(digits):
    first = search_batches(digits, BitSearchConfig(eval_images=100))
    second = search_batches(digits, BitSearchConfig(eval_images=100))
    assert sum(len(y) for _, y in first) == 100
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(first, second))
    everything = search_batches(digits, BitSearchConfig(eval_images=None, split="test"))
    assert sum(len(y) for _, y in everything) == len(digits.test)


@pytest.mark.parametrize(
    "fields",
    [
        {"budget": -1},
        {"min_weights": 9},
        {"start_activations": 3},
        {"quant": QuantConfig(layer_weights={"fc1": 4})},
        {"split": "train"},
    ],
)
def test_bad_configs_are_refused(fields):
    with pytest.raises(ValidationError):
        BitSearchConfig(**fields)


@pytest.mark.slow
def test_lenet5_on_fashion_mnist_reaches_the_benchmark_band(fashion_slice):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="lenet5"), num_classes=10, in_channels=1, input_size=28)
    fit(model, fashion_slice, FitConfig(epochs=4, lr=0.05), progress=False)
    result = search_bits(model.eval(), fashion_slice, BitSearchConfig(budget=1.0), progress=False)
    assert result.loss <= 1.0
    assert result.mean_weight_bits <= 5
    assert all(r.activation_bits <= 8 for r in result.rows if r.activation is not None)
