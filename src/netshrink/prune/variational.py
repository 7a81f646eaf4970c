"""Sparse variational dropout (Molchanov, Ashukha & Vetrov, ICML 2017, "Variational Dropout
Sparsifies Deep Neural Networks"): every weight learns its own dropout rate, and the weights
whose rate goes to infinity are pruned.

Each chosen weight is a Gaussian N(theta, sigma^2) with its own variance; alpha = sigma^2 /
theta^2 is its dropout rate. Training maximises the variational lower bound

    cross-entropy  +  kl_scale * w(step) * KL(q || log-uniform prior) / N_train

with the paper's approximation of the KL term (k1 = 0.63576, k2 = 1.87320, k3 = 1.48695), the
additive reparameterization (theta and log sigma^2 are the trained parameters, log alpha is
derived and clipped to [-10, 10]) and the local reparameterization trick: a layer's output is
sampled as mean + sqrt(variance) * noise, with mean = layer(x; theta) and variance =
layer(x^2; sigma^2), the same convolution or product. `w` rises linearly from 0 to 1 over the
first `kl_warmup` of the steps (the authors' code warms the KL weight up too). Afterwards a weight
with log alpha >= `threshold` (3, the paper's) is pruned: the model keeps theta under a pruning
Mask, which the rest of netshrink (sharing, fixed point, the .nsk file) treats as any pruning.

Training is `netshrink.train.fit` (validation each epoch, DDP): the log sigma^2 tensors
are registered on their layers for the run, forward hooks add the noise in training and apply
the current mask in evaluation (so the validation top-1 fit prints is the pruned model's), and
fit's loss gets the KL term. Weight decay must be 0: the KL term is the regularizer.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from torch.nn.utils import parametrize

from ..config import Settings, takes_mappings
from ..data import DataSplits
from ..errors import ConfigError, UnsupportedLayerError
from ..layers import LayerFilter, select_layers
from ..loaders import LoaderSplits, as_data, training_examples
from ..mask import Mask, apply_mask, get_mask
from ..stage import Stage
from ..train import FitConfig, fit
from .gradual import training_steps

LOG_SIGMA2 = "weight_log_sigma2"  # the parameter each chosen layer carries while it trains
K1, K2, K3 = 0.63576, 1.87320, 1.48695  # the paper's fit of the KL divergence (eq. 14)
LOG_ALPHA_CLIP = 10.0
EPS = 1e-8


class PruneVariationalConfig(Settings):
    """`fit`: the training (Adam at 1e-3 as the authors' code, no weight decay, 10 epochs from
    the trained model: a CPU-sized default, the paper trains LeNets for 200 epochs from
    scratch); `threshold`: prune where log alpha >= it (the paper's 3, a dropout rate above
    0.95); `init_log_sigma2`: the variances' start (-10: the trained model's function at first);
    `kl_scale`: the KL term's weight at the end of the warm-up (1 is the variational bound;
    more prunes harder); `kl_warmup`: the share of the steps over which it rises from 0."""

    fit: FitConfig = FitConfig(epochs=10, optimizer="adam", lr=1e-3, weight_decay=0.0)
    threshold: float = Field(3.0, gt=-LOG_ALPHA_CLIP, lt=LOG_ALPHA_CLIP)
    init_log_sigma2: float = Field(-10.0, le=0)
    kl_scale: float = Field(1.0, ge=0)
    kl_warmup: float = Field(0.5, ge=0, le=1)

    @field_validator("fit")
    @classmethod
    def _no_weight_decay(cls, config: FitConfig) -> FitConfig:
        if config.weight_decay:
            raise ValueError("weight_decay must be 0: the KL term is sparse VD's regularizer")
        return config


class VariationalLayer:
    """One layer under sparse VD: its log sigma^2 parameter and the forward hook that samples
    the output (training) or applies the mask log alpha < threshold (evaluation)."""

    def __init__(self, module: nn.Module, config: PruneVariationalConfig) -> None:
        self.module, self.threshold = module, config.threshold
        mask = get_mask(module, "weight")
        self.keep = None if mask is None else mask.mask  # positions pruned before stay pruned
        start = torch.full_like(module.weight.detach(), config.init_log_sigma2)
        module.register_parameter(LOG_SIGMA2, nn.Parameter(start))
        self.handle = module.register_forward_hook(self._forward)

    def log_alpha(self) -> torch.Tensor:
        theta = self.module.weight
        log_sigma2 = getattr(self.module, LOG_SIGMA2)
        return (log_sigma2 - torch.log(theta.square() + EPS)).clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)

    def kl(self) -> torch.Tensor:
        """KL(q || prior) summed over the layer's unpruned weights (the paper's eq. 14)."""
        log_alpha = self.log_alpha()
        neg_kl = K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1
        if self.keep is not None:
            neg_kl = neg_kl * self.keep
        return -neg_kl.sum()

    def survivors(self) -> torch.Tensor:
        """The weights kept: log alpha below the threshold (and not pruned before)."""
        keep = self.log_alpha().detach() < self.threshold
        return keep if self.keep is None else keep & self.keep.bool()

    def _apply(self, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
        if isinstance(self.module, nn.Linear):
            return F.linear(x, weight, bias)
        return self.module._conv_forward(x, weight, bias)

    def _forward(self, module, args, output):
        x = args[0]
        if module.training:
            variance = getattr(module, LOG_SIGMA2).exp()
            if self.keep is not None:
                variance = variance * self.keep
            std = torch.sqrt(self._apply(x * x, variance, None) + EPS)
            return output + std * torch.randn_like(output)
        weight = module.weight * self.survivors().to(module.weight.dtype)
        return self._apply(x, weight, module.bias)

    def remove(self) -> None:
        self.handle.remove()
        delattr(self.module, LOG_SIGMA2)


@takes_mappings
def prune_variational(
    model: nn.Module,
    data: DataSplits | LoaderSplits,
    config: PruneVariationalConfig,
    *,
    layers: LayerFilter = None,
    progress: bool = True,
) -> nn.Module:
    """Train `model` with sparse variational dropout on the chosen Conv2d / Linear layers, then
    prune the weights whose log alpha reached `config.threshold`; returns the model, its chosen
    weights under pruning Masks (Molchanov et al. 2017).

    Example:
        >>> prune_variational(model, data, {"fit": {"epochs": 30}})  # doctest: +SKIP
    """
    data = as_data(data)
    chosen = _chosen(model, layers)
    variational = [VariationalLayer(module, config) for _, module in chosen]
    try:
        warmup = _KlWarmup(config, training_examples(data), training_steps(data, config.fit))
        loss_fn = _loss(variational, warmup)
        fit(model, data, config.fit, loss_fn=loss_fn, step_hooks=[warmup], progress=progress)
        survivors = [layer.survivors() for layer in variational]
    finally:
        for layer in variational:
            layer.remove()
    for (_, module), keep in zip(chosen, survivors):
        apply_mask(module, "weight", keep)
    return model


def _chosen(model: nn.Module, layers: LayerFilter) -> list[tuple[str, nn.Module]]:
    """The Conv2d and Linear layers `layers` names (default: all), plain or under a pruning Mask."""
    chosen = select_layers(model, layers)
    if not chosen:
        raise ConfigError("no layers to prune: the filter matched no convolution or linear layer")
    for name, module in chosen:
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise UnsupportedLayerError(
                f"layer {name} is a {type(module).__name__}: sparse variational dropout takes "
                "Conv2d and Linear layers; leave it out of the layer list"
            )
        if parametrize.is_parametrized(module, "weight") and not all(
            isinstance(p, Mask) for p in module.parametrizations["weight"]
        ):
            raise UnsupportedLayerError(
                f"layer {name}'s weight is shared or quantized: prune before sharing or fixed point"
            )
    return chosen


class _KlWarmup:
    """The KL term's weight: 0 -> `kl_scale` linearly over `kl_warmup` of the steps (a step hook)."""

    def __init__(self, config: PruneVariationalConfig, size: int, steps: int) -> None:
        self.ramp = max(1, round(config.kl_warmup * steps))
        self.scale, self.size = config.kl_scale, max(size, 1)
        self.weight = 0.0 if config.kl_warmup else config.kl_scale

    def __call__(self, step: int) -> None:
        self.weight = self.scale * min(1.0, step / self.ramp)


def _loss(variational: list[VariationalLayer], warmup: _KlWarmup):
    def loss(logits, y, x):
        ce = F.cross_entropy(logits, y)
        if not warmup.weight:
            return ce
        kl = sum(layer.kl() for layer in variational)
        return ce + warmup.weight * kl / warmup.size

    return loss


class PruneVariationalStage(Stage):
    """Sparse variational dropout: train per-weight dropout rates, prune the weights whose rate
    went to 1 (Molchanov et al. 2017)."""

    method: Literal["prune_variational"]
    config: PruneVariationalConfig = PruneVariationalConfig()

    def apply(self, model, ctx):
        return prune_variational(
            model, ctx.data, self.config, layers=self.layers, progress=ctx.progress
        )
