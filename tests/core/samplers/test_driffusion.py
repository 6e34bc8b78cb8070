"""Sampler invariants: exactness where the math is exact, round counts, convergence, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from driffusion.core import (
    BatchedExecutor,
    ChunkedExecutor,
    CountingModel,
    block_boundaries,
    draft,
    refine,
    sample_driffusion,
    sample_serial,
    sample_srds,
)
from driffusion.core import (
    aggressive_rounds as core_aggressive_rounds,
)
from driffusion.testing import GaussianMixtureDenoiser, VPNoiseLevels
from tests.support import ABAR, FAMILIES, make_family, make_noise, make_oracle, make_vp

MODES = ["aggressive", "conservative"]


def linear_model(xs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A cheap deterministic stand-in network: output depends on state and time."""
    return 0.3 * xs + 1e-3 * t.view(-1, *([1] * (xs.ndim - 1)))


def aggressive_rounds(n: int, k: int) -> int:
    return 1 + math.ceil((n - 1) / k)


def conservative_rounds(n: int, k: int) -> int:
    return 2 * (n // (k + 1)) + min(n % (k + 1), 2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_one_draft_is_the_serial_sampler_bit_for_bit(family: str, mode: str, steps: int) -> None:
    sched = make_family(steps, family)
    oracle = make_oracle(sched)
    x = make_noise()
    serial = sample_serial(oracle, x, sched)
    result = sample_driffusion(oracle, x, sched, drafts=1, mode=mode)  # type: ignore[arg-type]
    assert torch.equal(result.x, serial.x)
    assert result.stats == serial.stats


@pytest.mark.parametrize("mode", MODES)
def test_one_draft_is_serial_ddpm_bit_for_bit(mode: str) -> None:
    sched = make_vp(15, "v_prediction")
    oracle = make_oracle(sched)
    x = make_noise()
    noise = torch.randn((15, *x.shape), generator=torch.Generator().manual_seed(5))
    serial = sample_serial(oracle, x, sched, noise=noise)
    result = sample_driffusion(oracle, x, sched, drafts=1, mode=mode, noise=noise)  # type: ignore[arg-type]
    assert torch.equal(result.x, serial.x)
    # and the noise is really used: a different draw gives a different sample
    other = sample_serial(oracle, x, sched, noise=torch.randn_like(noise))
    assert not torch.allclose(other.x, serial.x)


def test_round_and_evaluation_counts_match_the_closed_forms() -> None:
    x = torch.randn(2, 3)
    for n in range(1, 61):
        sched = make_vp(n)
        assert sample_serial(linear_model, x, sched).stats.rounds == n
        for k in range(1, 7):
            for mode, closed_form in (
                ("aggressive", aggressive_rounds),
                ("conservative", conservative_rounds),
            ):
                counter = CountingModel(linear_model)
                stats = sample_driffusion(counter, x, sched, drafts=k, mode=mode).stats  # type: ignore[arg-type]
                assert stats.rounds == closed_form(n, k), (mode, n, k)
                if mode == "aggressive":
                    assert core_aggressive_rounds(n, k) == stats.rounds
                assert stats.evaluations == n, (mode, n, k)
                assert stats.width == max(1, min(k, n - 1)), (mode, n, k)
                # the sampler's own count agrees with an outside counter
                assert (counter.rounds, counter.evaluations) == (stats.rounds, stats.evaluations)


@pytest.mark.parametrize("mode", MODES)
def test_driffusion_deviation_from_serial_falls_as_steps_grow(family: str, mode: str) -> None:
    steps = (10, 25, 50, 100, 200)
    deviations = []  # per-sample RMS deviation from the serial sample, 4 drafts
    for n in steps:
        sched = make_family(n, family)
        oracle = make_oracle(sched)
        x = make_noise(8)
        serial = sample_serial(oracle, x, sched).x
        result = sample_driffusion(oracle, x, sched, drafts=4, mode=mode).x  # type: ignore[arg-type]
        deviations.append(float((result - serial).pow(2).mean().sqrt()))
    if family != "sample":
        assert all(a > b for a, b in itertools.pairwise(deviations)), deviations
    # x0-prediction is not monotone between 50 and 100 steps, but falls over every 4x of steps
    assert all(deviations[i] > deviations[i + 2] for i in range(3)), deviations
    assert deviations[-1] < 0.05 * deviations[0], deviations


def test_more_drafts_deviate_more() -> None:
    sched = make_vp(50)
    oracle = make_oracle(sched)
    x = make_noise()
    serial = sample_serial(oracle, x, sched).x
    devs = [
        float((sample_driffusion(oracle, x, sched, drafts=k).x - serial).abs().max())
        for k in (2, 3, 4, 6)
    ]
    assert devs == sorted(devs), devs


def test_draft_and_refine_compose_into_the_sampler() -> None:
    sched = make_vp(9, "v_prediction")
    oracle = make_oracle(sched)
    x = make_noise()
    anchor = oracle(x[None], sched.times([0]))[0]
    drafts = draft(x, anchor, sched, 0, 3)
    assert drafts.shape == (3, *x.shape)
    outs = oracle(drafts, sched.times([1, 2, 3]))
    refined = refine(x, torch.cat([anchor[None], outs[:-1]]), sched, 0)
    # draft 1 is the first refined state exactly; refinement uses outputs at the refined states
    assert torch.equal(drafts[0], refined[0])
    full = sample_driffusion(oracle, x, sched, drafts=3)
    states: list[torch.Tensor] = []
    sample_driffusion(oracle, x, sched, drafts=3, callback=lambda d: states.append(d["x"]))
    assert len(states) == 9
    torch.testing.assert_close(states[2], refined[2], rtol=0, atol=0)
    assert torch.equal(states[-1], full.x)


@pytest.mark.parametrize("pipelined", [False, True])
def test_srds_reproduces_serial_after_blocks_iterations(family: str, pipelined: bool) -> None:
    for n, blocks in ((12, 3), (25, 5), (30, 4), (7, 7), (9, 1)):
        sched = make_family(n, family)
        oracle = make_oracle(sched)
        x = make_noise()
        serial = sample_serial(oracle, x, sched).x
        result = sample_srds(oracle, x, sched, blocks=blocks, tol=0.0, pipelined=pipelined)
        assert result.stats.iterations <= blocks
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
    assert early.stats.iterations < 10 == full.stats.iterations
    assert early.stats.rounds < full.stats.rounds
    assert early.stats.rounds < serial.stats.rounds
    assert float((early.x - serial.x).abs().max()) < 1e-2


def test_pipelined_srds_takes_fewer_rounds() -> None:
    sched = make_vp(50)
    oracle = make_oracle(sched)
    x = make_noise()
    plain = sample_srds(oracle, x, sched, blocks=7, tol=0.0)
    piped = sample_srds(oracle, x, sched, blocks=7, tol=0.0, pipelined=True)
    assert piped.stats.rounds < plain.stats.rounds
    # pipelined to full convergence is never slower than serial
    assert piped.stats.rounds <= 50
    # one row per block at most: B devices suffice for either variant
    assert plain.stats.width <= 7
    assert piped.stats.width <= 7
    assert torch.equal(piped.x, plain.x)


def test_srds_callback_reports_each_iteration() -> None:
    sched = make_vp(16)
    oracle = make_oracle(sched)
    seen: list[dict] = []
    result = sample_srds(oracle, make_noise(), sched, blocks=4, tol=0.0, callback=seen.append)
    assert [d["iteration"] for d in seen] == list(range(1, result.stats.iterations + 1))
    assert torch.equal(seen[-1]["x"], result.x)


def test_executors_agree_and_count() -> None:
    sched = make_vp(20)
    oracle = make_oracle(sched)
    x = make_noise()
    reference = sample_driffusion(oracle, x, sched, drafts=4)
    chunked = ChunkedExecutor(oracle, max_states=3)
    result = sample_driffusion(chunked, x, sched, drafts=4)
    torch.testing.assert_close(result.x, reference.x, rtol=0, atol=1e-6)
    assert result.stats == reference.stats
    # 1 anchor round + 5 rounds of 4 drafts (last of 3): chunks of 3 rows -> 1 + 4*2 + 1 calls
    assert chunked.network_calls == 1 + 4 * 2 + 1
    batched = sample_driffusion(BatchedExecutor(oracle), x, sched, drafts=4)
    assert torch.equal(batched.x, reference.x)


def test_oracle_sampling_reaches_the_data_distribution() -> None:
    """With the exact denoiser, 200 DDIM steps carry the exact noisy marginal at t = 999 onto
    the data distribution N(mu, s^2 I) (starting from N(0, I) instead biases the mean by
    ``alpha_0 * s * mu``, about 0.07 here, which this test once caught)."""
    mean = torch.full((1, 8), 2.0, dtype=torch.float64)
    oracle = GaussianMixtureDenoiser(
        mean, torch.tensor([0.5]), torch.tensor([1.0]), VPNoiseLevels(ABAR)
    )
    sched = make_vp(200, spacing="trailing")
    gen = torch.Generator().manual_seed(0)
    x = sched.alpha(0) * oracle.sample_data(4000, seed=1) + sched.sigma(0) * torch.randn(
        4000, 8, generator=gen, dtype=torch.float64
    )
    samples = sample_serial(oracle, x, sched).x
    assert abs(float(samples.mean()) - 2.0) < 0.02
    assert abs(float(samples.std()) - 0.5) < 0.02


def test_oracle_is_tweedie_exact() -> None:
    """eps_hat = -sigma * grad log p(x) for the noisy mixture density, computed by autograd."""
    oracle = make_oracle(make_vp(10))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    alpha, sigma = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.714, dtype=torch.float64)
    flat = x.reshape(5, -1)
    mu = oracle.means.reshape(oracle.means.shape[0], -1)
    var = alpha**2 * oracle.stds**2 + sigma**2
    dim = flat.shape[1]
    sq = ((flat[:, None] - alpha * mu[None]) ** 2).sum(-1)
    logp = torch.logsumexp(oracle.weights.log() - 0.5 * sq / var - 0.5 * dim * var.log(), dim=1)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    _, eps = oracle.x0_eps(x.detach(), alpha.expand(5), sigma.expand(5))
    torch.testing.assert_close(eps, -sigma * grad)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda s, o, x: sample_driffusion(o, x, s, drafts=0),
            "drafts must be an integer >= 1, got 0",
        ),
        (lambda s, o, x: sample_driffusion(o, x, s, drafts=-2), "got -2"),
        (lambda s, o, x: sample_driffusion(o, x, s, drafts=2.5), "got 2.5"),
        (lambda s, o, x: sample_driffusion(o, x, s, mode="greedy"), "'greedy'"),
        (lambda s, o, x: sample_srds(o, x, s, blocks=0), "blocks must be an integer >= 1, got 0"),
        (lambda s, o, x: sample_srds(o, x, s, blocks=11), "blocks must be at most 10, got 11"),
        (
            lambda s, o, x: sample_srds(o, x, s, max_iters=0),
            "max_iters must be an integer >= 1, got 0",
        ),
        (lambda s, o, x: sample_srds(o, x, s, tol=-1.0), "got -1.0"),
        (lambda s, o, x: sample_srds(o, x, s, tol=float("nan")), "got nan"),
        (lambda s, o, x: sample_serial(o, x[0, 0, 0, 0], s), r"got \(\)"),
        (lambda s, o, x: sample_serial(o, x.long(), s), "torch.int64"),
        (
            lambda s, o, x: sample_serial(o, x, s, noise=x),
            r"noise must have shape \(10, 3, 2, 4, 4\)",
        ),
        (lambda s, o, x: sample_serial(o, x, "ddim"), "schedule must be a Schedule, got str"),
        (
            lambda s, o, x: sample_serial(lambda xs, t: xs[:, :1], x, s),
            r"model returned shape \(1, 1, 2, 4, 4\)",
        ),
        (lambda s, o, x: sample_serial(lambda xs, t: xs * float("nan"), x, s), "not finite"),
    ],
)
def test_bad_sampler_arguments_raise_value_error(call, message: str) -> None:  # type: ignore[no-untyped-def]
    sched = make_vp(10)
    with pytest.raises(ValueError, match=message):
        call(sched, make_oracle(sched), make_noise())


