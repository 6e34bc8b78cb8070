"""The Results page (benchmarks/results_page.py): generated from the committed JSON, which is
strict and holds the documented rows."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import results_page


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
