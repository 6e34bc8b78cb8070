r"""Draft-initialised Picard: a convergent DRiffusion that slides a window like ParaDiGMS.

ParaDiGMS starts every new window point from a copy of the latest state, so each point needs
several Picard sweeps. Here new points start from DRiffusion *drafts* (skip transitions with the
latest prediction), which are already close to the serial trajectory, so far fewer sweeps are
needed at the same tolerance. Each round evaluates the ``k`` window points ``t..t+k-1`` (the
final state ``x_t`` and ``k - 1`` guesses) in one call, refines them with the base step,

$$x^{new}_{t+1} = \mathrm{Step}(x_t, f(x_t)),\quad
  x^{new}_{m+1} = \mathrm{Step}(x^{new}_m, f(x^{old}_m)),$$

accepts the leading steps whose change is within ``tol`` (relative to ``sigma``) or that have
been refined ``max_iters`` times, and slides. ``tol=0`` (with ``max_iters=None``) gives the
serial sample; ``max_iters=1`` accepts every refined step at once: DRiffusion with an exact
anchor evaluated in the same round as its drafts (``ceil(N / k)`` rounds).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from driffusion.core.drafting import DRAFT_RULES, DraftRule, draft
from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import Solver, SolverState
from driffusion.core.transitions import predict_x0_eps

from .base import Callback, Sampler, evaluate, max_rms, payload, setup_solver
from .settings import rows_setting, setting, solver_setting, tolerance_setting


@dataclass(frozen=True, repr=False)
class PicardDRiffusion(Sampler):
    """[`sample_picard_driffusion`][driffusion.core.samplers.picard_driffusion.sample_picard_driffusion]
    as a value.

    Attributes:
        window: points per round (the draft-group size).
        tol: accept a step once its RMS change is at most ``tol * sigma``.
        max_iters: accept a step after this many refinements regardless (``None``: no cap).
        solver: the solver's name or value (``None``: DDIM / flow Euler).
        draft_rule: how new window points are drafted (see
            [`draft`][driffusion.core.drafting.draft]; ``second_order`` is not offered).

    Examples:
        >>> import torch
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)
        >>> exact = PicardDRiffusion(window=4, tol=0.0)
        >>> exact
        PicardDRiffusion(window=4, tol=0.0)
        >>> from driffusion.core import Serial
        >>> torch.equal(exact(model, x, schedule).x, Serial()(model, x, schedule).x)
        True
    """

    name = "picard_driffusion"
    title = "Picard-DRiffusion"
    window: int = rows_setting(4, "Picard-DRiffusion window: points evaluated per round")
    tol: float = tolerance_setting(
        1e-3, "accept a step once its RMS change is within tol x sigma", label=True
    )
    max_iters: int | None = setting(
        None, "int", "accept a step after this many refinements", minimum=1, optional=True
    )
    solver: str | Solver | None = solver_setting()
    draft_rule: str = setting(
        "skip", "choice", "how new window points are drafted", choices=DRAFT_RULES[:2]
    )


@PicardDRiffusion.implemented_by
def sample_picard_driffusion(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    window: int = PicardDRiffusion.window,
    tol: float = PicardDRiffusion.tol,
    max_iters: int | None = PicardDRiffusion.max_iters,
    solver: Solver | str | None = PicardDRiffusion.solver,
    draft_rule: DraftRule = "skip",
    noise: Tensor | None = None,
    callback: Callback | None = None,
    check_finite: bool = True,
) -> SampleResult:
    """Convergent draft-and-refine on a sliding window of ``window`` points.

    With a multistep solver the refine threads the solver state through the window (the state
    of every window point is kept), so the fixed point is the serial run of the same solver.

    Args:
        model: ``model(xs[K, B, ...], t[K]) -> out``.
        x: initial state ``[B, *shape]`` at point 0.
        schedule: the grid (deterministic base sampler).
        window: window size ``k``: evaluations per round (the draft-group size).
        tol: accept a step once its RMS change is at most ``tol * sigma`` (largest over the
            batch); ``0`` reproduces the serial sample.
        max_iters: accept a step after this many refinements regardless (``None``: no cap).
        solver: the solver or its name (default: DDIM / flow Euler, or DDPM with ``noise``).
        draft_rule: how new window points are drafted, ``"skip"`` or ``"solver"`` (see
            [`draft`][driffusion.core.drafting.draft]).
        noise: pre-drawn noise ``[N, B, *shape]`` of a stochastic solver.
        callback: called with [`payload`][driffusion.core.samplers.base.payload] when the window
            moves to a new final point.
        check_finite: raise ``ValueError`` on a non-finite network output.

    Returns:
        The final state; ``picard_sweeps`` is the most refinements any step needed.

    Examples:
        >>> import torch
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)  # an exact denoiser, noise, a grid
        >>> from driffusion.core import sample_picard_driffusion, sample_serial
        >>> exact = sample_picard_driffusion(model, x, schedule, window=4, tol=0.0)
        >>> torch.equal(exact.x, sample_serial(model, x, schedule).x)
        True
        >>> sample_picard_driffusion(model, x, schedule, window=4, tol=1e-3).stats.rounds < 50
        True
    """
    PicardDRiffusion.check(
        window=window, tol=tol, max_iters=max_iters, solver=solver, draft_rule=draft_rule
    )
    solver, schedule, start = setup_solver(solver, x, schedule, noise)
    k = window
    counter = CountingModel(model, check_finite=check_finite)
    n = schedule.num_steps
    guesses: dict[int, Tensor] = {0: x}  # current guesses; guesses[t] is final
    states: dict[int, SolverState] = {0: start}  # solver state at the final point t
    refinements: dict[int, int] = {}
    # (state, output, point, solver state) to draft new window points from
    anchor: tuple[Tensor, Tensor, int, SolverState] | None = None
    t, most = 0, 1
    while t < n:
        width = min(k, n - t)
        if anchor is None:
            width = 1  # the first round: nothing to draft from yet
        else:
            a_x, a_out, point, a_state = anchor
            missing = [m for m in range(t + 1, t + width) if m not in guesses]
            if missing:  # new window points start from drafts
                ds = draft(
                    a_x,
                    a_out,
                    schedule,
                    point,
                    max(missing) - point,
                    solver=solver,
                    state=a_state,
                    rule=draft_rule,
                )
                for m in missing:
                    guesses[m] = ds[m - point - 1]
        points = list(range(t, t + width))
        outs = evaluate(counter, [guesses[p] for p in points], points, schedule)
        new = {t: guesses[t]}
        new_states = {t: states[t]}
        for j, p in enumerate(points):
            new[p + 1], new_states[p + 1] = solver.step(new[p], outs[j], schedule, p, new_states[p])
        for p in points[1:]:  # every step of the window was refined once more
            refinements[p + 1] = refinements.get(p + 1, 0) + 1
        stride = 1  # the first step starts from a final state: exact
        for p in points[1:]:
            capped = max_iters is not None and refinements[p + 1] >= max_iters
            old = guesses.get(p + 1)
            if not capped:
                if old is None:
                    break
                if max_rms(new[p + 1], old) > tol * schedule.sigma(p):
                    break
            stride += 1
        most = max(most, *(refinements.get(p, 1) for p in range(t + 1, t + stride + 1)))
        guesses = {p: new[p] for p in range(t + stride, t + width + 1)}
        last = points[-1]
        # the latest prediction drafts beyond the window
        anchor = (new[last], outs[-1], last, new_states[last])
        if callback is not None:  # the new final point came from the window's step stride-1
            previous = points[stride - 1]
            denoised = predict_x0_eps(new[previous], outs[stride - 1], schedule, previous)[0]
            callback(payload(t + stride, new[t + stride], denoised, schedule, counter.rounds))
        t += stride
        states = {t: new_states[t]}
    return SampleResult(guesses[n], counter.stats(picard_sweeps=most))
