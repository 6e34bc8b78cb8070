r"""CHORDS: multi-core hierarchical ODE solvers (Han et al., ICCV 2025, arXiv 2507.15260).

``C`` *cores* run the fine solver from staggered grid points ``0 = s_0 < s_1 < ... < s_{C-1} < N``.
Core 0 is the serial sampler. Core ``c`` starts ahead, at ``s_c``, from a coarse skip of core
``c - 1``'s start state, and every round each live core evaluates the network once (one row of
one model call) and takes one fine step. Whenever the slower neighbour ``c - 1`` has just been
evaluated at core ``c``'s *anchor* ``j`` (where ``c`` was created or last rectified), core ``c``
is rectified with a Parareal-style predictor-corrector at no extra network cost:

$$x^{(c)}_{i+1} \leftarrow \mathrm{Step}(x^{(c)}_i)
    - \mathrm{skip}(x^{(c)}_j, o^{(c)}_j, j \to i + 1)
    + \mathrm{skip}(x^{(c-1)}_j, o^{(c-1)}_j, j \to i + 1),$$

and ``i + 1`` becomes its new anchor. Here ``Step`` is the fine solver's step and ``skip`` the
first-order skip transition (DDIM; flow: ``x + (s_j - s_i) v``), the coarse propagator. Faster
cores finish first: core ``c`` reaches ``N`` at round ``R_c = N - s_c + c``, and the ``m``-th
finished core (``index = m``) is returned; with ``m = C`` (core 0) the sample is the serial one,
bit for bit, after ``N`` rounds. Stopping at round ``R`` costs
``sum_c min(N - s_c, max(0, R - c))`` evaluations.

The official default for ``N = 50`` is 8 cores at ``0-2-4-8-16-24-32-40``: the fastest core
returns after 17 rounds (``50 / 17 = 2.94``). See
[`default_starts`][driffusion.core.samplers.chords.default_starts] for the lists of other core
counts, and [the CHORDS section of the concepts page][chords] for the cadence in detail.

**Solvers.** The paper uses first-order fine solvers (DDIM, flow Euler). A multistep solver
works too when its step is applied to the state it is given, as DPM-Solver++(2M/3M) and PLMS
steps are: each core carries its own solver state (the history of its own evaluations) through
its steps, and a new core starts with a fresh one (a first-order warm-up, as the serial
sampler's first step). The rectification then keeps its fixed point: a core whose state and
history equal its slower neighbour's at the anchor gets a zero correction and follows the
neighbour's fine trajectory; core 0 is never rectified, so it is the serial sampler of that
solver exactly. UniPC is refused: its corrector rebuilds each state from the previous one, which
would silently drop every rectification. Stochastic solvers are refused: a skip must be a pure
function of ``(x, out, i, j)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import PLMS, Solver, SolverState, UniPC, get_solver
from driffusion.core.transitions import predict_x0_eps, skip_transition

from .base import Callback, Sampler, check_positive_int, evaluate, max_rms, payload, setup_solver
from .settings import rows_setting, setting, solver_setting

StopRule = Literal["core_index", "residual"]
STOP_RULES: tuple[str, ...] = ("core_index", "residual")
"""``core_index``: return the ``index``-th finished core; ``residual``: return the first finished
core within ``tol * sigma_{N-1}`` (RMS) of the output before it."""

OFFICIAL_STARTS: tuple[int, ...] = (0, 2, 4, 8, 16, 24, 32, 40)
"""The official 8-core start list for ``N = 50`` (``configs/algo/chords.yaml``)."""


def default_starts(cores: int, num_steps: int) -> tuple[int, ...]:
    r"""The default start points of ``cores`` cores on an ``N``-step grid: geometric, then
    arithmetic, derived from the official 8-core list.

    The official list ``0-2-4-8-16-24-32-40`` (``N = 50``) is ``0`` and ``b, 2b, 4b, 8b`` with
    ``b = 2`` (geometric: the slower half of the cores, plus core 0), then ``12b, 16b, 20b``
    (arithmetic, with the last geometric gap ``4b``). Its base ``b`` is the largest for which the
    fastest core still receives one whole rectification window before the end,
    ``s_{C-1} + (s_{C-1} - s_{C-2}) \le N``. The same rule for ``C`` cores:

    - ``g = C // 2 + 1`` geometric starts ``0, b, 2b, ..., 2^{g-2} b``;
    - then ``C - g`` arithmetic starts spaced by the last geometric gap ``d``;
    - ``b`` the largest integer with ``s_{C-1} + d \le N``.

    For ``N = 50`` this gives ``(0, 25)`` for 2 cores, ``(0, 12, 24, 36)`` for 4 and the official
    list for 8. The 2- and 4-core lists are this rule's, not the paper's: no other list is
    published (the paper's 2.1x on 4 cores suggests a later ``s_3`` of about 29).

    Args:
        cores: ``C >= 1``.
        num_steps: ``N >= 1``.

    Raises:
        ValueError: ``C`` cores do not fit ``N`` steps by this rule (pass ``starts``).

    Examples:
        >>> default_starts(8, 50)
        (0, 2, 4, 8, 16, 24, 32, 40)
        >>> default_starts(4, 50), default_starts(2, 50)
        ((0, 12, 24, 36), (0, 25))
    """
    check_positive_int(cores, "cores")
    check_positive_int(num_steps, "num_steps")
    if cores == 1:
        return (0,)
    geometric = cores // 2 + 1

    def starts_for(base: int) -> tuple[list[int], int]:
        starts = [0] + [base * 2 ** (c - 1) for c in range(1, geometric)]
        gap = starts[-1] - starts[-2]
        while len(starts) < cores:
            starts.append(starts[-1] + gap)
        return starts, gap

    best: list[int] | None = None
    base = 1
    while True:
        starts, gap = starts_for(base)
        if starts[-1] + gap > num_steps:
            break
        best, base = starts, base + 1
    if best is None:
        raise ValueError(
            f"no default start list of {cores} cores fits {num_steps} steps: use fewer cores, "
            "more steps, or pass starts=(0, s_1, ...)"
        )
    return tuple(best)


def check_starts(starts: object, num_steps: int | None = None) -> tuple[int, ...]:
    """``starts`` as a tuple of strictly increasing integers from 0 (below ``num_steps``), or
    ``ValueError`` naming what is wrong."""
    if isinstance(starts, (str, bytes)) or not isinstance(starts, Sequence) or not starts:
        raise ValueError(f"starts must be a non-empty sequence of grid points, got {starts!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in starts):
        raise ValueError(f"starts must be integers, got {starts!r}")
    values = tuple(starts)
    if values[0] != 0:
        raise ValueError(f"starts must begin at 0 (core 0 is the serial sampler), got {values}")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"starts must be strictly increasing, got {values}")
    if num_steps is not None and values[-1] >= num_steps:
        raise ValueError(f"starts must be below N = {num_steps}, got {values}")
    return values


def resolve_starts(
    cores: int | None, starts: Sequence[int] | None, num_steps: int
) -> tuple[int, ...]:
    """The start list of a run: ``starts`` (checked against ``cores``), else the default list of
    ``cores`` cores; when neither is given, of 8 cores (the official count), or of as many as
    fit a short grid."""
    if starts is None and cores is None:
        for count in range(8, 1, -1):
            try:
                return default_starts(count, num_steps)
            except ValueError:
                continue
        return (0,)
    if starts is None:
        return default_starts(check_positive_int(cores, "cores"), num_steps)
    values = check_starts(starts, num_steps)
    if cores is not None and cores != len(values):
        raise ValueError(f"cores={cores} but starts has {len(values)} points: {values}")
    return values


def finish_round(starts: Sequence[int], num_steps: int, core: int) -> int:
    """The round at whose end core ``c`` reaches ``N``: ``R_c = N - s_c + c``."""
    return num_steps - starts[core] + core


def chords_rounds(starts: Sequence[int], num_steps: int, index: int = 1) -> int:
    """Rounds to the ``index``-th finished core: ``R = N - s_{C-m} + (C - m)``."""
    cores = len(starts)
    check_positive_int(index, "index", upper=cores)
    return finish_round(starts, num_steps, cores - index)


def chords_evaluations(starts: Sequence[int], num_steps: int, rounds: int) -> int:
    """Evaluations of a run stopped after ``R`` rounds: ``sum_c min(N - s_c, max(0, R - c))``."""
    return sum(min(num_steps - s, max(0, rounds - c)) for c, s in enumerate(starts))


def even_starts(cores: int, num_steps: int, windows: int) -> tuple[int, ...] | None:
    """Evenly spaced starts ``(0, g, 2g, ..., (C-1) g)`` whose fastest core gets ``windows``
    whole rectification windows before ``N``: ``g = N // (C - 1 + windows)`` (``None`` when
    ``g < 2`` or there is one core). Later starts for the fastest core are faster, earlier ones
    more accurate; the default list gives it one window.

    Examples:
        >>> even_starts(4, 50, 2)
        (0, 10, 20, 30)
    """
    check_positive_int(cores, "cores")
    gap = num_steps // (cores - 1 + windows)
    return None if gap < 2 or cores < 2 else tuple(gap * c for c in range(cores))


@dataclass(eq=False)
class _Core:
    """One core: its next point, its last evaluation and its anchor."""

    core: int
    i: int
    x: Tensor
    state: SolverState
    anchor: int
    anchor_x: Tensor
    anchor_out: Tensor | None = None
    last_x: Tensor | None = None
    last_out: Tensor | None = None

    def evaluated(self, out: Tensor) -> None:
        self.last_x, self.last_out = self.x, out
        if self.anchor == self.i:
            self.anchor_out = out


@dataclass(frozen=True, repr=False)
class Chords(Sampler):
    """[`sample_chords`][driffusion.core.samplers.chords.sample_chords] as a value.

    Attributes:
        cores: ``C`` cores (parallel rows per round); ``None``: ``len(starts)``, or 8.
        starts: start points ``(0, s_1, ..., s_{C-1})``; ``None``: ``default_starts(C, N)``.
        stop: ``"core_index"`` or ``"residual"``.
        index: with ``stop="core_index"``, return the ``index``-th core to finish (1: fastest).
        tol: with ``stop="residual"``, the RMS residual relative to ``sigma_{N-1}``.
        solver: the fine solver's name or value (deterministic; ``None``: DDIM / flow Euler).

    Examples:
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)
        >>> sampler = Chords(cores=8, index=2)
        >>> sampler
        Chords(cores=8, index=2)
        >>> sampler(model, x, schedule).stats.rounds  # core 6 finishes at 50 - 32 + 6
        24
    """

    name = "chords"
    title = "CHORDS"
    cores: int | None = rows_setting(
        None, "CHORDS cores (rows per round)", optional=True, implied_by="starts"
    )
    starts: tuple[int, ...] | None = setting(
        None, "points", "CHORDS core start points 0 < s_1 < ...", optional=True
    )
    stop: str = setting("core_index", "choice", "CHORDS stop rule", choices=STOP_RULES)
    index: int = setting(1, "int", "CHORDS: return the index-th core to finish", minimum=1)
    tol: float = setting(
        1e-3, "float", "CHORDS residual stop: RMS within tol x sigma_{N-1}", minimum=0.0
    )
    solver: str | Solver | None = solver_setting()

    def validate(self) -> None:
        if self.starts is not None:
            starts = check_starts(self.starts)
            if self.cores is not None and self.cores != len(starts):
                raise ValueError(f"cores={self.cores} but starts has {len(starts)} points")
        count = self.cores if self.starts is None else len(self.starts)
        if count is not None and self.index > count:
            raise ValueError(f"index must be at most the {count} cores, got {self.index}")
        resolved = get_solver(self.solver)
        if resolved.stochastic:
            raise ValueError(f"CHORDS needs a deterministic solver, got {resolved.name!r}")
        if isinstance(resolved, UniPC):
            raise ValueError(
                "CHORDS cannot run over unipc: its UniC corrector recomputes each state from "
                "the previous one and would discard every rectification; use dpmpp_2m, "
                "dpmpp_3m, plms, ddim or euler"
            )

    @property
    def rows(self) -> int | None:
        """The cores (``len(starts)`` when a start list fixes them)."""
        return len(self.starts) if self.starts is not None else self.cores

    def fits(self, num_steps: int) -> bool:
        try:
            resolve_starts(self.cores, self.starts, num_steps)
        except ValueError:
            return False
        return True

    @classmethod
    def variants(cls, rows: int, num_steps: int) -> list[dict[str, Any]]:
        """The default start list returning the fastest and the second core, and evenly spaced
        lists whose fastest core gets two or three rectification windows (see
        [`even_starts`][driffusion.core.samplers.chords.even_starts]); each also over DDIM,
        the paper's solver."""
        out: list[dict[str, Any]] = [{"index": m} for m in range(1, min(2, rows - 1) + 1)]
        for windows in (2, 3):
            starts = even_starts(rows, num_steps, windows)
            if starts is not None and {"starts": starts, "cores": None} not in out:
                out.append({"starts": starts, "cores": None})
        return out + [{**variant, "solver": "ddim"} for variant in out]


