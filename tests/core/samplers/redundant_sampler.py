"""A built-in sampler written for the test suite only: one module, as a contributor adds one.

Nothing else in the package, the command line or the benchmarks names it; importing this module
registers it. Each round evaluates ``copies`` copies of the current state (one row each) and
steps with the first, so it is the serial sampler with ``copies`` rows a round.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.samplers.base import Callback, Sampler, evaluate, setup_solver
from driffusion.core.samplers.settings import rows_setting, solver_setting
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import Solver


@dataclass(frozen=True, repr=False)
class Redundant(Sampler):
    """[`sample_redundant`][] as a value."""

    name = "redundant"
    copies: int = rows_setting(2, "copies of the state evaluated per round")
    solver: str | Solver | None = solver_setting()


@Redundant.implemented_by
def sample_redundant(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    copies: int = Redundant.copies,
    solver: Solver | str | None = Redundant.solver,
    callback: Callback | None = None,
    check_finite: bool = True,
) -> SampleResult:
    """The serial sampler, each round's state evaluated ``copies`` times."""
    Redundant.check(copies=copies, solver=solver)
    solver, schedule, state = setup_solver(solver, x, schedule, None)
    counter = CountingModel(model, check_finite=check_finite)
    for i in range(schedule.num_steps):
        out = evaluate(counter, [x] * copies, [i] * copies, schedule)[0]
        x, state = solver.step(x, out, schedule, i, state)
    return SampleResult(x, counter.stats())
