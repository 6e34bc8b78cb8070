"""Transitions between grid points of a [`Schedule`][driffusion.core.schedule.Schedule].

All functions are pure: tensors and a schedule in, a tensor out. Noise is always an argument.
"""

from __future__ import annotations

from torch import Tensor

from driffusion.core.parameterization import to_x0_eps
from driffusion.core.schedule import Schedule


def _check_points(schedule: Schedule, i: int, j: int) -> None:
    if not 0 <= i <= j <= schedule.num_steps:
        raise ValueError(f"need 0 <= i <= j <= {schedule.num_steps}, got i={i}, j={j}")


def predict_x0_eps(x: Tensor, out: Tensor, schedule: Schedule, i: int) -> tuple[Tensor, Tensor]:
    """``(x0_hat, eps_hat)`` of the raw output ``out`` read at state ``x`` on grid point ``i``:
    the clean estimate (and the noise estimate) every sampler and solver uses
    ([`to_x0_eps`][driffusion.core.parameterization.to_x0_eps] at the point's ``alpha_i``,
    ``sigma_i``)."""
    return to_x0_eps(x, out, schedule.alpha(i), schedule.sigma(i), schedule.prediction_type)


def skip_transition(x: Tensor, out: Tensor, schedule: Schedule, i: int, j: int) -> Tensor:
    r"""The deterministic (DDIM, ``eta = 0``) transition from point ``i`` straight to point ``j``.

    $$\mathrm{skip}(x, \mathrm{out}, i \to j)
        = \alpha_j\, \hat x_0 + \sigma_j\, \hat\varepsilon$$

    where ``(x0_hat, eps_hat)`` is ``out`` read at ``x`` on point ``i``. For ``j = i + 1`` this is
    the DDIM step; for rectified flow it is the Euler step ``x + (s_j - s_i) * v``, computed in
    that form (as diffusers does) for the best rounding. ``skip(i -> i)`` returns ``x`` itself.

    Args:
        x: state at point ``i``.
        out: raw network output at point ``i`` (any parameterisation of the schedule).
        schedule: the grid.
        i: source point.
        j: target point, ``i <= j <= N``.
    """
    _check_points(schedule, i, j)
    if i == j:
        return x
    if schedule.prediction_type == "flow":
        return x + (schedule.sigma(j) - schedule.sigma(i)) * out
    x0, eps = predict_x0_eps(x, out, schedule, i)
    return schedule.alpha(j) * x0 + schedule.sigma(j) * eps


def ddpm_posterior(schedule: Schedule, i: int, j: int) -> tuple[float, float, float]:
    r"""Coefficients ``(c_x0, c_x, variance)`` of the DDPM posterior ``q(x_j | x_i, x0)``.

    With ``r = abar_i / abar_j`` (``i`` noisier than ``j``):

    $$\mu = \frac{\sqrt{\bar a_j}(1 - r)}{1 - \bar a_i} x_0
        + \frac{\sqrt{r}(1 - \bar a_j)}{1 - \bar a_i} x_i, \qquad
      \mathrm{Var} = \frac{(1 - r)(1 - \bar a_j)}{1 - \bar a_i}.$$
    """
    _check_points(schedule, i, j)
    if schedule.kind != "vp":
        raise ValueError("the DDPM posterior needs a VP schedule, got a flow schedule")
    abar_i = schedule.alpha(i) ** 2
    abar_j = schedule.alpha(j) ** 2
    r = abar_i / abar_j
    c_x0 = abar_j**0.5 * (1.0 - r) / (1.0 - abar_i)
    c_x = r**0.5 * (1.0 - abar_j) / (1.0 - abar_i)
    variance = max((1.0 - r) * (1.0 - abar_j) / (1.0 - abar_i), 0.0)
    return c_x0, c_x, variance


def ddpm_transition(
    x: Tensor, out: Tensor, schedule: Schedule, i: int, j: int, noise: Tensor
) -> Tensor:
    """A draw from the DDPM posterior over a ``j - i`` step skip, with the noise passed in.

    ``x_j = mu(x0_hat, x_i) + sqrt(Var) * noise``
    (see [`ddpm_posterior`][driffusion.core.transitions.ddpm_posterior]); for
    ``j = i + 1`` it is diffusers' ``DDPMScheduler.step`` (``fixed_small`` variance, no clipping).
    """
    if noise.shape != x.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match x {tuple(x.shape)}")
    if i == j:
        return x
    x0, _ = predict_x0_eps(x, out, schedule, i)
    return ddpm_transition_from_x0(x, x0, schedule, i, j, noise)


def ddpm_transition_from_x0(
    x: Tensor, x0: Tensor, schedule: Schedule, i: int, j: int, noise: Tensor
) -> Tensor:
    """[`ddpm_transition`][driffusion.core.transitions.ddpm_transition] given the clean estimate
    ``x0_hat`` instead of a raw output.

    Chaining it with a fixed ``x0_hat`` over ``i -> i+1 -> ... -> j`` draws from the same
    ``j - i`` step posterior, with the noise of each single step: how stochastic drafts are made.
    """
    c_x0, c_x, variance = ddpm_posterior(schedule, i, j)
    return c_x0 * x0 + c_x * x + variance**0.5 * noise
