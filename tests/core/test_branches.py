"""A guided evaluation is branches combined: the round plan covers every (row, branch) unit
once, counts passes as the docs say, and a guided network's batched call equals its branches
evaluated apart and combined."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from driffusion.core import (
    Aggressive,
    BatchedExecutor,
    RoundPlan,
    RowwiseModel,
    choose_guidance_devices,
    classifier_free_guidance,
    pick_rows,
    round_passes,
)
from driffusion.core.branches import check_guidance_devices, network_branches
from driffusion.core.model import pad_rows
from driffusion.testing import GuidedOracleNetwork, toy_problem


@given(
    rows=st.integers(1, 12),
    branches=st.integers(1, 3),
    devices=st.integers(1, 9),
    split=st.booleans(),
)
def test_the_devices_of_a_round_cover_every_unit_once(
    rows: int, branches: int, devices: int, split: bool
) -> None:
    plan = RoundPlan(rows, branches, devices, split)
    covered = [u for d in range(devices) for u in plan.device_units(d)]
    assert covered == list(range(plan.units))
    assert max(len(plan.device_units(d)) for d in range(devices)) == plan.per_device
    if split:
        row, branch = plan.unit_rows(range(plan.units))
        pairs = set(zip(row.tolist(), branch.tolist(), strict=True))
        assert pairs == {(k, g) for k in range(rows) for g in range(branches)}
        assert plan.passes == math.ceil(rows * branches / devices)
    else:
        assert plan.passes == branches * math.ceil(rows / devices)


def test_passes_of_the_serial_sampler_and_of_drafts() -> None:
    # serial, 20 steps, guided: 40 passes on one device, 20 with the branches split over two
    assert round_passes([1] * 20, 2, 1, split=False) == 40
    assert round_passes([1] * 20, 2, 2, split=True) == 20
    assert round_passes([1] * 20, 2, 2, split=False) == 40  # one device's work, the other idle
    # 4 devices: 2 drafts x 2 branches fill them, one pass a round
    assert round_passes([1, 2, 2], 2, 4, split=True) == 3
    assert round_passes([1, 2, 2], 2, 4, split=False) == 6


def test_auto_splits_where_it_lowers_the_cost_of_a_round() -> None:
    assert choose_guidance_devices(2, 2, rows=1, batched_cost_ratio=2.0) == 2  # serial, CPU
    assert choose_guidance_devices(2, 2, rows=1, batched_cost_ratio=1.02) == 1  # cheap batch
    assert choose_guidance_devices(2, 2, rows=2, batched_cost_ratio=2.0) == 1  # full already
    assert choose_guidance_devices(2, 4, rows=2, batched_cost_ratio=1.9) == 2
    assert choose_guidance_devices(1, 4, rows=1, batched_cost_ratio=9.0) == 1  # no branches
    assert choose_guidance_devices(2, 1, rows=1, batched_cost_ratio=9.0) == 1  # one device


@pytest.mark.parametrize("value", [0, 3, "2", True, None, 2.0])
def test_guidance_devices_takes_one_two_or_auto(value: object) -> None:
    with pytest.raises(ValueError, match="guidance_devices must be 1, 2 or 'auto'"):
        check_guidance_devices(value)
    for good in (1, 2, "auto"):
        assert check_guidance_devices(good) == good


def test_pick_rows_takes_each_rows_own_branch() -> None:
    negative, positive = torch.zeros(3, 2), torch.ones(3, 2)
    picked = pick_rows(torch.tensor([1, 0, 1]), [negative, positive])
    assert picked[:, 0].tolist() == [1.0, 0.0, 1.0]
    assert pick_rows(torch.tensor([0, 0, 0]), [positive]) is positive


def guided_model(guidance: float = 3.0) -> RowwiseModel:
    oracle, _, _ = toy_problem()
    return RowwiseModel(GuidedOracleNetwork(oracle, guidance), {"label": torch.tensor([2, 5])})


def test_the_batched_call_is_its_branches_apart_and_combined() -> None:
    model = guided_model()
    oracle, x, schedule = toy_problem(batch=2)
    xs = torch.stack([x, 0.5 * x, -x])
    t = schedule.times([0, 5, 9])
    assert network_branches(model) == 2
    units = model.evaluate_units(
        torch.cat([xs, xs]), torch.cat([t, t]), torch.tensor([0, 0, 0, 1, 1, 1])
    )
    combined = model.combine(units.reshape(2, 3, *x.shape), t)
    assert torch.equal(model(xs, t), combined)
    unconditional = oracle.rows(xs.flatten(0, 1), t.repeat_interleave(2))
    conditional = oracle.rows(xs.flatten(0, 1), t.repeat_interleave(2), torch.tensor([2, 5] * 3))
    expected = classifier_free_guidance(unconditional, conditional, 3.0).reshape(xs.shape)
    assert torch.equal(model(xs, t), expected)


def test_guidance_one_is_the_conditional_model() -> None:
    oracle, x, schedule = toy_problem(batch=2)
    model = guided_model(guidance=1.0)
    t = schedule.times([3])
    conditional = oracle.rows(x, t.repeat(2), torch.tensor([2, 5]))
    # u + 1 (c - u) is c up to the float32 rounding of the subtraction
    torch.testing.assert_close(model(x[None], t)[0], conditional, rtol=1e-5, atol=1e-7)


def test_fixed_shape_pads_to_the_widest_round_and_changes_no_output() -> None:
    oracle, x, schedule = toy_problem(steps=20)
    widths: list[int] = []

    def network(xs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        widths.append(xs.shape[0])
        return oracle(xs, t)

    plain = Aggressive(drafts=4)(BatchedExecutor(oracle), x, schedule)
    fixed = Aggressive(drafts=4)(BatchedExecutor(network, fixed_shape=True), x, schedule)
    assert torch.equal(plain.x, fixed.x)  # the oracle is batch-invariant: bit for bit
    assert plain.stats.round_rows == (1, 4, 4, 4, 4, 3)  # the last round is shorter ...
    assert widths == [1, 4, 4, 4, 4, 4]  # ... and padded to the shape already seen
    assert fixed.stats.latency_passes(4, branches=2, split=True) == 1 + 5 * 2


def test_pad_rows_repeats_the_last_row() -> None:
    (padded,) = pad_rows(4, torch.tensor([3, 7]))
    assert padded.tolist() == [3, 7, 7, 7]
    with pytest.raises(ValueError, match="cannot pad"):
        pad_rows(1, torch.tensor([1, 2]))
