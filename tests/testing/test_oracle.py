"""The exact Gaussian-mixture denoiser of driffusion.testing: Tweedie-exact, and exact sampling
with it reaches the data distribution."""

from __future__ import annotations

import torch

from driffusion.core import (
    sample_serial,
)
from driffusion.testing import GaussianMixtureDenoiser, VPNoiseLevels
from tests.support import ABAR, make_oracle, make_vp


def test_oracle_sampling_reaches_the_data_distribution() -> None:
    """With the exact denoiser, 200 DDIM steps carry the exact noisy marginal at t = 999 onto
    the data distribution N(mu, s^2 I) (starting from N(0, I) instead biases the mean by
    ``alpha_0 * s * mu``, about 0.07 here, which this test once caught)."""
    mean = torch.full((1, 8), 2.0, dtype=torch.float64)
    oracle = GaussianMixtureDenoiser(
        mean, torch.tensor([0.5]), torch.tensor([1.0]), VPNoiseLevels(ABAR)
    )
    sched = make_vp(200, spacing="trailing")
    gen = torch.Generator().manual_seed(0)
    x = sched.alpha(0) * oracle.sample_data(4000, seed=1) + sched.sigma(0) * torch.randn(
        4000, 8, generator=gen, dtype=torch.float64
    )
    samples = sample_serial(oracle, x, sched).x
    assert abs(float(samples.mean()) - 2.0) < 0.02
    assert abs(float(samples.std()) - 0.5) < 0.02


def test_oracle_is_tweedie_exact() -> None:
    """eps_hat = -sigma * grad log p(x) for the noisy mixture density, computed by autograd."""
    oracle = make_oracle(make_vp(10))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    alpha, sigma = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.714, dtype=torch.float64)
    flat = x.reshape(5, -1)
    mu = oracle.means.reshape(oracle.means.shape[0], -1)
    var = alpha**2 * oracle.stds**2 + sigma**2
    dim = flat.shape[1]
    sq = ((flat[:, None] - alpha * mu[None]) ** 2).sum(-1)
    logp = torch.logsumexp(oracle.weights.log() - 0.5 * sq / var - 0.5 * dim * var.log(), dim=1)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    _, eps = oracle.x0_eps(x.detach(), alpha.expand(5), sigma.expand(5))
    torch.testing.assert_close(eps, -sigma * grad)
