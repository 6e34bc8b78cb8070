r"""ParaDiGMS: Picard iterations over a sliding window (Shih et al., 2023), and the step-reduced
serial baseline.

The serial chain ``x_{m+1} = Step(x_m, f(x_m), m)`` is a fixed point of the Picard map

$$x_{t+j} \leftarrow x_t + \sum_{m=t}^{t+j-1} \big(\mathrm{Step}(x_m, f(x_m), m) - x_m\big),$$

whose right-hand side needs the ``j`` evaluations ``f(x_m)`` of the current guesses, all in one
parallel round. Each round evaluates a window of ``window`` points starting at the first
non-final point ``t``, updates the guesses with a cumulative sum, and slides the window. Two
acceptance rules (``rule``) say when a point ``j`` of the window has converged. Under
``"sigma"`` (the default; the project's meaning of ``tol``, shared with SRDS, CHORDS and
Picard-DRiffusion) point ``t + 1`` is exact (it comes from a final state), and the window slides
past the leading points after it whose change is within the tolerance relative to the noise
level of the step into them; it stops *before* the first that fails:

$$\mathrm{RMS}(x^{new}_{j} - x^{old}_{j}) \le \mathrm{tol}\,\sigma_{j-1} .$$

Under ``"paper"`` (the official code and diffusers' ``StableDiffusionParadigmsPipeline``, pass
for pass) every point of the window is checked against the DDPM posterior noise of the step
leaving it, ``Var_j = Var(x_{j+1} | x_j, x_0)`` (0 at ``j = N``), and the window slides *to*
the first point that fails (its new value was computed from outputs at points that passed):

$$\mathrm{RMS}(x^{new}_{j} - x^{old}_{j}) \le \mathrm{tol}\,\sqrt{\mathrm{Var}_j} .$$

Both the normalisation and the slide differ: on Stable Diffusion's betas at ``N = 50``,
``sigma_{j-1} / sqrt(Var_j)`` is 2.2-3.0 on the trailing grid (up to 5 on the leading one), so
the paper's ``tol = 0.1`` (its default) is roughly ``tol = 0.04`` under ``"sigma"``, and the
paper's slide accepts one more point per round. Where the step's posterior variance is 0 (into
``sigma = 0``) the paper's rule accepts no change at all. It needs a VP schedule (the DDPM
posterior).

The window always moves; with ``tol = 0`` only steps that stopped changing are accepted and the
result equals the serial sample up to float rounding, on any grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import Solver, SolverState
from driffusion.core.transitions import ddpm_posterior, predict_x0_eps

from .base import Callback, Sampler, check_positive_int, evaluate, max_rms, payload, setup_solver
from .driffusion import aggressive_rounds
from .serial import sample_serial
from .settings import rows_setting, setting, solver_setting, tolerance_setting

RULES: tuple[str, ...] = ("sigma", "paper")
"""ParaDiGMS' acceptance rules: the project's ``"sigma"`` and the authors' ``"paper"``."""
PAPER_TOL = 0.1
"""The official code's default tolerance (under ``rule="paper"``)."""


@dataclass(frozen=True, repr=False)
class ParaDiGMS(Sampler):
    """[`sample_paradigms`][driffusion.core.samplers.paradigms.sample_paradigms] as a value.

    Attributes:
        window: points per round.
        tol: accept a step once its RMS change is at most ``tol`` times the rule's noise level.
        rule: ``"sigma"`` (``sigma`` of the step, slide past the last passing point) or
            ``"paper"`` (the official code: the DDPM posterior std, slide to the first failing
            point).
        solver: the solver's name or value (``None``: DDIM / flow Euler).

    Examples:
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)
        >>> ParaDiGMS(window=8)
        ParaDiGMS(window=8, tol=0.001)
        >>> ParaDiGMS(window=8)(model, x, schedule).stats.rounds < 50
        True
        >>> ParaDiGMS(window=8, tol=0.1, rule="paper")(model, x, schedule).stats.rounds < 50
        True
    """

    name = "paradigms"
    window: int = rows_setting(8, "ParaDiGMS window: points evaluated per round")
    tol: float = tolerance_setting(
        1e-3, "accept a step once its RMS change is within tol x the noise level", label=True
    )
    rule: str = setting("sigma", "choice", "ParaDiGMS acceptance rule", choices=RULES)
    solver: str | Solver | None = solver_setting()

    @classmethod
    def variants(cls, rows: int, num_steps: int) -> list[dict[str, Any]]:
        """The project's rule and the authors' (at their default tolerance)."""
        return [{}, {"rule": "paper", "tol": PAPER_TOL}]


