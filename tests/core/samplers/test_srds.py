"""SRDS (Parareal over blocks): exact after as many iterations as blocks, exact prefix blocks,
early stopping on the oracle, the pipelined variant's rounds, its callback."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from driffusion.core import (
    SRDS,
    Serial,
    block_boundaries,
    relative_error,
    sample_serial,
    sample_srds,
)
from driffusion.testing import toy_problem
from tests.support import make_family, make_noise, make_oracle, make_vp


@pytest.mark.parametrize("pipelined", [False, True])
def test_srds_reproduces_serial_after_blocks_iterations(family: str, pipelined: bool) -> None:
    for n, blocks in ((12, 3), (25, 5), (30, 4), (7, 7), (9, 1)):
        sched = make_family(n, family)
        oracle = make_oracle(sched)
        x = make_noise()
        serial = sample_serial(oracle, x, sched).x
        result = sample_srds(oracle, x, sched, blocks=blocks, tol=0.0, pipelined=pipelined)
        assert result.stats.parareal_iterations <= blocks
        torch.testing.assert_close(result.x, serial, rtol=0, atol=1e-5)


def test_srds_first_p_blocks_are_exact_after_p_iterations() -> None:
    sched = make_vp(20)
    oracle = make_oracle(sched)
    x = make_noise()
    serial_states = [x]
    sample_serial(oracle, x, sched, callback=lambda d: serial_states.append(d["x"]))
    bounds = block_boundaries(20, 4)
    for p in range(1, 5):
        # with blocks ending at bounds[p], a run limited to p iterations is exact at bounds[p]
        sub = sched.slice(0, bounds[p])
        result = sample_srds(oracle, x, sub, blocks=p, tol=0.0, max_iters=p)
        torch.testing.assert_close(result.x, serial_states[bounds[p]], rtol=0, atol=1e-5)


@pytest.mark.parametrize("pipelined", [False, True])
def test_srds_stops_early_on_the_oracle(pipelined: bool) -> None:
    sched = make_vp(100)
    oracle = make_oracle(sched)
    x = make_noise()
    serial = sample_serial(oracle, x, sched)
    early = sample_srds(oracle, x, sched, blocks=10, tol=1e-3, pipelined=pipelined)
    full = sample_srds(oracle, x, sched, blocks=10, tol=0.0, pipelined=pipelined)
    assert early.stats.parareal_iterations < 10 == full.stats.parareal_iterations
    assert early.stats.rounds < full.stats.rounds
    assert early.stats.rounds < serial.stats.rounds
    assert float((early.x - serial.x).abs().max()) < 1e-2


def test_pipelined_srds_takes_fewer_rounds() -> None:
    sched = make_vp(50)
    oracle = make_oracle(sched)
    x = make_noise()
    plain = sample_srds(oracle, x, sched, blocks=7, tol=0.0, pipelined=False)
    piped = sample_srds(oracle, x, sched, blocks=7, tol=0.0, pipelined=True)
    assert piped.stats.rounds < plain.stats.rounds
    # pipelined to full convergence is never slower than serial
    assert piped.stats.rounds <= 50
    # one row per block at most: B devices suffice for either variant
    assert plain.stats.rows <= 7
    assert piped.stats.rows <= 7
    assert torch.equal(piped.x, plain.x)


def test_srds_callback_reports_each_iteration() -> None:
    sched = make_vp(16)
    oracle = make_oracle(sched)
    seen: list[dict] = []
    result = sample_srds(oracle, make_noise(), sched, blocks=4, tol=0.0, callback=seen.append)
    assert [d["iteration"] for d in seen] == list(range(1, result.stats.parareal_iterations + 1))
    assert torch.equal(seen[-1]["x"], result.x)


MODEL, X, _ = toy_problem(steps=4, batch=1)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.integers(2, 40),
    blocks=st.integers(1, 12),
    tol=st.sampled_from([0.0, 1e-4, 1e-3, 1e-2, 1e-1]),
    max_iters=st.sampled_from([None, 1, 2, 3]),
    solver=st.sampled_from([None, "dpmpp_2m", "dpmpp_3m"]),
)
def test_pipelined_srds_never_takes_more_rounds_than_serial(
    steps: int, blocks: int, tol: float, max_iters: int | None, solver: str | None
) -> None:
    _, _, schedule = toy_problem(steps=steps, batch=1)
    sampler = SRDS(blocks=min(blocks, steps), tol=tol, max_iters=max_iters, solver=solver)
    assert sampler.pipelined  # the default
    result = sampler(MODEL, X, schedule)
    assert result.stats.rounds <= steps
    assert result.stats.rows <= sampler.blocks
    if tol == 0.0 and max_iters is None:  # exact: the serial sample in at most N rounds
        serial = Serial(solver=solver)(MODEL, X, schedule)
        assert relative_error(result.x, serial.x) < 1e-5


def test_unpipelined_srds_can_take_more_rounds_than_serial() -> None:
    """Why pipelining is the default: each correction sweep of plain Parareal costs rounds."""
    model, x, schedule = toy_problem(steps=50)
    plain = SRDS(blocks=4, tol=0.0, pipelined=False)(model, x, schedule)
    piped = SRDS(blocks=4, tol=0.0)(model, x, schedule)
    assert plain.stats.rounds > 50 >= piped.stats.rounds
    assert torch.allclose(plain.x, piped.x, atol=1e-5)


def test_srds_defaults_save_rounds_at_the_usual_grids() -> None:
    """At N in {25, 50, 100} with default settings: fewer rounds than serial, close to it."""
    for steps in (25, 50, 100):
        model, x, schedule = toy_problem(steps=steps)
        result = SRDS()(model, x, schedule)
        serial = Serial()(model, x, schedule)
        assert result.stats.rounds < steps
        assert relative_error(result.x, serial.x) < 1e-4
