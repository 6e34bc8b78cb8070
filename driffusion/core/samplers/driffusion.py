"""DRiffusion: draft the next ``k`` states with skip transitions, evaluate them in one parallel
round, and refine them with the ordinary base step.

Both modes are compositions of the two pure functions of
[`driffusion.core.drafting`][driffusion.core.drafting]:

- [`draft`][driffusion.core.drafting.draft] ``(x_i, out_i) -> [d_1..d_k]`` with
  ``d_j = skip(x_i, out_i, i -> i + j)`` (or the solver's own extrapolation);
- [`refine`][driffusion.core.drafting.refine] ``(x_i, [o_0..o_{m-1}]) -> [x_{i+1}..x_{i+m}]``
  with ``x_{i+j+1} = Step(x_{i+j}, o_j, i + j)``: each output (computed at a draft) is applied
  to the *refined* state, exactly as a scheduler's ``step`` would apply it.

With ``k = 1`` the single draft *is* the next serial state, so both modes reproduce the serial
sampler bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from driffusion.core.drafting import DRAFT_RULES, DraftRule, check_draft_rule, draft, refine
from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import Solver
from driffusion.core.transitions import predict_x0_eps

from .base import Callback, Sampler, check_positive_int, evaluate, max_rms, payload, setup_solver
from .settings import rows_setting, setting, solver_setting

Mode = Literal["aggressive", "conservative"]


@dataclass(frozen=True, repr=False)
class _DRiffusion(Sampler):
    """The settings both DRiffusion modes share (see
    [`sample_driffusion`][driffusion.core.samplers.driffusion.sample_driffusion])."""

    mode: ClassVar[Mode] = "aggressive"
    drafts: int = rows_setting(2, "DRiffusion drafts per round k")
    solver: str | Solver | None = solver_setting()
    draft_rule: str = setting(
        "skip", "choice", "how drafts beyond the first are made", choices=DRAFT_RULES
    )
    adaptive_tol: float | None = setting(
        None,
        "float",
        "adaptive drafting's target draft error",
        minimum=0.0,
        exclusive=True,
        optional=True,
    )

    def validate(self) -> None:
        check_draft_rule(self.draft_rule, self.solver)

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
        draft_rule: ``"skip"``, ``"solver"`` or ``"second_order"`` (see
            [`draft`][driffusion.core.drafting.draft]).
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
    title = "DRiffusion aggressive"
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
    title = "DRiffusion conservative"
    mode = "conservative"


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


@_DRiffusion.implemented_by
def sample_driffusion(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    drafts: int = _DRiffusion.drafts,
    mode: Mode = "aggressive",
    solver: Solver | str | None = _DRiffusion.solver,
    draft_rule: DraftRule = "skip",
    adaptive_tol: float | None = _DRiffusion.adaptive_tol,
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
    ([`refine`][driffusion.core.drafting.refine]): each draft's output is converted at the
    refined state and enters the solver's history exactly as a serial run's own evaluation would,
    so a multistep solver (DPM-Solver++, UniPC, PLMS) keeps its order along the refined
    trajectory. Drafts come from the anchor by ``draft_rule`` (see
    [`draft`][driffusion.core.drafting.draft]): ``"skip"``, first order from the solver's own
    first step, or ``"solver"``, the solver's multistep extrapolation over the span.

    Beyond the paper (off by default, so the defaults are plain DRiffusion; the convergent mode
    is
    [`sample_picard_driffusion`][driffusion.core.samplers.picard_driffusion.sample_picard_driffusion]):

    - ``draft_rule="second_order"`` (first-order solvers): second-order drafts from the current
      and the previous clean estimates; the refine step stays the solver's step, so
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
        draft_rule: ``"skip"``, ``"solver"`` or ``"second_order"``.
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
    if mode not in ("aggressive", "conservative"):
        raise ValueError(f"mode must be 'aggressive' or 'conservative', got {mode!r}")
    _DRiffusion.check(
        drafts=drafts, solver=solver, draft_rule=draft_rule, adaptive_tol=adaptive_tol
    )
    solver, schedule, state = setup_solver(solver, x, schedule, noise)
    k_max = drafts
    counter = CountingModel(model, check_finite=check_finite)
    n = schedule.num_steps

    def emit(start: Tensor, outs: Tensor, states: Tensor, first: int) -> None:
        """Call back for states ``first + 1..``: stepped from ``start`` with ``outs``."""
        if callback is None:
            return
        before = start
        for offset, (out, state) in enumerate(zip(outs, states, strict=True)):
            denoised = predict_x0_eps(before, out, schedule, first + offset)[0]
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
        drafted = draft(
            x,
            anchor_out,
            schedule,
            i,
            k_block,
            solver=solver,
            state=state,
            rule=draft_rule,
            previous=previous,
        )
        draft_outs = evaluate(counter, list(drafted), list(range(i + 1, i + k_block + 1)), schedule)
        if mode == "aggressive":
            # Refine k' steps; the last draft's output is cached as the next anchor's.
            outs = torch.cat([anchor_out[None], draft_outs[:-1]])
            anchor_out = draft_outs[-1]
        else:
            outs = torch.cat([anchor_out[None], draft_outs])
        refined, state = refine(x, outs, schedule, i, solver=solver, state=state)
        if adaptive_tol is not None:
            error = _largest_change(drafted, refined[:k_block], schedule, i + 1)
            k = max(1, k // 2) if error > adaptive_tol else k
            k = min(k_max, k + 1) if error < adaptive_tol / 2 else k
        if draft_rule == "second_order":
            last = refined.shape[0] - 1  # the step into the next anchor used outs[last]
            state_before = x if last == 0 else refined[last - 1]
            previous = (predict_x0_eps(state_before, outs[last], schedule, i + last)[0], i + last)
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
