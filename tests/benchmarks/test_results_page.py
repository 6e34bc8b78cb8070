"""The benchmarks' shared helpers, and the Results page: generated from the committed JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import results_page
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


def test_results_page_is_generated_from_the_committed_json() -> None:
    """docs/results.md is exactly what the generator makes of docs/results/*.json: rerun
    `python benchmarks/results_page.py` after refreshing a benchmark's JSON."""
    assert results_page.PAGE.read_text() == results_page.render()
    assert results_page.COMPARISON.read_text() == results_page.render_comparison()
    assert results_page.main(["--check"]) == 0


def test_the_comparison_holds_chords_at_the_official_list() -> None:
    """compare.json: 8 CHORDS cores at N = 50 return the fastest core after 17 rounds with 108
    evaluations (the official list); every budget's best row fits it."""
    compare = json.loads((results_page.RESULTS / "compare.json").read_text())
    for model in ("oracle", "digits"):
        rows = compare[model]["rows"]
        official = [
            r
            for r in rows
            if r["family"] == "chords"
            and (r["devices"], r["steps"]) == (8, 50)
            and "index" not in r["setting"]
            and "starts" not in r["setting"]
        ]
        assert {(r["rounds"], r["evaluations"]) for r in official} == {(17, 108)}
        for entry in compare[model]["best"]:
            assert entry["best"] is None or entry["best"]["latency"] <= entry["budget"]


def test_committed_results_are_strict_json_with_the_documented_rows() -> None:
    def reject(constant: str) -> None:
        raise AssertionError(f"non-strict JSON constant {constant}")

    data = {
        source.file: json.loads(
            (results_page.RESULTS / source.file).read_text(), parse_constant=reject
        )
        for source in results_page.SOURCES
    }
    speedup = data["speedup_cpu2.json"]
    assert [r["sampler"] for r in speedup][:2] == ["serial", "serial_reduced"]
    assert all(r["speedup"] == pytest.approx(r["serial_wall_s"] / r["wall_s"]) for r in speedup)
    rounds = data["rounds.json"]
    assert {r["steps"] for r in rounds} == {25, 50, 100}
    assert all(r["speedup_ideal"] == pytest.approx(r["steps"] / r["rounds"]) for r in rounds)
    frontier = data["frontier.json"]
    for model in ("oracle", "digits"):
        summary = frontier[model]["summary"]
        assert [s["rounds"] for s in summary] == [8, 14, 26]
        assert all(
            math.isclose(s["ratio"], s["best_parallel_err_ref"] / s["best_serial_err_ref"])
            for s in summary
        )
