r"""Sampling schedules as immutable data.

A schedule is a grid of ``N + 1`` points, indexed ``i = 0..N`` from pure noise (``i = 0``) to
clean data (``i = N``). Every diffusion family used here writes the noisy state at point ``i`` as

$$x_i = \alpha_i\, x_0 + \sigma_i\, \varepsilon .$$

- VP models (DDPM / DDIM, Stable Diffusion 1-2 and XL): ``alpha_i = sqrt(abar[t_i])`` and
  ``sigma_i = sqrt(1 - abar[t_i])`` with ``abar = alphas_cumprod`` of the training schedule at the
  grid's timesteps; the final point uses ``final_alpha_cumprod``.
- Rectified flow (Stable Diffusion 3): ``alpha_i = 1 - s_i`` and ``sigma_i = s_i``; the network
  is fed ``t_i = num_train_timesteps * s_i`` and the last sigma is 0.

The network is only ever evaluated at points ``0..N-1``; the time of the final point is kept (NaN
where it has none) so that slices of a schedule stay schedules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from driffusion.core.parameterization import PredictionType, check_prediction_type

Spacing = Literal["leading", "trailing", "linspace"]
ScheduleKind = Literal["vp", "flow"]
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")


@dataclass(frozen=True, eq=False)
class Schedule:
    """An immutable sampling grid of ``num_steps + 1`` points.

    Attributes:
        alphas: ``[N + 1]`` float64 signal scales ``alpha_i``.
        sigmas: ``[N + 1]`` float64 noise scales ``sigma_i``.
        timesteps: ``[N + 1]`` float64 network times ``t_i``; NaN for a point that has none
            (the final point of a VP grid).
        prediction_type: what the network outputs: ``epsilon``, ``v_prediction``, ``sample`` or
            ``flow``.
        kind: ``"vp"`` (variance preserving, ``alpha^2 + sigma^2 = 1``) or ``"flow"``.
    """

    alphas: Tensor
    sigmas: Tensor
    timesteps: Tensor
    prediction_type: PredictionType
    kind: ScheduleKind

    def __post_init__(self) -> None:
        check_prediction_type(self.prediction_type)
        if self.kind not in ("vp", "flow"):
            raise ValueError(f"schedule kind must be 'vp' or 'flow', got {self.kind!r}")
        for name in ("alphas", "sigmas", "timesteps"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or value.ndim != 1:
                raise ValueError(f"{name} must be a 1-D tensor, got {type(value).__name__}")
            # A private float64 CPU copy: the schedule is data, not a view of a caller's tensor.
            object.__setattr__(self, name, value.detach().to("cpu", torch.float64).clone())
        n_points = self.alphas.numel()
        if n_points < 2:
            raise ValueError(
                f"a schedule needs at least 1 step (2 points), got {n_points} point(s)"
            )
        if self.sigmas.numel() != n_points or self.timesteps.numel() != n_points:
            raise ValueError(
                "alphas, sigmas and timesteps must have the same length, got "
                f"{n_points}, {self.sigmas.numel()} and {self.timesteps.numel()}"
            )
        if not (torch.isfinite(self.alphas).all() and torch.isfinite(self.sigmas).all()):
            raise ValueError("alphas and sigmas must be finite")
        if (self.sigmas[:-1] <= 0).any():
            raise ValueError("sigma must be positive at every point where the network is evaluated")
        if (self.alphas < 0).any():
            raise ValueError("alphas must be non-negative")
        if self.kind == "flow" and self.prediction_type != "flow":
            raise ValueError(
                f"a flow schedule needs prediction_type 'flow', got {self.prediction_type!r}"
            )
        if self.kind == "vp" and self.prediction_type == "flow":
            raise ValueError("prediction_type 'flow' needs a flow schedule (kind='flow')")

    @property
    def num_steps(self) -> int:
        """The number of steps ``N`` (the grid has ``N + 1`` points)."""
        return self.alphas.numel() - 1

    def __len__(self) -> int:
        return self.num_steps

    @property
    def alphas_cumprod(self) -> Tensor:
        """``abar_i = alpha_i^2`` at every point (meaningful for VP schedules)."""
        return self.alphas**2

    def alpha(self, i: int) -> float:
        """``alpha_i`` as a Python float (schedules live on the CPU: no device sync)."""
        return float(self.alphas[i])

    def sigma(self, i: int) -> float:
        """``sigma_i`` as a Python float."""
        return float(self.sigmas[i])

    def times(self, indices: Tensor | list[int]) -> Tensor:
        """Network times ``t_i`` for the given grid indices (float64, CPU)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        if index.numel() and (index.min() < 0 or index.max() >= self.num_steps):
            raise ValueError(
                f"the network is evaluated at points 0..{self.num_steps - 1}, got {index.tolist()}"
            )
        return self.timesteps[index]

    def subgrid(self, points: list[int] | Tensor) -> Schedule:
        """The schedule restricted to the given, strictly increasing grid points.

        ``subgrid([0, 5, 10])`` is a 2-step coarse grid whose steps skip 5 fine steps each;
        ``subgrid(range(a, b + 1))`` is a slice.
        """
        index = torch.as_tensor(list(points) if not isinstance(points, Tensor) else points)
        index = index.to(torch.long)
        if index.numel() < 2:
            raise ValueError(f"a sub-grid needs at least 2 points, got {index.tolist()}")
        if index.min() < 0 or index.max() > self.num_steps:
            raise ValueError(
                f"sub-grid points must lie in 0..{self.num_steps}, got {index.tolist()}"
            )
        if (index[1:] <= index[:-1]).any():
            raise ValueError(f"sub-grid points must be strictly increasing, got {index.tolist()}")
        return Schedule(
            self.alphas[index],
            self.sigmas[index],
            self.timesteps[index],
            self.prediction_type,
            self.kind,
        )

    def slice(self, start: int, stop: int) -> Schedule:
        """Points ``start..stop`` (inclusive) as a schedule of ``stop - start`` steps."""
        if not 0 <= start < stop <= self.num_steps:
            raise ValueError(
                f"slice needs 0 <= start < stop <= {self.num_steps}, got start={start}, stop={stop}"
            )
        return self.subgrid(list(range(start, stop + 1)))

    def __repr__(self) -> str:
        return (
            f"Schedule(kind={self.kind!r}, prediction_type={self.prediction_type!r}, "
            f"num_steps={self.num_steps})"
        )


