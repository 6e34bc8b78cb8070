"""Samplers as values: frozen settings, labels that parse back, the pure function underneath,
and samplers from text (built-in names with settings, import paths)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from driffusion.core import (
    SRDS,
    Aggressive,
    Conservative,
    ParaDiGMS,
    PicardDRiffusion,
    Sampler,
    SamplerFn,
    Serial,
    SerialReduced,
    parse_sampler,
    sample_driffusion,
    sample_paradigms,
    sample_picard_driffusion,
    sample_serial,
    sample_serial_reduced,
    sample_srds,
    sampler_name,
    unique_names,
    unregister,
)
from driffusion.core.samplers.registry import builtin_samplers
from driffusion.testing import toy_problem

VALUES_AND_FUNCTIONS = [
    (Serial(solver="dpmpp_2m"), lambda m, x, s: sample_serial(m, x, s, solver="dpmpp_2m")),
    (
        Aggressive(drafts=3, solver="unipc"),
        lambda m, x, s: sample_driffusion(m, x, s, drafts=3, solver="unipc"),
    ),
    (
        Conservative(drafts=2, draft_rule="solver", solver="dpmpp_2m"),
        lambda m, x, s: sample_driffusion(
            m, x, s, drafts=2, mode="conservative", draft_rule="solver", solver="dpmpp_2m"
        ),
    ),
    (
        SRDS(blocks=4, tol=1e-2, pipelined=True),
        lambda m, x, s: sample_srds(m, x, s, blocks=4, tol=1e-2, pipelined=True),
    ),
    (ParaDiGMS(window=4, tol=1e-2), lambda m, x, s: sample_paradigms(m, x, s, window=4, tol=1e-2)),
    (
        PicardDRiffusion(window=3, tol=1e-3, max_iters=2),
        lambda m, x, s: sample_picard_driffusion(m, x, s, window=3, tol=1e-3, max_iters=2),
    ),
    (SerialReduced(rounds=7), lambda m, x, s: sample_serial_reduced(m, x, s, rounds=7)),
]
IDS = [repr(sampler) for sampler, _ in VALUES_AND_FUNCTIONS]  # stable ids: no lambda addresses


@pytest.mark.parametrize(("sampler", "function"), VALUES_AND_FUNCTIONS, ids=IDS)
def test_a_value_is_its_pure_function(sampler, function) -> None:  # type: ignore[no-untyped-def]
    model, x, schedule = toy_problem(steps=20)
    ours, theirs = sampler(model, x, schedule), function(model, x, schedule)
    assert torch.equal(ours.x, theirs.x)
    assert ours.stats == theirs.stats
    assert isinstance(sampler, SamplerFn)


@pytest.mark.parametrize(("sampler", "function"), VALUES_AND_FUNCTIONS, ids=IDS)
def test_values_are_frozen_hashable_and_their_label_parses_back(sampler, function) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sampler.solver = "ddim"
    assert hash(sampler) == hash(parse_sampler(repr(sampler)))
    assert parse_sampler(repr(sampler)) == sampler
    assert {c.name: c for c in builtin_samplers()}[sampler_name(sampler)] is type(sampler)


def test_labels_show_what_defines_the_sampler() -> None:
    assert (
        repr(Aggressive(drafts=4, solver="dpmpp_2m")) == "Aggressive(drafts=4, solver='dpmpp_2m')"
    )
    assert repr(Aggressive()) == "Aggressive(drafts=2)"  # defining settings always shown
    assert repr(Serial()) == "Serial()"
    assert repr(SRDS()) == "SRDS(tol=0.001)"
    assert repr(PicardDRiffusion(window=8)) == "PicardDRiffusion(window=8, tol=0.001)"
    assert Aggressive(drafts=2).replace(drafts=5) == Aggressive(drafts=5)


@settings(max_examples=40, deadline=None)
@given(
    cls=st.sampled_from([Aggressive, Conservative]),
    drafts=st.integers(1, 9),
    solver=st.sampled_from([None, "ddim", "dpmpp_2m", "unipc", "plms"]),
    rule=st.sampled_from(["skip", "solver"]),
)
def test_driffusion_labels_round_trip(cls, drafts, solver, rule) -> None:  # type: ignore[no-untyped-def]
    sampler = cls(drafts=drafts, solver=solver, draft_rule=rule)
    assert parse_sampler(repr(sampler)) == sampler
    assert parse_sampler(repr(sampler).lower()) == sampler  # names are case-insensitive


def test_tol_means_the_same_in_every_convergent_sampler() -> None:
    """tol is an RMS change relative to sigma: scaling the data scales nothing away."""
    model, x, schedule = toy_problem(steps=30)
    serial = Serial()(model, x, schedule).x
    for sampler in (SRDS(tol=0.0), ParaDiGMS(window=4, tol=0.0), PicardDRiffusion(tol=0.0)):
        assert (sampler(model, x, schedule).x - serial).abs().max() < 1e-5, sampler
    # SRDS stops once the sample moves by at most tol * sigma_{N-1}: a tolerance just above
    # the last iteration's relative change stops there, one just below runs one more
    changes: list[float] = []
    SRDS(blocks=5, tol=0.0)(model, x, schedule, callback=lambda p: changes.append(p["change"]))
    relative = [c / schedule.sigma(29) for c in changes]
    stop_at = next(k for k, c in enumerate(relative) if 0 < c < relative[0]) + 1
    result = SRDS(blocks=5, tol=relative[stop_at - 1] * 1.0001)(model, x, schedule)
    assert result.stats.parareal_iterations == stop_at


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "unknown sampler 'nope'"),
        ("aggressive(drafts=0)", "drafts must be an integer >= 1, got 0"),
        ("aggressive(window=3)", "Aggressive has no setting"),
        ("aggressive(3)", "key=value"),
        ("aggressive(drafts=k)", "not a literal"),
        ("aggressive(drafts=", "cannot read"),
        ("srds(tol=-1)", "tol must be a finite number >= 0"),
        ("serial(solver='rk4')", "unknown solver 'rk4'"),
        ("no/such/file.py:X", "does not exist"),
        ("driffusion.core:NOPE", "has no attribute 'NOPE'"),
        ("driffusion.core:SOLVER_NAMES", "is not callable"),
        ("no_such_module_xyz:X", "cannot import module"),
    ],
)
def test_bad_sampler_text_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sampler(text)


def test_defaults_fill_only_what_the_text_leaves_open() -> None:
    defaults = {"drafts": 4, "window": 4, "tol": 0.01, "solver": "unipc", "blocks": None}
    assert parse_sampler("aggressive", defaults) == Aggressive(drafts=4, solver="unipc")
    assert parse_sampler("aggressive(solver='ddim')", defaults) == Aggressive(
        drafts=4, solver="ddim"
    )
    assert parse_sampler("paradigms", defaults) == ParaDiGMS(window=4, tol=0.01, solver="unipc")
    assert parse_sampler("serial_reduced(rounds=3)", defaults) == SerialReduced(3, "unipc")


def test_samplers_by_import_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.py"
    path.write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from driffusion.core import Sampler, sample_serial

            @dataclass(frozen=True, repr=False)
            class Twice(Sampler):
                name = "twice"
                steps: int = 1

                def __call__(self, model, x, schedule, *, callback=None):
                    return sample_serial(model, x, schedule)

            FAST = Twice(steps=3)

            def plain(model, x, schedule, *, callback=None):
                return sample_serial(model, x, schedule)
            """
        )
    )
    fast = parse_sampler(f"{path}:FAST")
    unregister("twice")  # defining it registered it: leave the registry as it was
    assert repr(fast) == "Twice(steps=3)" and isinstance(fast, Sampler)
    assert repr(parse_sampler(f"{path}:Twice(steps=5)")) == "Twice(steps=5)"  # a class
    assert repr(parse_sampler(f"{path}:FAST(steps=7)")) == "Twice(steps=7)"  # a value, replaced
    plain = parse_sampler(f"{path}:plain")
    model, x, schedule = toy_problem(steps=10)
    assert torch.equal(plain(model, x, schedule).x, Serial()(model, x, schedule).x)
    assert sampler_name(plain) == "function"
    assert parse_sampler("driffusion.core:Serial") == Serial()  # package.module:NAME


def test_unique_names_keep_settings_apart() -> None:
    samplers = [Serial(), Aggressive(drafts=2), Aggressive(drafts=4), Aggressive(drafts=8)]
    assert unique_names(samplers) == ["serial", "aggressive", "aggressive_2", "aggressive_3"]
