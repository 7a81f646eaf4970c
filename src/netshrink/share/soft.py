"""Soft weight-sharing (Ullrich, Meeds & Welling, ICLR 2017, "Soft Weight-Sharing for Neural
Network Compression"): retraining under a Gaussian-mixture prior prunes and quantizes in one run.

One mixture of J components over all weights of the chosen layers (the paper's one prior for
the whole net): component 0 is the pruning component, mean fixed at 0 and mixing proportion fixed
at `pi_zero`; the J - 1 others have learned means (initialised evenly over the weights' range),
learned log-variances (initial std `init_std`) and learned mixing proportions (`1 - pi_zero`
shared by a softmax over logits). Gamma hyper-priors on the precisions keep the components
narrow. The training loss is

    cross-entropy + tau * (-log p(w) - log p(precisions)) / N_train

with Adam and one learning rate for the network, the means, the log-variances and the mixing
logits each (the authors' tutorial's four). Afterwards components closer than `merge_kl`
(symmetric KL divergence) are merged, and each weight becomes the mean of its most responsible
component: those of the zero component are pruned, the rest share the means, stored as a
ScalarCodebook (mask + per-layer codebook), which the .nsk file packs as sparse shared values.

The training is this module's own loop (four learning rates, the prior's parameters beside the
model's): one process only, no torchrun, no mixed precision, no resume. Each step evaluates the
prior on every chosen weight against every component (weights x J values, forward and backward):
on a CPU that, not the network, is most of the time for LeNet-300-100.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config import Settings, takes_mappings
from ..data import DataSplits
from ..device import to_model
from ..errors import ConfigError
from ..layers import LayerFilter
from ..loaders import LoaderSplits, as_data, batch_pair, training_examples
from ..mask import apply_mask
from ..progress import make_progress
from .codebooks import CodebookStage, ScalarCodebook, attach, chosen_layers, take_weight


class GammaPrior(Settings):
    """A Gamma(alpha, beta) hyper-prior on a component's precision 1 / sigma^2 (shape, rate)."""

    alpha: float = Field(gt=0)
    beta: float = Field(gt=0)


class ShareSoftConfig(Settings):
    """The paper's settings for LeNet where it states them: J = 17 components (one of them the
    zero component, `pi_zero` = 0.999), `tau` = 0.005, Gamma hyper-priors (5000, 2) on the zero
    component's precision and (250, 0.1) on the others', Adam at 5e-4 (weights), 1e-4 (means),
    3e-3 (log-variances) and 3e-3 (mixing logits), initial std 0.25 (the authors' tutorial).
    `epochs` = 10 is a CPU-friendly default (the paper retrains LeNets for 30-50). Means start
    evenly spaced over the chosen weights' own range (the paper's [-0.6, 0.6] is LeNet's).
    After training, components whose symmetric KL divergence is below `merge_kl` merge (closest
    pair first); `merge_kl = 0` merges none.

    The zero component's hyper-prior decides whether the hardening costs accuracy. With the
    paper's Gamma(5000, 2) the likelihood of a few 100k weights outweighs it and the zero
    component widens with them; pruning its weights then costs a trained model most of its
    accuracy. On Fashion-MNIST's LeNet-300-100 (`python bench/ablate_soft.py`, validation,
    baseline 90.20%; the tutorial's J 16, pi_zero 0.99, 10 epochs): std 0.036 and 42.1% hardened
    at tau 0.003 (the defaults, 30 epochs: 22.6%); Gamma(5e5, 200) holds it at std 0.022 (73.0%);
    Gamma(5e5, 2) at std 0.002, where pruning the zero component's weights costs nothing (89.8%
    with the others left continuous) and tau sets the sparsity: tau 0.03 84% pruned, 88.4%
    hardened, 89.1% after 2 epochs training the means; tau 0.1 95%, 84.5% / 86.5%. More
    components cut the snapping's cost (33 at tau 0.1: 86.7% / 88.2%) at ~5x the training time
    (measured before MixtureNLL, which makes the 33-component step 3.3x faster). The Caffe
    LeNet-5 (base 91.73%), the same settings: tau 0.03 92% pruned, 90.7% after the means'
    training; tau 0.1 97%, 88.8%. The recipes recipes/soft-weight-sharing-*.yaml use
    Gamma(5e5, 2). On scikit-learn's digits the paper's settings at 10 epochs of ~40 steps
    pruned every weight (top-1 10.9%); the tests use tau 0.1, init_std 0.05, lr_log_variances
    0.01, batch 32, 20 epochs (96.7% -> 92.5%, 98.5% of fc1 zero). Check the result (a recipe
    stage's `budget` does)."""

    components: int = Field(17, ge=2, le=256)
    pi_zero: float = Field(0.999, gt=0, lt=1)
    tau: float = Field(0.005, ge=0)
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=1)
    lr_weights: float = Field(5e-4, gt=0)
    lr_means: float = Field(1e-4, gt=0)
    lr_log_variances: float = Field(3e-3, gt=0)
    lr_mixing: float = Field(3e-3, gt=0)
    init_std: float = Field(0.25, gt=0)
    zero_prior: GammaPrior = GammaPrior(alpha=5000, beta=2)
    other_prior: GammaPrior = GammaPrior(alpha=250, beta=0.1)
    merge_kl: float = Field(1.0, ge=0)
    seed: int = 0


