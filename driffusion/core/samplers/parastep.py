r"""ParaStep (step parallelism with reuse, NeurIPS 2025), the closest peer with public code for
FLUX, SD3 and CogVideoX, as a baseline: each device of a group of ``k`` advances the shared
state with *its own last output* ("reuse"), then evaluates ("predict"), so one round advances
``k`` steps.

A round from the state ``x_a`` (every device holds it) covers the points ``a..a+m-1``
(``m = k`` but at the end). Device 0 evaluates ``o_0 = f(x_a, t_a)``; device ``j >= 1`` first
moves ``x_a`` through ``j`` solver steps with its cached output ``c_j`` (the output it computed
in the previous round, at another point) and evaluates there,

$$y_j = \mathrm{step}^{\,j}(x_a;\ c_j), \qquad o_j = f(y_j, t_{a+j}),$$

all ``m`` evaluations in one round. The group's trajectory is device 0's:
``x_{a+j+1} = step(x_{a+j}, o_j)``, which is broadcast at the end of the round; each device
caches its own ``o_j``. The first ``W`` steps run serially (every device evaluates the same
state, so every cache starts at the warm-up's last output); FLUX's variant also reuses the last
output for the final step instead of evaluating it (``reuse_last``). Each device keeps its own
solver history, as each keeps its own scheduler in the reference code (only the latents are
broadcast).

At ``k = 2``, ``W = 1`` over a first-order solver this is aggressive DRiffusion with two
drafts: the stale output device 1 moves ``x_a`` with is the one aggressive DRiffusion drafts
with, and device 0's fresh output is its first draft's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import PLMS, Solver, SolverState
from driffusion.core.transitions import predict_x0_eps

from .base import Callback, Sampler, evaluate, payload, setup_solver
from .settings import rows_setting, setting, solver_setting


@dataclass(frozen=True, repr=False)
class ParaStep(Sampler):
    """[`sample_parastep`][driffusion.core.samplers.parastep.sample_parastep] as a value.

    Attributes:
        drafts: ``k``, the devices of a step group (steps per round).
        warmup: ``W >= 1`` serial steps first.
        reuse_last: the final step reuses the last output (FLUX's variant) instead of an
            evaluation.
        solver: the solver's name or value (``None``: DDIM / flow Euler); deterministic, not
            PLMS.

    Examples:
        >>> from driffusion.testing import toy_problem
        >>> model, x, schedule = toy_problem(steps=28)
        >>> sampler = ParaStep(drafts=4, reuse_last=True)
        >>> sampler(model, x, schedule).stats.rounds == sampler.rounds(28) == 1 + 7
        True
    """

    name = "parastep"
    title = "ParaStep"
    drafts: int = rows_setting(2, "devices of a ParaStep group k (steps per round)")
    warmup: int = setting(1, "int", "ParaStep's serial warm-up steps W", minimum=1)
    reuse_last: bool = setting(
        False, "bool", "ParaStep's final step reuses the last output (FLUX's variant)"
    )
    solver: str | Solver | None = solver_setting()

    def rounds(self, num_steps: int) -> int:
        """``W + ceil((N - W - [reuse_last]) / k)`` (``N`` when ``N <= W``)."""
        warm = min(self.warmup, num_steps)
        rest = num_steps - warm - (1 if self.reuse_last and num_steps > warm else 0)
        return warm + math.ceil(rest / self.drafts)

    @classmethod
    def variants(cls, rows: int, num_steps: int) -> list[dict[str, object]]:
        """The published loop and FLUX's variant (the last step reused)."""
        return [{}, {"reuse_last": True}]


@ParaStep.implemented_by
def sample_parastep(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    drafts: int = ParaStep.drafts,
    warmup: int = ParaStep.warmup,
    reuse_last: bool = ParaStep.reuse_last,
    solver: Solver | str | None = ParaStep.solver,
    callback: Callback | None = None,
    check_finite: bool = True,
) -> SampleResult:
    """ParaStep over ``drafts = k`` devices (see the module).

    Args:
        model: ``model(xs[K, B, ...], t[K]) -> out``.
        x: the initial state ``[B, *shape]`` at point 0.
        schedule: the grid.
        drafts: ``k``, evaluations per round (the devices of the group).
        warmup: ``W >= 1``: serial steps before the first round.
        reuse_last: the final step reuses device 0's last output.
        solver: a deterministic solver or its name (default DDIM / flow Euler).
        callback: called with [`payload`][driffusion.core.samplers.base.payload] for each state
            of the group's trajectory.
        check_finite: raise ``ValueError`` on a non-finite network output.

    Returns:
        The state at point ``N``; ``W + ceil((N - W - [reuse_last]) / k)`` rounds.

    Raises:
        ValueError: a stochastic solver or PLMS (whose warm start evaluates a step twice).

    Examples:
        >>> import torch
        >>> from driffusion.testing import toy_problem
        >>> from driffusion.core import sample_serial
        >>> model, x, schedule = toy_problem(steps=10)
        >>> one = sample_parastep(model, x, schedule, drafts=1)  # one device: serial
        >>> torch.equal(one.x, sample_serial(model, x, schedule).x)
        True
    """
    ParaStep.check(drafts=drafts, warmup=warmup, reuse_last=reuse_last, solver=solver)
    solver, schedule, start = setup_solver(solver, x, schedule, None)
    if solver.stochastic or isinstance(solver, PLMS):
        raise ValueError(
            f"ParaStep runs over a deterministic solver other than plms, got {solver.name!r}"
        )
    counter = CountingModel(model, check_finite=check_finite)
    n, k = schedule.num_steps, drafts
    states: list[SolverState] = [start] * k  # each device's own solver history

    def advance(x: Tensor, out: Tensor, i: int, device: int) -> Tensor:
        x, states[device] = solver.step(x, out, schedule, i, states[device])
        return x

    def emit(before: Tensor, out: Tensor, x: Tensor, i: int) -> None:
        if callback is not None:
            denoised = predict_x0_eps(before, out, schedule, i)[0]
            callback(payload(i + 1, x, denoised, schedule, counter.rounds))

    i = 0
    cache: list[Tensor] = []
    while i < min(warmup, n):  # every device evaluates the same state and steps alike
        out = evaluate(counter, [x], [i], schedule)[0]
        before, x = x, advance(x, out, i, 0)
        states[1:] = [states[0]] * (k - 1)
        cache = [out] * k
        emit(before, out, x, i)
        i += 1
    last = n - 1 if reuse_last and n > i else n  # the final step reuses device 0's output
    while i < last:
        m = min(k, last - i)
        rows, moved = [x], [states[0]]
        for j in range(1, m):  # reuse: device j moves x_a j steps with its own last output
            y, state = x, states[j]
            for s in range(j):
                y, state = solver.step(y, cache[j], schedule, i + s, state)
            rows.append(y)
            moved.append(state)
        outs = evaluate(counter, rows, list(range(i, i + m)), schedule)  # predict: one round
        for j in range(m):  # the group's trajectory: device 0 steps with each output in turn
            before, x = x, advance(x, outs[j], i + j, 0)
            emit(before, outs[j], x, i + j)
        for j in range(1, k):  # the other devices' histories, as their schedulers step
            y, states[j] = (rows[j], moved[j]) if j < m else (rows[0], states[j])
            first = j if j < m else 0
            own = outs[j] if j < m else cache[j]
            for s in range(first, m):
                y = advance(y, own, i + s, j)
            cache[j] = own
        cache[0] = outs[m - 1]  # device 0 caches the last output it stepped with
        i += m
    if i < n:
        before, x = x, advance(x, cache[0], i, 0)
        emit(before, cache[0], x, i)
    return SampleResult(x, counter.stats())
