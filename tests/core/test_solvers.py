"""Solvers: every parallel sampler keeps its exactness invariants under every solver (the step
counts and bit-for-bit reductions), multistep drafts and PLMS's grid, and wrong solver or noise
arguments fail with a clear error. (Each solver against diffusers' own step loop is in
tests/adapters/test_schedulers.py.)"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from driffusion.core import (
    aggressive_rounds,
    ddpm_noise,
    sample_driffusion,
    sample_paradigms,
    sample_picard_driffusion,
    sample_serial,
    sample_srds,
)
from driffusion.core.drafting import draft
from driffusion.core.solvers import (
    PLMS,
    SOLVER_NAMES,
    DPMSolverPP,
    get_solver,
)
from tests.support import SHAPE, make_flow, make_vp, oracle64, start64, step_noise


def test_unknown_solver_and_noise_mismatches() -> None:
    sched = make_vp(6)
    model = oracle64("epsilon")
    x = start64()
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        sample_serial(model, x, sched, solver="rk4")
    with pytest.raises(ValueError, match="is stochastic: pass its pre-drawn noise"):
        sample_serial(model, x, sched, solver="euler_ancestral")
    with pytest.raises(ValueError, match="is deterministic"):
        sample_serial(model, x, sched, solver="dpmpp_2m", noise=step_noise(6))
    with pytest.raises(ValueError, match="draft_rule='solver'"):
        sample_driffusion(model, x, sched, drafts=3, solver="unipc", draft_rule="second_order")


def setup(name: str, steps: int, family: str = "epsilon") -> tuple[Any, ...]:
    schedule = make_flow(steps) if family == "flow" else make_vp(steps, family, "trailing")
    model = oracle64("flow" if family == "flow" else family, flow=family == "flow")
    x = start64()
    solver = get_solver(name)
    grid_steps = solver.prepare(schedule).num_steps
    noise = (
        ddpm_noise([3, 4, 5], grid_steps, SHAPE, dtype=torch.float64) if solver.stochastic else None
    )
    return model, x, schedule, noise, grid_steps


def solver_families() -> list[tuple[str, str]]:
    out = []
    for name in SOLVER_NAMES:
        out.append((name, "epsilon"))
        out.append((name, "v_prediction"))
        if name not in ("ddpm",):  # DDPM is a VP posterior
            out.append((name, "flow"))
    return out


@pytest.mark.parametrize(("name", "family"), solver_families())
@pytest.mark.parametrize("mode", ["aggressive", "conservative"])
@pytest.mark.parametrize("rule", ["skip", "solver"])
def test_one_draft_is_serial_bit_for_bit(name: str, family: str, mode: str, rule: str) -> None:
    for steps in (1, 2, 9):
        model, x, schedule, noise, n = setup(name, steps, family)
        serial = sample_serial(model, x, schedule, solver=name, noise=noise)
        result = sample_driffusion(
            model,
            x,
            schedule,
            drafts=1,
            mode=mode,
            solver=name,
            draft_rule=rule,
            noise=noise,  # type: ignore[arg-type]
        )
        assert torch.equal(result.x, serial.x)
        assert result.stats.rounds == serial.stats.rounds == n
        assert result.stats.evaluations == n


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_rounds_and_evaluations_are_unchanged_by_the_solver(name: str) -> None:
    for steps in (5, 12):
        model, x, schedule, noise, n = setup(name, steps)
        for k in (2, 3, 4):
            aggressive = sample_driffusion(model, x, schedule, drafts=k, solver=name, noise=noise)
            assert aggressive.stats.rounds == aggressive_rounds(n, k)
            assert aggressive.stats.evaluations == n
            conservative = sample_driffusion(
                model, x, schedule, drafts=k, mode="conservative", solver=name, noise=noise
            )
            assert conservative.stats.rounds == 2 * (n // (k + 1)) + min(n % (k + 1), 2)


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_convergent_samplers_with_zero_tolerance_equal_serial(name: str) -> None:
    model, x, schedule, noise, _ = setup(name, 14)
    serial = sample_serial(model, x, schedule, solver=name, noise=noise).x
    picard = sample_picard_driffusion(
        model, x, schedule, window=4, tol=0.0, solver=name, noise=noise
    ).x
    assert torch.equal(picard, serial)
    paradigms = sample_paradigms(model, x, schedule, window=4, tol=0.0, solver=name, noise=noise).x
    assert torch.allclose(paradigms, serial, rtol=0, atol=1e-10)
    for pipelined in (False, True):
        srds = sample_srds(
            model, x, schedule, blocks=4, tol=0.0, pipelined=pipelined, solver=name, noise=noise
        ).x
        assert torch.allclose(srds, serial, rtol=0, atol=1e-10)


def test_multistep_drafts_by_the_solver_extrapolate_the_history() -> None:
    schedule = make_vp(30, "epsilon", "trailing")
    model = oracle64("epsilon")
    x = start64()
    solver = DPMSolverPP(order=2)
    state = solver.init(x, schedule)
    # walk five serial steps to build a history, then draft four points both ways
    for i in range(5):
        out = model(x[None], schedule.times([i]).double())[0]
        x_next, next_state = solver.step(x, out, schedule, i, state)
        if i < 4:
            x, state = x_next, next_state
    skip = draft(x, out, schedule, 4, 4, solver=solver, state=state, rule="skip")
    own = draft(x, out, schedule, 4, 4, solver=solver, state=state, rule="solver")
    assert torch.equal(skip[0], own[0])  # d_1 is the solver's step either way
    assert not torch.allclose(skip[1:], own[1:])
    # the 2M extrapolation over two steps is the 2M step with h spanning both
    assert torch.equal(own[1], solver.step(x, out, schedule, 4, state, target=6)[0])


def test_plms_grid_repeats_the_second_point() -> None:
    schedule = make_vp(5)
    stages = PLMS().prepare(schedule)
    assert stages.num_steps == 6
    assert stages.alpha(1) == stages.alpha(2) == schedule.alpha(1)
    assert torch.equal(stages.alphas[2:], schedule.alphas[1:])
    assert PLMS().prepare(make_vp(1)).num_steps == 1


def test_unipc_of_order_3_refuses_a_grid_starting_at_alpha_zero_before_any_step() -> None:
    """FLUX's grid starts at sigma = 1: order 2 runs there (the infinite-lambda point drops out of
    its weights), order 3 would overflow, so it is refused when the state is set up."""
    from driffusion.core import Serial, UniPC
    from driffusion.core.schedule import flow_schedule

    model, x = oracle64("flow", flow=True), start64()
    schedule = flow_schedule(torch.linspace(1.0, 0.0, 11))
    assert schedule.alpha(0) == 0
    assert bool(torch.isfinite(Serial(solver=UniPC(2))(model, x, schedule).x).all())
    with pytest.raises(ValueError, match="order 3 cannot start at alpha = 0"):
        Serial(solver=UniPC(3))(model, x, schedule)
