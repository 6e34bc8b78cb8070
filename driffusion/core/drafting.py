r"""Drafting and refining: the two halves of draft-and-refine, for any solver.

- [`draft`][driffusion.core.drafting.draft] ``(x_i, out_i) -> [d_1..d_k]``: states of the next
  ``k`` grid points from one prediction at point ``i``, with no network call.
- [`refine`][driffusion.core.drafting.refine] ``(x_i, [o_0..o_{m-1}]) -> [x_{i+1}..x_{i+m}]``:
  the solver's step along the grid with given outputs, each applied at the *refined* state,
  exactly as a scheduler's ``step`` would apply it.

``d_1`` is always the solver's own step from the anchor, so one draft is the next serial state
bit for bit, and a sampler built from these two (DRiffusion, Picard-DRiffusion) reproduces the
serial sampler with ``k = 1``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from driffusion.core.schedule import Schedule
from driffusion.core.solvers import Solver, SolverState, get_solver, log_snr
from driffusion.core.transitions import predict_x0_eps, skip_transition

DraftRule = Literal["skip", "solver", "second_order"]
DRAFT_RULES: tuple[str, ...] = ("skip", "solver", "second_order")
"""How drafts beyond the first are made: ``skip`` (first order from the anchor's clean
estimate), ``solver`` (the solver's own multistep extrapolation over the span),
``second_order`` (the clean estimate extrapolated in log-SNR from the previous one; first-order
deterministic solvers)."""


def draft(
    x: Tensor,
    out: Tensor,
    schedule: Schedule,
    i: int,
    k: int,
    *,
    solver: Solver | str | None = None,
    state: SolverState | None = None,
    rule: DraftRule = "skip",
    previous: tuple[Tensor, int] | None = None,
) -> Tensor:
    r"""Drafts of the states at points ``i + 1..i + k`` from one output ``out`` at point ``i``.

    ``d_1`` is always the solver's step ``Step(x, out, i)``. Beyond it, by ``rule``:

    - ``"skip"``: first order with the anchor's clean estimate ``x0_i``. For a first-order
      deterministic solver this is the skip transition ``skip(x_i, out_i, i -> i + j)``; a
      multistep solver moves ``d_1`` on with ``x0_i``; a stochastic one chains its one-step draws
      with ``noise[i + 1..]`` of its ``state``, so drafts share the refined trajectory's noise.
    - ``"solver"``: the solver's own extrapolation over the span ``i -> i + j`` with its history
      (for DPM-Solver++(2M): the 2M formula with ``h = lambda_{i+j} - lambda_i``).
    - ``"second_order"``: with ``previous = (x0_p, p)``, an earlier clean estimate at point
      ``p < i``, the clean estimate is extrapolated linearly in log-SNR and integrated exactly
      (below); without ``previous`` (the first block) it drafts by ``skip``.

    The second-order draft, with ``lambda = log(alpha / sigma)``:

    $$d_j = \frac{\sigma_m}{\sigma_i} x - \alpha_m (e^{-h} - 1)
        \Big(\hat x_0 + \frac{\hat x_0 - \hat x_{0,p}}{2r}\Big),\quad
        h = \lambda_m - \lambda_i,\ r = \frac{\lambda_i - \lambda_p}{h},\ m = i + j$$

    (the DPM-Solver++(2M) step over the span).

    Args:
        x: the anchor state at point ``i``.
        out: the network output at ``x``.
        schedule: the grid.
        i: the anchor point.
        k: drafts, ``i + k <= N``.
        solver: the solver or its name (default DDIM / flow Euler).
        state: the solver state at point ``i`` (default: a fresh one).
        rule: ``"skip"``, ``"solver"`` or ``"second_order"``.
        previous: the clean estimate of the step into the anchor and its point
            (``second_order``).

    Returns:
        ``[k, B, *shape]`` drafts.

    Examples:
        >>> import torch
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=10)
        >>> out = model(x[None], schedule.times([0]).float())[0]
        >>> drafts = draft(x, out, schedule, 0, 3)
        >>> torch.equal(drafts[0], refine(x, out[None], schedule, 0)[0][0])  # d_1 is the step
        True
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if i + k > schedule.num_steps:
        raise ValueError(f"cannot draft k={k} points past point {i} of {schedule.num_steps}")
    resolved = check_draft_rule(rule, solver)
    start = SolverState() if state is None else state
    first, _ = resolved.step(x, out, schedule, i, start)
    drafts = [first]
    if k == 1:
        return first[None]
    if rule == "second_order" and previous is not None:
        return torch.stack(drafts + _second_order(x, out, schedule, i, k, previous))
    if not resolved.multistep and not resolved.stochastic:
        # first order: the skip from the anchor (the solver's own extrapolation is the same)
        drafts += [skip_transition(x, out, schedule, i, i + j) for j in range(2, k + 1)]
    elif rule == "solver" and not resolved.stochastic:
        drafts += [
            resolved.step(x, out, schedule, i, start, target=i + j)[0] for j in range(2, k + 1)
        ]
    else:
        x0 = predict_x0_eps(x, out, schedule, i)[0]
        for j in range(2, k + 1):
            if resolved.stochastic:  # one-step draws with noise[i + j - 1], from the last draft
                source, point = drafts[-1], i + j - 1
            else:
                source, point = first, i + 1
            drafts.append(resolved.first_order(source, x0, schedule, point, i + j, start))
    return torch.stack(drafts)


