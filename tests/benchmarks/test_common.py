"""The benchmarks' shared helpers (benchmarks/common.py): timing, deviations, the samplers swept
(every registered sampler's own configurations) and family titles."""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import deviation, parallel_configurations, relative_error, timed, title
from driffusion.core import SRDS, Aggressive, Chords, ParaDiGMS, builtin_samplers


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


def test_the_configurations_come_from_every_registered_parallel_sampler() -> None:
    configs = parallel_configurations(4, 50, solver="dpmpp_2m", tol=0.01)
    families = [c.name for c in builtin_samplers() if c.parallel]
    assert list(dict.fromkeys(s.name for s in configs)) == families  # registry order
    assert all(s.rows == 4 for s in configs)
    assert Aggressive(drafts=4, solver="dpmpp_2m") in configs
    # the variants: SRDS's iteration caps, ParaDiGMS under both rules (the paper at its tol)
    assert {s.max_iters for s in configs if isinstance(s, SRDS)} == {None, 1, 2}
    rules = {(s.rule, s.tol) for s in configs if isinstance(s, ParaDiGMS)}
    assert rules == {("sigma", 0.01), ("paper", 0.1)}
    # CHORDS: default lists (first and second core) and even lists, also over its paper's DDIM
    chords = [s for s in configs if isinstance(s, Chords)]
    assert {s.index for s in chords if s.starts is None} == {1, 2}
    assert {s.starts for s in chords} >= {None, (0, 10, 20, 30), (0, 8, 16, 24)}
    assert {s.solver for s in chords} == {"dpmpp_2m", "ddim"}
    assert len({repr(s) for s in configs}) == len(configs)  # no configuration twice
    # a grid too short for a configuration leaves it out
    assert all(s.fits(3) for s in parallel_configurations(4, 3))
    assert not any(isinstance(s, SRDS) for s in parallel_configurations(4, 3))


def test_titles() -> None:
    assert title("aggressive") == "DRiffusion aggressive"
    assert title("chords") == "CHORDS"
    assert title("srds") == "SRDS"
    assert title("nobody") == "nobody"


def test_comparison_variants_put_serial_first_and_together_before_split() -> None:
    from benchmarks.common import DRAFT_FAMILIES, families, variants

    rows = [
        {"family": "chords", "guidance_devices": 2},
        {"family": "serial", "guidance_devices": 2},
        {"family": "chords", "guidance_devices": 1},
        {"family": "serial", "guidance_devices": 1},
        {"family": "aggressive"},  # an unguided row: its branches together
    ]
    assert families(rows) == ["serial", "chords", "aggressive"]
    pairs = [("serial", 1), ("serial", 2), ("chords", 1), ("chords", 2), ("aggressive", 1)]
    assert variants(rows) == pairs
    assert DRAFT_FAMILIES == ("aggressive", "conservative")
