"""What every sampler shares: argument and state checks, one callback payload, and a state driven
to overflow is an error."""

from __future__ import annotations

import pytest
import torch

from driffusion.core import (
    NonFiniteStateError,
    SampleResult,
    SamplerStats,
    sample_driffusion,
    sample_paradigms,
    sample_picard_driffusion,
    sample_serial,
    sample_serial_reduced,
    sample_srds,
)
from driffusion.core.samplers.registry import builtin_samplers
from driffusion.testing import toy_problem
from tests.support import FAMILIES, make_family, make_noise, make_oracle, make_vp


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


@pytest.mark.parametrize("cls", builtin_samplers(), ids=lambda c: c.__name__)
def test_a_state_driven_to_overflow_by_finite_outputs_is_an_error(cls) -> None:  # type: ignore[no-untyped-def]
    """Outputs of 3e38 are finite, but the float32 state they produce is not."""
    _, x, schedule = toy_problem(steps=12)
    x = x.float()

    def huge(xs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(xs, 3e38)

    with pytest.raises(NonFiniteStateError, match="NaN or inf"):
        cls()(huge, x, schedule)
    with pytest.raises(NonFiniteStateError, match="final state"):
        SampleResult(torch.tensor([float("inf")]), SamplerStats(1, 1, 1, (1,)))