@pytest.mark.parametrize("sampler", ["serial", "aggressive", "conservative", "srds"])
def test_non_finite_initial_state_is_refused(sampler: str) -> None:
    sched = make_vp(10)
    oracle = make_oracle(sched)
    x = make_noise()
    x[1, 0, 2, 2] = float("inf")
    run = {
        "serial": lambda: sample_serial(oracle, x, sched),
        "aggressive": lambda: sample_driffusion(oracle, x, sched, drafts=2),
        "conservative": lambda: sample_driffusion(oracle, x, sched, mode="conservative"),
        "srds": lambda: sample_srds(oracle, x, sched),
    }[sampler]
    with pytest.raises(ValueError, match="non-finite"):
        run()


def test_families_cover_every_prediction_type() -> None:
    assert {make_family(3, f).prediction_type for f in FAMILIES} == set(FAMILIES)


def test_every_sampler_calls_back_with_one_payload() -> None:
    """``{"i", "x", "denoised", "sigma", "rounds"}`` from every sampler (SRDS adds its iteration):
    ``sigma`` is the state's point, ``denoised`` a clean estimate near the state's signal part,
    and the rounds never decrease."""
    from driffusion.core import (
        sample_paradigms,
        sample_picard_driffusion,
        sample_serial_reduced,
    )

    sched = make_vp(12, "v_prediction", "trailing")
    oracle = make_oracle(sched)
    x = make_noise()
    runs = {
        "serial": lambda cb: sample_serial(oracle, x, sched, solver="dpmpp_2m", callback=cb),
        "aggressive": lambda cb: sample_driffusion(oracle, x, sched, drafts=3, callback=cb),
        "conservative": lambda cb: sample_driffusion(
            oracle, x, sched, drafts=3, mode="conservative", solver="unipc", callback=cb
        ),
        "picard": lambda cb: sample_picard_driffusion(oracle, x, sched, window=3, callback=cb),
        "paradigms": lambda cb: sample_paradigms(oracle, x, sched, window=3, callback=cb),
        "reduced": lambda cb: sample_serial_reduced(oracle, x, sched, rounds=5, callback=cb),
        "srds": lambda cb: sample_srds(oracle, x, sched, blocks=3, callback=cb),
    }
    for name, run in runs.items():
        seen: list[dict] = []
        result = run(seen.append)
        assert seen, name
        for p in seen:
            assert {"i", "x", "denoised", "sigma", "rounds"} <= p.keys(), name
            assert p["x"].shape == p["denoised"].shape == x.shape
        assert [p["rounds"] for p in seen] == sorted(p["rounds"] for p in seen), name
        last = seen[-1]
        assert torch.equal(last["x"], result.x), name
        if name == "srds":
            assert "iteration" in last and last["i"] == sched.num_steps
            continue
        assert [p["i"] for p in seen] == sorted({p["i"] for p in seen}), name  # each point once
        grid = sched if name != "reduced" else None
        for p in seen:
            if grid is not None:
                assert p["sigma"] == grid.sigma(p["i"]), name
                if p["sigma"] > 0:  # x_i = alpha_i x0 + sigma_i eps, with x0 ~ denoised
                    residual = (p["x"] - grid.alpha(p["i"]) * p["denoised"]) / p["sigma"]
                    assert float(residual.std()) < 2.0, name
        assert torch.allclose(last["denoised"], result.x, atol=1e-5), name  # sigma_N = 0
