"""Shared fixtures: schedules of every family and the exact Gaussian-mixture denoiser."""

from __future__ import annotations

import os

import pytest
import torch

from driffusion.core import (
    Schedule,
    alphas_cumprod_from_betas,
    flow_schedule,
    flow_sigmas,
    vp_schedule,
    vp_timesteps,
)
from driffusion.testing import FlowNoiseLevels, GaussianMixtureDenoiser, VPNoiseLevels

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ABAR = alphas_cumprod_from_betas()
SHAPE = (2, 4, 4)


def make_vp(
    num_steps: int,
    prediction_type: str = "epsilon",
    spacing: str = "leading",
    final_alpha_cumprod: float = 1.0,
) -> Schedule:
    offset = 1 if spacing == "leading" else 0
    timesteps = vp_timesteps(num_steps, spacing=spacing, steps_offset=offset)  # type: ignore[arg-type]
    return vp_schedule(ABAR, timesteps, final_alpha_cumprod, prediction_type)  # type: ignore[arg-type]


def make_flow(num_steps: int, shift: float = 3.0) -> Schedule:
    return flow_schedule(flow_sigmas(num_steps, shift))


def make_oracle(schedule: Schedule, seed: int = 0) -> GaussianMixtureDenoiser:
    levels = VPNoiseLevels(ABAR) if schedule.kind == "vp" else FlowNoiseLevels()
    return GaussianMixtureDenoiser.random(
        SHAPE, noise_levels=levels, prediction_type=schedule.prediction_type, seed=seed
    )


def make_noise(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn((batch, *SHAPE), generator=torch.Generator().manual_seed(seed))


FAMILIES = ["epsilon", "v_prediction", "sample", "flow"]


def make_family(num_steps: int, family: str) -> Schedule:
    return make_flow(num_steps) if family == "flow" else make_vp(num_steps, family)


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param
