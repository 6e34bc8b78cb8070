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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from driffusion.core.drafting import DRAFT_RULES, DraftRule, check_draft_rule, draft, refine
from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import Solver, get_solver
from driffusion.core.transitions import predict_x0_eps

from . import drafts_region
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
    warmup: int = setting(
        0, "int", "serial steps before drafting (short grids with many drafts)", minimum=0
    )

    def validate(self) -> None:
        check_draft_rule(self.draft_rule, self.solver)

    def keywords(self) -> dict[str, Any]:
        return {**super().keywords(), "mode": self.mode}

    def rounds(self, num_steps: int) -> int:
        """Serial rounds over ``num_steps`` steps (fixed drafts): the warm-up's, then the
        mode's over the rest."""
        warm = min(self.warmup, num_steps)
        rest = num_steps - warm
        if rest == 0:
            return warm
        if self.mode == "aggressive":
            return warm + aggressive_rounds(rest, self.drafts)
        return warm + conservative_rounds(rest, self.drafts)

    @classmethod
    def default_rows(cls, devices: int, num_steps: int) -> int:
        """The measured rule: [`safe_drafts`][driffusion.core.samplers.driffusion.safe_drafts]
        ``(mode, num_steps, devices)``, never more drafts than were measured no further from
        the solution than serial at the same rounds (and never below 1)."""
        return safe_drafts(cls.mode, num_steps, devices)

    @classmethod
    def default_rows_reason(cls, devices: int, num_steps: int) -> str | None:
        """``None`` when the default uses every device, else why fewer drafts, with the
        measured numbers (see
        [`unsafe_drafts_reason`][driffusion.core.samplers.driffusion.unsafe_drafts_reason])."""
        rows = cls.default_rows(devices, num_steps)
        if rows == devices:
            return None
        why = unsafe_drafts_reason(cls.mode, num_steps, rows + 1)
        return f"{_drafts(rows)} rather than {devices}: {why}"

    def region_warning(self, num_steps: int) -> str | None:
        """``None`` unless ``drafts`` exceeds the safe count for ``num_steps``; then one
        sentence with the measured digits ``err_ref`` of these drafts (at the nearest measured
        ``N`` below, over this sampler's solver where it was measured) against serial at the
        same rounds."""
        allowed = safe_drafts(self.mode, num_steps, self.drafts)
        if self.drafts <= allowed:
            return None
        solver = _solver_name(self.solver)
        measured = drafts_region.LARGEST_SAFE[self.mode]
        below = [n for n in sorted(measured) if n <= num_steps]
        head = (
            f"{self!r} over {num_steps} steps drafts more than the {_drafts(allowed)} measured safe"
        )
        if not below:
            return f"{head}: {unsafe_drafts_reason(self.mode, num_steps, self.drafts, solver)}"
        most = max(drafts_region.DRAFTS)
        k = min(self.drafts, most)
        cell = _digits_cell(self.mode, below[-1], k, solver)
        numbers = _numbers(cell, k, below[-1] if below[-1] != num_steps else None)
        if k < self.drafts:
            numbers += f"; {most} is the most measured"
        if cell[3] > cell[4] * (1 + drafts_region.SLACK):
            return f"{head} ({numbers})"
        why = unsafe_drafts_reason(self.mode, num_steps, allowed + 1, solver)
        return f"{head} ({numbers}), and {why}"


