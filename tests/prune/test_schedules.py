import pytest
import torch

from netshrink.errors import ConfigError
from netshrink.layers import select_layers
from netshrink.models import ModelSpec, build_model
from netshrink.prune.gradual import (
    GradualPruner,
    PruneGradualConfig,
    cubic_sparsity,
    prune_gradual,
)
from netshrink.prune.incremental import (
    PruneIncrementalConfig,
    incremental_ratios,
    prune_incremental,
)
from netshrink.prune.iterative import (
    IterativeStep,
    PruneIterativeConfig,
    prune_iterative,
)
from netshrink.prune.magnitude import LayerSparsity, PruneMagnitudeConfig
from netshrink.prune.mask import layer_sparsity
from netshrink.train import FitConfig, evaluate, fit


def _trained_lenet300(digits, epochs=5):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="lenet300_100"), input_size=8)
    fit(model, digits, FitConfig(epochs=epochs, lr=0.05, batch_size=64))
    return model


def test_cubic_schedule_matches_the_formula():
    config = PruneGradualConfig(
        initial_sparsity=0.1, final_sparsity=0.9, start_step=20, steps=8, interval=10
    )
    assert cubic_sparsity(20, config) == pytest.approx(0.1)
    assert cubic_sparsity(100, config) == pytest.approx(0.9)
    assert cubic_sparsity(0, config) == pytest.approx(0.1)
    assert cubic_sparsity(1000, config) == pytest.approx(0.9)
    t = 50
    assert cubic_sparsity(t, config) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - 30 / 80) ** 3)


def test_gradual_pruner_updates_masks_on_interval_steps_only():
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="lenet300_100"))
    config = PruneGradualConfig(final_sparsity=0.8, start_step=10, steps=4, interval=5)
    pruner = GradualPruner(model, config)
    for step in range(1, 40):
        pruner(step)
        if step == 12:
            assert layer_sparsity(model)["fc1.weight"] == pytest.approx(
                cubic_sparsity(10, config), abs=1e-6
            )
    assert layer_sparsity(model)["fc1.weight"] == pytest.approx(0.8, abs=1e-5)
    assert pruner.sparsity == pytest.approx(0.8)


def test_prune_gradual_in_fit_reaches_the_final_sparsity_and_keeps_accuracy(digits):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="lenet300_100"), input_size=8)
    steps = len(digits.loader("train", 64))
    fit_config = FitConfig(epochs=8, lr=0.05, batch_size=64)
    config = PruneGradualConfig(final_sparsity=0.9, steps=5, interval=steps)
    prune_gradual(model, digits, config, fit_config)
    for sparsity in layer_sparsity(model).values():
        assert sparsity == pytest.approx(0.9, abs=1e-3)
    assert evaluate(model, digits.loader("test", 256)).top1 > 0.85
    with pytest.raises(ConfigError, match="ends at step"):
        prune_gradual(model, digits, config.model_copy(update={"interval": 10 * steps}), fit_config)


def test_iterative_prune_retrain_keeps_accuracy_and_logs_steps(digits):
    model = _trained_lenet300(digits)
    before = evaluate(model, digits.loader("test", 256)).top1
    log: list[IterativeStep] = []
    config = PruneIterativeConfig(
        prune=PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.8)),
        steps=2,
        retrain=FitConfig(epochs=2, lr=0.01, batch_size=64),
    )
    prune_iterative(model, digits, config, log=log)
    assert [s.threshold.threshold.sparsity for s in log] == pytest.approx([0.4, 0.8])
    assert layer_sparsity(model)["fc1.weight"] == pytest.approx(0.8, abs=1e-4)
    after = evaluate(model, digits.loader("test", 256)).top1
    assert after > before - 0.03


def test_incremental_pruning_stays_within_budget_without_gradients(digits):
    model = _trained_lenet300(digits)
    calibration = digits.loader("val", 256)
    base = evaluate(model, calibration).top1
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    config = PruneIncrementalConfig(budget=1.0, step=0.25, max_ratio=2.0)
    table = incremental_ratios(model, calibration, config)
    assert set(table) == {"fc1", "fc2", "fc3"}
    assert all(0 <= r <= 2.0 for r in table.values()) and max(table.values()) > 0
    for key, value in model.state_dict().items():  # the search leaves the model alone
        assert torch.equal(value, snapshot[key])
    prune_incremental(model, calibration, config)
    assert evaluate(model, calibration).top1 >= base - 0.01 - 1e-9
    assert layer_sparsity(model)  # something was pruned
    for name, ratio in table.items():
        if ratio == 0:
            continue
        layer = dict(select_layers(model))[name]
        dense = layer.parametrizations.weight.original
        assert torch.equal(layer.weight != 0, dense.abs() >= ratio * dense.std())