def _check_steps(num_steps: int, name: str = "num_steps") -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {num_steps!r}")


def alphas_cumprod_from_betas(
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
    beta_schedule: Literal["linear", "scaled_linear"] = "scaled_linear",
) -> Tensor:
    """The training ``alphas_cumprod`` of a beta schedule, as diffusers builds it (float32).

    ``linear``: ``beta = linspace(beta_start, beta_end)``; ``scaled_linear`` (Stable Diffusion):
    ``beta = linspace(sqrt(beta_start), sqrt(beta_end))^2``; ``abar_t = prod_{s<=t} (1 - beta_s)``.
    """
    _check_steps(num_train_timesteps, "num_train_timesteps")
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = (
            torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32)
            ** 2
        )
    else:
        raise ValueError(
            f"beta_schedule must be 'linear' or 'scaled_linear', got {beta_schedule!r}"
        )
    return torch.cumprod(1.0 - betas, dim=0)


def vp_timesteps(
    num_steps: int,
    num_train_timesteps: int = 1000,
    spacing: Spacing = "leading",
    steps_offset: int = 0,
) -> Tensor:
    """Inference timesteps (descending, int64) exactly as diffusers' DDIM/DDPM ``set_timesteps``.

    - ``leading``: ``t = arange(N) * (T // N) + steps_offset``, reversed;
    - ``trailing``: ``t = round(arange(T, 0, -T / N)) - 1``;
    - ``linspace``: ``t = round(linspace(0, T - 1, N))``, reversed.
    """
    _check_steps(num_steps)
    _check_steps(num_train_timesteps, "num_train_timesteps")
    if num_steps > num_train_timesteps:
        raise ValueError(f"num_steps={num_steps} exceeds num_train_timesteps={num_train_timesteps}")
    if spacing == "leading":
        t = torch.arange(num_steps, dtype=torch.float64) * (num_train_timesteps // num_steps)
        t = t.round().flip(0) + steps_offset
    elif spacing == "trailing":
        t = _arange_descending(num_train_timesteps, num_train_timesteps / num_steps).round() - 1
    elif spacing == "linspace":
        t = _linspace_like_numpy(0.0, num_train_timesteps - 1.0, num_steps).round().flip(0)
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return t.to(torch.int64)


def _linspace_like_numpy(start: float, stop: float, num: int) -> Tensor:
    """``numpy.linspace`` value for value (``start + k * step``, exact end point).

    torch's linspace rounds differently, which moves some ``round()`` results by one timestep.
    """
    if num == 1:
        return torch.tensor([start], dtype=torch.float64)
    step = (stop - start) / (num - 1)
    values = torch.arange(num, dtype=torch.float64) * step + start
    values[-1] = stop
    return values


def _arange_descending(stop: int, step: float) -> Tensor:
    """``numpy.arange(stop, 0, -step)`` in float64, value for value.

    numpy fills ``start + k * delta`` with ``delta = (start - step) - start`` (not ``-step``), and
    that rounding decides some ``round()`` results of the ``trailing`` grid.
    """
    count = math.ceil(stop / step)
    delta = (float(stop) - step) - float(stop)
    return float(stop) + torch.arange(count, dtype=torch.float64) * delta


def vp_schedule(
    alphas_cumprod: Tensor,
    timesteps: Tensor | list[int],
    final_alpha_cumprod: float = 1.0,
    prediction_type: PredictionType = "epsilon",
) -> Schedule:
    """A VP schedule on the given (descending) integer timesteps of a training schedule.

    Args:
        alphas_cumprod: ``[T]`` training ``abar_t``.
        timesteps: the ``N`` inference timesteps, noisiest first
            (e.g. [`vp_timesteps`][driffusion.core.schedule.vp_timesteps] or a
            diffusers scheduler's ``timesteps``).
        final_alpha_cumprod: ``abar`` of the clean end point: 1.0 when the scheduler has
            ``set_alpha_to_one``, else ``alphas_cumprod[0]``.
        prediction_type: the network's parameterisation.

    Returns:
        The schedule with ``alpha_i = sqrt(abar[t_i])``, ``sigma_i = sqrt(1 - abar[t_i])``.
    """
    t = torch.as_tensor(timesteps).to(torch.long).flatten()
    if t.numel() < 1:
        raise ValueError("timesteps must hold at least one timestep")
    abar_train = torch.as_tensor(alphas_cumprod).to(torch.float64)
    if t.min() < 0 or t.max() >= abar_train.numel():
        raise ValueError(
            f"timesteps must lie in 0..{abar_train.numel() - 1}, got {t.min()}..{t.max()}"
        )
    if (t[1:] >= t[:-1]).any():
        raise ValueError("timesteps must be strictly decreasing (noisiest first)")
    if not 0.0 < final_alpha_cumprod <= 1.0:
        raise ValueError(f"final_alpha_cumprod must lie in (0, 1], got {final_alpha_cumprod}")
    abar = torch.cat([abar_train[t], torch.tensor([final_alpha_cumprod], dtype=torch.float64)])
    times = torch.cat([t.to(torch.float64), torch.tensor([math.nan], dtype=torch.float64)])
    return Schedule(abar.sqrt(), (1.0 - abar).sqrt(), times, prediction_type, "vp")


def flow_sigmas(
    num_steps: int,
    shift: float = 1.0,
    num_train_timesteps: int = 1000,
) -> Tensor:
    """Inference sigmas (``N + 1``, last 0) as diffusers' ``FlowMatchEulerDiscreteScheduler``.

    The training grid is ``s = shift * u / (1 + (shift - 1) * u)`` with ``u = t / T``, ``t = T..1``;
    inference takes ``N`` values evenly spaced in time between its ends, shifts them again (as
    diffusers does) and appends 0; the arithmetic follows diffusers so grids match bit for bit.
    """
    _check_steps(num_steps)
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")

    def shifted(u: Tensor) -> Tensor:
        return shift * u / (1 + (shift - 1) * u)

    train_u = torch.linspace(1, num_train_timesteps, num_train_timesteps, dtype=torch.float32)
    train_sigmas = shifted(train_u.flip(0) / num_train_timesteps)
    sigma_max, sigma_min = float(train_sigmas[0]), float(train_sigmas[-1])
    # Inference grid in float64 (numpy's linspace in diffusers), shifted again, then float32.
    t = _linspace_like_numpy(
        sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_steps
    )
    sigmas = shifted(t / num_train_timesteps).to(torch.float32)
    return torch.cat([sigmas, torch.zeros(1)])


def flow_schedule(sigmas: Tensor, num_train_timesteps: int = 1000) -> Schedule:
    """A rectified-flow schedule from ``N + 1`` decreasing sigmas (the last usually 0).

    ``alpha_i = 1 - s_i``, ``sigma_i = s_i``, network time ``t_i = num_train_timesteps * s_i``.
    """
    s = torch.as_tensor(sigmas).to(torch.float64).flatten()
    if s.numel() < 2:
        raise ValueError(f"a flow schedule needs at least 2 sigmas, got {s.numel()}")
    if (s[1:] >= s[:-1]).any():
        raise ValueError("sigmas must be strictly decreasing (noisiest first)")
    if s.max() > 1 or s.min() < 0:
        raise ValueError(f"flow sigmas must lie in [0, 1], got {float(s.min())}..{float(s.max())}")
    # Network times as the scheduler makes them: from the float32 sigmas it stores.
    times = (s.to(torch.float32) * num_train_timesteps).to(torch.float64)
    return Schedule(1.0 - s, s, times, "flow", "flow")


def sigma_schedule(
    sigmas: Tensor,
    timesteps: Tensor,
    prediction_type: PredictionType = "epsilon",
) -> Schedule:
    """A VP schedule from variance-exploding sigmas ``s = sigma / alpha`` (k-diffusion's and
    diffusers' Euler / DPM-Solver / UniPC ``sigmas``), last one usually 0.

    ``alpha_i = 1 / sqrt(1 + s_i^2)``, ``sigma_i = s_i alpha_i``; ``timesteps`` are the ``N``
    network times (possibly non-integer, see [`sigma_to_t`][driffusion.core.schedule.sigma_to_t]).
    """
    s = torch.as_tensor(sigmas).to(torch.float64).flatten()
    t = torch.as_tensor(timesteps).to(torch.float64).flatten()
    if s.numel() < 2 or t.numel() != s.numel() - 1:
        raise ValueError(
            f"need N + 1 sigmas and N timesteps, got {s.numel()} sigmas and {t.numel()} timesteps"
        )
    if (s < 0).any() or not torch.isfinite(s).all():
        raise ValueError("sigmas must be finite and non-negative")
    if (s[1:] >= s[:-1]).any():
        raise ValueError("sigmas must be strictly decreasing (noisiest first)")
    alphas = 1.0 / (s**2 + 1.0).sqrt()
    times = torch.cat([t, torch.tensor([math.nan], dtype=torch.float64)])
    return Schedule(alphas, s * alphas, times, prediction_type, "vp")


def training_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """The training grid in VE sigmas, ``s_t = sqrt((1 - abar_t) / abar_t)`` (ascending in t)."""
    abar = torch.as_tensor(alphas_cumprod).to(torch.float64)
    return ((1.0 - abar) / abar).sqrt()


def sigma_to_t(sigmas: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Network times of VE sigmas by linear interpolation in ``log sigma`` between training
    timesteps (diffusers' ``_sigma_to_t``): an integer where ``sigma`` is on the training grid."""
    log_train = training_sigmas(alphas_cumprod).log()
    log_s = torch.as_tensor(sigmas).to(torch.float64).clamp_min(1e-10).log().flatten()
    dists = log_s[None, :] - log_train[:, None]
    low = (dists >= 0).to(torch.int64).cumsum(0).argmax(0).clamp(max=log_train.numel() - 2)
    high = low + 1
    lo, hi = log_train[low], log_train[high]
    w = ((lo - log_s) / (lo - hi)).clamp(0, 1)
    return (1 - w) * low + w * high


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022): ``(s_max^(1/rho) + u (s_min^(1/rho) - s_max^(1/rho)))^rho``,
    ``u = 0..1`` in ``num_steps`` points (no final 0)."""
    _check_steps(num_steps)
    ramp = _linspace_like_numpy(0.0, 1.0, num_steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, num_steps: int) -> Tensor:
    """Sigmas evenly spaced in ``log sigma`` from ``sigma_max`` to ``sigma_min``."""
    _check_steps(num_steps)
    return _linspace_like_numpy(math.log(sigma_max), math.log(sigma_min), num_steps).exp()


def beta_sigmas(
    sigma_min: float, sigma_max: float, num_steps: int, alpha: float = 0.6, beta: float = 0.6
) -> Tensor:
    """ "Beta sampling" (Lee et al., 2024): ``s_min + F^{-1}(1 - u) (s_max - s_min)`` with
    ``F`` the Beta(alpha, beta) distribution function, ``u = 0..1`` in ``num_steps`` points."""
    _check_steps(num_steps)
    u = _linspace_like_numpy(0.0, 1.0, num_steps)
    ppf = torch.tensor([_beta_ppf(1.0 - float(v), alpha, beta) for v in u], dtype=torch.float64)
    return sigma_min + ppf * (sigma_max - sigma_min)


def _beta_ppf(q: float, a: float, b: float) -> float:
    """The inverse of the regularised incomplete beta function, by bisection to 1e-15."""
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-16:
            break
    return 0.5 * (lo + hi)


def _beta_cdf(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta ``I_x(a, b)`` by Lentz's continued fraction."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _beta_cdf(1.0 - x, b, a)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return math.exp(log_front) * f / a


def reference_schedule(
    alphas_cumprod: Tensor, points: int, prediction_type: PredictionType = "epsilon"
) -> Schedule:
    """A dense grid for reference solutions of the probability-flow ODE of a VP model.

    ``points`` sigmas log-uniform (uniform in ``lambda``) from ``sigma(T - 1)`` down to
    ``sigma(0)`` of the training schedule, then 0 (the final denoise); network times by
    [`sigma_to_t`][driffusion.core.schedule.sigma_to_t]. A high-order solver on it
    (DPM-Solver++(3M)) approximates the ODE's
    solution far better than any sampler under test, which benchmarks check by comparing it with
    a second solver.
    """
    _check_steps(points, "points")
    train = training_sigmas(alphas_cumprod)
    sigmas = exponential_sigmas(float(train[0]), float(train[-1]), points)
    return sigma_schedule(
        torch.cat([sigmas, torch.zeros(1, dtype=sigmas.dtype)]),
        sigma_to_t(sigmas, alphas_cumprod),
        prediction_type,
    )
