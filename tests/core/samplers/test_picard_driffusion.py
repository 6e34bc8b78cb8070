"""Convergent (Picard) draft-refine: serial at zero tolerance, plain DRiffusion after one pass,
fewer rounds than ParaDiGMS, refinements capped by max_iters; the new modes as sampler values."""

from __future__ import annotations

import pytest
import torch

from driffusion.core import (
    Aggressive,
    PicardDRiffusion,
    sample_driffusion,
    sample_paradigms,
    sample_picard_driffusion,
    sample_serial,
)
from tests.support import FAMILIES, make_family, make_noise, make_oracle


@pytest.mark.parametrize("steps", [1, 2, 9, 30])
def test_picard_driffusion_at_zero_tolerance_is_serial(family: str, steps: int) -> None:
    sched = make_family(steps, family)
    oracle = make_oracle(sched)
    x = make_noise()
    serial = sample_serial(oracle, x, sched)
    for k in (2, 4, 7):
        result = sample_picard_driffusion(oracle, x, sched, window=k, tol=0.0)
        assert torch.equal(result.x, serial.x)
        assert result.stats.rounds <= steps and result.stats.rows <= k


def test_picard_driffusion_with_one_pass_is_plain_driffusion() -> None:
    for family in FAMILIES:
        for steps in (1, 5, 13, 40):
            sched = make_family(steps, family)
            oracle = make_oracle(sched)
            x = make_noise()
            for k in (1, 2, 3, 5):
                picard = sample_picard_driffusion(oracle, x, sched, window=k, max_iters=1)
                plain = sample_driffusion(oracle, x, sched, drafts=k)
                assert torch.equal(picard.x, plain.x), (family, steps, k)
                assert picard.stats.rounds == plain.stats.rounds
                assert picard.stats.evaluations == plain.stats.evaluations


@pytest.mark.parametrize("tol", [1e-2, 1e-3, 1e-4])
def test_picard_driffusion_beats_paradigms_at_equal_tolerance(tol: float) -> None:
    for family in ("epsilon", "flow"):
        sched = make_family(50, family)
        oracle = make_oracle(sched)
        x = make_noise(8)
        ours = sample_picard_driffusion(oracle, x, sched, window=4, tol=tol)
        theirs = sample_paradigms(oracle, x, sched, window=4, tol=tol)
        assert ours.stats.rounds < theirs.stats.rounds, (family, tol)
        assert ours.stats.evaluations < theirs.stats.evaluations, (family, tol)
    serial = sample_serial(oracle, x, sched).x
    assert (
        float(
            (sample_picard_driffusion(oracle, x, sched, window=4, tol=1e-4).x - serial).abs().max()
        )
        < 1e-4
    )


def test_sampler_values_run_the_new_modes() -> None:
    sched = make_family(12, "epsilon")
    oracle = make_oracle(sched)
    x = make_noise()
    exact = PicardDRiffusion(window=3, tol=0.0)(oracle, x, sched)
    assert torch.equal(exact.x, sample_serial(oracle, x, sched).x)
    second = Aggressive(drafts=3, draft_rule="second_order")(oracle, x, sched)
    rule = "second_order"
    assert torch.equal(second.x, sample_driffusion(oracle, x, sched, drafts=3, draft_rule=rule).x)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda s, o, x: sample_picard_driffusion(o, x, s, window=0),
            "window must be an integer >= 1, got 0",
        ),
        (lambda s, o, x: sample_picard_driffusion(o, x, s, tol=-1.0), "got -1.0"),
        (
            lambda s, o, x: sample_picard_driffusion(o, x, s, max_iters=0),
            "max_iters must be an integer >= 1, got 0",
        ),
    ],
)
def test_bad_arguments(call, message: str) -> None:  # type: ignore[no-untyped-def]
    sched = make_family(10, "epsilon")
    with pytest.raises(ValueError, match=message):
        call(sched, make_oracle(sched), make_noise())


def test_picard_driffusion_max_iters_caps_refinements() -> None:
    sched = make_family(40, "epsilon")
    oracle = make_oracle(sched)
    x = make_noise()
    serial = sample_serial(oracle, x, sched).x
    one = sample_picard_driffusion(oracle, x, sched, window=4, max_iters=1, tol=0.0)
    two = sample_picard_driffusion(oracle, x, sched, window=4, max_iters=2, tol=0.0)
    exact = sample_picard_driffusion(oracle, x, sched, window=4, tol=0.0)
    assert one.stats.picard_sweeps == 1
    assert two.stats.picard_sweeps <= 2 < exact.stats.picard_sweeps
    assert one.stats.rounds < two.stats.rounds < exact.stats.rounds
    dev = [float((r.x - serial).abs().max()) for r in (one, two, exact)]
    assert dev[0] > dev[1] > dev[2] == 0.0, dev
