"""DRiffusion draft-and-refine (aggressive and conservative): one draft is the serial sampler bit
for bit, the closed-form round counts, the deviation from serial falls as steps grow, draft and
refine compose; beyond the paper, second-order and adaptive drafts."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from driffusion.core import (
    CountingModel,
    draft,
    refine,
    sample_driffusion,
    sample_picard_driffusion,
    sample_serial,
    skip_transition,
)
from driffusion.core import (
    aggressive_rounds as core_aggressive_rounds,
)
from tests.support import make_family, make_noise, make_oracle, make_vp

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
                assert stats.rows == max(1, min(k, n - 1)), (mode, n, k)
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
    refined, _ = refine(x, torch.cat([anchor[None], outs[:-1]]), sched, 0)
    # draft 1 is the first refined state exactly; refinement uses outputs at the refined states
    assert torch.equal(drafts[0], refined[0])
    full = sample_driffusion(oracle, x, sched, drafts=3)
    states: list[torch.Tensor] = []
    sample_driffusion(oracle, x, sched, drafts=3, callback=lambda d: states.append(d["x"]))
    assert len(states) == 9
    torch.testing.assert_close(states[2], refined[2], rtol=0, atol=0)
    assert torch.equal(states[-1], full.x)


@pytest.mark.parametrize("mode", MODES)
def test_new_modes_reduce_to_serial_with_one_draft(family: str, mode: str) -> None:
    sched = make_family(17, family)
    oracle = make_oracle(sched)
    x = make_noise()
    serial = sample_serial(oracle, x, sched).x
    second = sample_driffusion(oracle, x, sched, drafts=1, mode=mode, draft_rule="second_order")  # type: ignore[arg-type]
    adaptive = sample_driffusion(oracle, x, sched, drafts=1, mode=mode, adaptive_tol=1e-3)  # type: ignore[arg-type]
    assert torch.equal(second.x, serial) and torch.equal(adaptive.x, serial)
    assert torch.equal(sample_picard_driffusion(oracle, x, sched, window=1, tol=0.5).x, serial)


def test_second_order_drafts_are_closer_at_equal_rounds() -> None:
    """At 50 steps with 4 drafts (aggressive), order 2 deviates less from serial, same rounds."""
    for family in ("epsilon", "v_prediction", "flow"):
        sched = make_family(50, family)
        oracle = make_oracle(sched)
        x = make_noise(8)
        serial = sample_serial(oracle, x, sched).x
        first = sample_driffusion(oracle, x, sched, drafts=4)
        second = sample_driffusion(oracle, x, sched, drafts=4, draft_rule="second_order")
        assert first.stats.rounds == second.stats.rounds
        dev1 = float((first.x - serial).pow(2).mean().sqrt())
        dev2 = float((second.x - serial).pow(2).mean().sqrt())
        assert dev2 < 0.7 * dev1, (family, dev1, dev2)


def test_second_order_draft_without_history_is_first_order() -> None:
    sched = make_family(10, "epsilon")
    oracle = make_oracle(sched)
    x = make_noise()
    out = oracle(x[None], sched.times([2]))[0]
    x0 = (x - sched.sigma(2) * out) / sched.alpha(2)
    second = draft(x, out, sched, 2, 3, rule="second_order", previous=(x0, 1))  # no curvature
    for j in range(3):
        expected = skip_transition(x, out, sched, 2, 3 + j)
        torch.testing.assert_close(second[j], expected, rtol=1e-5, atol=1e-5)


def test_adaptive_drafting_trades_rounds_for_accuracy() -> None:
    sched = make_family(25, "epsilon")
    oracle = make_oracle(sched)
    x = make_noise(8)
    serial = sample_serial(oracle, x, sched).x
    fixed = sample_driffusion(oracle, x, sched, drafts=4)
    adaptive = sample_driffusion(oracle, x, sched, drafts=4, adaptive_tol=0.02)
    assert fixed.stats.rounds < adaptive.stats.rounds < sample_serial(oracle, x, sched).stats.rounds
    assert float((adaptive.x - serial).abs().max()) < float((fixed.x - serial).abs().max())
    assert adaptive.stats.evaluations == 25


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda s, o, x: sample_driffusion(o, x, s, draft_rule="third"),
            "draft_rule must be one of",
        ),
        (lambda s, o, x: sample_driffusion(o, x, s, adaptive_tol=0.0), "adaptive_tol"),
    ],
)
def test_bad_arguments(call, message: str) -> None:  # type: ignore[no-untyped-def]
    sched = make_family(10, "epsilon")
    with pytest.raises(ValueError, match=message):
        call(sched, make_oracle(sched), make_noise())


@pytest.mark.parametrize("mode", ["aggressive", "conservative"])
@pytest.mark.parametrize("warmup", [1, 2, 12])
def test_a_serial_warmup_is_serial_steps_then_the_mode_from_there(mode: str, warmup: int) -> None:
    """`warmup=W` is W serial steps (a round each) and then the mode on the rest of the grid
    (first-order: the same arithmetic as running the two apart); W >= N is the serial sampler."""
    from driffusion.core import Aggressive, Conservative, Serial
    from driffusion.testing import toy_problem

    cls = Aggressive if mode == "aggressive" else Conservative
    model, x, schedule = toy_problem(steps=12)
    warmed = cls(drafts=3, warmup=warmup)
    result = warmed(model, x, schedule)
    w = min(warmup, 12)
    head = Serial()(model, x, schedule.slice(0, w))
    if w < 12:
        tail = cls(drafts=3)(model, head.x, schedule.slice(w, 12))
        assert torch.equal(result.x, tail.x)
        assert result.stats.rounds == w + tail.stats.rounds == warmed.rounds(12)
    else:
        assert torch.equal(result.x, Serial()(model, x, schedule).x)
        assert result.stats.rounds == 12 == warmed.rounds(12)
    assert result.stats.evaluations == 12
    assert repr(warmed) == f"{cls.__name__}(drafts=3, warmup={warmup})"
