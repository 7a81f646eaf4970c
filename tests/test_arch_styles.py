"""The user-style architectures of bench/arch_styles.py (bench/architectures.py's rows): each builds
through netshrink's import path with its own arguments, stays small, runs on one 3x32x32 image and
traces the way filter pruning, folding and fixed point trace it (netshrink.graph.trace: torch.fx,
with the numbers a forward reads from sizes, ShuffleNetV2's int(x.size(1) * 0.5) or MixNet's zip
over torch.split, baked in)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from arch_styles import STYLES  # noqa: E402
from netshrink.graph import trace  # noqa: E402
from netshrink.models import ModelSpec, build_model  # noqa: E402


@pytest.mark.parametrize("name", sorted(STYLES))
def test_style_builds_runs_and_traces(name):
    path = f"arch_styles:{name}"
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(name=path), num_classes=7, in_channels=3, input_size=32, allow_import=[path]
    ).eval()
    assert sum(p.numel() for p in model.parameters()) < 500_000
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        traced = trace(model, "the test")(x)
    assert expected.shape == (1, 7)
    assert torch.equal(traced, expected)