class MixturePrior(nn.Module):
    """The Gaussian mixture over the weights: component 0 at mean 0 with proportion `pi_zero`,
    components 1..J-1 learned. `neg_log_prob(w)` is -log p(w) summed over `w`, plus the Gamma
    hyper-priors' -log density of the precisions (as the authors write it: in the precision,
    without the change of variables to the log-variance)."""

    def __init__(self, config: ShareSoftConfig, low: float, high: float) -> None:
        super().__init__()
        free = config.components - 1
        self.config = config
        self.means = nn.Parameter(torch.linspace(low, high, free))
        self.log_variances = nn.Parameter(
            torch.full((config.components,), 2 * math.log(config.init_std))
        )
        self.logits = nn.Parameter(torch.zeros(free))

    def all_means(self) -> torch.Tensor:
        return torch.cat([self.means.new_zeros(1), self.means])

    def log_proportions(self) -> torch.Tensor:
        pi0 = self.config.pi_zero
        free = torch.log_softmax(self.logits, 0) + math.log1p(-pi0)
        return torch.cat([free.new_full((1,), math.log(pi0)), free])

    def neg_log_prob(self, w: torch.Tensor) -> torch.Tensor:
        nll = MixtureNLL.apply(w, self.all_means(), self.log_variances, self.log_proportions())
        log_precision = -self.log_variances
        alpha = torch.tensor(
            [self.config.zero_prior.alpha] + [self.config.other_prior.alpha] * len(self.means)
        ).to(w)
        beta = torch.tensor(
            [self.config.zero_prior.beta] + [self.config.other_prior.beta] * len(self.means)
        ).to(w)
        hyper = ((1 - alpha) * log_precision + beta * torch.exp(log_precision)).sum()
        return nll + hyper


class MixtureNLL(torch.autograd.Function):
    """-sum_i log sum_j pi_j N(w_i | mu_j, sigma_j^2) and its gradients in two passes over the
    (weights x components) table, from the responsibilities the forward pass keeps: autograd
    through the formula makes several, and this term is most of a soft-sharing
    step (`python bench/soft_prior.py`, LeNet-300-100's 266k weights, one thread: 1.75x faster
    at 16 components, 3.3x at 33; gradients equal to 6e-7 relative)."""

    @staticmethod
    def forward(ctx, w, means, log_variances, log_proportions):
        precision = torch.exp(-log_variances)
        joint = (w[:, None] - means[None, :]).square_().mul_(-0.5 * precision)
        joint.add_(log_proportions - 0.5 * (math.log(2 * math.pi) + log_variances))
        lse = torch.logsumexp(joint, 1)
        responsibility = joint.sub_(lse[:, None]).exp_()
        ctx.save_for_backward(w, means, precision, responsibility)
        return -lse.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        w, means, precision, responsibility = ctx.saved_tensors
        diff = w[:, None] - means[None, :]
        pull = responsibility * diff * precision  # r_ij (w_i - mu_j) / sigma_j^2
        spread = (pull * diff).sum(0)  # sum_i r_ij (w_i - mu_j)^2 / sigma_j^2
        share = responsibility.sum(0)
        return (
            grad * pull.sum(1),
            -grad * pull.sum(0),
            grad * 0.5 * (share - spread),
            -grad * share,
        )


