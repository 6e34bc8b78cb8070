"""The benchmarks' shared helpers (benchmarks/common.py): timing, deviations, row names."""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import deviation, relative_error, row_name, timed
from driffusion.core import SRDS, Aggressive, Serial


def test_timed_takes_the_median_through_the_timer() -> None:
    walls = iter([3.0, 1.0, 2.0])
    calls = []

    def timer(work):  # e.g. Session.timed: one run's seconds and its result
        return next(walls), work()

    wall, result = timed(lambda: calls.append(1) or len(calls), repeats=3, timer=timer)
    assert (wall, result, len(calls)) == (2.0, 3, 3)
    wall, result = timed(lambda: "done", torch.device("cpu"))
    assert result == "done" and 0 <= wall < 1
    with pytest.raises(ValueError, match="repeats"):
        timed(lambda: None, repeats=0)


def test_deviation_and_relative_error() -> None:
    reference = torch.tensor([[3.0, 4.0]])
    x = torch.tensor([[3.0, 4.5]])
    assert relative_error(x, reference) == pytest.approx(0.1)
    assert deviation(x, reference) == {"max_abs_dev": 0.5, "rel_dev": relative_error(x, reference)}
    assert deviation(reference, reference) == {"max_abs_dev": 0.0, "rel_dev": 0.0}


def test_row_names() -> None:
    assert [row_name(s) for s in (Serial(), Aggressive(drafts=4), SRDS())] == [
        "serial",
        "aggressive",
        "srds",
    ]
    assert row_name(SRDS(pipelined=True)) == "srds_pipelined"
    assert row_name(lambda model, x, schedule: None) == "function"
