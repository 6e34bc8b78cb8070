"""Baselines in the same API: ParaDiGMS (Picard over a sliding window) and step reduction."""

from __future__ import annotations

import pytest
import torch

from driffusion.core import (
    ParaDiGMS,
    Serial,
    SerialReduced,
    alphas_cumprod_from_betas,
    reduced_grid,
    relative_error,
    sample_paradigms,
    sample_serial,
    sample_serial_reduced,
)
from driffusion.testing import GaussianMixtureDenoiser, VPNoiseLevels
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
        assert result.stats.rows == window
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
            "rounds must be an integer >= 1, got 0",
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


import diffusers  # noqa: E402 - the official loop's scheduler


def official_loop(model, latents, scheduler, parallel, tolerance):
    """The denoising loop of ``StableDiffusionParadigmsPipeline.__call__`` (ODE scheduler, no
    guidance), with the oracle in place of the UNet; returns the latents and each round's
    window start."""
    timesteps = scheduler.timesteps
    n = len(timesteps)
    parallel = min(parallel, n)
    begin_idx, end_idx = 0, parallel
    buffer = torch.stack([latents] * (n + 1))
    inverse_variance_norm = 1.0 / torch.tensor(
        [scheduler._get_variance(timesteps[j]) for j in range(n)] + [0]
    )
    latent_dim = buffer[0, 0].numel()
    inverse_variance_norm = inverse_variance_norm[:, None] / latent_dim
    scaled_tolerance = tolerance**2
    starts = []
    while begin_idx < n:
        starts.append(begin_idx)
        parallel_len = end_idx - begin_idx
        block_latents = buffer[begin_idx:end_idx]
        block_t = timesteps[begin_idx:end_idx, None].repeat(1, latents.shape[0])
        model_output = model(block_latents, timesteps[begin_idx:end_idx].float())
        denoised = scheduler.batch_step_no_noise(
            model_output=model_output.flatten(0, 1),
            timesteps=block_t.flatten(0, 1),
            sample=block_latents.flatten(0, 1),
        ).reshape(block_latents.shape)
        delta = denoised - block_latents
        block_new = buffer[begin_idx][None] + torch.cumsum(delta, dim=0)
        cur_error = torch.linalg.norm(
            (block_new - buffer[begin_idx + 1 : end_idx + 1]).reshape(
                parallel_len, latents.shape[0], -1
            ),
            dim=-1,
        ).pow(2)
        error_ratio = cur_error * inverse_variance_norm[begin_idx + 1 : end_idx + 1]
        error_ratio = torch.nn.functional.pad(error_ratio, (0, 0, 0, 1), value=1e9)
        any_error_at_time = torch.max(error_ratio > scaled_tolerance, dim=1).values.int()
        ind = torch.argmax(any_error_at_time).item()
        new_begin_idx = begin_idx + min(1 + ind, parallel)
        new_end_idx = min(new_begin_idx + parallel, n)
        buffer[begin_idx + 1 : end_idx + 1] = block_new
        buffer[end_idx : new_end_idx + 1] = buffer[end_idx][None]
        begin_idx, end_idx = new_begin_idx, new_end_idx
    return buffer[-1], starts


@pytest.mark.parametrize(("steps", "window", "tol"), [(25, 4, 0.1), (50, 8, 0.1), (50, 4, 0.03)])
def test_paper_rule_is_the_official_loop(steps: int, window: int, tol: float) -> None:
    from driffusion.adapters.schedulers import schedule_from_scheduler

    scheduler = diffusers.DDIMParallelScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=1,  # batch_step_no_noise ends at 1
    )
    scheduler.set_timesteps(steps)
    schedule = schedule_from_scheduler(scheduler, steps)
    abar = alphas_cumprod_from_betas()
    oracle = GaussianMixtureDenoiser.random((4, 8, 8), noise_levels=VPNoiseLevels(abar), seed=3)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    official, starts = official_loop(oracle, x.clone(), scheduler, window, tol)
    seen: list[int] = []
    ours = ParaDiGMS(window=window, tol=tol, rule="paper")(
        oracle, x, schedule, callback=lambda p: seen.append(p["i"])
    )
    assert [0, *seen[:-1]] == starts  # every round starts where the official one starts
    assert ours.stats.rounds == len(starts)
    assert relative_error(ours.x, official) < 1e-6  # the scheduler keeps float32 alphas
    assert ours.stats.rounds < steps  # it saves rounds
    serial = Serial()(oracle, x, schedule).x
    assert relative_error(ours.x, serial) < 0.05
