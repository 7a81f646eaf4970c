"""Sparse variational dropout (Molchanov et al. 2017): the KL approximation, the local
reparameterization's noise, and the pruning it ends in."""

import pytest
import torch
from torch import nn

from netshrink.errors import ConfigError, UnsupportedLayerError
from netshrink.layers import copy_model
from netshrink.mask import get_mask
from netshrink.prune import layer_sparsity, prune_magnitude, prune_variational
from netshrink.prune.variational import LOG_SIGMA2, PruneVariationalConfig, VariationalLayer
from netshrink.share import share_kmeans
from netshrink.train import evaluate

QUICK = {"fit": {"epochs": 10, "optimizer": "adam", "lr": 1e-3, "batch_size": 64}}


def test_kl_is_the_papers_approximation_and_falls_as_alpha_grows():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    vd = VariationalLayer(layer, PruneVariationalConfig())
    kls = []
    for log_alpha in (-8.0, -2.0, 0.0, 2.0, 8.0):
        with torch.no_grad():  # log alpha = log sigma^2 - log theta^2, theta = 1
            getattr(layer, LOG_SIGMA2).fill_(log_alpha)
        kls.append(vd.kl().item() / 4)
    a = torch.tensor(0.0)  # eq. 14 at log alpha = 0, written out
    expected = -(
        0.63576 * torch.sigmoid(1.87320 + 1.48695 * a) - 0.5 * torch.log1p(a.exp()) - 0.63576
    )
    assert kls[2] == pytest.approx(expected.item(), rel=1e-5)
    assert all(x > y for x, y in zip(kls, kls[1:]))  # a noisier weight costs less
    assert kls[-1] == pytest.approx(0.0, abs=1e-3) and kls[0] > 1.0
    vd.remove()
    assert not hasattr(layer, LOG_SIGMA2) and not layer._forward_hooks


def test_training_noise_has_the_local_reparameterizations_mean_and_variance():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    VariationalLayer(layer, PruneVariationalConfig())  # its hook lives on the layer
    with torch.no_grad():
        getattr(layer, LOG_SIGMA2).copy_(torch.tensor([[-1.0, -2.0, 0.0], [-3.0, -1.0, -2.0]]))
    x = torch.tensor([[1.0, -2.0, 0.5]]).expand(20000, 3)
    out = layer(x)  # training mode: one sample per row
    mean = nn.functional.linear(x[:1], layer.weight, layer.bias)
    variance = x[:1].square() @ getattr(layer, LOG_SIGMA2).exp().T
    assert torch.allclose(out.mean(0), mean[0], atol=0.05)
    assert torch.allclose(out.var(0), variance[0], rtol=0.05)


def test_evaluation_uses_the_mask_of_log_alpha_below_the_threshold():
    layer = nn.Linear(2, 1, bias=False)
    VariationalLayer(layer, PruneVariationalConfig(threshold=3.0))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0]]))
        getattr(layer, LOG_SIGMA2).copy_(torch.tensor([[4.0, 2.0]]))  # log alpha 4 and 2
    layer.eval()
    assert layer(torch.tensor([[10.0, 1.0]])).item() == pytest.approx(1.0)


def test_prune_variational_sparsifies_and_keeps_accuracy(mlp, digits):
    model = copy_model(mlp)
    before = evaluate(model, digits.loader("test", 256)).top1
    prune_variational(model, digits, QUICK, progress=False)
    sparsity = layer_sparsity(model)
    # measured: fc1 87%, fc2 97%, fc3 57% pruned, 96.7% -> 94.4% top-1
    assert sparsity["fc1.weight"] > 0.8 and sparsity["fc2.weight"] > 0.9, sparsity
    assert sparsity["fc3.weight"] > 0.4, sparsity
    assert evaluate(model, digits.loader("test", 256)).top1 > before - 0.05
    names = [name for name, _ in model.named_parameters()]
    assert not any(LOG_SIGMA2 in name for name in names)  # the variances are gone with training
    assert all(not m._forward_hooks for m in model.modules())


def test_weights_pruned_before_stay_pruned(mlp, digits):
    model = copy_model(mlp)
    prune_magnitude(model, {"threshold": {"kind": "sparsity", "sparsity": 0.5}})
    before = get_mask(model.fc1, "weight").mask.clone()
    prune_variational(model, digits, QUICK | {"kl_scale": 0.0}, progress=False)
    after = get_mask(model.fc1, "weight").mask
    assert not (after.bool() & ~before.bool()).any()


def test_weight_decay_and_shared_layers_are_refused(mlp, digits):
    with pytest.raises(ConfigError, match="weight_decay must be 0"):
        prune_variational(copy_model(mlp), digits, {"fit": {"weight_decay": 1e-4}})
    shared = copy_model(mlp)
    share_kmeans(shared, {"bits": 3})
    with pytest.raises(UnsupportedLayerError, match="prune before sharing"):
        prune_variational(shared, digits, QUICK, progress=False)
