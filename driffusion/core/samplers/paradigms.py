r"""ParaDiGMS: Picard iterations over a sliding window (Shih et al., 2023), and the step-reduced
serial baseline.

The serial chain ``x_{m+1} = Step(x_m, f(x_m), m)`` is a fixed point of the Picard map

$$x_{t+j} \leftarrow x_t + \sum_{m=t}^{t+j-1} \big(\mathrm{Step}(x_m, f(x_m), m) - x_m\big),$$

whose right-hand side needs the ``j`` evaluations ``f(x_m)`` of the current guesses, all in one
parallel round. Each round evaluates a window of ``window`` points starting at the first
non-final point ``t``, updates the guesses with a cumulative sum, and slides the window past the
leading steps whose change is within tolerance:

$$\mathrm{err}_{m+1} = \frac{\mathrm{mean}\,(x^{new}_{m+1} - x^{old}_{m+1})^2}{\sigma_m^2}
    \le \mathrm{tol}^2 .$$

The first step of a window is exact (it starts from a final state), so the window always moves;
with ``tol = 0`` only steps that stopped changing are accepted and the result equals the serial
sample up to float rounding, on any grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.samplers.base import (
    Callback,
    Sampler,
    check_positive_int,
    check_tolerance,
    evaluate,
    label_field,
    max_rms,
    payload,
    setup_solver,
)
from driffusion.core.samplers.serial import sample_serial
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import Solver, SolverState, clean_estimate


def sample_paradigms(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    window: int = 8,
    tol: float = 1e-3,
    solver: Solver | str | None = None,
    noise: Tensor | None = None,
    callback: Callback | None = None,
    check_finite: bool = True,
) -> SampleResult:
    """ParaDiGMS sampling: Picard iterations on a sliding window of ``window`` points.

    With a multistep solver the increments ``Step(x_m) - x_m`` thread the solver state through
    the window from the final point, so the fixed point is the serial run of the same solver.

    Args:
        model: ``model(xs[K, B, ...], t[K]) -> out``.
        x: initial state ``[B, *shape]`` at point 0.
        schedule: the grid.
        window: points evaluated per round (the parallel width), ``>= 1``; 1 is serial.
        tol: per-step tolerance on the RMS change relative to the step's noise level ``sigma_m``
            (largest over the batch); ``0`` reproduces the serial sample.
        solver: the solver or its name (default: DDIM / flow Euler, or DDPM with ``noise``).
        noise: pre-drawn noise ``[N, B, *shape]`` of a stochastic solver (the Picard map uses
            the same noise), or ``None``.
        callback: called with [`payload`][driffusion.core.samplers.base.payload] each time the
            window moves to a new final point.
        check_finite: raise ``ValueError`` on a non-finite network output.

    Returns:
        The final state; stats with ``iterations`` = rounds (Picard sweeps).

    Examples:
        >>> import torch
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)  # an exact denoiser, noise, a grid
        >>> from driffusion.core import sample_paradigms
        >>> result = sample_paradigms(model, x, schedule, window=8, tol=1e-3)
        >>> result.stats.rounds < 50 < result.stats.evaluations
        True
    """
    solver, schedule, start = setup_solver(solver, x, schedule, noise)
    width = check_positive_int(window, "window")
    check_tolerance(tol)
    counter = CountingModel(model, check_finite=check_finite)
    n = schedule.num_steps
    guesses: list[Tensor] = [x] * (n + 1)  # initial guess: the start state everywhere
    state_at_t: SolverState = start  # the solver state at the final point t
    t = 0
    while t < n:
        end = min(t + width, n)
        outs = evaluate(counter, guesses[t:end], list(range(t, end)), schedule)
        increments, steps_states = [], [state_at_t]
        first = guesses[t]
        for m in range(t, end):
            stepped, next_state = solver.step(
                guesses[m], outs[m - t], schedule, m, steps_states[-1]
            )
            first = stepped if m == t else first
            increments.append(stepped - guesses[m])
            steps_states.append(next_state)
        new = [guesses[t]]
        for increment in increments:
            new.append(new[-1] + increment)
        # the first step starts from a final state: exact, so the window always moves
        new[1] = first
        stride = 1
        for m in range(t + 1, end):  # accept leading steps whose change is within tolerance
            if max_rms(new[m + 1 - t], guesses[m + 1]) > tol * schedule.sigma(m):
                break
            stride += 1
        previous = guesses[t + stride - 1]  # the guess whose output stepped into t + stride
        for m in range(t + 1, end + 1):
            guesses[m] = new[m - t]
        for m in range(end + 1, min(end + stride, n) + 1):
            guesses[m] = guesses[end]  # points entering the window start at the latest guess
        state_at_t = steps_states[stride]
        if callback is not None:
            out, point = outs[stride - 1], t + stride - 1
            denoised = clean_estimate(out, previous, schedule, point)
            callback(payload(t + stride, guesses[t + stride], denoised, schedule, counter.rounds))
        t += stride
    return SampleResult(guesses[n], counter.stats(iterations=counter.rounds))


def reduced_grid(schedule: Schedule, steps: int) -> Schedule:
    """A ``steps``-step sub-grid of ``schedule`` with evenly spaced points (ends kept)."""
    check_positive_int(steps, "steps", upper=schedule.num_steps)
    points = torch.linspace(0, schedule.num_steps, steps + 1, dtype=torch.float64).round().long()
    return schedule.subgrid(points)


def sample_serial_reduced(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    rounds: int,
    solver: Solver | str | None = None,
    callback: Callback | None = None,
    check_finite: bool = True,
) -> SampleResult:
    """The step-reduction baseline: serial sampling on a ``rounds``-step sub-grid.

    At equal latency (serial rounds) this is what a parallel sampler must beat: the same model
    with fewer steps, on one device.
    """
    return sample_serial(
        model,
        x,
        reduced_grid(schedule, rounds),
        solver=solver,
        callback=callback,
        check_finite=check_finite,
    )


@dataclass(frozen=True, repr=False)
class ParaDiGMS(Sampler):
    """[`sample_paradigms`][driffusion.core.samplers.paradigms.sample_paradigms] as a value.

    Attributes:
        window: points per round.
        tol: accept a step once its RMS change is at most ``tol * sigma``.
        solver: the solver's name or value (``None``: DDIM / flow Euler).

    Examples:
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)
        >>> ParaDiGMS(window=8)
        ParaDiGMS(window=8, tol=0.001)
        >>> ParaDiGMS(window=8)(model, x, schedule).stats.rounds < 50
        True
    """

    name = "paradigms"
    function = sample_paradigms
    window: int = label_field(8)
    tol: float = label_field(1e-3)
    solver: str | Solver | None = None


@dataclass(frozen=True, repr=False)
class SerialReduced(Sampler):
    """[`sample_serial_reduced`][driffusion.core.samplers.paradigms.sample_serial_reduced] as a
    value: the serial solver on a ``rounds``-step sub-grid (the step-reduction baseline).

    Attributes:
        rounds: steps of the sub-grid (its serial rounds).
        solver: the solver's name or value (``None``: DDIM / flow Euler).

    Examples:
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)
        >>> SerialReduced(rounds=14)(model, x, schedule).stats.rounds
        14
    """

    name = "serial_reduced"
    function = sample_serial_reduced
    parallel = False
    rounds: int = label_field(10)
    solver: str | Solver | None = None
