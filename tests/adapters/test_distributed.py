"""The distributed adapter on real processes (gloo on CPU): 2 ranks splitting each round give
exactly the 1-process results, and a dead or hung rank stops its peers with a clear error naming
it instead of a hang."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from driffusion.core import BatchedExecutor
from tests.scripts import common
from tests.support import SCRIPTS, run_script


@pytest.mark.processes
def test_ranks_hold_identical_results(two_process_run: Path) -> None:
    report = json.loads((two_process_run / "report.json").read_text())
    assert report["world_size"] == 2
    assert report["ranks_agree"] == dict.fromkeys(common.SPECS, True)


@pytest.mark.processes
@pytest.mark.parametrize("name", list(common.SPECS))
def test_two_processes_equal_one_process_batched(two_process_run: Path, name: str) -> None:
    saved = torch.load(two_process_run / "results.pt")["samplers"][name]
    reference = common.SPECS[name](
        BatchedExecutor(common.oracle()), common.start(), common.schedule()
    )
    assert torch.equal(saved["x"], reference.x)
    assert saved["rounds"] == reference.stats.rounds
    assert saved["evaluations"] == reference.stats.evaluations


@pytest.mark.processes
@pytest.mark.parametrize("fault", ["die", "hang"])
def test_a_dead_or_hung_rank_stops_the_others_with_a_clear_error(
    tmp_path: Path, fault: str
) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPTS / "fault_check.py"), "--accelerator", "cpu"]
    cmd += ["--devices", "2", "--strategy", "ddp", "--fault", fault, "--timeout", "5"]
    start = time.monotonic()
    leftovers: list[bool] = []
    result = run_script([*cmd, "--out", str(out)], timeout=120, leftovers=leftovers)
    assert time.monotonic() - start < 90
    assert leftovers == [False]  # the hung or dead rank does not outlive the launcher
    assert result.returncode != 0
    assert "UNEXPECTED" not in result.stdout
    assert "CollectiveError: rank 0" in result.stdout
    assert "peer rank(s) [1]" in result.stdout
    assert not out.exists() or list(out.iterdir()) == []  # no partial outputs


def test_a_collective_error_never_names_the_failing_rank_itself() -> None:
    from driffusion.adapters.distributed import CollectiveError, ParallelLayout, collective

    def broken() -> None:
        raise RuntimeError("connection reset")

    for layout, peers in ((ParallelLayout(3, 1, 1), "[0, 2]"), (ParallelLayout(4, 2, 2), "[3]")):
        with pytest.raises(CollectiveError, match=re.escape(f"peer rank(s) {peers}")):
            collective(layout, "gather", broken)
