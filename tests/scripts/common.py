"""Shared set-up of the multi-process test scripts (run in fresh processes)."""

from __future__ import annotations

import torch

from driffusion.core import (
    SRDS,
    Aggressive,
    Chords,
    Conservative,
    ParaDiGMS,
    RowwiseModel,
    Schedule,
    Serial,
    SerialReduced,
    alphas_cumprod_from_betas,
    vp_schedule,
    vp_timesteps,
)
from driffusion.testing import (
    GaussianMixtureDenoiser,
    GuidedOracleNetwork,
    OracleNetwork,
    VPNoiseLevels,
)

SHAPE = (2, 4, 4)
ABAR = alphas_cumprod_from_betas()

SPECS = {
    "serial": Serial(),
    "aggressive_k2": Aggressive(drafts=2),
    "aggressive_k3": Aggressive(drafts=3),
    "conservative_k2": Conservative(drafts=2),
    "conservative_k3": Conservative(drafts=3),
    "srds_exact": SRDS(blocks=4, tol=0.0, pipelined=False),
    "srds_tol": SRDS(blocks=4, tol=1e-3),
    "srds_pipelined": SRDS(blocks=5, tol=0.0, pipelined=True),
    "paradigms_exact": ParaDiGMS(window=5, tol=0.0),
    "paradigms_tol": ParaDiGMS(window=3, tol=1e-3),
    "serial_reduced": SerialReduced(rounds=7),
    "chords_c4": Chords(cores=4),  # 0-5-10-15 on 20 steps: 3 or 4 rows a round, split
    "chords_c3_dpmpp_2m": Chords(cores=3, index=2, solver="dpmpp_2m"),
    "chords_residual": Chords(starts=(0, 2, 6, 12), stop="residual", tol=1e-2),
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


GUIDANCE = 3.0
FIXED_SHAPE_SPECS = ("aggressive_k3", "conservative_k2", "chords_c4")


def guided_model() -> RowwiseModel:
    """The guided oracle (two exact branches, scale 3) on the labels of ``start()``."""
    network = GuidedOracleNetwork(oracle(), GUIDANCE)
    return RowwiseModel(network, {"label": torch.tensor([1, 4, 7])})
