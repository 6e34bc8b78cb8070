"""benchmarks/compare.py: passes on ``D`` devices with a guided model's branches together or
split (one run, both latencies), each family's best within a budget of passes, and --quick
runs on the oracle and on the guided oracle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from driffusion.core import chords_rounds, default_starts, parse_sampler, sampler_names
from driffusion.core.samplers.registry import builtin_samplers


def _run(family: str, rows_per_round: int, round_rows: list[int]) -> dict:
    return {
        "model": "m",
        "family": family,
        "rows_per_round": rows_per_round,
        "steps": len(round_rows),
        "rounds": len(round_rows),
        "evaluations": sum(round_rows),
        "rows": max(round_rows),
        "err_ref": 0.1,
        "setting": family,
        "round_rows": round_rows,
    }


def _passes(rows: list[dict]) -> dict[tuple[int, int], int]:
    return {(r["devices"], r["guidance_devices"]): r["passes"] for r in rows}


def test_serial_takes_2n_passes_on_one_device_and_n_with_the_branches_split() -> None:
    from benchmarks.compare import placements

    serial = _run("serial", 1, [1] * 20)
    assert _passes(placements(serial, 2, (2, 4, 8))) == {(1, 1): 40, (2, 2): 20}
    assert _passes(placements(serial, 1, (2, 4, 8))) == {(1, 1): 20}  # no branches to split


def test_parallel_rounds_take_ceil_kg_over_d_passes_split() -> None:
    """K rows a round: 2 ceil(K / D) passes with the branches together, ceil(2K / D) split; a
    placement that takes no fewer passes than on fewer devices is left out."""
    from benchmarks.compare import placements

    drafts = [1, *[4] * 12, 3]  # 4 drafts: a first round of one row, a short last round
    got = _passes(placements(_run("aggressive", 4, drafts), 2, (2, 4, 8)))
    together = sum(2 * math.ceil(k / 4) for k in drafts)
    assert got == {
        (4, 1): together,
        (4, 2): sum(math.ceil(2 * k / 4) for k in drafts),
        (8, 2): sum(math.ceil(2 * k / 8) for k in drafts),
    }
    assert got[8, 2] == len(drafts) < got[4, 2] < together  # 4 drafts x split on 8 devices
    two = _passes(placements(_run("aggressive", 2, [1, *[2] * 10]), 2, (2, 4, 8)))
    assert two == {(2, 1): 22, (2, 2): 21, (4, 2): 11}
    unguided = placements(_run("aggressive", 2, [1, *[2] * 10]), 1, (2, 4, 8))
    assert _passes(unguided) == {(2, 1): 11}  # passes are network calls
    assert all("round_rows" not in r and r["rows_per_round"] == 2 for r in unguided)


def test_best_within_budgets_keeps_each_guidance_devices() -> None:
    from benchmarks.compare import BUDGETS, best_within_budgets, placements

    rows = [
        *placements(_run("serial", 1, [1] * 8), 2, (2, 4)),
        *placements(_run("aggressive", 2, [1, *[2] * 7]), 2, (2, 4)),
    ]
    best = best_within_budgets(rows, (2, 4))
    keys = {(e["devices"], e["budget"], e["family"], e["guidance_devices"]) for e in best}
    variants = {("serial", 1), ("serial", 2), ("aggressive", 1), ("aggressive", 2)}
    assert keys == {(d, b, *v) for d in (2, 4) for b in BUDGETS for v in variants}
    for entry in best:
        fits = [
            r
            for r in rows
            if (r["family"], r["guidance_devices"]) == (entry["family"], entry["guidance_devices"])
            and r["devices"] <= entry["devices"]
            and r["passes"] <= entry["budget"]
        ]
        assert (entry["best"] is None) == (not fits)


def test_fitted_drafts_fill_the_budgets() -> None:
    """Beside the sweep, the drafts run on N = 1 + (R - 1) K for the rounds R a budget of passes
    holds (one pass a round split over 2K devices, 2 with the branches together)."""
    from benchmarks import compare

    rounds = compare.fitted_rounds(2)
    assert {17, 26, 8, 13} <= set(rounds)
    tasks = compare.tasks(False, 1e-2, 2)
    assert len(tasks) == len(set(tasks))
    fitted = {(f, k, n) for f, k, n, _ in tasks if f in ("aggressive", "conservative")}
    assert {("aggressive", 2, 33), ("aggressive", 4, 65), ("conservative", 4, 65)} <= fitted
    serial = {n for f, _, n, _ in tasks if f == "serial"}
    assert {17, 26, 13} <= serial


def _check_rows(rows: list[dict], best: list[dict], budgets: tuple[int, ...]) -> None:
    for row in rows:
        sampler = parse_sampler(row["setting"])
        assert repr(sampler) == row["setting"]
        if row["family"] == "serial":
            assert row["rounds"] == row["steps"] and row["rows_per_round"] == 1
        else:  # every parallel sampler gets its K rows a round, counted on D >= K devices
            assert row["rows"] <= row["rows_per_round"] <= row["devices"]
    for entry in best:  # the least error among the family's rows within the budget
        within = [
            r
            for r in rows
            if (r["family"], r["guidance_devices"]) == (entry["family"], entry["guidance_devices"])
            and r["devices"] <= entry["devices"]
            and r["passes"] <= entry["budget"]
        ]
        if not within:
            assert entry["best"] is None
            continue
        assert entry["best"]["err_ref"] == min(r["err_ref"] for r in within)
        assert entry["best"]["passes"] <= entry["budget"] in budgets


def test_compare_benchmark_quick(tmp_path: Path) -> None:
    from benchmarks import common, compare

    out = tmp_path / "c.json"
    args = ["--models", "oracle", "--quick", "--ref-points", "200", "--workers", "1"]
    results = compare.main([*args, "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    rows, best = saved["oracle"]["rows"], saved["oracle"]["best"]
    assert saved["oracle"]["branches"] == 1
    parallel = [c.name for c in builtin_samplers() if c.parallel]
    assert {r["family"] for r in rows} == {"serial", *parallel}  # every registered sampler
    assert set(sampler_names()) >= {r["family"] for r in rows}
    _check_rows(rows, best, compare.BUDGETS)
    for row in rows:
        sampler = parse_sampler(row["setting"])
        assert row["guidance_devices"] == 1  # nothing to split: passes are network calls
        if row["family"] == "serial":
            assert row["devices"] == 1 and row["passes"] == row["steps"]
        else:
            assert row["devices"] == row["rows_per_round"] and row["passes"] == row["rounds"]
        if row["family"] in ("srds", "paradigms", "picard_driffusion"):
            assert sampler.tol == (0.1 if getattr(sampler, "rule", "") == "paper" else 1e-2)
        if row["family"] == "chords":  # d cores: the default list or an evenly spaced one
            d, n = row["devices"], row["steps"]
            starts = sampler.starts or default_starts(d, n)
            assert len(starts) == d and sampler.index < d
            assert row["rounds"] == chords_rounds(starts, n, sampler.index)
    assert {(e["devices"], e["budget"]) for e in best} == {
        (d, b) for d in (2, 4) for b in compare.BUDGETS
    }
    table = compare.summary_rows(best)
    families = common.families(rows)
    assert families[0] == "serial" and set(families) == {r["family"] for r in rows}
    assert len(table) == 2 * len(compare.BUDGETS) and set(families) <= table[0].keys()


def test_compare_guided_oracle_counts_both_placements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guided oracle: each configuration ran once, counted with its branches together and
    split; serial sampling takes 2N passes on one device, N split over 2."""
    from benchmarks import compare

    monkeypatch.setattr(compare, "QUICK_STEPS", (10, 25))
    args = ["--models", "oracle-guided", "--quick", "--ref-points", "40", "--workers", "1"]
    results = compare.main([*args, "--json", str(tmp_path / "c.json")])
    result = results["oracle-guided"]
    assert result["branches"] == 2
    rows, best = result["rows"], result["best"]
    _check_rows(rows, best, compare.BUDGETS)
    serial = [r for r in rows if r["family"] == "serial"]
    assert {(r["devices"], r["guidance_devices"]) for r in serial} == {(1, 1), (2, 2)}
    for row in serial:
        assert row["passes"] == (2 if row["guidance_devices"] == 1 else 1) * row["steps"]
    for row in rows:
        if row["family"] != "serial" and row["guidance_devices"] == 1:
            assert row["devices"] == row["rows_per_round"] and row["passes"] == 2 * row["rounds"]
    runs = {}  # one run, several placements: the same sample and counts
    for row in rows:
        key = (row["setting"], row["steps"], row["rows_per_round"])
        runs.setdefault(key, set()).add((row["err_ref"], row["evaluations"], row["rounds"]))
    assert all(len(v) == 1 for v in runs.values())
    split = {(r["setting"], r["steps"]) for r in rows if r["devices"] == 4 > r["rows_per_round"]}
    assert ("Aggressive(drafts=2, solver='dpmpp_2m')", 25) in split  # 2 drafts x split on 4
    assert {(e["family"], e["guidance_devices"]) for e in best} >= {("serial", 2), ("chords", 2)}
