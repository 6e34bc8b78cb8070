"""The Results page (benchmarks/results_page.py): generated from the committed JSON, which is
strict and holds the documented rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import results_page
from driffusion.io import format_cell


def test_results_page_is_generated_from_the_committed_json() -> None:
    """docs/results.md is exactly what the generator makes of docs/results/*.json: rerun
    `python benchmarks/results_page.py` after refreshing a benchmark's JSON."""
    assert results_page.PAGE.read_text() == results_page.render()
    assert results_page.COMPARISON.read_text() == results_page.render_comparison()
    assert results_page.main(["--check"]) == 0


def test_the_comparison_holds_chords_at_the_official_list() -> None:
    """compare.json: 8 CHORDS cores at N = 50 return the fastest core after 17 rounds with 108
    evaluations (the official list); every budget's best row fits it in passes."""
    compare = json.loads((results_page.RESULTS / "compare.json").read_text())
    assert set(compare) == {"oracle", "oracle-guided", "digits"}
    for result in compare.values():
        rows = result["rows"]
        official = [
            r
            for r in rows
            if r["family"] == "chords"
            and (r["rows_per_round"], r["steps"]) == (8, 50)
            and "index" not in r["setting"]
            and "starts" not in r["setting"]
        ]
        assert {(r["rounds"], r["evaluations"]) for r in official} == {(17, 108)}
        passes = {r["guidance_devices"]: r["passes"] for r in official}  # rounds of <= 8 rows
        if result["branches"] == 2:  # split: one pass for a round of at most 4 rows, else 2
            assert passes[1] == 34 and 17 <= passes[2] <= 34
        else:
            assert passes == {1: 17}
        for entry in result["best"]:
            assert entry["best"] is None or entry["best"]["passes"] <= entry["budget"]


def test_the_references_are_far_below_the_errors_compared() -> None:
    """Both alternative reference solves differ from the reference by far less (a tenth) than
    the least error any budget's best configuration reaches."""
    compare = json.loads((results_page.RESULTS / "compare.json").read_text())
    for result in compare.values():
        checks = result["reference"]
        compared = min(e["best"]["err_ref"] for e in result["best"] if e["best"] is not None)
        diffs = (checks["diff_unipc3_same_grid"], checks["diff_dpmpp_3m_half_points"])
        assert max(diffs) < compared / 10


def test_committed_results_are_strict_json_with_the_documented_rows() -> None:
    def reject(constant: str) -> None:
        raise AssertionError(f"non-strict JSON constant {constant}")

    data = {
        source.file: json.loads(
            (results_page.RESULTS / source.file).read_text(), parse_constant=reject
        )
        for source in results_page.SOURCES
    }
    for file in ("speedup_cpu2.json", "speedup_digits_cpu2.json"):
        speedup = data[file]
        assert [r["sampler"] for r in speedup][:2] == ["serial", "serial_reduced"]
        assert all(r["speedup"] == pytest.approx(r["serial_wall_s"] / r["wall_s"]) for r in speedup)
        # both denoisers are guided: the exact branch split of serial is there, and exact
        (split,) = [r for r in speedup if (r["sampler"], r["guidance_devices"]) == ("serial", 2)]
        assert (split["branches"], split["devices"], split["passes"]) == (2, 2, split["steps"])
        assert split["max_abs_dev"] < 1e-4
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


def _synthetic(serial_scale: float, drafts_scale: float) -> dict:
    """A guided model where serial N steps reach ``serial_scale / N`` and 2 drafts on N steps
    ``drafts_scale / N``: the rows, placed and kept as compare.py does."""
    from benchmarks import compare

    runs = [
        {
            "model": "m",
            "family": "serial",
            "rows_per_round": 1,
            "steps": n,
            "rounds": n,
            "evaluations": n,
            "rows": 1,
            "err_ref": serial_scale / n,
            "setting": "Serial(solver='dpmpp_2m')",
            "round_rows": [1] * n,
        }
        for n in (4, 6, 8, 12, 13, 17, 26)
    ]
    for r in (4, 6, 8, 12, 13, 17, 26):
        n = 1 + 2 * (r - 1)
        runs.append(
            {
                "model": "m",
                "family": "aggressive",
                "rows_per_round": 2,
                "steps": n,
                "rounds": r,
                "evaluations": n,
                "rows": 2,
                "err_ref": drafts_scale / n,
                "setting": "Aggressive(drafts=2, solver='dpmpp_2m')",
                "round_rows": [1, *[2] * (r - 1)],
            }
        )
    rows = [row for run in runs for row in compare.placements(run, 2, (2, 4))]
    reference = {
        "solver": "dpmpp_3m",
        "points": 500,
        "grid": "log-uniform",
        "diff_unipc3_same_grid": 1e-6,
        "diff_dpmpp_3m_half_points": 1e-6,
    }
    best = compare.best_within_budgets(rows, (2, 4))
    return {
        "m": {
            "reference": reference,
            "tol": 0.01,
            "branches": 2,
            "rows": rows,
            "best": best,
            "wall_s": 1.0,
        }
    }


def test_the_page_says_nothing_beats_the_exact_split_when_it_wins(tmp_path: Path) -> None:
    """Drafts far off the solution: the sentences say the exact split alone wins everywhere."""
    data = _synthetic(serial_scale=1.0, drafts_scale=50.0)
    lines = results_page.split_verdicts(data)
    assert len(lines) == 2  # one per device count
    for line in lines:
        assert "beat the exact split alone at no budget" in line
        assert "together beat it at no budget" in line
        assert line.endswith("nothing beats it within 8, 12, 17 and 26 passes.")
    assert results_page.winners_at(data, 2) == [
        "- **m:** the exact split alone within 8, 12, 17 and 26 passes."
    ]
    (tmp_path / "compare.json").write_text(json.dumps(data))
    page = results_page.render_comparison(tmp_path)
    assert "## Drafts and the exact branch split" in page and lines[1] in page


def test_the_page_says_where_drafts_x_split_beat_the_exact_split() -> None:
    """Drafts close to the solution: on 4 devices 2 drafts x split (one pass a round) beat the
    exact split within every budget, at the ratio of their errors."""
    data = _synthetic(serial_scale=1.0, drafts_scale=1.0)
    cells = results_page.best_cells(data["m"])
    four = next(line for line in results_page.split_verdicts(data) if "4 devices" in line)
    assert four.startswith(
        "- **m, 4 devices:** drafts stacked on the branch split beat the exact split alone "
        "within 8, 12, 17 and 26 passes"
    )
    for budget in (17, 26):
        exact, drafts = cells[4, budget, "serial", 2], cells[4, budget, "aggressive", 2]
        assert drafts["passes"] <= budget and drafts["devices"] == 4
        assert f"{format_cell(drafts['err_ref'] / exact['err_ref'])}x" in four
    assert four.endswith("something beats it within every budget.")
    winners = results_page.winners_at(data, 4)
    assert winners == [
        "- **m:** DRiffusion aggressive with the branches split within 8, 12, 17 and 26 passes."
    ]
    assert "2 drafts" not in results_page.split_table(data)  # settings are the labels
