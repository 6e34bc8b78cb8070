"""The serial sampler: one network evaluation per step, one step per round, any solver."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import Solver
from driffusion.core.transitions import predict_x0_eps

from .base import Callback, Sampler, evaluate, payload, setup_solver
from .settings import solver_setting


@dataclass(frozen=True, repr=False)
class Serial(Sampler):
    """[`sample_serial`][driffusion.core.samplers.serial.sample_serial] as a value.

    Attributes:
        solver: the solver's name (``None``: DDIM / flow Euler, or DDPM with noise).

    Examples:
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=20)
        >>> sampler = Serial(solver="dpmpp_2m")
        >>> sampler
        Serial(solver='dpmpp_2m')
        >>> sampler(model, x, schedule).stats.rounds
        20
    """

    name = "serial"
    parallel = False
    solver: str | Solver | None = solver_setting()


@Serial.implemented_by
def sample_serial(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    solver: Solver | str | None = Serial.solver,
    noise: Tensor | None = None,
    callback: Callback | None = None,
    check_finite: bool = True,
) -> SampleResult:
    r"""Run a solver over the whole grid, one step per round.

    $$x_{i+1}, s_{i+1} = \mathrm{step}(x_i, f(x_i, t_i), i, s_i), \qquad i = 0..N-1$$

    with the solver state ``s`` (see [`driffusion.core.solvers`][driffusion.core.solvers]). The
    default solver is the DDIM step (flow: the Euler step) or, with ``noise``, the DDPM step.

    Args:
        model: ``model(xs[K, B, ...], t[K]) -> out``
            (see [`driffusion.core.model`][driffusion.core.model]).
        x: the initial state ``[B, *shape]`` at grid point 0.
        schedule: the grid.
        solver: a [`Solver`][driffusion.core.solvers.Solver] or its name (``"dpmpp_2m"``, ...).
        noise: pre-drawn noise ``[N, B, *shape]`` of a stochastic solver (``ddpm``,
            ``euler_ancestral``, ``dpmpp_2m_sde``); ``None`` for deterministic ones.
        callback: called with [`payload`][driffusion.core.samplers.base.payload] for each new
            state.
        check_finite: raise ``ValueError`` on a non-finite network output.

    Returns:
        The state at point ``N`` and stats: ``N`` evaluations in ``N`` rounds (``N + 1`` for
        ``plms``, whose Heun warm start evaluates its first step twice).

    Examples:
        >>> import torch
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)  # an exact denoiser, noise, a grid
        >>> from driffusion.core import sample_serial
        >>> result = sample_serial(model, x, schedule, solver="dpmpp_2m")
        >>> result.stats.rounds, result.stats.evaluations
        (50, 50)
    """
    Serial.check(solver=solver)
    solver, schedule, state = setup_solver(solver, x, schedule, noise)
    counter = CountingModel(model, check_finite=check_finite)
    for i in range(schedule.num_steps):
        out = evaluate(counter, [x], [i], schedule)[0]
        before = x
        x, state = solver.step(x, out, schedule, i, state)
        if callback is not None:
            denoised = predict_x0_eps(before, out, schedule, i)[0]
            callback(payload(i + 1, x, denoised, schedule, counter.rounds))
    return SampleResult(x, counter.stats())
