r"""SRDS: Parareal over the sampling trajectory (Self-Refining Diffusion Samplers).

The ``N``-step grid is cut into ``B`` blocks with boundaries ``n_0 = 0 < n_1 < ... < n_B = N``.

- Coarse propagator ``G_b(X)``: one skip transition over block ``b`` (one evaluation at ``X``).
- Fine propagator ``F_b(X)``: the serial base steps inside block ``b``.

$$X^0_b = G_b(X^0_{b-1}), \qquad
  X^p_b = F_b(X^{p-1}_{b-1}) + G_b(X^p_{b-1}) - G_b(X^{p-1}_{b-1}).$$

After ``p`` iterations the first ``p`` block ends equal the serial trajectory, so ``B``
iterations reproduce the serial sample; iteration stops early once the last block end moves by
at most ``tol * sigma_{N-1}`` (per-sample RMS): as in ParaDiGMS and Picard-DRiffusion, a state's
change is measured relative to the noise level of the step that produced it.

Implementation, in two parts:

- the **sweep** (``_Parareal``): the iterates ``X^p_b``, the outputs at them, the coarse and
  fine results, and the Parareal update that fills every block end whose inputs are known (no
  model calls);
- the **schedule** (``_Schedule``): which evaluations run in each round. Every round gathers
  all that are ready (the outputs at newly corrected block starts, which serve both ``G`` and
  the first fine step, and the next step of every running fine solve) into **one** model call.
  With ``pipelined`` (the default) a block's next fine solve starts as soon as its start is
  corrected; without it, the fine solves of iteration ``p + 1`` wait until iteration ``p``'s
  correction sweep is complete.

Unchanged block starts (``X^p_{b-1}`` identical to ``X^{p-1}_{b-1}``) reuse earlier fine
results, so the converged prefix costs nothing and stays bit-identical to serial. Pipelined, the
fine solve that fixes block ``b`` starts from the serial state at ``n_{b-1}`` no later than the
serial sampler reaches it, so SRDS never takes more rounds than serial (``N``, at ``tol = 0``);
not pipelined, each correction sweep adds rounds, and it can take more than ``N``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import Solver, SolverState
from driffusion.core.transitions import skip_transition

from .base import Callback, Sampler, check_positive_int, evaluate, max_rms, payload, setup_solver
from .settings import rows_setting, setting, solver_setting, tolerance_setting


def block_boundaries(num_steps: int, blocks: int) -> list[int]:
    """Boundaries ``[0, n_1, ..., N]`` of ``blocks`` contiguous blocks of near-equal length.

    The first ``N % blocks`` blocks are one step longer.
    """
    check_positive_int(num_steps, "num_steps")
    check_positive_int(blocks, "blocks", upper=num_steps)
    base, extra = divmod(num_steps, blocks)
    bounds = [0]
    for b in range(blocks):
        bounds.append(bounds[-1] + base + (1 if b < extra else 0))
    return bounds


def default_blocks(num_steps: int) -> int:
    """``round(sqrt(N))``, the usual SRDS choice, within ``1..N``."""
    return max(1, min(num_steps, round(math.sqrt(num_steps))))


@dataclass(frozen=True, repr=False)
class SRDS(Sampler):
    """[`sample_srds`][driffusion.core.samplers.srds.sample_srds] as a value.

    Attributes:
        blocks: Parareal blocks ``B`` (``None``: ``round(sqrt(N))``); the rows of a round.
        tol: stop once the sample moves by at most ``tol * sigma_{N-1}`` (RMS).
        max_iters: iteration cap (``None``: ``B``, which always reaches the serial sample).
        pipelined: start each block's next fine solve as soon as its start is corrected (the
            default: never more rounds than serial).
        solver: the fine solver's name or value (``None``: DDIM / flow Euler).

    Examples:
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)
        >>> sampler = SRDS(tol=1e-2)
        >>> sampler
        SRDS(tol=0.01)
        >>> sampler(model, x, schedule).stats.rounds < 50
        True
    """

    name = "srds"
    title = "SRDS"
    blocks: int | None = rows_setting(
        None, "SRDS Parareal blocks (rows per round; default sqrt(N))", optional=True
    )
    tol: float = tolerance_setting(
        1e-3, "stop once the sample moves by at most tol x sigma_{N-1}", label=True
    )
    max_iters: int | None = setting(
        None, "int", "SRDS: at most this many Parareal iterations", minimum=1, optional=True
    )
    pipelined: bool = setting(True, "bool", "SRDS: start fine solves as soon as they can")
    solver: str | Solver | None = solver_setting()

    def fits(self, num_steps: int) -> bool:
        return self.blocks is None or self.blocks <= num_steps

    @classmethod
    def variants(cls, rows: int, num_steps: int) -> list[dict[str, Any]]:
        """Until the tolerance, or one or two Parareal iterations."""
        return [{}, {"max_iters": 1}, {"max_iters": 2}]


@dataclass
class _FineSolve:
    """A running fine solve of block ``block`` for iteration ``iteration``."""

    iteration: int
    block: int
    point: int
    end: int
    state: Tensor
    solver_state: SolverState


class _Parareal:
    """The sweep: Parareal's iterates over the block ends and their pure updates.

    ``X[p][b]`` is the state at block end ``n_b`` in iteration ``p`` (``X[p][0] = x``), ``E`` the
    output at it, ``G`` the coarse skip from it over block ``b + 1``, ``Y[p][b]`` the fine solve
    of block ``b`` from ``X[p - 1][b - 1]`` and ``S`` its final solver state; ``None`` while
    unknown.
    """

    def __init__(self, x: Tensor, schedule: Schedule, bounds: list[int], iters: int) -> None:
        blocks = len(bounds) - 1
        self.schedule, self.bounds, self.iters, self.blocks = schedule, bounds, iters, blocks

        def grid() -> list[list[Any]]:
            return [[None] * (blocks + 1) for _ in range(iters + 1)]

        self.X, self.E, self.G, self.Y, self.S = grid(), grid(), grid(), grid(), grid()
        for p in range(iters + 1):
            self.X[p][0] = x

    def unchanged(self, p: int, b: int) -> bool:
        """``X^p_b`` is (the same object as) ``X^{p-1}_b``: its block has converged."""
        return p >= 1 and self.X[p][b] is not None and self.X[p][b] is self.X[p - 1][b]

    def coarse(self, p: int, b: int) -> Tensor:
        """``G_b(X^p_{b-1})``, memoised."""
        if self.G[p][b] is None:
            start, out = self.X[p][b - 1], self.E[p][b - 1]
            bounds = self.bounds
            self.G[p][b] = skip_transition(start, out, self.schedule, bounds[b - 1], bounds[b])
        return self.G[p][b]

    def complete(self, p: int) -> bool:
        """Every block start of iteration ``p`` and its output are known."""
        return all(
            self.X[p][b] is not None and self.E[p][b] is not None for b in range(self.blocks)
        )

    def correct(self) -> bool:
        """One pass of the Parareal update over every block end whose inputs are known:
        ``X^0_b = G_b(X^0_{b-1})``, ``X^p_b = Y^p_b + G_b(X^p_{b-1}) - G_b(X^{p-1}_{b-1})``
        (exactly ``Y^p_b`` when the start did not move); outputs at unchanged states are reused.
        Returns whether anything became known."""
        X, E, Y = self.X, self.E, self.Y
        changed = False
        for p in range(self.iters + 1):
            for b in range(self.blocks + 1):
                reusable = b < self.blocks and E[p][b] is None and self.unchanged(p, b)
                if reusable and E[p - 1][b] is not None:
                    E[p][b] = E[p - 1][b]
                    changed = True
                if X[p][b] is not None or b == 0:
                    continue
                if p == 0:
                    if E[0][b - 1] is not None:
                        X[0][b] = self.coarse(0, b)
                        changed = True
                elif Y[p][b] is not None and X[p][b - 1] is not None:
                    if self.unchanged(p, b - 1):
                        X[p][b] = Y[p][b]  # the G terms cancel exactly
                        changed = True
                    elif E[p][b - 1] is not None:
                        X[p][b] = Y[p][b] + self.coarse(p, b) - self.coarse(p - 1, b)
                        changed = True
        return changed


class _Schedule:
    """The rounds: which fine solves run, and which evaluations each round gathers."""

    def __init__(
        self, sweep: _Parareal, solver: Solver, initial: SolverState, pipelined: bool
    ) -> None:
        self.sweep, self.solver, self.initial, self.pipelined = sweep, solver, initial, pipelined
        self.started: set[tuple[int, int]] = set()
        self.solves: list[_FineSolve] = []

    def start(self) -> bool:
        """Start every fine solve ``(p, b)`` whose start ``X^{p-1}_{b-1}`` and its output are
        known (without ``pipelined``: once iteration ``p - 1`` is complete); one from an
        unchanged start reuses the earlier result. Returns whether any started."""
        sweep = self.sweep
        X, E, Y, S = sweep.X, sweep.E, sweep.Y, sweep.S
        changed = False
        for p in range(1, sweep.iters + 1):
            if not (self.pipelined or sweep.complete(p - 1)):
                continue
            for b in range(1, sweep.blocks + 1):
                x_start, out = X[p - 1][b - 1], E[p - 1][b - 1]
                if (p, b) in self.started or x_start is None or out is None:
                    continue
                if p >= 2 and sweep.unchanged(p - 1, b - 1):
                    if Y[p - 1][b] is None:
                        continue  # same start as the solve still running: wait for it
                    Y[p][b], S[p][b] = Y[p - 1][b], S[p - 1][b]
                else:
                    # a multistep solver continues the history of the block before
                    begin = self.initial if b == 1 or p == 1 else S[p - 1][b - 1]
                    if begin is None:
                        continue  # the previous block's fine solve has not finished
                    bounds = sweep.bounds
                    solve = _FineSolve(p, b, bounds[b - 1], bounds[b], x_start, begin)
                    self.solves.append(solve)
                    self.advance(solve, out)  # its first output is the one at the block start
                self.started.add((p, b))
                changed = True
        return changed

    def advance(self, solve: _FineSolve, out: Tensor) -> None:
        """One fine step; a finished solve stores its result."""
        solve.state, solve.solver_state = self.solver.step(
            solve.state, out, self.sweep.schedule, solve.point, solve.solver_state
        )
        solve.point += 1
        if solve.point == solve.end:
            self.sweep.Y[solve.iteration][solve.block] = solve.state
            self.sweep.S[solve.iteration][solve.block] = solve.solver_state
            self.solves.remove(solve)

    def requests(self) -> list[tuple[Tensor, int, tuple[int, int] | _FineSolve]]:
        """This round's rows ``(state, point, target)``: the outputs wanted at block starts
        (``target = (p, b)``), then the next step of every running fine solve."""
        sweep = self.sweep
        rows: list[tuple[Tensor, int, tuple[int, int] | _FineSolve]] = []
        for p in range(sweep.iters + 1):
            for b in range(sweep.blocks):
                state = sweep.X[p][b]
                if state is not None and sweep.E[p][b] is None and not sweep.unchanged(p, b):
                    rows.append((state, sweep.bounds[b], (p, b)))
        rows += [(solve.state, solve.point, solve) for solve in self.solves]
        return rows

    def apply(self, targets: list[tuple[int, int] | _FineSolve], outs: Tensor) -> None:
        """Hand each output of the round to its target."""
        for target, out in zip(targets, outs, strict=True):
            if isinstance(target, _FineSolve):
                self.advance(target, out)
            else:
                self.sweep.E[target[0]][target[1]] = out


@SRDS.implemented_by
def sample_srds(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    blocks: int | None = SRDS.blocks,
    tol: float = SRDS.tol,
    max_iters: int | None = SRDS.max_iters,
    pipelined: bool = SRDS.pipelined,
    solver: Solver | str | None = SRDS.solver,
    noise: Tensor | None = None,
    callback: Callback | None = None,
    check_finite: bool = True,
) -> SampleResult:
    """SRDS (Parareal) sampling: coarse skips across blocks, parallel fine solves, corrections.

    The fine propagator is the serial solver. A multistep solver's fine solve of block ``b`` in
    iteration ``p`` starts with the solver state at the end of the fine solve of block ``b - 1``
    in iteration ``p - 1`` (a fresh state in iteration 1), which is the serial state once that
    block has converged: Parareal's exactness (``p`` iterations fix ``p`` blocks) is kept.

    Args:
        model: ``model(xs[K, B, ...], t[K]) -> out``.
        x: initial state ``[B, *shape]`` at point 0.
        schedule: the grid.
        blocks: number of blocks ``B`` in ``1..N``; default ``round(sqrt(N))``.
        tol: stop once the sample's change ``max_b RMS(X^p_B - X^{p-1}_B)`` is at most
            ``tol * sigma_{N-1}`` (relative to the noise level of the last step, the same
            meaning as ParaDiGMS' and Picard-DRiffusion's ``tol``); ``0`` runs until exact.
        max_iters: at most this many Parareal iterations, in ``1..B``; default ``B``, which
            always reproduces the serial sample.
        pipelined: start each block's next fine solve as soon as its start is corrected.
        solver: the fine solver or its name (default: DDIM / flow Euler, or DDPM with
            ``noise``); the coarse propagator is always the first-order skip.
        noise: pre-drawn noise ``[N, B, *shape]`` of a stochastic fine solver.
        callback: called with [`payload`][driffusion.core.samplers.base.payload] of the last
            point after each completed iteration, plus ``"iteration"`` and ``"change"``; its
            ``"denoised"`` is the state itself (the sample).
        check_finite: raise ``ValueError`` on a non-finite network output.

    Returns:
        The final state and stats (rounds, evaluations, ``parareal_iterations`` run).

    Examples:
        >>> import torch
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)  # an exact denoiser, noise, a grid
        >>> from driffusion.core import sample_serial, sample_srds
        >>> close = sample_srds(model, x, schedule, blocks=7, tol=1e-3)
        >>> close.stats.rounds  # of 50; the sample moved by at most 1e-3 sigma_49 (RMS)
        32
        >>> exact = sample_srds(model, x, schedule, blocks=7, tol=0.0)
        >>> bool((exact.x - sample_serial(model, x, schedule).x).abs().max() < 1e-5)
        True
    """
    SRDS.check(blocks=blocks, tol=tol, max_iters=max_iters, pipelined=pipelined, solver=solver)
    solver, schedule, initial = setup_solver(solver, x, schedule, noise)
    n = schedule.num_steps
    num_blocks = default_blocks(n) if blocks is None else check_positive_int(blocks, "blocks", n)
    iters = num_blocks if max_iters is None else min(max_iters, num_blocks)
    sweep = _Parareal(x, schedule, block_boundaries(n, num_blocks), iters)
    rounds = _Schedule(sweep, solver, initial, pipelined)
    counter = CountingModel(model, check_finite=check_finite)
    next_check = 1  # the next iteration whose convergence is checked
    while True:
        while sweep.correct() | rounds.start():  # both, every pass: all pure math that is ready
            pass
        while next_check <= iters and sweep.X[next_check][num_blocks] is not None:
            final, previous = sweep.X[next_check][num_blocks], sweep.X[next_check - 1][num_blocks]
            change = 0.0 if final is previous else max_rms(final, previous)
            if callback is not None:  # at the last point the state is the sample itself
                extra = {"iteration": next_check, "change": change}
                callback(payload(n, final, final, schedule, counter.rounds, **extra))
            if change <= tol * schedule.sigma(n - 1) or next_check == iters:
                return SampleResult(final, counter.stats(parareal_iterations=next_check))
            next_check += 1
        rows = rounds.requests()
        if not rows:  # pragma: no cover - the dataflow above always leaves work
            raise RuntimeError("SRDS scheduler stalled; this is a bug")
        outs = evaluate(counter, [r[0] for r in rows], [r[1] for r in rows], schedule)
        rounds.apply([r[2] for r in rows], outs)
