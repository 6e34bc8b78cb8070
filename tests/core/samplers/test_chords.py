"""CHORDS: the invariants its construction guarantees (core 0 is the serial sampler, cores finish
at ``N - s_c + c``, the evaluation count, the rectification cadence), agreement with a literal
transcription of the spec's pseudo-code (``../shared/CHORDS.md`` section 3), the default start
lists, the stop rules and the sampler value's checks."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from driffusion.core import (
    Chords,
    CountingModel,
    Schedule,
    chords_evaluations,
    chords_rounds,
    default_starts,
    evaluate,
    get_solver,
    parse_sampler,
    relative_error,
    sample_chords,
    sample_serial,
    skip_transition,
)
from driffusion.core.samplers.base import max_rms
from driffusion.core.samplers.chords import OFFICIAL_STARTS, finish_round
from driffusion.testing import toy_problem

DETERMINISTIC = ("ddim", "euler", "dpmpp_2m", "dpmpp_3m", "plms")


def row_by_row(model):
    """The same model evaluated one row at a time: a row's output cannot depend on the others."""

    def call(xs: Tensor, t: Tensor) -> Tensor:
        return torch.stack([model(xs[k : k + 1], t[k : k + 1])[0] for k in range(xs.shape[0])])

    return call


def spec_chords(
    model, x: Tensor, schedule: Schedule, starts: tuple[int, ...], index: int
) -> tuple[Tensor, int, int, dict[int, list[int]]]:
    """CHORDS.md section 3 transcribed line by line (DDIM / flow Euler fine step = skip), plus
    the rounds at which each core is rectified. Returns ``(x, rounds, evaluations, rectified)``."""
    n = schedule.num_steps
    count = len(starts)
    counter = CountingModel(model)
    cur = {0: (0, x)}
    last: dict[int, tuple[int, Tensor, Tensor]] = {}
    anc: dict[int, list] = {0: [0, x, None]}
    active, newest = [0], 0
    outputs: list[tuple[object, int, Tensor]] = []
    rectified: dict[int, list[int]] = {c: [] for c in range(count)}
    r = 0
    while True:
        r += 1
        rows = list(active)
        out = evaluate(counter, [cur[c][1] for c in rows], [cur[c][0] for c in rows], schedule)
        for k, c in enumerate(rows):
            last[c] = (cur[c][0], cur[c][1], out[k])
            if anc[c][0] == cur[c][0]:
                anc[c][2] = out[k]
        if newest in rows and last[newest][0] == starts[newest]:
            i, xs, o = last[newest]
            if newest < count - 1:
                nxt = newest + 1
                y = skip_transition(xs, o, schedule, starts[newest], starts[nxt])
                cur[nxt] = (starts[nxt], y)
                anc[nxt] = [starts[nxt], y, None]
                active.append(nxt)
                newest = nxt
            else:
                outputs.append(("preview", r, skip_transition(xs, o, schedule, starts[-1], n)))
        for c in rows:
            i, xs, o = last[c]
            y = skip_transition(xs, o, schedule, i, i + 1)
            j, xa, oa = anc[c]
            if c > 0 and last[c - 1][0] == j:
                _, xp, op = last[c - 1]
                y = y - skip_transition(xa, oa, schedule, j, i + 1)
                y = y + skip_transition(xp, op, schedule, j, i + 1)
                anc[c] = [i + 1, y, None]
                rectified[c].append(r)
            cur[c] = (i + 1, y)
        for c in rows:
            if cur[c][0] == n:
                outputs.append((c, r, cur[c][1]))
                active.remove(c)
                if sum(1 for label, _, _ in outputs if label != "preview") == index:
                    return cur[c][1], r, counter.evaluations, rectified


@st.composite
def grids_and_starts(draw: st.DrawFn) -> tuple[int, tuple[int, ...]]:
    n = draw(st.integers(2, 24))
    rest = draw(st.sets(st.integers(1, n - 1), max_size=min(6, n - 1)))
    return n, (0, *sorted(rest))


@settings(max_examples=40, deadline=None)
@given(grids_and_starts(), st.data())
def test_chords_equals_the_spec_pseudocode_bit_for_bit(
    case: tuple[int, tuple[int, ...]], data: st.DataObject
) -> None:
    n, starts = case
    index = data.draw(st.integers(1, len(starts)))
    model, x, schedule = toy_problem(steps=n, batch=1)
    spec_x, spec_rounds, spec_evals, rectified = spec_chords(model, x, schedule, starts, index)
    result = sample_chords(model, x, schedule, starts=starts, index=index)
    assert torch.equal(result.x, spec_x)
    assert (result.stats.rounds, result.stats.evaluations) == (spec_rounds, spec_evals)
    # the cadence of section 3.2: core c is rectified at rounds c + d_c, c + 2 d_c, ...
    for c in range(1, len(starts)):
        gap = starts[c] - starts[c - 1]
        expected = [c + k * gap for k in range(1, n) if c + k * gap <= min(spec_rounds, n)]
        # ... while it is alive: it retires at N - s_c + c, the window must end by N
        alive = [r for r in expected if starts[c] + (r - c) <= n]
        assert rectified[c] == alive, (c, gap, rectified[c])


