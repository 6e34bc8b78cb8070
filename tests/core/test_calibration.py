"""Picking a configuration for a round budget: every candidate fits the budget with the longest
grid that fits, the measurement keeps the most accurate one, and the result round-trips."""

from __future__ import annotations

import pytest
import torch

from driffusion.core import (
    Calibration,
    aggressive_rounds,
    calibrate,
    candidates,
    conservative_rounds,
    reference_schedule,
    sample_serial,
    vp_schedule,
    vp_timesteps,
)
from tests.support import ABAR, make_noise, make_oracle, make_vp


@pytest.mark.parametrize("rounds", [2, 5, 8, 14])
@pytest.mark.parametrize("devices", [1, 2, 4])
def test_candidates_fit_the_budget_with_the_longest_grid(rounds: int, devices: int) -> None:
    found = candidates(rounds, devices)
    assert {c.solver for c in found} == {"ddim", "dpmpp_2m", "unipc", "plms"}
    for c in found:
        extra = 1 if c.solver == "plms" else 0  # PLMS's warm start: one more evaluation
        stages = c.steps + extra
        assert c.drafts <= devices
        if c.sampler == "serial":
            assert c.rounds == stages == rounds
        elif c.sampler == "aggressive":
            assert aggressive_rounds(stages, c.drafts) <= rounds
            assert aggressive_rounds(stages + 1, c.drafts) > rounds
        else:
            assert conservative_rounds(stages, c.drafts) == c.rounds <= rounds
            assert conservative_rounds(stages + 1, c.drafts) > rounds
    if devices == 1:
        assert {c.sampler for c in found} == {"serial"}


def test_calibration_measures_every_candidate_and_keeps_the_best() -> None:
    schedule = make_vp(5)
    oracle = make_oracle(schedule)
    x = make_noise(batch=2)
    reference = sample_serial(oracle, x, reference_schedule(ABAR, 300), solver="dpmpp_3m").x

    def grid(steps: int):
        return vp_schedule(ABAR, vp_timesteps(steps, spacing="trailing"))

    result = calibrate(oracle, x, grid, reference, rounds=6, devices=2)
    assert len(result.candidates) == len(candidates(6, 2))
    assert all(c.err_ref is not None and c.rounds <= 6 for c in result.candidates)
    assert result.best.err_ref == min(c.err_ref for c in result.candidates)  # type: ignore[type-var]
    assert result.best_serial.sampler == "serial"
    # on the exact oracle drafting over a longer grid beats every serial solver at 6 rounds
    assert result.best.sampler != "serial"
    assert result.best.err_ref < result.best_serial.err_ref  # type: ignore[operator]
    again = Calibration.from_dict(result.to_dict())
    assert again == result


def test_calibration_refuses_what_it_cannot_compare() -> None:
    x = make_noise(batch=2)
    with pytest.raises(ValueError, match="stochastic"):
        candidates(5, 2, solvers=("ddpm",))
    with pytest.raises(ValueError, match="rounds must be an integer >= 1"):
        candidates(0, 2)
    with pytest.raises(ValueError, match="reference shape"):
        calibrate(
            make_oracle(make_vp(3)),
            x,
            make_vp,
            torch.zeros(1, 2),
            rounds=3,
            devices=2,
        )