@ParaDiGMS.implemented_by
def sample_paradigms(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    window: int = ParaDiGMS.window,
    tol: float = ParaDiGMS.tol,
    rule: str = ParaDiGMS.rule,
    solver: Solver | str | None = ParaDiGMS.solver,
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
        window: points evaluated per round (the parallel rows), ``>= 1``; 1 is serial.
        tol: per-step tolerance on the RMS change (largest over the batch) relative to the
            rule's noise level; ``0`` reproduces the serial sample.
        rule: ``"sigma"`` or ``"paper"`` (see the module's description).
        solver: the solver or its name (default: DDIM / flow Euler, or DDPM with ``noise``).
        noise: pre-drawn noise ``[N, B, *shape]`` of a stochastic solver (the Picard map uses
            the same noise), or ``None``.
        callback: called with [`payload`][driffusion.core.samplers.base.payload] each time the
            window moves to a new final point.
        check_finite: raise ``ValueError`` on a non-finite network output.

    Returns:
        The final state; ``picard_sweeps`` is the most sweeps a point received before it was
        accepted.

    Examples:
        >>> import torch
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)  # an exact denoiser, noise, a grid
        >>> from driffusion.core import sample_paradigms
        >>> result = sample_paradigms(model, x, schedule, window=8, tol=1e-3)
        >>> result.stats.rounds < 50 < result.stats.evaluations
        True
    """
    ParaDiGMS.check(window=window, tol=tol, rule=rule, solver=solver)
    if rule == "paper" and schedule.kind != "vp":
        raise ValueError("rule='paper' measures change against the DDPM posterior: a VP schedule")
    solver, schedule, start = setup_solver(solver, x, schedule, noise)
    counter = CountingModel(model, check_finite=check_finite)
    n = schedule.num_steps
    limits = _tolerances(schedule, tol, rule)
    guesses: list[Tensor] = [x] * (n + 1)  # initial guess: the start state everywhere
    sweeps = [0] * (n + 1)  # Picard sweeps each point received
    state_at_t: SolverState = start  # the solver state at the final point t
    t, most = 0, 0
    while t < n:
        end = min(t + window, n)
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
        new[1] = first  # the first step starts from a final state: exact
        changed = [max_rms(new[j - t], guesses[j]) > limits[j] for j in range(t + 1, end + 1)]
        stride = _slide(changed, rule)
        previous = guesses[t + stride - 1]  # the guess whose output stepped into t + stride
        for m in range(t + 1, end + 1):
            guesses[m] = new[m - t]
            sweeps[m] += 1
        for m in range(end + 1, min(end + stride, n) + 1):
            guesses[m] = guesses[end]  # points entering the window start at the latest guess
        most = max(most, *sweeps[t + 1 : t + stride + 1])
        state_at_t = steps_states[stride]
        if callback is not None:
            out, point = outs[stride - 1], t + stride - 1
            denoised = predict_x0_eps(previous, out, schedule, point)[0]
            callback(payload(t + stride, guesses[t + stride], denoised, schedule, counter.rounds))
        t += stride
    return SampleResult(guesses[n], counter.stats(picard_sweeps=most))


def _tolerances(schedule: Schedule, tol: float, rule: str) -> list[float]:
    """The largest accepted RMS change of each point ``j`` (index 0 unused).

    ``"sigma"``: ``tol * sigma_{j-1}``; ``"paper"``: ``tol * sqrt(Var(x_{j+1} | x_j, x0))``,
    0 at ``j = N`` (the official code divides by a zero variance there).
    """
    n = schedule.num_steps
    if rule == "sigma":
        return [0.0] + [tol * schedule.sigma(j - 1) for j in range(1, n + 1)]
    return [0.0] + [tol * ddpm_posterior(schedule, j, j + 1)[2] ** 0.5 for j in range(1, n)] + [0.0]


def _slide(changed: list[bool], rule: str) -> int:
    """How far the window moves, from whether each of its points ``t + 1..end`` changed by more
    than its tolerance: ``"sigma"`` accepts ``t + 1`` and the unchanged points after it;
    ``"paper"`` moves to the first changed point (or the end)."""
    if rule == "paper":
        return next((j + 1 for j, c in enumerate(changed) if c), len(changed))
    stride = 1
    while stride < len(changed) and not changed[stride]:
        stride += 1
    return stride


def reduced_grid(schedule: Schedule, steps: int) -> Schedule:
    """A ``steps``-step sub-grid of ``schedule`` with evenly spaced points (ends kept)."""
    check_positive_int(steps, "steps", upper=schedule.num_steps)
    points = torch.linspace(0, schedule.num_steps, steps + 1, dtype=torch.float64).round().long()
    return schedule.subgrid(points)


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
    title = "serial, fewer steps"
    parallel = False
    rounds: int = setting(10, "int", "steps of the sub-grid", minimum=1, label=True)
    solver: str | Solver | None = solver_setting()

    def fits(self, num_steps: int) -> bool:
        return self.rounds <= num_steps

    @classmethod
    def variants(cls, rows: int, num_steps: int) -> list[dict[str, Any]]:
        """The latency ``rows`` drafts buy aggressively: ``1 + ceil((N - 1) / rows)`` steps."""
        return [{"rounds": aggressive_rounds(num_steps, rows)}]


@SerialReduced.implemented_by
def sample_serial_reduced(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    rounds: int = SerialReduced.rounds,
    solver: Solver | str | None = SerialReduced.solver,
    callback: Callback | None = None,
    check_finite: bool = True,
) -> SampleResult:
    """The step-reduction baseline: serial sampling on a ``rounds``-step sub-grid.

    At equal latency (serial rounds) this is what a parallel sampler must beat: the same model
    with fewer steps, on one device.
    """
    SerialReduced.check(rounds=rounds, solver=solver)
    return sample_serial(
        model,
        x,
        reduced_grid(schedule, rounds),
        solver=solver,
        callback=callback,
        check_finite=check_finite,
    )
