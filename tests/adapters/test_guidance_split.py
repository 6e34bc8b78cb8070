"""The guidance branches as a parallel axis, on 2 real processes (gloo on CPU): every built-in
sampler gives the same sample with the branches kept together and split, and the same as one
process; a split moves what the plan says; the digits UNet's split serial sample is the batched
one up to the float rounding of a batch of B against one of 2B."""

from __future__ import annotations

import pytest
import torch

from driffusion.core import BatchedExecutor, RoundPlan, RowwiseModel, Serial, initial_noise
from driffusion.models.digits import load_digits
from tests.scripts import common
from tests.support import SCRIPTS, fabric_run, run_script

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def split_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("guidance")
    cmd = [*fabric_run(2), str(SCRIPTS / "guidance_check.py"), "--out", str(out)]
    result = run_script(cmd, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    return torch.load(out / "results.pt")


def test_both_ranks_hold_the_same_samples(split_run: dict) -> None:
    assert split_run["world_size"] == 2 and split_run["ranks_agree"]


@pytest.mark.parametrize("name", list(common.SPECS))
def test_every_sampler_is_the_same_with_the_branches_split(split_run: dict, name: str) -> None:
    together, split = split_run["oracle"][name, 1], split_run["oracle"][name, 2]
    one_process = common.SPECS[name](
        BatchedExecutor(common.guided_model()), common.start(), common.schedule()
    )
    assert torch.equal(split, together)  # the guided oracle is batch-invariant: bit for bit
    assert torch.equal(split, one_process.x)
    if name in common.FIXED_SHAPE_SPECS:  # padded units change no output
        for devices in (1, 2):
            assert torch.equal(split_run["oracle"][name, devices, "fixed"], one_process.x)


@pytest.mark.parametrize("name", ["serial", "aggressive_k2", "chords_c4"])
def test_a_split_gathers_the_units_of_its_plan(split_run: dict, name: str) -> None:
    """Bytes received per rank: (g - 1) ranks' padded share of units, each [B, *shape] float32;
    the same as the unsplit gather for serial (one unit each), more for drafts (raw branches)."""
    result = common.SPECS[name](
        BatchedExecutor(common.guided_model()), common.start(), common.schedule()
    )
    state_bytes = common.start().numel() * 4
    for devices in (1, 2):
        plans = [RoundPlan(k, 2, 2, devices == 2) for k in result.stats.round_rows]
        expected = sum(plan.per_device for plan in plans) * state_bytes
        assert split_run["bytes"][name, devices] == (expected, result.stats.rounds)
    together, split = (split_run["bytes"][name, d][0] for d in (1, 2))
    assert split == together if name == "serial" else split > together


def test_the_digits_serial_sample_split_is_the_batched_one_to_rounding(split_run: dict) -> None:
    digits = load_digits()
    network = RowwiseModel(digits.denoiser(2.0), {"label": torch.arange(10)})
    x = initial_noise(list(range(10)), (1, 16, 16))
    with torch.inference_mode():
        batched = Serial()(BatchedExecutor(network), x, digits.schedule(20)).x
    split = split_run["digits_serial_split"]
    # the UNet's kernels round a row of a 2B batch and of a B batch differently (~1e-6 per
    # evaluation); over 20 steps the samples stay within 1e-4 of each other
    assert float((split - batched).abs().max()) <= 1e-4


@pytest.mark.parametrize("name", list(common.SPECS))
def test_every_sampler_on_the_digits_unet_is_the_same_split_to_rounding(
    split_run: dict, name: str
) -> None:
    together, split = (split_run["digits"][name, devices] for devices in (1, 2))
    assert float((split - together).abs().max()) <= 1e-4
