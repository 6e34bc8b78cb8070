"""DRiffusion: draft the next ``k`` states with skip transitions, evaluate them in one parallel
round, and refine them with the ordinary base step.

Both modes are compositions of two public pure functions:

- [`draft`][driffusion.core.samplers.driffusion.draft] ``(x_i, out_i) -> [d_1..d_k]`` with
  ``d_j = skip(x_i, out_i, i -> i + j)``;
- [`refine`][driffusion.core.samplers.driffusion.refine]
  ``(x_i, [o_0..o_{m-1}]) -> [x_{i+1}..x_{i+m}]`` with
  ``x_{i+j+1} = Step(x_{i+j}, o_j, i + j)``: each output (computed at a draft) is applied to the
  *refined* state, exactly as a scheduler's ``step`` would apply it.

With ``k = 1`` the single draft *is* the next serial state, so both modes reproduce the serial
sampler bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.samplers.base import (
    Callback,
    Sampler,
    check_positive_int,
    evaluate,
    label_field,
    max_rms,
    payload,
    setup_solver,
)
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import (
    DraftRule,
    Solver,
    SolverState,
    clean_estimate,
    draft_states,
    get_solver,
    solve_steps,
)
from driffusion.core.solvers import log_snr as log_snr
from driffusion.core.transitions import (
    ddpm_transition_from_x0,
    predict_x0_eps,
    skip_transition,
)

Mode = Literal["aggressive", "conservative"]


def draft(
    x: Tensor,
    out: Tensor,
    schedule: Schedule,
    i: int,
    k: int,
    *,
    noise: Tensor | None = None,
    previous: tuple[Tensor, int] | None = None,
) -> Tensor:
    r"""Draft the states of the next ``k`` grid points from one prediction at point ``i``.

    Deterministic: ``d_j = skip(x, out, i -> i + j)`` for ``j = 1..k`` (no network call).
    With DDPM ``noise`` (``[N, B, ...]``), ``d_j`` chains the one-step posteriors with the fixed
    ``x0_hat`` of ``out`` and the noises ``noise[i..i+j-1]``: a draw from the ``j``-step
    posterior that shares its noise with the refined trajectory.

    With ``previous = (x0_p, p)``, an earlier clean estimate at point ``p < i``, drafts
    ``j >= 2`` are second order: ``x0`` is extrapolated linearly in log-SNR
    ``lambda = log(alpha / sigma)`` and integrated exactly (the DPM-Solver++(2M) step):

    $$d_j = \frac{\sigma_m}{\sigma_i} x - \alpha_m (e^{-h} - 1)
        \Big(\hat x_0 + \frac{\hat x_0 - \hat x_{0,p}}{2r}\Big),\quad
        h = \lambda_m - \lambda_i,\ r = \frac{\lambda_i - \lambda_p}{h},\ m = i + j.$$

    ``d_1`` stays the base step, so a single draft is always the next serial state.

    Returns:
        ``[k, B, *shape]`` drafts; ``d_1`` equals ``Step(x, out, i)`` bit for bit.
    """
    check_positive_int(k, "k")
    if i + k > schedule.num_steps:
        raise ValueError(f"cannot draft k={k} points past point {i} of {schedule.num_steps}")
    if noise is not None:
        if previous is not None:
            raise ValueError("second-order drafts are deterministic: do not pass DDPM noise")
        x0, _ = predict_x0_eps(out, x, schedule, i)
        drafts, state = [], x
        for j in range(k):
            state = ddpm_transition_from_x0(state, x0, schedule, i + j, i + j + 1, noise[i + j])
            drafts.append(state)
        return torch.stack(drafts)
    drafts = [skip_transition(x, out, schedule, i, i + 1)]
    lam_i = log_snr(schedule, i)
    second_order = previous is not None and math.isfinite(log_snr(schedule, previous[1]))
    if second_order:
        assert previous is not None
        x0, _ = predict_x0_eps(out, x, schedule, i)
        x0_prev, p = previous
        lam_p = log_snr(schedule, p)
    for j in range(2, k + 1):
        m = i + j
        if not second_order or not math.isfinite(lam_i):
            drafts.append(skip_transition(x, out, schedule, i, m))
            continue
        h = log_snr(schedule, m) - lam_i
        r = (lam_i - lam_p) / h
        extrapolated = x0 + (x0 - x0_prev) / (2 * r)
        coefficient = schedule.sigma(m) / schedule.sigma(i)
        drafts.append(coefficient * x - schedule.alpha(m) * math.expm1(-h) * extrapolated)
    return torch.stack(drafts)


def refine(
    x: Tensor,
    outs: Tensor,
    schedule: Schedule,
    i: int,
    *,
    noise: Tensor | None = None,
    solver: Solver | str | None = None,
    state: SolverState | None = None,
) -> Tensor:
    r"""Apply the solver's step along the grid with the given outputs, starting at point ``i``.

    $$x_{i+1} = \mathrm{Step}(x_i, o_0, i), \quad x_{i+j+1} = \mathrm{Step}(x_{i+j}, o_j, i+j)$$

    Args:
        x: refined state at point ``i``.
        outs: ``[m, B, *shape]`` raw outputs, ``outs[j]`` used for the step ``i + j -> i + j + 1``.
        schedule: the grid.
        i: start point.
        noise: pre-drawn DDPM noise ``[N, B, ...]``, or ``None`` for DDIM / flow Euler.
        solver: the solver (default: DDIM, or DDPM with ``noise``); multistep solvers need the
            ``state`` at point ``i``
            (see [`solve_steps`][driffusion.core.solvers.solve_steps], which
            also returns the state after the last step).
        state: the solver state at point ``i`` (default: a fresh one holding ``noise``).

    Returns:
        ``[m, B, *shape]``: the refined states of points ``i + 1..i + m``.
    """
    resolved = get_solver(solver, noise)
    start = SolverState(noise=noise) if state is None else state
    return solve_steps(resolved, x, outs, schedule, i, start)[0]


def aggressive_rounds(num_steps: int, drafts: int) -> int:
    """Serial rounds of aggressive DRiffusion: ``1 + ceil((N - 1) / k)`` (at most ``N``).

    Also the step count that gives the step-reduced serial baseline the same latency.
    """
    check_positive_int(num_steps, "num_steps")
    check_positive_int(drafts, "drafts")
    return 1 + -(-(num_steps - 1) // drafts)


def conservative_rounds(num_steps: int, drafts: int) -> int:
    """Serial rounds of conservative DRiffusion: ``2 (N // (k+1)) + min(N % (k+1), 2)``."""
    check_positive_int(num_steps, "num_steps")
    check_positive_int(drafts, "drafts")
    return 2 * (num_steps // (drafts + 1)) + min(num_steps % (drafts + 1), 2)


def sample_driffusion(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    drafts: int = 2,
    mode: Mode = "aggressive",
    solver: Solver | str | None = None,
    draft_rule: DraftRule | None = None,
    order: int = 1,
    adaptive_tol: float | None = None,
    noise: Tensor | None = None,
    callback: Callback | None = None,
    check_finite: bool = True,
) -> SampleResult:
    """DRiffusion draft-and-refine sampling with ``drafts = k`` parallel evaluations per round.

    **Aggressive** (ideal latency ``1/k``): one serial evaluation at ``x_0``, then per block of
    ``k' = min(k, N - 1 - i)`` steps: draft ``k'`` states from the anchor prediction, evaluate
    them in one round, refine; the last draft's output becomes the next anchor's prediction.
    Rounds: ``1 + ceil((N - 1) / k)``.

    **Conservative** (ideal latency ``2/(k + 1)``): per block, first a fresh evaluation at the
    refined anchor, then ``k' = min(k, N - 1 - i)`` drafts in one round, refining ``k' + 1``
    steps. Rounds: ``2 * (N // (k+1)) + min(N % (k+1), 2)``.

    Both modes spend exactly ``N`` evaluations.

    **Any solver.** The refine walks the block in order through the solver
    ([`solve_steps`][driffusion.core.solvers.solve_steps]): each draft's output is converted at the
    refined state and enters the solver's history exactly as a serial run's own evaluation would,
    so a multistep solver (DPM-Solver++, UniPC, PLMS) keeps its order along the refined
    trajectory. Drafts come from the anchor by ``draft_rule`` (see
    [`draft_states`][driffusion.core.solvers.draft_states]): ``"skip"``, first order from the
    solver's
    own first step, or ``"solver"``, the solver's multistep extrapolation over the span.

    Beyond the paper (off by default, so the defaults are plain DRiffusion; the convergent mode
    is
    [`sample_picard_driffusion`][driffusion.core.samplers.picard_driffusion.sample_picard_driffusion]):

    - ``order=2`` (first-order solvers): second-order drafts
      (see [`draft`][driffusion.core.samplers.driffusion.draft]) from the
      current and the previous clean estimates; the refine step stays the solver's step, so
      ``drafts=1`` is still serial. With a multistep solver use ``draft_rule="solver"``.
    - ``adaptive_tol``: adapt each block's draft length within ``1..k`` from the observed
      draft error ``max_j RMS(d_j - x_{i+j}) / sigma_{i+j}`` of the previous block: halve it
      above ``adaptive_tol``, grow it by one below ``adaptive_tol / 2``.

    Args:
        model: ``model(xs[K, B, ...], t[K]) -> out``.
        x: initial state ``[B, *shape]`` at point 0.
        schedule: the grid.
        drafts: ``k >= 1``, evaluations per parallel round (the draft-group size).
        mode: ``"aggressive"`` or ``"conservative"``.
        solver: the solver or its name (default: DDIM / flow Euler, or DDPM with ``noise``).
        draft_rule: ``"skip"`` or ``"solver"`` (default: the solver's
            ``default_draft_rule``).
        order: draft order of first-order solvers, 1 (skip) or 2 (log-SNR extrapolation).
        adaptive_tol: target draft error of adaptive drafting (``None``: fixed ``k``).
        noise: pre-drawn noise ``[N, B, *shape]`` of a stochastic solver, else ``None``.
        callback: called with [`payload`][driffusion.core.samplers.base.payload] for each
            refined state.
        check_finite: raise ``ValueError`` on a non-finite network output.

    Examples:
        >>> import torch
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)  # an exact denoiser, noise, a grid
        >>> from driffusion.core import sample_driffusion, sample_serial
        >>> fast = sample_driffusion(model, x, schedule, drafts=4, solver="dpmpp_2m")
        >>> fast.stats.rounds, fast.stats.evaluations  # 1 + ceil(49 / 4) rounds
        (14, 50)
        >>> one = sample_driffusion(model, x, schedule, drafts=1, solver="dpmpp_2m")
        >>> torch.equal(one.x, sample_serial(model, x, schedule, solver="dpmpp_2m").x)
        True
    """
    solver, schedule, state = setup_solver(solver, x, schedule, noise)
    k_max = check_positive_int(drafts, "drafts")
    if mode not in ("aggressive", "conservative"):
        raise ValueError(f"mode must be 'aggressive' or 'conservative', got {mode!r}")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if order == 2 and (solver.stochastic or solver.multistep):
        raise ValueError(
            f"order=2 drafts extend first-order deterministic solvers; solver {solver.name!r} "
            "drafts with its own extrapolation: use draft_rule='solver'"
        )
    if adaptive_tol is not None and not (math.isfinite(adaptive_tol) and adaptive_tol > 0):
        raise ValueError(f"adaptive_tol must be a positive number, got {adaptive_tol!r}")
    counter = CountingModel(model, check_finite=check_finite)
    n = schedule.num_steps

    def emit(start: Tensor, outs: Tensor, states: Tensor, first: int) -> None:
        """Call back for states ``first + 1..``: stepped from ``start`` with ``outs``."""
        if callback is None:
            return
        before = start
        for offset, (out, state) in enumerate(zip(outs, states, strict=True)):
            denoised = clean_estimate(out, before, schedule, first + offset)
            callback(payload(first + offset + 1, state, denoised, schedule, counter.rounds))
            before = state

    i, k = 0, k_max
    previous: tuple[Tensor, int] | None = None  # clean estimate of the step into the anchor
    anchor_out = evaluate(counter, [x], [0], schedule)[0] if mode == "aggressive" else None
    while i < n:
        if mode == "conservative":
            anchor_out = evaluate(counter, [x], [i], schedule)[0]
        assert anchor_out is not None
        k_block = min(k, n - 1 - i)
        if k_block == 0:
            final, state = solver.step(x, anchor_out, schedule, i, state)
            emit(x, anchor_out[None], final[None], i)
            x = final
            break
        if order == 2:
            draft_states_ = draft(x, anchor_out, schedule, i, k_block, previous=previous)
        else:
            draft_states_ = draft_states(
                solver, x, anchor_out, schedule, i, k_block, state, draft_rule
            )
        draft_outs = evaluate(
            counter, list(draft_states_), list(range(i + 1, i + k_block + 1)), schedule
        )
        if mode == "aggressive":
            # Refine k' steps; the last draft's output is cached as the next anchor's.
            outs = torch.cat([anchor_out[None], draft_outs[:-1]])
            anchor_out = draft_outs[-1]
        else:
            outs = torch.cat([anchor_out[None], draft_outs])
        refined, state = solve_steps(solver, x, outs, schedule, i, state)
        if adaptive_tol is not None:
            error = _largest_change(draft_states_, refined[:k_block], schedule, i + 1)
            k = max(1, k // 2) if error > adaptive_tol else k
            k = min(k_max, k + 1) if error < adaptive_tol / 2 else k
        if order == 2:
            last = refined.shape[0] - 1  # the step into the next anchor used outs[last]
            state_before = x if last == 0 else refined[last - 1]
            previous = (predict_x0_eps(outs[last], state_before, schedule, i + last)[0], i + last)
        emit(x, outs, refined, i)
        x = refined[-1]
        i += refined.shape[0]
    return SampleResult(x, counter.stats())


def _largest_change(new: Tensor, old: Tensor, schedule: Schedule, first: int) -> float:
    """``max_j RMS(new_j - old_j) / sigma_{first + j}`` (largest over the batch)."""
    worst = 0.0
    for j in range(new.shape[0]):
        diff, sigma = max_rms(new[j], old[j]), schedule.sigma(first + j)
        worst = max(worst, diff / sigma if sigma > 0 else diff)
    return worst


@dataclass(frozen=True, repr=False)
class _DRiffusion(Sampler):
    """The settings both DRiffusion modes share (see
    [`sample_driffusion`][driffusion.core.samplers.driffusion.sample_driffusion])."""

    mode: ClassVar[Mode] = "aggressive"
    function = sample_driffusion
    drafts: int = label_field(2)
    solver: str | Solver | None = None
    draft_rule: DraftRule | None = None
    order: int = 1
    adaptive_tol: float | None = None

    def keywords(self) -> dict[str, Any]:
        return {**super().keywords(), "mode": self.mode}

    def rounds(self, num_steps: int) -> int:
        """Serial rounds over ``num_steps`` steps (fixed drafts)."""
        if self.mode == "aggressive":
            return aggressive_rounds(num_steps, self.drafts)
        return conservative_rounds(num_steps, self.drafts)


@dataclass(frozen=True, repr=False)
class Aggressive(_DRiffusion):
    """Aggressive DRiffusion as a value: all ``k`` drafts of a round in parallel.

    Attributes:
        drafts: ``k``, evaluations per parallel round.
        solver: the solver's name or value (``None``: DDIM / flow Euler).
        draft_rule: ``"skip"`` or ``"solver"`` (``None``: the solver's default).
        order: draft order of first-order solvers (1 or 2).
        adaptive_tol: adaptive drafting target (``None``: fixed ``k``).

    Examples:
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)
        >>> sampler = Aggressive(drafts=4, solver="dpmpp_2m")
        >>> sampler
        Aggressive(drafts=4, solver='dpmpp_2m')
        >>> sampler(model, x, schedule).stats.rounds == sampler.rounds(50) == 14
        True
    """

    name = "aggressive"
    mode = "aggressive"


@dataclass(frozen=True, repr=False)
class Conservative(_DRiffusion):
    """Conservative DRiffusion as a value: an exact anchor evaluation, then ``k`` drafts; the
    settings are [`Aggressive`][driffusion.core.samplers.driffusion.Aggressive]'s.

    Examples:
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)
        >>> Conservative(drafts=4)(model, x, schedule).stats.rounds  # 2 (50 // 5) + 0
        20
    """

    name = "conservative"
    mode = "conservative"
