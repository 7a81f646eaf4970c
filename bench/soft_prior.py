"""The soft weight-sharing prior's cost a step: netshrink.share.soft.MixtureNLL (the mixture
term and its gradients from kept responsibilities) against autograd through the plain formula.

    python bench/soft_prior.py [--weights 266200] [--components 16 33] [--threads 1]

For each component count: forward + backward of -sum log sum_j pi_j N(w | mu_j, sigma_j^2) over
`--weights` random weights, the median of 3 rounds of 10 steps, and the largest relative
difference of the four gradients. Writes bench/results/soft_prior.json and its section of
docs/benchmarks.md.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import publish  # noqa: E402
from netshrink.share.soft import MixtureNLL  # noqa: E402

COLUMNS = [
    "weights",
    "components",
    "autograd ms",
    "MixtureNLL ms",
    "speed-up",
    "gradient rel. diff",
]


def plain(w, means, log_variances, log_proportions):
    diff = w[:, None] - means[None, :]
    normal = -0.5 * (math.log(2 * math.pi) + log_variances + diff.square() * (-log_variances).exp())
    return -torch.logsumexp(log_proportions + normal, 1).sum()


def step_ms(function, inputs) -> float:
    rounds = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(10):
            function(*inputs).backward()
        rounds.append((time.perf_counter() - start) / 10 * 1000)
    return sorted(rounds)[1]


def gradients(function, inputs) -> list[torch.Tensor]:
    for tensor in inputs:
        tensor.grad = None
    function(*inputs).backward()
    return [tensor.grad.clone() for tensor in inputs]


def case(weights: int, components: int) -> dict:
    torch.manual_seed(0)
    inputs = (
        (torch.randn(weights) * 0.04).requires_grad_(),
        torch.cat([torch.zeros(1), torch.linspace(-0.5, 0.5, components - 1)]).requires_grad_(),
        torch.full((components,), 2 * math.log(0.25)).requires_grad_(),  # ShareSoftConfig's start
        torch.log_softmax(torch.randn(components), 0).requires_grad_(),
    )
    ours, reference = gradients(MixtureNLL.apply, inputs), gradients(plain, inputs)
    diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours, reference))
    slow, fast = step_ms(plain, inputs), step_ms(MixtureNLL.apply, inputs)
    return {"weights": weights, "components": components, "autograd ms": round(slow, 1),
            "MixtureNLL ms": round(fast, 1), "speed-up": round(slow / fast, 2),
            "gradient rel. diff": f"{diff:.1e}"}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=int, default=266_200, help="LeNet-300-100's count")
    parser.add_argument("--components", type=int, nargs="+", default=[16, 33])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [case(args.weights, j) for j in args.components]
    notes = (
        "One forward + backward of the mixture term (float32, CPU; weights of std 0.04, every "
        "component's std 0.25 as ShareSoftConfig starts them), the median of 3 rounds of "
        f"10 steps, torch on {args.threads} thread(s); the gradient difference is the largest "
        "relative one of the weights', means', log-variances' and log-proportions' gradients. "
        "On LeNet-300-100 this term is most of a soft-sharing step (the network's own forward "
        "and backward take ~2 ms)."
    )
    publish("soft_prior", "The soft weight-sharing prior's cost a step (bench/soft_prior.py)",
            rows, COLUMNS, notes)  # fmt: skip


if __name__ == "__main__":
    main()
