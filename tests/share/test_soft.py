"""Soft weight-sharing (Ullrich et al. 2017) on LeNet-300-100 / digits: retraining under the
Gaussian-mixture prior leaves each layer a few shared values and mostly zeros, keeps accuracy,
and packs several times smaller than the dense file."""

import math

import pytest
import torch
from torch import nn

from netshrink.codec import packed_bytes
from netshrink.errors import ConfigError
from netshrink.layers import copy_model
from netshrink.mask import apply_mask
from netshrink.share.codebooks import ScalarCodebook
from netshrink.share.soft import (
    MixtureNLL,
    MixturePrior,
    ShareSoftConfig,
    _merged,
    harden_soft,
    share_soft,
    train_soft,
)
from netshrink.train import evaluate

# Digits trains ~40 steps an epoch (MNIST: ~470): the paper's prior strength and initial width
# converge too slowly for a test, so the prior is stronger (tau), starts narrower and learns its
# variances faster here. The defaults are what Fashion-MNIST runs with.
DIGITS = {"tau": 0.1, "init_std": 0.05, "lr_log_variances": 0.01, "batch_size": 32, "epochs": 20}


def linears(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


@pytest.fixture(scope="module")
def shared(mlp, digits):
    return share_soft(copy_model(mlp), digits, DIGITS, progress=False).eval()


def test_each_layer_is_pruned_and_shares_at_most_j_values(shared):
    total = zeros = 0
    for name, module in linears(shared):
        (codebook,) = [p for p in module.parametrizations.weight]
        assert isinstance(codebook, ScalarCodebook), name
        values = module.weight.detach().unique()
        assert values.numel() <= ShareSoftConfig().components, name
        assert 0 in values.tolist(), name
        total += module.weight.numel()
        zeros += int((module.weight == 0).sum())
    assert zeros / total > 0.9  # the paper prunes LeNet-300-100 to 4% of its weights


def test_accuracy_holds_and_the_file_is_many_times_smaller(mlp, shared, digits):
    dense = evaluate(mlp, digits.loader("test", 256)).top1
    after = evaluate(shared, digits.loader("test", 256)).top1
    assert dense > 0.93 and after > 0.85, (dense, after)
    assert len(packed_bytes(shared)) * 20 < len(packed_bytes(mlp))


def test_training_leaves_weights_continuous_and_hardening_snaps_them(mlp, digits):
    training = train_soft(copy_model(mlp), digits, {**DIGITS, "epochs": 1}, progress=False)
    (_, first), *_ = linears(training.model)
    assert not hasattr(first, "parametrizations")  # still one plain weight, many values
    assert first.weight.detach().unique().numel() > ShareSoftConfig().components
    hardened = harden_soft(training)
    assert hardened is training.model
    assert first.weight.detach().unique().numel() <= ShareSoftConfig().components


def test_the_defaults_are_the_papers():
    c = ShareSoftConfig()
    assert (c.components, c.pi_zero, c.tau) == (17, 0.999, 0.005)
    assert (c.zero_prior.alpha, c.zero_prior.beta) == (5000, 2)
    assert (c.other_prior.alpha, c.other_prior.beta) == (250, 0.1)
    assert (c.lr_weights, c.lr_means, c.lr_log_variances, c.lr_mixing) == (5e-4, 1e-4, 3e-3, 3e-3)
    assert c.init_std == 0.25 and c.epochs == 10


@pytest.mark.parametrize("bad", [{"components": 1}, {"tau": -0.1}, {"pi_zero": 1.0}])
def test_a_bad_config_is_refused(bad, mlp, digits):
    with pytest.raises(ConfigError):
        share_soft(copy_model(mlp), digits, bad, progress=False)


def test_pruned_weights_stay_pruned(mlp, digits):
    model = copy_model(mlp)
    keep = torch.rand(model.fc1.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    apply_mask(model.fc1, "weight", keep)
    share_soft(model, digits, {"epochs": 1}, layers=["fc1"], progress=False)
    assert not model.fc1.weight[~keep].any()
    assert not torch.nn.utils.parametrize.is_parametrized(model.fc2)


def test_close_components_merge_and_the_zero_component_keeps_mean_zero():
    prior = MixturePrior(ShareSoftConfig(components=5, init_std=0.01), -0.3, 0.3)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([-0.3, 0.001, 0.2, 0.201]))
    means, log_variances, log_proportions = _merged(prior, 1.0)
    assert means.tolist() == pytest.approx([0.0, -0.3, 0.2005])
    assert log_proportions.exp().sum().item() == pytest.approx(1.0)
    assert len(log_variances) == 3
    assert len(_merged(prior, 0.0)[0]) == 5


def test_the_mixture_term_and_its_gradients_are_the_plain_formulas():
    torch.manual_seed(0)
    w = (torch.randn(50, dtype=torch.double) * 0.3).requires_grad_()
    means = torch.tensor([0.0, -0.4, 0.2, 0.5], dtype=torch.double, requires_grad=True)
    log_variances = torch.tensor([-4.0, -2.0, -3.0, -2.5], dtype=torch.double, requires_grad=True)
    log_proportions = torch.log_softmax(torch.randn(4, dtype=torch.double), 0).requires_grad_()
    inputs = (w, means, log_variances, log_proportions)
    assert torch.autograd.gradcheck(MixtureNLL.apply, inputs)
    diff = w[:, None] - means[None, :]
    joint = log_proportions - 0.5 * (math.log(2 * math.pi) + log_variances)
    plain = -torch.logsumexp(joint - 0.5 * diff.square() * torch.exp(-log_variances), 1).sum()
    assert torch.allclose(MixtureNLL.apply(*inputs), plain)
