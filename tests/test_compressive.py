"""Layer-wise compressive training: the projections are projections, the constrained layers stay
exactly in their sets after every optimizer step, and the greedy search keeps the accuracy budget
and reverts the layer that breaks it."""

import pytest
import torch

from netshrink.codec import summarize_model
from netshrink.compressive import (
    CompressiveConfig,
    LayerSet,
    Levels,
    LowRank,
    Projector,
    SparseSupport,
    compression_rate,
    project_levels,
    project_low_rank,
    project_sparse,
    train_compressive,
)
from netshrink.errors import UnsupportedLayerError
from netshrink.mask import get_mask
from netshrink.models import ModelSpec, build_model
from netshrink.prune import GlobalSparsity, PruneMagnitudeConfig, prune_magnitude
from netshrink.train import FitConfig, fit

QUICK = FitConfig(epochs=1, lr=0.02, batch_size=64)


def _model(digits, epochs=3):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="lenet300_100"), num_classes=10, in_channels=1, input_size=8)
    if epochs:
        fit(model, digits, FitConfig(epochs=epochs, batch_size=64), progress=False)
    return model


def test_projections_land_in_their_sets_and_are_idempotent():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    sparse = project_sparse(w, 0.75)
    assert int(torch.count_nonzero(sparse)) == 54 and torch.equal(
        project_sparse(sparse, 0.75), sparse
    )
    kept = sparse != 0  # the largest magnitudes survive, unchanged
    assert torch.equal(sparse[kept], w[kept]) and w[kept].abs().min() >= w[~kept].abs().max()
    levels = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    rounded = project_levels(torch.tensor([-3.0, -0.4, 0.2, 0.26, 1.3, 9.0]), levels)
    assert rounded.tolist() == [-1.0, 0.0, 0.0, 0.5, 2.0, 2.0]
    low = project_low_rank(w, 2)
    assert int(torch.linalg.matrix_rank(low.flatten(1))) == 2
    # Eckart-Young: no rank-2 matrix is nearer than the truncated SVD, e.g. a random one
    other = torch.randn(6, 2) @ torch.randn(2, 36)
    assert (w - low).norm() <= (w.flatten(1) - other).norm()


@pytest.mark.parametrize(
    "constraint", [SparseSupport(sparsity=0.9), Levels(count=3), LowRank(rank_fraction=0.1)]
)
def test_constrained_layers_stay_exactly_in_their_sets_after_every_step(digits, constraint):
    model = _model(digits, epochs=0)
    prune_magnitude(model, PruneMagnitudeConfig(threshold=GlobalSparsity(sparsity=0.5)))
    projector = Projector(model)
    sets = {name: projector.add(name, constraint) for name in ("fc1", "fc2")}
    unconstrained = model.fc3.weight.detach().clone()
    checked = []

    def check(step):
        assert projector.contains() == {"fc1": True, "fc2": True}, step
        checked.append(step)

    fit(model, digits, QUICK, step_hooks=[projector, check], progress=False)
    assert checked == list(range(1, len(digits.loader("train", 64)) + 1))
    assert not torch.equal(model.fc3.weight, unconstrained)  # it trained, unprojected
    if isinstance(constraint, Levels):
        assert len(sets["fc1"].levels) == 4 and 0.0 in sets["fc1"].levels.tolist()
    if isinstance(constraint, LowRank):
        assert sets["fc1"].rank == 7 and sets["fc2"].rank == 10  # ceil(0.1 * 64), 0.1 * 100
    projector.finish()
    assert all(projector.contains().values())


def test_sparse_projection_lets_pruned_weights_come_back(digits):
    model = _model(digits, epochs=0)
    prune_magnitude(model, PruneMagnitudeConfig(threshold=GlobalSparsity(sparsity=0.6)))
    pruned = get_mask(model.fc2).mask == 0
    projector = Projector(model)
    projector.add("fc2", SparseSupport(sparsity=0.7))
    fit(model, digits, QUICK, step_hooks=[projector], progress=False)
    projector.finish()
    revived = (model.fc2.weight != 0) & pruned
    assert int(revived.sum()) > 0  # projected SGD moves the support; a fixed mask could not
    assert float((model.fc2.weight == 0).float().mean()) == pytest.approx(0.7, abs=1e-3)
    assert torch.equal(get_mask(model.fc2).mask.bool(), model.fc2.weight != 0)


