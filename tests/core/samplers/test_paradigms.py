"""Baselines in the same API: ParaDiGMS (Picard over a sliding window) and step reduction."""

from __future__ import annotations

import pytest
import torch

from driffusion.core import (
    SerialReduced,
    reduced_grid,
    sample_paradigms,
    sample_serial,
    sample_serial_reduced,
)
from tests.support import ABAR, make_family, make_noise, make_oracle, make_vp


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("final", [1.0, float(ABAR[0])], ids=["alpha_to_one", "no_alpha_to_one"])
def test_paradigms_at_zero_tolerance_is_serial_on_every_grid(spacing: str, final: float) -> None:
    sched = make_vp(40, "v_prediction", spacing=spacing, final_alpha_cumprod=final)
    oracle = make_oracle(sched)
    x = make_noise()
    serial = sample_serial(oracle, x, sched).x
    for window in (1, 3, 8, 40):
        result = sample_paradigms(oracle, x, sched, window=window, tol=0.0)
        torch.testing.assert_close(result.x, serial, rtol=0, atol=1e-6)
        assert result.stats.rounds <= 40


def test_paradigms_window_one_is_serial_bit_for_bit(family: str) -> None:
    sched = make_family(12, family)
    oracle = make_oracle(sched)
    x = make_noise()
    serial = sample_serial(oracle, x, sched)
    result = sample_paradigms(oracle, x, sched, window=1, tol=0.5)
    assert torch.equal(result.x, serial.x)
    assert (result.stats.rounds, result.stats.evaluations) == (12, 12)


def test_paradigms_rounds_fall_as_the_window_grows(family: str) -> None:
    sched = make_family(50, family)
    oracle = make_oracle(sched)
    x = make_noise()
    serial = sample_serial(oracle, x, sched).x
    rounds = []
    for window in (2, 4, 8, 16):
        result = sample_paradigms(oracle, x, sched, window=window, tol=1e-3)
        rounds.append(result.stats.rounds)
        assert result.stats.width == window
        assert float((result.x - serial).abs().max()) < 1e-2
    assert rounds == sorted(rounds, reverse=True) and rounds[-1] < rounds[0] / 2, rounds


def test_paradigms_ddpm_uses_the_given_noise() -> None:
    sched = make_vp(20)
    oracle = make_oracle(sched)
    x = make_noise()
    noise = torch.randn((20, *x.shape), generator=torch.Generator().manual_seed(3))
    serial = sample_serial(oracle, x, sched, noise=noise).x
    result = sample_paradigms(oracle, x, sched, window=6, tol=0.0, noise=noise)
    torch.testing.assert_close(result.x, serial, rtol=0, atol=1e-5)


def test_serial_reduced_is_serial_on_the_coarse_grid() -> None:
    sched = make_vp(50)
    oracle = make_oracle(sched)
    x = make_noise()
    coarse = reduced_grid(sched, 10)
    assert coarse.num_steps == 10
    assert torch.equal(coarse.alphas[[0, -1]], sched.alphas[[0, -1]])
    result = sample_serial_reduced(oracle, x, sched, rounds=10)
    assert torch.equal(result.x, sample_serial(oracle, x, coarse).x)
    assert result.stats.rounds == 10
    assert torch.equal(
        sample_serial_reduced(oracle, x, sched, rounds=50).x, sample_serial(oracle, x, sched).x
    )
    value = SerialReduced(rounds=10)(oracle, x, sched)
    assert torch.equal(value.x, result.x)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda s, o, x: sample_paradigms(o, x, s, window=0),
            "window must be an integer >= 1, got 0",
        ),
        (lambda s, o, x: sample_paradigms(o, x, s, tol=-0.1), "got -0.1"),
        (
            lambda s, o, x: sample_serial_reduced(o, x, s, rounds=0),
            "steps must be an integer >= 1, got 0",
        ),
        (
            lambda s, o, x: sample_serial_reduced(o, x, s, rounds=11),
            "steps must be at most 10, got 11",
        ),
    ],
)
def test_bad_baseline_arguments(call, message: str) -> None:  # type: ignore[no-untyped-def]
    sched = make_vp(10)
    with pytest.raises(ValueError, match=message):
        call(sched, make_oracle(sched), make_noise())