@takes_mappings
def share_soft(
    model: nn.Module,
    data: DataSplits | LoaderSplits,
    config: ShareSoftConfig,
    *,
    layers: LayerFilter = None,
    progress: bool = True,
) -> nn.Module:
    """Retrain `model` under a Gaussian-mixture prior on the chosen layers' weights, then prune
    the weights of the zero component and share the rest among the components' means; returns
    the model (Ullrich et al. 2017, section 3 and appendix A).

    Each chosen weight becomes `means[indices] * mask` (a ScalarCodebook; the means are then the
    layer's trainable tensor, so a later `fit` fine-tunes them as in k-means sharing). Weights
    pruned before stay pruned. Biases and unchosen layers train at `lr_weights`, unshared.

    Example:
        >>> share_soft(model, data, ShareSoftConfig(epochs=30))  # doctest: +SKIP
    """
    return harden_soft(train_soft(model, data, config, layers=layers, progress=progress))


@dataclass
class SoftTraining:
    """A model retrained under the mixture prior, not yet hardened: its chosen layers (weights
    still continuous), their kept positions, the learned prior and the settings."""

    model: nn.Module
    chosen: list[tuple[str, nn.Module]]
    keeps: list[torch.Tensor]
    prior: MixturePrior
    config: ShareSoftConfig


@takes_mappings
def train_soft(
    model: nn.Module,
    data: DataSplits | LoaderSplits,
    config: ShareSoftConfig,
    *,
    layers: LayerFilter = None,
    progress: bool = True,
) -> SoftTraining:
    """share_soft's first step: retrain `model` in place under the Gaussian-mixture prior (the
    weights stay continuous; measuring the model here shows what the hardening costs)."""
    data = as_data(data)
    chosen = chosen_layers(model, layers)
    keeps = _start(chosen)
    weights = [m.weight.detach()[k] for (_, m), k in zip(chosen, keeps)]
    flat = torch.cat([w.reshape(-1) for w in weights])
    if not flat.numel():
        raise ConfigError("the chosen layers have no surviving weights to share")
    prior = MixturePrior(config, float(flat.min()), float(flat.max())).to(flat.device)
    _train(model, data, config, chosen, keeps, prior, progress)
    return SoftTraining(model, chosen, keeps, prior, config)


def harden_soft(training: SoftTraining) -> nn.Module:
    """share_soft's second step: merge close components (`merge_kl`), then give each weight its
    most responsible component's mean (the zero component's are pruned); returns the model."""
    means, components = assign_components(training)
    for (name, module), keep, component in zip(training.chosen, training.keeps, components):
        value, _ = take_weight(module, name)
        survive = keep.clone()
        survive[keep] = component > 0  # the zero component's weights are pruned
        used, inverse = torch.unique(component[component > 0], return_inverse=True)
        indices = torch.zeros(value.shape, dtype=torch.long, device=value.device)
        indices[survive] = inverse
        centroids = means[used].to(value.dtype) if used.numel() else value.new_zeros(1)
        attach(module, ScalarCodebook(centroids.clone(), indices, survive.to(value.dtype)))
    return training.model


def assign_components(training: SoftTraining) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The components' means after merging (`merge_kl`; index 0 the zero component) and, per
    chosen layer, each kept weight's most responsible component: what harden_soft snaps to."""
    means, log_variances, log_proportions = _merged(training.prior, training.config.merge_kl)
    components = []
    for (name, module), keep in zip(training.chosen, training.keeps):
        value, _ = take_weight(module, name)
        components.append(_assign(value[keep], means, log_variances, log_proportions))
    return means, components


def _start(chosen: list[tuple[str, nn.Module]]) -> list[torch.Tensor]:
    """The kept positions of each chosen layer, its weight left plain or under its pruning Mask
    (an earlier codebook's values become a trainable weight again)."""
    keeps = []
    for name, module in chosen:
        _, keep = take_weight(module, name)
        if not keep.all():
            apply_mask(module, "weight", keep)
        keeps.append(keep)
    return keeps