def test_compressive_training_keeps_the_budget_and_reports_the_rate(digits):
    model = _model(digits)
    config = CompressiveConfig(
        global_sparsity=0.6,
        budget=2.0,
        constraint=SparseSupport(sparsity=0.9),
        prune_fit=QUICK,
        layer_fit=QUICK,
    )
    pruned = _model(digits)
    prune_magnitude(pruned, PruneMagnitudeConfig(threshold=GlobalSparsity(sparsity=0.6)))
    zeros = {
        n: float((pruned.get_submodule(n).weight == 0).float().mean())
        for n in ("fc1", "fc2", "fc3")
    }
    result = train_compressive(model, digits, config, progress=False)
    # the paper's order: the sparser a layer after the global threshold, the less significant
    assert list(result.order) == sorted(zeros, key=lambda n: -zeros[n])
    assert zeros[result.order[0]] > zeros[result.order[-1]]
    assert result.constrained and list(result.constrained) == [
        s.layer for s in result.steps if s.accepted
    ]
    assert result.reference_top1 - result.top1 <= 0.02
    for name, target in result.constrained.items():
        assert target.contains(model.get_submodule(name).weight)
        assert result.sparsity[name] == pytest.approx(0.9, abs=1e-3)
    weights = [model.get_submodule(n).weight for n in ("fc1", "fc2", "fc3")]
    nonzero = sum(int(torch.count_nonzero(w)) for w in weights)
    assert result.compression_rate == pytest.approx(sum(w.numel() for w in weights) / nonzero)
    assert result.epochs == 1 + len(result.steps)


def test_a_layer_that_breaks_the_budget_is_reverted_and_the_search_stops(digits):
    model = _model(digits)
    config = CompressiveConfig(
        global_sparsity=0.3,
        budget=0.0,
        constraint=Levels(count=1),  # one value a layer: no layer survives this at zero budget
        ranking="size",
        prune_fit=FitConfig(epochs=0),
        layer_fit=QUICK,
    )
    result = train_compressive(model, digits, config, progress=False)
    assert result.order == ("fc2", "fc1", "fc3")  # by size, largest first: 300x100, 64x300
    assert len(result.steps) == 1 and not result.steps[0].accepted
    assert result.constrained == {}
    # fc2 is back as step 1 left it: many distinct values, pruned at the global threshold
    assert torch.unique(model.fc2.weight).numel() > 100
    assert result.top1 == result.pruned_top1


def test_compression_rate_counts_levels_in_index_bits():
    weight = torch.tensor([[0.0, 1.0, -1.0, 1.0]])
    target = LayerSet(Levels(count=2), levels=torch.tensor([-1.0, 0.0, 1.0]))

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 1, bias=False)
            self.fc.weight.data = weight

    # 3 non-zeros at 1 bit + 3 levels at 32 bits, against 4 x 32
    assert compression_rate(One(), ["fc"], {"fc": target}) == pytest.approx(128 / (3 + 96))


def test_quantized_layers_are_refused(digits):
    from netshrink.quant import QuantConfig, quantize

    qmodel = quantize(_model(digits, epochs=0), digits, QuantConfig())
    with pytest.raises(UnsupportedLayerError, match="fc1.*float model"):
        Projector(qmodel).add("fc1", SparseSupport())


def test_a_layer_on_levels_ends_as_a_codebook_and_is_counted_as_one(digits):
    model = _model(digits)
    config = CompressiveConfig(
        global_sparsity=0.6,
        budget=100,
        constraint=Levels(count=4),
        prune_fit=QUICK,
        layer_fit=QUICK,
    )
    result = train_compressive(model, digits, config, progress=False)
    rows = {row.name: row for row in summarize_model(model).tensors}
    assert result.constrained
    for name, target in result.constrained.items():
        weight = model.get_submodule(name).weight
        assert target.contains(weight)
        row = rows[f"{name}.weight"]  # the file holds its levels as a codebook, not fp32 values
        assert "centroids" in {s.role for s in row.sections}
        assert 8 * row.nbytes < weight.numel() * 4
