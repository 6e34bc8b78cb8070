"""What sampler authors share: argument checks, one round of evaluations
([`evaluate`][driffusion.core.samplers.base.evaluate]), the callback payload and the solver set-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from driffusion.core.model import CountingModel
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import DDPM, Solver, SolverState, check_step_noise, get_solver

Callback = Callable[[dict[str, Any]], None]


def check_state(x: Tensor, schedule: Schedule) -> None:
    """Raise ``ValueError`` for a state that is not a finite ``[B, *shape]`` tensor."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a [B, *shape] tensor with B >= 1, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds non-finite values (NaN or inf)")


def check_noise(noise: Tensor | None, x: Tensor, schedule: Schedule) -> None:
    """Pre-drawn DDPM noise must be ``[N, *x.shape]``, finite, on a VP schedule."""
    if noise is None:
        return
    if schedule.kind != "vp":
        raise ValueError("DDPM noise was given, but the schedule is a flow schedule")
    check_step_noise(noise, x, schedule)


def check_positive_int(value: object, name: str, upper: int | None = None) -> int:
    """``value`` as an int in ``1..upper``, or ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{name} must be at most {upper}, got {value!r}")
    return value


def check_tolerance(tol: object) -> float:
    """``tol`` as a finite float ``>= 0``, or ``ValueError`` naming it."""
    if (
        isinstance(tol, bool)
        or not isinstance(tol, (int, float))
        or not math.isfinite(tol)
        or tol < 0
    ):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    return float(tol)


def max_rms(a: Tensor, b: Tensor) -> float:
    """The largest per-sample root-mean-square difference of two ``[B, ...]`` states."""
    return float((a - b).flatten(1).double().pow(2).mean(dim=1).sqrt().max())


def evaluate(
    model: CountingModel, states: Sequence[Tensor], points: Sequence[int], schedule: Schedule
) -> Tensor:
    """One round: the raw outputs ``[K, B, *shape]`` for ``K`` states at ``K`` grid points.

    The states are stacked into ``[K, B, *shape]`` and the network times of the points are
    passed as float32 on the states' device: what every model receives from every sampler.
    """
    xs = torch.stack(list(states))
    t = schedule.times(list(points)).to(device=xs.device, dtype=torch.float32)
    return model(xs, t)


def payload(
    i: int, x: Tensor, denoised: Tensor, schedule: Schedule, rounds: int, **extra: Any
) -> dict[str, Any]:
    """The one callback payload of every sampler, for a state ``x`` at grid point ``i``:

    ``{"i": i, "x": x_i, "denoised": x0_hat, "sigma": sigma_i, "rounds": r}`` (plus any
    sampler-specific keys, e.g. SRDS's ``"iteration"``), where ``x0_hat`` is the clean estimate
    of the step that produced ``x_i`` and ``r`` the serial rounds spent so far.
    """
    return {
        "i": i,
        "x": x,
        "denoised": denoised,
        "sigma": schedule.sigma(i),
        "rounds": rounds,
        **extra,
    }


def setup_solver(
    solver: Solver | str | None, x: Tensor, schedule: Schedule, noise: Tensor | None
) -> tuple[Solver, Schedule, SolverState]:
    """Check the inputs and return the solver, the grid it runs on and its initial state."""
    check_state(x, schedule)
    resolved = get_solver(solver, noise)
    if isinstance(resolved, DDPM) or (noise is not None and not resolved.stochastic):
        check_noise(noise, x, schedule)
    grid = resolved.prepare(schedule)
    return resolved, grid, resolved.init(x, grid, noise)
