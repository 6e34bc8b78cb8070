"""Schedules reproduce diffusers' grids exactly and behave as immutable, sliceable data."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from driffusion.core import flow_schedule, flow_sigmas, vp_schedule, vp_timesteps
from driffusion.core.schedule import (
    beta_sigmas,
    exponential_sigmas,
    karras_sigmas,
    sigma_to_t,
    training_sigmas,
)
from tests.support import ABAR, ABAR64, make_vp

BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("offset", [0, 1])
def test_vp_timesteps_match_diffusers_for_every_step_count(spacing: str, offset: int) -> None:
    for n in [*range(1, 120), 128, 200, 250, 333, 500, 999, 1000]:
        ddim = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
        ddim.set_timesteps(n)
        assert torch.equal(vp_timesteps(n, 1000, spacing, offset), ddim.timesteps), (spacing, n)


def test_ddpm_grid_matches_too() -> None:
    for n in (10, 37, 50):
        ddpm = DDPMScheduler(timestep_spacing="trailing")
        ddpm.set_timesteps(n)
        assert torch.equal(vp_timesteps(n, spacing="trailing"), ddpm.timesteps)


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_flow_sigmas_match_flow_match_euler(shift: float) -> None:
    for n in [1, 2, 3, 7, 28, 50, 64, 100, 1000]:
        sched = FlowMatchEulerDiscreteScheduler(shift=shift)
        sched.set_timesteps(n)
        sigmas = flow_sigmas(n, shift)
        assert torch.equal(sigmas, sched.sigmas), (n, shift)
        schedule = flow_schedule(sigmas)
        assert torch.equal(schedule.timesteps[:-1].to(torch.float32), sched.timesteps)


def test_vp_schedule_values() -> None:
    ddim = DDIMScheduler(set_alpha_to_one=False, steps_offset=1)
    ddim.set_timesteps(20)
    sched = vp_schedule(ddim.alphas_cumprod, ddim.timesteps, float(ddim.final_alpha_cumprod))
    assert sched.num_steps == len(sched) == 20
    abar = ddim.alphas_cumprod.double()[ddim.timesteps]
    torch.testing.assert_close(sched.alphas[:-1], abar.sqrt())
    torch.testing.assert_close(
        sched.alphas**2 + sched.sigmas**2, torch.ones(21, dtype=torch.float64)
    )
    assert sched.alpha(20) == pytest.approx(math.sqrt(float(ddim.alphas_cumprod[0])))
    assert math.isnan(float(sched.timesteps[-1]))


def test_schedule_is_a_private_immutable_copy() -> None:
    abar = ABAR.clone()
    sched = vp_schedule(abar, vp_timesteps(10))
    before = sched.alphas.clone()
    abar.mul_(0.5)
    assert torch.equal(sched.alphas, before)
    with pytest.raises(AttributeError):
        sched.alphas = before  # type: ignore[misc]


def test_slice_and_subgrid() -> None:
    sched = make_vp(12)
    part = sched.slice(3, 7)
    assert part.num_steps == 4
    assert torch.equal(part.alphas, sched.alphas[3:8])
    assert torch.equal(part.timesteps, sched.timesteps[3:8])
    coarse = sched.subgrid([0, 4, 8, 12])
    assert coarse.num_steps == 3
    assert torch.equal(coarse.sigmas, sched.sigmas[[0, 4, 8, 12]])
    assert coarse.prediction_type == sched.prediction_type


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: vp_timesteps(0), "num_steps must be an integer >= 1, got 0"),
        (lambda: vp_timesteps(-3), "got -3"),
        (lambda: flow_sigmas(0), "num_steps must be an integer >= 1, got 0"),
        (lambda: vp_timesteps(1001), "num_steps=1001"),
        (lambda: vp_timesteps(10, spacing="middle"), "'middle'"),  # type: ignore[arg-type]
        (lambda: vp_schedule(ABAR, [10, 500]), "strictly decreasing"),
        (lambda: vp_schedule(ABAR, [1000, 5]), "0..999"),
        (lambda: vp_schedule(ABAR, [5], final_alpha_cumprod=0.0), "final_alpha_cumprod"),
        (lambda: vp_schedule(ABAR, [5], prediction_type="noise"), "'noise'"),  # type: ignore[arg-type]
        (lambda: flow_schedule(torch.tensor([0.5, 0.7, 0.0])), "strictly decreasing"),
        (lambda: flow_schedule(torch.tensor([1.0])), "at least 2 sigmas"),
        (lambda: make_vp(10).slice(5, 5), "start=5, stop=5"),
        (lambda: make_vp(10).subgrid([0, 11]), "0..10"),
        (lambda: make_vp(10).subgrid([3, 2]), "strictly increasing"),
        (lambda: make_vp(10).times([10]), r"\[10\]"),
    ],
)
def test_bad_schedule_arguments_raise_value_error(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()


def test_sigma_grids_match_diffusers() -> None:
    train = training_sigmas(ABAR64)
    for flag, make in (
        ("use_karras_sigmas", karras_sigmas),
        ("use_exponential_sigmas", exponential_sigmas),
        ("use_beta_sigmas", beta_sigmas),
    ):
        sched = EulerDiscreteScheduler(**BETAS, **{flag: True})
        sched.set_timesteps(17)
        ours = make(float(train[0]), float(train[-1]), 17)
        assert torch.allclose(ours.float(), sched.sigmas[:-1], rtol=1e-6), flag
        times = sigma_to_t(ours, ABAR64)
        assert torch.allclose(times.float(), sched.timesteps, atol=1e-3), flag
