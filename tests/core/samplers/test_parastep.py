"""ParaStep, the step-parallel baseline: one device is serial, two devices after one warm-up
step are aggressive DRiffusion with two drafts, rounds as counted, stale outputs cost accuracy
at more devices, and a reference port of its loop (device by device, as the published code
runs it) gives the same trajectory."""

from __future__ import annotations

import math

import pytest
import torch

from driffusion.core import Aggressive, ParaStep, Serial, relative_error
from driffusion.core.solvers import get_solver
from driffusion.testing import toy_problem


@pytest.mark.parametrize("solver", [None, "dpmpp_2m", "unipc"])
def test_one_device_is_the_serial_sampler_bit_for_bit(solver: str | None) -> None:
    model, x, schedule = toy_problem(steps=12)
    serial = Serial(solver=solver)(model, x, schedule)
    one = ParaStep(drafts=1, solver=solver)(model, x, schedule)
    assert torch.equal(one.x, serial.x) and one.stats.rounds == 12


@pytest.mark.parametrize("steps", [10, 11, 28])
def test_two_devices_after_one_warmup_step_are_aggressive_driffusion(steps: int) -> None:
    model, x, schedule = toy_problem(steps=steps)
    parastep = ParaStep(drafts=2, warmup=1)(model, x, schedule)
    aggressive = Aggressive(drafts=2)(model, x, schedule)
    assert relative_error(parastep.x, aggressive.x) < 1e-6  # the same arithmetic, reordered
    assert parastep.stats.rounds == aggressive.stats.rounds == 1 + math.ceil((steps - 1) / 2)


@pytest.mark.parametrize(
    ("drafts", "warmup", "reuse_last"), [(4, 1, False), (4, 2, True), (3, 1, True)]
)
def test_rounds_and_evaluations_are_as_counted(drafts: int, warmup: int, reuse_last: bool) -> None:
    model, x, schedule = toy_problem(steps=28)
    sampler = ParaStep(drafts=drafts, warmup=warmup, reuse_last=reuse_last)
    result = sampler(model, x, schedule)
    rounds = warmup + math.ceil((28 - warmup - int(reuse_last)) / drafts)
    assert result.stats.rounds == sampler.rounds(28) == rounds
    assert result.stats.evaluations == 28 - int(reuse_last)  # each step's output but the last


def reference_loop(model, x, schedule, k: int, warmup: int, reuse_last: bool):  # type: ignore[no-untyped-def]
    """The published loop, device by device: every device steps through every point with its
    own scheduler, a round counter and a cache; device 0 takes device j's output at round
    position j; the latents are broadcast from device 0 at the end of each round."""
    solver = get_solver("dpmpp_2m")
    n = schedule.num_steps
    latents = [x.clone() for _ in range(k)]
    states = [solver.init(x, schedule) for _ in range(k)]
    cache: list[torch.Tensor | None] = [None] * k
    position = 0

    def f(y: torch.Tensor, i: int) -> torch.Tensor:
        return model(y[None], schedule.times([i]).float())[0]

    for i in range(n):
        step = i + 1
        if step <= warmup:
            outs = [f(latents[r], i) for r in range(k)]
        elif step == n and reuse_last:
            outs = [cache[r] for r in range(k)]
        else:
            own = [f(latents[r], i) if r == position else cache[r] for r in range(k)]
            outs = [own[position], *own[1:]]  # device 0 receives device `position`'s output
        for r in range(k):
            assert outs[r] is not None
            cache[r] = outs[r]
            latents[r], states[r] = solver.step(latents[r], outs[r], schedule, i, states[r])
        if step > warmup:
            if position == k - 1 or step >= n:
                latents = [latents[0].clone() for _ in range(k)]
            position = (position + 1) % k
    return latents[0]


@pytest.mark.parametrize(("k", "warmup", "reuse_last"), [(2, 1, False), (3, 2, True), (4, 1, True)])
def test_a_device_by_device_port_of_the_published_loop_gives_the_same_sample(
    k: int, warmup: int, reuse_last: bool
) -> None:
    model, x, schedule = toy_problem(steps=14)
    with torch.inference_mode():
        ported = reference_loop(model, x, schedule, k, warmup, reuse_last)
    ours = ParaStep(drafts=k, warmup=warmup, reuse_last=reuse_last, solver="dpmpp_2m")
    torch.testing.assert_close(ours(model, x, schedule).x, ported, rtol=1e-5, atol=1e-6)


def test_stochastic_solvers_and_plms_are_refused_by_name() -> None:
    model, x, schedule = toy_problem(steps=8)
    with pytest.raises(ValueError, match="deterministic solver other than plms"):
        ParaStep(solver="plms")(model, x, schedule)
