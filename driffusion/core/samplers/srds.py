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

Implementation: a small dataflow engine. Every round it gathers all evaluations that are ready
(first evaluations at newly corrected block starts, which serve both ``G`` and the first fine
step, and the next step of every running fine solve) into **one** model call. Without
``pipelined`` the fine solves of iteration ``p + 1`` wait until iteration ``p``'s correction sweep
is complete; with ``pipelined`` a block's next fine solve starts as soon as its start is
corrected. Unchanged block starts (``X^p_{b-1}`` identical to ``X^{p-1}_{b-1}``) reuse earlier
fine results, so the converged prefix costs nothing and stays bit-identical to serial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import Solver, SolverState
from driffusion.core.transitions import skip_transition


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


@dataclass
class _FineSolve:
    """A running fine solve of block ``block`` for iteration ``iteration``."""

    iteration: int
    block: int
    point: int
    end: int
    state: Tensor
    solver_state: SolverState


def sample_srds(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    blocks: int | None = None,
    tol: float = 1e-3,
    max_iters: int | None = None,
    pipelined: bool = False,
    solver: Solver | str | None = None,
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
        schedule: the grid (deterministic base sampler: DDIM / flow Euler).
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
        The final state and stats (rounds, evaluations, iterations run).

    Examples:
        >>> import torch
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)  # an exact denoiser, noise, a grid
        >>> from driffusion.core import sample_serial, sample_srds
        >>> close = sample_srds(model, x, schedule, blocks=7, tol=1e-3, pipelined=True)
        >>> close.stats.rounds  # of 50; the sample moved by at most 1e-3 sigma_49 (RMS)
        32
        >>> exact = sample_srds(model, x, schedule, blocks=7, tol=0.0)
        >>> bool((exact.x - sample_serial(model, x, schedule).x).abs().max() < 1e-5)
        True
    """
    solver, schedule, initial = setup_solver(solver, x, schedule, noise)
    n = schedule.num_steps
    num_blocks = default_blocks(n) if blocks is None else check_positive_int(blocks, "blocks", n)
    iters = num_blocks if max_iters is None else check_positive_int(max_iters, "max_iters")
    iters = min(iters, num_blocks)
    check_tolerance(tol)
    bounds = block_boundaries(n, num_blocks)
    counter = CountingModel(model, check_finite=check_finite)

    # X[p][b]: block-end states of iteration p (X[p][0] is x for all p); None while unknown.
    X: list[list[Tensor | None]] = [[None] * (num_blocks + 1) for _ in range(iters + 1)]
    E: list[list[Tensor | None]] = [[None] * num_blocks for _ in range(iters + 1)]  # outputs at X
    G: list[list[Tensor | None]] = [[None] * (num_blocks + 1) for _ in range(iters + 1)]  # coarse
    Y: list[list[Tensor | None]] = [[None] * (num_blocks + 1) for _ in range(iters + 1)]  # fine
    # solver state at the end of each fine solve
    S: list[list[SolverState | None]] = [[None] * (num_blocks + 1) for _ in range(iters + 1)]
    for p in range(iters + 1):
        X[p][0] = x
    started: set[tuple[int, int]] = set()
    solves: list[_FineSolve] = []
    next_check = 1  # the next iteration whose convergence is checked

    def unchanged(p: int, b: int) -> bool:
        return p >= 1 and X[p][b] is not None and X[p][b] is X[p - 1][b]

    def coarse(p: int, b: int) -> Tensor:
        """G_b(X^p_{b-1}), memoised."""
        value = G[p][b]
        if value is None:
            start, out = X[p][b - 1], E[p][b - 1]
            assert start is not None and out is not None
            value = skip_transition(start, out, schedule, bounds[b - 1], bounds[b])
            G[p][b] = value
        return value

    def iteration_ready(p: int) -> bool:
        return all(X[p][b] is not None and E[p][b] is not None for b in range(num_blocks))

    def advance(solve: _FineSolve, out: Tensor) -> None:
        solve.state, solve.solver_state = solver.step(
            solve.state, out, schedule, solve.point, solve.solver_state
        )
        solve.point += 1
        if solve.point == solve.end:
            Y[solve.iteration][solve.block] = solve.state
            S[solve.iteration][solve.block] = solve.solver_state
            solves.remove(solve)

    def start_state(p: int, b: int) -> SolverState | None:
        """The solver state the fine solve (p, b) starts with; None while not yet known."""
        if b == 1 or p == 1:
            return initial
        return S[p - 1][b - 1]

    def resolve() -> None:
        """Do all the pure math that is ready, until nothing changes (no model calls)."""
        changed = True
        while changed:
            changed = False
            for p in range(iters + 1):
                for b in range(num_blocks + 1):
                    # Outputs at unchanged states are reused, not re-evaluated.
                    reusable = b < num_blocks and E[p][b] is None and unchanged(p, b)
                    if reusable and E[p - 1][b] is not None:
                        E[p][b] = E[p - 1][b]
                        changed = True
                    if X[p][b] is not None or b == 0:
                        continue
                    if p == 0:
                        if E[0][b - 1] is not None:
                            X[0][b] = coarse(0, b)
                            changed = True
                        continue
                    fine = Y[p][b]
                    if fine is None or X[p][b - 1] is None:
                        continue
                    if unchanged(p, b - 1):
                        X[p][b] = fine  # the G terms cancel exactly
                        changed = True
                    elif E[p][b - 1] is not None:
                        X[p][b] = fine + coarse(p, b) - coarse(p - 1, b)
                        changed = True
            for p in range(1, iters + 1):
                gate = pipelined or iteration_ready(p - 1)
                for b in range(1, num_blocks + 1):
                    if (p, b) in started or not gate:
                        continue
                    x_start, out = X[p - 1][b - 1], E[p - 1][b - 1]
                    if x_start is None or out is None:
                        continue
                    if p >= 2 and unchanged(p - 1, b - 1):
                        if Y[p - 1][b] is None:
                            continue  # same start as the solve still running: wait for it
                        Y[p][b], S[p][b] = Y[p - 1][b], S[p - 1][b]
                    else:
                        begin = start_state(p, b)
                        if begin is None:
                            continue  # the previous block's fine solve has not finished
                        solve = _FineSolve(p, b, bounds[b - 1], bounds[b], x_start, begin)
                        solves.append(solve)
                        advance(solve, out)  # its first output is the one at the block start
                    started.add((p, b))
                    changed = True

    while True:
        resolve()
        while next_check <= iters and X[next_check][num_blocks] is not None:
            final, previous = X[next_check][num_blocks], X[next_check - 1][num_blocks]
            assert final is not None and previous is not None
            change = 0.0 if final is previous else max_rms(final, previous)
            if callback is not None:  # at the last point the state is the sample itself
                callback(
                    payload(
                        n,
                        final,
                        final,
                        schedule,
                        counter.rounds,
                        iteration=next_check,
                        change=change,
                    )
                )
            if change <= tol * schedule.sigma(n - 1) or next_check == iters:
                return SampleResult(final, counter.stats(iterations=next_check))
            next_check += 1
        requests: list[tuple[Tensor, int]] = []
        targets: list[tuple[int, int] | _FineSolve] = []
        for p in range(iters + 1):
            for b in range(num_blocks):
                state = X[p][b]
                if state is not None and E[p][b] is None and not unchanged(p, b):
                    requests.append((state, bounds[b]))
                    targets.append((p, b))
        for solve in solves:
            requests.append((solve.state, solve.point))
            targets.append(solve)
        if not requests:  # pragma: no cover - the dataflow above always leaves work
            raise RuntimeError("SRDS scheduler stalled; this is a bug")
        outs = evaluate(counter, [s for s, _ in requests], [i for _, i in requests], schedule)
        for target, out in zip(targets, outs, strict=True):
            if isinstance(target, _FineSolve):
                advance(target, out)
            else:
                E[target[0]][target[1]] = out


@dataclass(frozen=True, repr=False)
class SRDS(Sampler):
    """[`sample_srds`][driffusion.core.samplers.srds.sample_srds] as a value.

    Attributes:
        blocks: Parareal blocks ``B`` (``None``: ``round(sqrt(N))``).
        tol: stop once the sample moves by at most ``tol * sigma_{N-1}`` (RMS).
        max_iters: iteration cap (``None``: ``B``, which always reaches the serial sample).
        pipelined: start each block's next fine solve as soon as its start is corrected.
        solver: the fine solver's name or value (``None``: DDIM / flow Euler).

    Examples:
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=50)
        >>> sampler = SRDS(tol=1e-2, pipelined=True)
        >>> sampler
        SRDS(tol=0.01, pipelined=True)
        >>> sampler(model, x, schedule).stats.rounds < 50
        True
    """

    name = "srds"
    function = sample_srds
    blocks: int | None = None
    tol: float = label_field(1e-3)
    max_iters: int | None = None
    pipelined: bool = False
    solver: str | Solver | None = None