@settings(max_examples=40, deadline=None)
@given(grids_and_starts(), st.data())
def test_core_c_finishes_at_round_n_minus_start_plus_c_and_evaluations_follow(
    case: tuple[int, tuple[int, ...]], data: st.DataObject
) -> None:
    n, starts = case
    index = data.draw(st.integers(1, len(starts)))
    model, x, schedule = toy_problem(steps=n, batch=1)
    result = Chords(starts=starts, index=index)(model, x, schedule)
    core = len(starts) - index  # cores finish fastest first
    rounds = finish_round(starts, n, core)
    assert rounds == n - starts[core] + core
    assert result.stats.rounds == rounds == chords_rounds(starts, n, index)
    expected = sum(min(n - s, max(0, rounds - c)) for c, s in enumerate(starts))
    assert result.stats.evaluations == expected == chords_evaluations(starts, n, rounds)
    assert result.stats.finish_order == index
    assert result.stats.rows == len(starts)


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_one_core_is_the_serial_sampler_bit_for_bit(solver: str) -> None:
    model, x, schedule = toy_problem(steps=12)
    serial = sample_serial(model, x, schedule, solver=solver)
    alone = Chords(cores=1, solver=solver)(model, x, schedule)
    assert torch.equal(alone.x, serial.x)
    assert alone.stats.rounds == serial.stats.rounds == alone.stats.evaluations


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_the_slowest_core_is_the_serial_sampler_bit_for_bit(solver: str) -> None:
    model, x, schedule = toy_problem(steps=16)
    model = row_by_row(model)
    serial = sample_serial(model, x, schedule, solver=solver)
    last = Chords(cores=4, index=4, solver=solver)(model, x, schedule)
    assert torch.equal(last.x, serial.x)
    assert last.stats.rounds == serial.stats.rounds


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "dpmpp_3m", "plms"])
def test_later_cores_are_closer_to_the_serial_sample(solver: str) -> None:
    """Each rectification contracts a core's deviation, and later cores received more."""
    model, x, schedule = toy_problem(steps=50)
    serial = sample_serial(model, x, schedule, solver=solver).x
    errors = [
        relative_error(Chords(cores=8, index=m, solver=solver)(model, x, schedule).x, serial)
        for m in range(1, 9)
    ]
    assert errors[-1] == 0.0
    assert all(b <= a for a, b in itertools.pairwise(errors)), errors
    assert errors[0] < 1e-2 and errors[4] < 1e-3 * errors[0], errors


def test_the_official_list_returns_in_17_rounds_with_108_evaluations() -> None:
    model, x, schedule = toy_problem(steps=50)
    fastest = Chords(cores=8)(model, x, schedule)
    assert (fastest.stats.rounds, fastest.stats.evaluations) == (17, 108)
    second = Chords(starts=OFFICIAL_STARTS, index=2)(model, x, schedule)
    assert (second.stats.rounds, second.stats.evaluations) == (24, 157)


def test_the_preview_and_the_residual_stop_rule() -> None:
    """``stop="residual"`` returns the first finished core within ``tol * sigma_{N-1}`` of the
    output before it; the first one is compared with the preview, the coarse sample along the
    start points."""
    model, x, schedule = toy_problem(steps=30)
    model = row_by_row(model)  # the preview below is computed one row at a time
    starts = default_starts(4, 30)
    preview = x  # the C-step coarse sample along s_0 < ... < s_{C-1} < N
    for a, b in zip(starts, (*starts[1:], 30), strict=True):
        out = model(preview[None], schedule.times([a]).float())[0]
        preview = skip_transition(preview, out, schedule, a, b)
    outputs = [preview] + [
        Chords(starts=starts, index=m)(model, x, schedule).x for m in range(1, 5)
    ]
    residuals = [max_rms(b, a) for a, b in itertools.pairwise(outputs)]
    assert residuals[0] > residuals[-1]
    for tol in [r / schedule.sigma(29) for r in residuals]:
        threshold = tol * schedule.sigma(29)  # as the sampler computes it
        m = next(m for m in range(1, 5) if residuals[m - 1] <= threshold or m == 4)
        result = Chords(starts=starts, stop="residual", tol=tol)(model, x, schedule)
        assert torch.equal(result.x, outputs[m])
        assert result.stats.finish_order == m
        assert result.stats.rounds == chords_rounds(starts, 30, m)


