"""Shared set-up of the multi-process test scripts (run in fresh processes)."""

from __future__ import annotations

import torch

from driffusion.core import (
    SamplerSpec,
    Schedule,
    alphas_cumprod_from_betas,
    vp_schedule,
    vp_timesteps,
)
from driffusion.testing import GaussianMixtureDenoiser, OracleNetwork, VPNoiseLevels

SHAPE = (2, 4, 4)
ABAR = alphas_cumprod_from_betas()

SPECS = {
    "serial": SamplerSpec("serial"),
    "aggressive_k2": SamplerSpec("aggressive", drafts=2),
    "aggressive_k3": SamplerSpec("aggressive", drafts=3),
    "conservative_k2": SamplerSpec("conservative", drafts=2),
    "conservative_k3": SamplerSpec("conservative", drafts=3),
    "srds_exact": SamplerSpec("srds", blocks=4, tol=0.0),
    "srds_tol": SamplerSpec("srds", blocks=4, tol=1e-3),
    "srds_pipelined": SamplerSpec("srds_pipelined", blocks=5, tol=0.0),
    "paradigms_exact": SamplerSpec("paradigms", window=5, tol=0.0),
    "paradigms_tol": SamplerSpec("paradigms", window=3, tol=1e-3),
    "serial_reduced": SamplerSpec("serial_reduced", rounds=7),
}


def schedule(steps: int = 20) -> Schedule:
    return vp_schedule(
        ABAR, vp_timesteps(steps, spacing="trailing"), prediction_type="v_prediction"
    )


def oracle() -> GaussianMixtureDenoiser:
    return GaussianMixtureDenoiser.random(
        SHAPE, components=10, noise_levels=VPNoiseLevels(ABAR), prediction_type="v_prediction"
    )


def network() -> OracleNetwork:
    return OracleNetwork(oracle())


def items(count: int = 7) -> list[dict]:
    return [
        {"id": f"item{i:02d}", "seed": 1000 + i, "cond": {"label": torch.tensor(i % 10)}}
        for i in range(count)
    ]


def start(batch: int = 3) -> torch.Tensor:
    return torch.randn((batch, *SHAPE), generator=torch.Generator().manual_seed(7))
