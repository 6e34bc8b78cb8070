r"""An analytic denoiser for Gaussian-mixture data, exact in every parameterisation.

Data ``x0 ~ sum_m w_m N(mu_m, s_m^2 I)`` noised as ``x = alpha x0 + sigma eps`` is again a mixture,
``x ~ sum_m w_m N(alpha mu_m, (alpha^2 s_m^2 + sigma^2) I)``, so the posterior mean is

$$E[x_0 \mid x] = \sum_m r_m(x) \Big(\mu_m + \frac{\alpha s_m^2}{\alpha^2 s_m^2 + \sigma^2}
    (x - \alpha\mu_m)\Big)$$

with responsibilities ``r_m(x)``; ``eps_hat = (x - alpha x0_hat) / sigma``. This is the exact
minimiser of the training loss, i.e. a perfectly trained network, and it follows the model
contract ``model(xs[K, B, *shape], t[K]) -> out``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from driffusion.core.parameterization import PredictionType, check_prediction_type, from_x0_eps
from driffusion.core.schedule import Schedule


@dataclass(frozen=True)
class VPNoiseLevels:
    """Map a VP network time ``t`` to ``(alpha, sigma)``.

    At an integer training timestep ``abar[t]`` exactly; between two, the VE sigma
    ``s = sqrt((1 - abar) / abar)`` is interpolated linearly in ``log s`` (the inverse of
    diffusers' ``_sigma_to_t``, so Karras / exponential grids land on their own sigmas).
    """

    alphas_cumprod: Tensor

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]:
        abar_train = self.alphas_cumprod.to(torch.float64)
        times = t.detach().cpu().to(torch.float64)
        low = times.floor().long().clamp(0, abar_train.numel() - 1)
        high = (low + 1).clamp(max=abar_train.numel() - 1)
        w = (times - low).clamp(0, 1)
        log_s = 0.5 * ((1.0 - abar_train) / abar_train).log()
        s = ((1 - w) * log_s[low] + w * log_s[high]).exp()
        abar = torch.where(w == 0, abar_train[low], 1.0 / (1.0 + s**2))
        return abar.sqrt(), (1.0 - abar).sqrt()


@dataclass(frozen=True)
class FlowNoiseLevels:
    """Map a rectified-flow network time ``t = T * s`` to ``(1 - s, s)``."""

    num_train_timesteps: int = 1000

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]:
        s = t.cpu().to(torch.float64) / self.num_train_timesteps
        return 1.0 - s, s


class GaussianMixtureDenoiser:
    """The exact denoiser of an isotropic Gaussian mixture, as a model.

    Args:
        means: ``[M, *shape]`` component means.
        stds: ``[M]`` component standard deviations (isotropic).
        weights: ``[M]`` mixture weights (normalised here).
        noise_levels: maps network times to ``(alpha, sigma)``:
            [`VPNoiseLevels`][driffusion.testing.oracle.VPNoiseLevels] or
            [`FlowNoiseLevels`][driffusion.testing.oracle.FlowNoiseLevels].
        prediction_type: the parameterisation of the returned outputs.
    """

    def __init__(
        self,
        means: Tensor,
        stds: Tensor,
        weights: Tensor,
        noise_levels: VPNoiseLevels | FlowNoiseLevels,
        prediction_type: PredictionType = "epsilon",
    ) -> None:
        check_prediction_type(prediction_type)
        if means.ndim < 2:
            raise ValueError(f"means must be [M, *shape], got {tuple(means.shape)}")
        m = means.shape[0]
        if stds.shape != (m,) or weights.shape != (m,):
            raise ValueError(
                f"stds and weights must be [{m}], got {stds.shape} and {weights.shape}"
            )
        if (stds <= 0).any() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("stds must be positive and weights non-negative with a positive sum")
        self.means = means.to(torch.float64)
        self.stds = stds.to(torch.float64)
        self.weights = weights.to(torch.float64) / weights.sum()
        self.noise_levels = noise_levels
        self.prediction_type: PredictionType = prediction_type
        self.shape = tuple(means.shape[1:])

    @classmethod
    def random(
        cls,
        shape: tuple[int, ...],
        components: int = 4,
        *,
        noise_levels: VPNoiseLevels | FlowNoiseLevels,
        prediction_type: PredictionType = "epsilon",
        seed: int = 0,
        spread: float = 1.0,
        std: float = 0.3,
    ) -> GaussianMixtureDenoiser:
        """A reproducible random mixture: means ``~ N(0, spread^2)``, component std ``std``."""
        gen = torch.Generator().manual_seed(seed)
        means = spread * torch.randn((components, *shape), generator=gen, dtype=torch.float64)
        stds = torch.full((components,), std, dtype=torch.float64)
        weights = torch.rand(components, generator=gen, dtype=torch.float64) + 0.5
        return cls(means, stds, weights, noise_levels, prediction_type)

    def x0_eps(
        self, x: Tensor, alpha: Tensor, sigma: Tensor, components: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Exact ``(E[x0 | x], E[eps | x])`` for ``x`` ``[R, *shape]``, per-row levels ``[R]``.

        ``components`` (``[R]``) conditions each row on one mixture component.
        """
        rows = x.shape[0]
        flat = x.detach().cpu().to(torch.float64).reshape(rows, -1)  # [R, D]
        alpha, sigma = alpha.cpu(), sigma.cpu()
        mu = self.means.reshape(self.means.shape[0], -1)  # [M, D]
        dim = flat.shape[1]
        a = alpha.to(torch.float64)[:, None]  # [R, 1]
        s = sigma.to(torch.float64)[:, None]
        var = a**2 * self.stds[None, :] ** 2 + s**2  # [R, M]
        sq = ((flat[:, None, :] - a[:, :, None] * mu[None]) ** 2).sum(-1)  # [R, M]
        logp = self.weights.log()[None] - 0.5 * sq / var - 0.5 * dim * var.log()
        if components is not None:
            mask = torch.full_like(logp, -math.inf)
            mask[torch.arange(rows), components.cpu()] = 0.0
            logp = logp + mask
        resp = torch.softmax(logp, dim=1)  # [R, M]
        gain = a * self.stds[None, :] ** 2 / var  # [R, M]
        cond = mu[None] + gain[:, :, None] * (flat[:, None, :] - a[:, :, None] * mu[None])
        x0 = (resp[:, :, None] * cond).sum(1)  # [R, D]
        eps = (flat - a * x0) / s
        return x0.reshape(x.shape), eps.reshape(x.shape)

    def __call__(self, xs: Tensor, t: Tensor) -> Tensor:
        """The model contract: ``xs[K, B, *shape]``, ``t[K]`` -> outputs ``[K, B, *shape]``."""
        k, b = xs.shape[:2]
        rows = xs.reshape(k * b, *xs.shape[2:])
        return self.rows(rows, t.repeat_interleave(b)).reshape(xs.shape)

    def rows(self, x: Tensor, t: Tensor, label: Tensor | None = None) -> Tensor:
        """Per-row outputs for ``x[M, *shape]`` at times ``t[M]``.

        With ``label`` (``[M]`` ints) each row is denoised under the class-conditional data
        ``N(mu_c, s_c^2 I)`` with ``c = label % M``: an exact class-conditional model.
        """
        alpha, sigma = self.noise_levels(t)
        if label is None:
            x0, eps = self.x0_eps(x, alpha, sigma)
        else:
            x0, eps = self.x0_eps(x, alpha, sigma, components=label.long() % len(self.weights))
        view = (x.shape[0],) + (1,) * (x.ndim - 1)
        out = from_x0_eps(
            x0,
            eps,
            alpha.view(view),  # type: ignore[arg-type]
            sigma.view(view),  # type: ignore[arg-type]
            self.prediction_type,
        )
        return out.to(device=x.device, dtype=x.dtype)

    def sample_data(self, n: int, seed: int = 0) -> Tensor:
        """``n`` exact draws from the data distribution (float64)."""
        gen = torch.Generator().manual_seed(seed)
        comp = torch.multinomial(self.weights, n, replacement=True, generator=gen)
        noise = torch.randn((n, *self.shape), generator=gen, dtype=torch.float64)
        std = self.stds[comp].view((n,) + (1,) * len(self.shape))
        return self.means[comp] + std * noise


def toy_problem(
    steps: int = 50, batch: int = 2, seed: int = 0
) -> tuple[GaussianMixtureDenoiser, Tensor, Schedule]:
    """``(model, x, schedule)``: an exact denoiser, start noise and a grid, for examples and tests.

    A random 8-component mixture of ``4 x 8 x 8`` data under Stable Diffusion's scaled-linear
    betas, epsilon prediction, on the ``trailing`` grid of ``steps`` steps; ``x`` is ``batch``
    standard-normal states from ``Generator(seed)``.
    """
    from driffusion.core.schedule import alphas_cumprod_from_betas, vp_schedule, vp_timesteps

    abar = alphas_cumprod_from_betas()
    model = GaussianMixtureDenoiser.random((4, 8, 8), noise_levels=VPNoiseLevels(abar))
    x = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    return model, x, vp_schedule(abar, vp_timesteps(steps, spacing="trailing"))