def test_default_start_lists() -> None:
    assert default_starts(8, 50) == OFFICIAL_STARTS == (0, 2, 4, 8, 16, 24, 32, 40)
    assert default_starts(4, 50) == (0, 12, 24, 36)
    assert default_starts(2, 50) == (0, 25)
    assert default_starts(1, 50) == (0,)
    assert [chords_rounds(default_starts(c, 50), 50) for c in (2, 4, 8)] == [26, 17, 17]
    with pytest.raises(ValueError, match="no default start list of 8 cores fits 12 steps"):
        default_starts(8, 12)
    model, x, schedule = toy_problem(steps=12)
    assert Chords()(model, x, schedule).stats.rows == 7  # as many cores as fit


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 10), st.integers(2, 200))
def test_default_starts_are_geometric_then_arithmetic_with_the_largest_base(
    cores: int, n: int
) -> None:
    try:
        starts = default_starts(cores, n)
    except ValueError:
        return
    geometric = cores // 2 + 1
    base = starts[1]
    assert starts[:geometric] == (0, *(base * 2 ** (c - 1) for c in range(1, geometric)))
    gap = starts[geometric - 1] - starts[geometric - 2]
    assert all(
        b - a == gap for a, b in zip(starts[geometric - 1 :], starts[geometric:], strict=False)
    )
    assert starts[-1] + gap <= n  # the fastest core gets one whole rectification window
    assert (base + 1) * (starts[-1] + gap) > n * base  # base + 1 would not fit (all scale)


def test_the_value_its_label_and_its_checks() -> None:
    sampler = Chords(cores=4, starts=[0, 12, 24, 36], solver="dpmpp_2m")
    assert sampler.starts == (0, 12, 24, 36)
    assert repr(sampler) == "Chords(cores=4, starts=(0, 12, 24, 36), solver='dpmpp_2m')"
    assert parse_sampler(repr(sampler)) == sampler
    assert parse_sampler("chords", {"cores": 2, "drafts": 2}) == Chords(cores=2)
    listed = parse_sampler("chords(starts=(0, 8, 16, 24))", {"cores": 2})  # the list wins
    assert listed == Chords(starts=(0, 8, 16, 24)) and listed.keywords()["cores"] is None
    assert parse_sampler("chords(stop='residual', tol=0.01)") == Chords(stop="residual", tol=0.01)
    bad = {
        "cores must be an integer >= 1": {"cores": 0},
        "index must be an integer >= 1": {"index": 0},
        "starts must begin at 0": {"starts": (1, 4)},
        "strictly increasing": {"starts": (0, 4, 4)},
        "cores=3 but starts has 2": {"cores": 3, "starts": (0, 4)},
        "index must be at most the 2 cores": {"cores": 2, "index": 3},
        "stop must be one of": {"stop": "fastest"},
        "tol must be": {"tol": -1.0},
    }
    for message, settings_ in bad.items():
        with pytest.raises(ValueError, match=message):
            Chords(**settings_)
    model, x, schedule = toy_problem(steps=10)
    with pytest.raises(ValueError, match="below N = 10"):
        Chords(starts=(0, 5, 10))(model, x, schedule)
    with pytest.raises(ValueError, match="deterministic solver"):
        sample_chords(model, x, schedule, solver=get_solver("euler_ancestral"), cores=2)
    with pytest.raises(ValueError, match="does not take per-step noise"):
        Chords(cores=2)(model, x, schedule, noise=torch.zeros(10, *x.shape))
    with pytest.raises(ValueError, match="would discard every rectification"):
        Chords(cores=2, solver="unipc")(model, x, schedule)
    with pytest.raises(ValueError, match="plms cannot start a core at point 1"):
        Chords(starts=(0, 1, 4), solver="plms")(model, x, schedule)


def test_the_callback_follows_the_fastest_core_to_the_end() -> None:
    model, x, schedule = toy_problem(steps=20)
    seen: list[dict] = []
    result = Chords(cores=4)(model, x, schedule, callback=seen.append)
    assert [p["rounds"] for p in seen] == list(range(1, result.stats.rounds + 1))
    assert seen[-1]["i"] == 20 and seen[-1]["core"] == 3
    assert torch.equal(seen[-1]["x"], result.x)
    assert all(b["i"] >= a["i"] for a, b in itertools.pairwise(seen))
