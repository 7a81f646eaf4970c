import json

import torch

from netshrink.models import ModelSpec, build_model
from netshrink.prune.mask import get_mask
from netshrink.prune.sensitivity import (
    Sensitivity,
    budget_sparsities,
    plot_sensitivity,
    sensitivity_analysis,
)
from netshrink.train import FitConfig, fit


def test_sensitivity_has_one_curve_per_layer_and_a_plot(digits, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="lenet300_100"), input_size=8)
    fit(model, digits, FitConfig(epochs=3, batch_size=64))
    result = sensitivity_analysis(model, digits.loader("val", 256), sparsities=(0.0, 0.5, 0.95))
    data = json.loads(result.to_json())
    assert sorted(data["curves"]) == ["fc1", "fc2", "fc3"]
    assert all(len(curve) == 3 for curve in data["curves"].values())
    assert data["curves"]["fc1"][0] == data["baseline_top1"]  # sparsity 0 changes nothing
    assert get_mask(model.fc1) is None  # the model itself is never pruned
    png = plot_sensitivity(result, tmp_path / "sensitivity.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_sparsities_stop_at_the_first_break():
    result = Sensitivity(
        0.9, (0.0, 0.5, 0.8, 0.9), {"a": [0.9, 0.895, 0.85, 0.9], "b": [0.9, 0.9, 0.9, 0.899]}
    )
    assert budget_sparsities(result, 1.0) == {"a": 0.5, "b": 0.9}