@Chords.implemented_by
def sample_chords(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    cores: int | None = Chords.cores,
    starts: Sequence[int] | None = Chords.starts,
    stop: StopRule = "core_index",
    index: int = Chords.index,
    tol: float = Chords.tol,
    solver: Solver | str | None = Chords.solver,
    callback: Callback | None = None,
    check_finite: bool = True,
) -> SampleResult:
    r"""CHORDS sampling: ``C`` staggered cores, one row each per round, slower cores rectifying
    faster ones; the ``index``-th core to finish is returned (see the module's description).

    Each round evaluates every live core once (``K <= C`` rows in one model call); then the
    newest core, on its first evaluation, launches the next one by the coarse skip
    ``skip(x^{(c)}_{s_c}, o, s_c -> s_{c+1})`` (the last one makes the free coarse *preview*
    ``skip(.., s_{C-1} -> N)``); then every evaluated core takes one fine step and is rectified
    when its slower neighbour was just evaluated at its anchor; cores reaching ``N`` retire.

    Args:
        model: ``model(xs[K, B, ...], t[K]) -> out``.
        x: the initial state ``[B, *shape]`` at point 0.
        schedule: the grid.
        cores: ``C``, the number of cores (parallel rows); default ``len(starts)``, or 8 (as
            many as fit, on a grid too short for 8).
        starts: the start points ``0 = s_0 < ... < s_{C-1} < N``; default
            [`default_starts`][driffusion.core.samplers.chords.default_starts]``(C, N)``.
        stop: ``"core_index"`` (return the ``index``-th core to finish) or ``"residual"``
            (return the first finished core whose output is within ``tol * sigma_{N-1}`` (RMS,
            the largest over the batch) of the output before it, the preview included; core 0,
            the serial sample, when none is).
        index: ``m`` in ``1..C`` for ``stop="core_index"``: 1 is the fastest core, ``C`` the
            serial one.
        tol: the residual tolerance for ``stop="residual"``, relative to ``sigma_{N-1}``.
        solver: the fine solver or its name (deterministic; default DDIM / flow Euler). The
            coarse propagator is always the first-order skip.
        callback: called after each round with [`payload`][driffusion.core.samplers.base.payload]
            of the fastest evaluated core's new state, plus ``"core"`` (its id).
        check_finite: raise ``ValueError`` on a non-finite network output.

    Returns:
        The returned core's state at ``N`` and stats; ``finish_order`` is ``m``, the returned
        core's place in the finishing order.

    Examples:
        >>> from driffusion.testing import toy_problem
        >>> from driffusion.core import sample_chords
        >>> model, x, schedule = toy_problem(steps=50)
        >>> result = sample_chords(model, x, schedule, starts=(0, 2, 4, 8, 16, 24, 32, 40))
        >>> result.stats.rounds, result.stats.evaluations, result.stats.rows  # fastest core
        (17, 108, 8)
    """
    Chords.check(cores=cores, starts=starts, stop=stop, index=index, tol=tol, solver=solver)
    fine, schedule, initial = setup_solver(solver, x, schedule, None)
    n = schedule.num_steps
    points = resolve_starts(cores, starts, n)
    count = len(points)
    if isinstance(fine, PLMS) and 1 in points[1:]:
        raise ValueError("plms cannot start a core at point 1 (its Heun warm start's repeat)")
    check_positive_int(index, "index", upper=count)
    threshold = tol * schedule.sigma(n - 1)
    counter = CountingModel(model, check_finite=check_finite)

    live = [_Core(0, 0, x, initial, 0, x)]
    outputs: list[Tensor] = []  # the preview, then the cores in finishing order
    finished = 0
    while True:
        rows = list(live)  # ascending id: slow -> fast; ids are contiguous (fast cores retire)
        outs = evaluate(counter, [c.x for c in rows], [c.i for c in rows], schedule)
        for core, out in zip(rows, outs, strict=True):
            core.evaluated(out)
        spawn = None
        newest = rows[-1]
        if newest.i == points[newest.core]:  # the newest core's first evaluation
            assert newest.last_out is not None
            if newest.core < count - 1:  # the hierarchical initialisation of the next core
                nxt = newest.core + 1
                y = skip_transition(newest.x, newest.last_out, schedule, newest.i, points[nxt])
                spawn = _Core(nxt, points[nxt], y, initial, points[nxt], y)
            else:  # the preview: a C-step coarse sample along the start points, for free
                outputs.append(skip_transition(newest.x, newest.last_out, schedule, newest.i, n))
        for k, core in enumerate(rows):
            i, out = core.i, outs[k]
            y, core.state = fine.step(core.x, out, schedule, i, core.state)
            slower = rows[k - 1] if k > 0 else None
            if slower is not None and slower.i == core.anchor:  # evaluated at my anchor
                assert core.anchor_out is not None and slower.last_out is not None
                assert slower.last_x is not None and slower.core == core.core - 1
                j = core.anchor
                y = (
                    y
                    - skip_transition(core.anchor_x, core.anchor_out, schedule, j, i + 1)
                    + skip_transition(slower.last_x, slower.last_out, schedule, j, i + 1)
                )
                core.anchor, core.anchor_x, core.anchor_out = i + 1, y, None
            core.x = y
        for core in rows:  # `slower.i` above is read before the slower core advances
            core.i += 1
        if callback is not None:
            fast = rows[-1]
            assert fast.last_x is not None and fast.last_out is not None
            denoised = predict_x0_eps(fast.last_x, fast.last_out, schedule, fast.i - 1)[0]
            callback(payload(fast.i, fast.x, denoised, schedule, counter.rounds, core=fast.core))
        for core in rows:
            if core.i < n:
                continue
            outputs.append(core.x)
            live.remove(core)
            finished += 1
            done = finished == index
            if stop == "residual":
                done = len(outputs) >= 2 and max_rms(outputs[-1], outputs[-2]) <= threshold
            if done or not live:
                return SampleResult(core.x, counter.stats(finish_order=finished))
        if spawn is not None:
            live.append(spawn)