def check_draft_rule(rule: str, solver: Solver | str | None = None) -> Solver:
    """The solver, if ``rule`` is a draft rule it can draft by (``ValueError`` otherwise):
    ``second_order`` extends first-order deterministic solvers only."""
    if rule not in DRAFT_RULES:
        raise ValueError(f"draft rule must be one of {DRAFT_RULES}, got {rule!r}")
    resolved = get_solver(solver)
    if rule == "second_order" and (resolved.stochastic or resolved.multistep):
        raise ValueError(
            f"draft_rule='second_order' extends first-order deterministic solvers; solver "
            f"{resolved.name!r} drafts with its own extrapolation: use draft_rule='solver'"
        )
    return resolved


def _second_order(
    x: Tensor, out: Tensor, schedule: Schedule, i: int, k: int, previous: tuple[Tensor, int]
) -> list[Tensor]:
    """Drafts ``d_2..d_k`` by log-SNR extrapolation of the clean estimate (see ``draft``)."""
    lam_i = log_snr(schedule, i)
    x0_prev, p = previous
    lam_p = log_snr(schedule, p)
    if not (math.isfinite(lam_i) and math.isfinite(lam_p)):
        return [skip_transition(x, out, schedule, i, i + j) for j in range(2, k + 1)]
    x0 = predict_x0_eps(x, out, schedule, i)[0]
    drafts = []
    for j in range(2, k + 1):
        m = i + j
        h = log_snr(schedule, m) - lam_i
        r = (lam_i - lam_p) / h
        extrapolated = x0 + (x0 - x0_prev) / (2 * r)
        coefficient = schedule.sigma(m) / schedule.sigma(i)
        drafts.append(coefficient * x - schedule.alpha(m) * math.expm1(-h) * extrapolated)
    return drafts


def refine(
    x: Tensor,
    outs: Tensor,
    schedule: Schedule,
    i: int,
    *,
    solver: Solver | str | None = None,
    state: SolverState | None = None,
) -> tuple[Tensor, SolverState]:
    r"""Apply the solver along the grid from point ``i`` with the given outputs, in order:

    $$x_{i+1}, s_{i+1} = \mathrm{step}(x_i, o_0, i, s_i), \quad
      x_{i+j+1}, s_{i+j+1} = \mathrm{step}(x_{i+j}, o_j, i + j, s_{i+j}).$$

    Each output (computed at a draft) is converted at the *refined* state it is applied to and
    enters the solver's history exactly as a serial run's own evaluation would, so a multistep
    solver keeps its order along the refined trajectory.

    Args:
        x: the refined state at point ``i``.
        outs: ``[m, B, *shape]`` raw outputs, ``outs[j]`` used for the step ``i + j -> i + j + 1``.
        schedule: the grid.
        i: the start point.
        solver: the solver or its name (default DDIM / flow Euler).
        state: the solver state at point ``i`` (default: a fresh one).

    Returns:
        ``[m, B, *shape]`` states of points ``i + 1..i + m`` and the solver state at ``i + m``.
    """
    if i + outs.shape[0] > schedule.num_steps:
        raise ValueError(
            f"cannot refine {outs.shape[0]} steps from point {i} of {schedule.num_steps}"
        )
    resolved = get_solver(solver)
    current = SolverState() if state is None else state
    states = []
    for j in range(outs.shape[0]):
        x, current = resolved.step(x, outs[j], schedule, i + j, current)
        states.append(x)
    return torch.stack(states), current