@dataclass(frozen=True, repr=False)
class Aggressive(_DRiffusion):
    """Aggressive DRiffusion as a value: all ``k`` drafts of a round in parallel.

    Attributes:
        drafts: ``k``, evaluations per parallel round.
        solver: the solver's name or value (``None``: DDIM / flow Euler).
        draft_rule: ``"skip"``, ``"solver"`` or ``"second_order"`` (see
            [`draft`][driffusion.core.drafting.draft]).
        adaptive_tol: adaptive drafting target (``None``: fixed ``k``).
        warmup: serial steps before drafting (0: none). Drafts are worst from the first, noisiest
            states: on FLUX's 10-step grid with 4 drafts two serial steps cut the error to the
            reference from 0.44 to 0.11 for one more round (the flow frontier's oracle); on 28
            steps they do not help.

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


Cell = tuple[str, str, int, float, float]
"""A measured cell of the region: ``(model, solver, rounds, err_ref, serial_err_ref)``."""


def allowed_drafts(largest_safe: Mapping[int, int], num_steps: int) -> int:
    r"""The drafts a measured region allows over ``num_steps`` steps, monotone in ``N``.

    With ``s(N)`` the largest safe ``k`` measured at ``N`` (every ``k' <= s(N)`` safe) and
    ``m`` the largest measured ``N <= num_steps``:

    $$a(N) = \min_{N' \ge m,\ N' \text{ measured}} s(N'), \qquad a(N) = 1 \text{ when }
    N < \min N'$$

    Taking the minimum over every longer measured grid makes the rule nondecreasing in ``N`` by
    construction (fewer steps never allow more drafts), and never above ``s`` at a measured
    ``N``: it allows no measured-unsafe configuration. Above the largest measured ``N`` it is
    that one's ``s``.

    Examples:
        >>> allowed_drafts({4: 1, 8: 3, 16: 2, 32: 5}, 10)  # min(s(8), s(16), s(32))
        2
        >>> allowed_drafts({4: 1, 8: 3}, 3), allowed_drafts({4: 1, 8: 3}, 100)
        (1, 3)
    """
    measured = sorted(largest_safe)
    below = [n for n in measured if n <= num_steps]
    if not below:
        return 1
    return max(1, min(largest_safe[n] for n in measured if n >= below[-1]))


def safe_drafts(mode: Mode, num_steps: int, devices: int) -> int:
    r"""The most drafts ``k <= devices`` that DRiffusion in ``mode`` takes over ``num_steps``
    steps by default: the measured region of
    [`drafts_region`][driffusion.core.samplers.drafts_region] (generated by
    ``benchmarks/drafts_region.py``).

    ``(mode, N, k)`` was measured *safe* when on every model (the exact Gaussian-mixture
    oracle, the digits network) and solver (DDIM, DPM-Solver++(2M)) measured,

    $$\frac{\|x_k - x_{ref}\|}{\|x_{ref}\|} \le
    \frac{\|x^{serial}_{R} - x_{ref}\|}{\|x_{ref}\|} (1 + 10^{-6}),$$

    ``x_k`` the sample of ``k`` drafts over ``N`` steps, ``x^serial_R`` the same solver run
    serially over ``R`` steps, ``R`` the rounds the sampler takes
    ([`aggressive_rounds`][driffusion.core.samplers.driffusion.aggressive_rounds],
    [`conservative_rounds`][driffusion.core.samplers.driffusion.conservative_rounds]): more
    drafts must buy at least the accuracy of serial at the same latency. The rule is
    ``min(devices, a(N))`` with ``a`` from
    [`allowed_drafts`][driffusion.core.samplers.driffusion.allowed_drafts]: an ``N`` between
    measured points takes the nearest measured ``N`` below, and the rule is monotone in ``N``
    by construction (as measured, the region grows with ``N`` at every measured point; the
    construction keeps the rule monotone should a regenerated table not); below the smallest
    measured ``N``: 1 (serial); above the largest: the largest's. Never below 1,
    nondecreasing in ``devices`` and in ``num_steps``, and never above the most drafts
    measured (8). Measured with fixed drafts and the default ``skip`` draft rule.

    Examples:
        >>> safe_drafts("aggressive", 3, 8)  # below the measured grids: serial
        1
        >>> safe_drafts("aggressive", 100, 1)
        1
    """
    if mode not in ("aggressive", "conservative"):
        raise ValueError(f"mode must be 'aggressive' or 'conservative', got {mode!r}")
    check_positive_int(num_steps, "num_steps")
    check_positive_int(devices, "devices")
    return max(1, min(devices, allowed_drafts(drafts_region.LARGEST_SAFE[mode], num_steps)))


def unsafe_drafts_reason(
    mode: Mode, num_steps: int, drafts: int, solver: str | None = None
) -> str | None:
    """Why ``drafts`` is more than ``mode`` allows over ``num_steps`` steps, as one clause with
    the measurement that sets the limit (``None`` when it is not more).

    The measurement quoted is the first measured ``N' >= m`` (``m`` the nearest measured
    ``N`` below ``num_steps``) whose largest safe ``k`` is the limit ``a``: there ``a + 1``
    drafts were measured further from the solution than serial at the same rounds. Of its
    cells the digits one over ``solver`` is quoted if it is unsafe, else the unsafe one
    furthest above serial (digits first).

    Examples:
        >>> unsafe_drafts_reason("aggressive", 100, 1) is None
        True
    """
    allowed = safe_drafts(mode, num_steps, max(drafts, 1))
    if drafts <= allowed:
        return None
    region = drafts_region.LARGEST_SAFE[mode]
    measured = sorted(region)
    below = [n for n in measured if n <= num_steps]
    if not below:
        first = f"from {measured[0]} steps on" if measured else "at no grid"
        return (
            f"drafts were measured {first}, so over {num_steps} steps {mode} DRiffusion runs "
            "serially (1 draft)"
        )
    if allowed + 1 > max(drafts_region.DRAFTS):
        return f"more than {_drafts(allowed)} were never measured"
    binding = next(n for n in measured if n >= below[-1] and region[n] == allowed)
    cell = _unsafe_cell(mode, binding, allowed + 1, solver)
    over = f"over {binding} steps"
    if binding == below[-1] != num_steps:
        over += f" (the nearest measured grid below {num_steps} steps)"
    clause = (
        f"{over} {allowed + 1} drafts were measured further from the solution than "
        f"serial at the same rounds ({_numbers(cell, allowed + 1)})"
    )
    if binding == below[-1]:
        return clause
    return f"{clause}, and fewer steps never get more drafts"


def _drafts(k: int) -> str:
    return f"{k} draft" if k == 1 else f"{k} drafts"


def _solver_name(solver: str | Solver | None) -> str:
    return get_solver(solver).name


def _cells(mode: str, steps: int, drafts: int) -> list[Cell]:
    return [
        (model, solver, rounds, err, serial)
        for m, model, solver, n, k, rounds, err, serial in drafts_region.MEASURED
        if (m, n, k) == (mode, steps, drafts)
    ]


def _ratio(cell: Cell) -> float:
    return cell[3] / cell[4] if cell[4] > 0 else float("inf")


def _digits_cell(mode: str, steps: int, drafts: int, solver: str | None) -> Cell:
    """The digits cell over ``solver`` (else the digits cell furthest above serial)."""
    cells = _cells(mode, steps, drafts)
    digits = [c for c in cells if c[0] == "digits"] or cells
    return next((c for c in digits if c[1] == solver), max(digits, key=_ratio))


def _unsafe_cell(mode: str, steps: int, drafts: int, solver: str | None) -> Cell:
    """The unsafe cell to quote: digits over ``solver``, else the worst (digits first)."""
    cells = _cells(mode, steps, drafts)
    unsafe = [c for c in cells if c[3] > c[4] * (1 + drafts_region.SLACK)] or cells
    own = [c for c in unsafe if c == ("digits", solver, *c[2:])]
    if own:
        return own[0]
    digits = [c for c in unsafe if c[0] == "digits"]
    return max(digits or unsafe, key=_ratio)


def _numbers(cell: Cell, drafts: int, steps: int | None = None) -> str:
    """``digits over dpmpp_2m: err_ref 0.625 with 2 drafts against 0.22 for serial at 4
    rounds`` (``, measured over N steps`` where ``steps`` is given)."""
    model, solver, rounds, err, serial = cell
    where = "" if steps is None else f", measured over {steps} steps"
    return (
        f"{model} over {solver}: err_ref {err:.3g} with {_drafts(drafts)} against {serial:.3g} "
        f"for serial at {rounds} rounds{where}"
    )


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
    warmup: int = _DRiffusion.warmup,
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

    Both modes spend exactly ``N`` evaluations. With ``warmup = W`` the first ``W`` steps are
    serial (a round each) and the mode runs from point ``W``: ``W`` rounds plus the mode's over
    ``N - W`` steps.

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
        warmup: ``W`` serial steps first (one round each); the mode then runs from point
            ``W``. ``W = 0``: plain DRiffusion.
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
        drafts=drafts,
        solver=solver,
        draft_rule=draft_rule,
        adaptive_tol=adaptive_tol,
        warmup=warmup,
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
    while i < min(warmup, n):  # serial warm-up: drafts from the noisiest states are the worst
        out = evaluate(counter, [x], [i], schedule)[0]
        stepped, state = solver.step(x, out, schedule, i, state)
        emit(x, out[None], stepped[None], i)
        x, i = stepped, i + 1
    previous: tuple[Tensor, int] | None = None  # clean estimate of the step into the anchor
    first = mode == "aggressive" and i < n
    anchor_out = evaluate(counter, [x], [i], schedule)[0] if first else None
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