def _train(model, data, config, chosen, keeps, prior, progress) -> None:
    """Adam on cross-entropy + tau * -log prior / N_train, for `config.epochs` epochs."""
    torch.manual_seed(config.seed)
    loader = data.loader("train", config.batch_size, seed=config.seed)
    size = training_examples(data)
    optimizer = torch.optim.Adam(
        [
            {"params": [p for p in model.parameters() if p.requires_grad]},
            {"params": [prior.means], "lr": config.lr_means},
            {"params": [prior.log_variances], "lr": config.lr_log_variances},
            {"params": [prior.logits], "lr": config.lr_mixing},
        ],
        lr=config.lr_weights,
    )
    scale = config.tau / max(size, 1)
    full = [bool(k.all()) for k in keeps]
    was_training = model.training
    model.train()
    with make_progress(progress) as bar:
        task = bar.add_task("soft sharing", total=config.epochs * len(loader), status="")
        for epoch in range(config.epochs):
            loader.set_epoch(epoch)
            for batch in loader:
                x, y = to_model(model, *batch_pair(batch))
                loss = F.cross_entropy(model(x), y)
                w = torch.cat(
                    [
                        (m.weight if f else m.weight[k]).reshape(-1)
                        for (_, m), k, f in zip(chosen, keeps, full)
                    ]
                )
                loss = loss + scale * prior.neg_log_prob(w)
                if not torch.isfinite(loss):
                    raise ConfigError(
                        f"soft sharing diverged (loss {loss.item()}): lower the learning rates"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.advance(task)
            bar.update(task, status=f"epoch {epoch + 1} loss {loss.item():.3f}")
    model.train(was_training)


def _merged(prior: MixturePrior, threshold: float):
    """(means, log-variances, log-proportions) after merging, closest pair first, every two
    components whose symmetric KL divergence is below `threshold`: the proportions add, the mean
    and variance are the proportion-weighted ones, and a merge into the zero component keeps its
    mean at 0. Index 0 stays the zero component."""
    with torch.no_grad():
        means = prior.all_means().double().tolist()
        variances = prior.log_variances.double().exp().tolist()
        weights = prior.log_proportions().double().exp().tolist()
    while len(means) > 1:
        best, pair = threshold, None
        for a in range(len(means)):
            for b in range(a + 1, len(means)):
                kl = _symmetric_kl(means[a], variances[a], means[b], variances[b])
                if kl < best:
                    best, pair = kl, (a, b)
        if pair is None:
            break
        a, b = pair
        total = weights[a] + weights[b]
        if a != 0:
            means[a] = (weights[a] * means[a] + weights[b] * means[b]) / total
        variances[a] = (weights[a] * variances[a] + weights[b] * variances[b]) / total
        weights[a] = total
        for values in (means, variances, weights):
            del values[b]
    device = prior.means.device
    return (
        torch.tensor(means, device=device),
        torch.tensor(variances, device=device).log(),
        torch.tensor(weights, device=device).log(),
    )


def _symmetric_kl(m1: float, v1: float, m2: float, v2: float) -> float:
    """KL(N1 || N2) + KL(N2 || N1) of two 1-d Gaussians."""
    return 0.5 * (v1 / v2 + v2 / v1 - 2 + (m1 - m2) ** 2 * (1 / v1 + 1 / v2))


def _assign(w, means, log_variances, log_proportions) -> torch.Tensor:
    """Each weight's most responsible component (0: the zero component)."""
    w = w.double()
    diff = w[:, None] - means[None, :]
    joint = log_proportions - 0.5 * (log_variances + diff.square() * torch.exp(-log_variances))
    return joint.argmax(1)


class ShareSoftStage(CodebookStage):
    """Soft weight-sharing: retraining under a Gaussian-mixture prior, then pruning and sharing
    by each weight's most responsible component (Ullrich et al. 2017)."""

    method: Literal["share_soft"]
    config: ShareSoftConfig = ShareSoftConfig()

    def share(self, model, ctx):
        return share_soft(model, ctx.data, self.config, layers=self.layers, progress=ctx.progress)
