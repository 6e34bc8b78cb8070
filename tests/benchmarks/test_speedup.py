"""benchmarks/speedup.py under `fabric run --devices 2`: its rows, speedups and round counts,
the branch-split rows of a guided network and the batched-over-branch cost ratio."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support import ROOT, fabric_run, run_script

pytestmark = pytest.mark.processes  # the benchmark runs under `fabric run --devices 2`

SMALL = ["--eval-ms", "2", "--steps", "6", "--repeats", "1", "--ratio-repeats", "1"]
KEYS = {"sampler", "devices", "steps", "rounds", "wall_s", "serial_wall_s", "speedup"}
KEYS |= {"speedup_ideal", "efficiency", "guidance_devices", "batched_cost_ratio"}
KEYS |= {"auto_guidance_devices", "bytes_per_round", "max_abs_dev", "passes", "branches"}


def run_benchmark(tmp_path: Path, *args: str) -> tuple[list[dict], str]:
    """The rows it wrote and what it printed."""
    out = tmp_path / "speedup.json"
    script = str(ROOT / "benchmarks" / "speedup.py")
    result = run_script([*fabric_run(2), script, *SMALL, *args, "--json", str(out)], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    return json.loads(out.read_text()), result.stdout


def check_rows(rows: list[dict]) -> None:
    for row in rows:
        assert row.keys() >= KEYS
        assert row["wall_s"] > 0 and row["speedup"] == pytest.approx(
            row["serial_wall_s"] / row["wall_s"]
        )
        assert row["guidance_devices"] in (1, 2) and row["auto_guidance_devices"] in (1, 2)
        assert row["batched_cost_ratio"] > 0 and row["max_abs_dev"] >= 0
        assert (row["bytes_per_round"] > 0) == (row["devices"] > 1)
        expected_setting = ", guidance_devices=2" if row["guidance_devices"] == 2 else ""
        assert row["setting"].endswith(expected_setting)


def test_unguided_synthetic_rows(tmp_path: Path) -> None:
    """One branch: the rows of before, nothing split, the ideal in rows."""
    rows, _ = run_benchmark(tmp_path, "--branches", "1")
    check_rows(rows)
    assert [r["sampler"] for r in rows] == [
        "serial",
        "serial_reduced",
        "aggressive",
        "conservative",
        "srds",
        "srds",
        "paradigms",
        "chords",
    ]
    assert [r["setting"] for r in rows[4:6]] == [
        "SRDS(tol=0.001, pipelined=False)",
        "SRDS(tol=0.001)",
    ]
    assert {r["guidance_devices"] for r in rows} == {1}
    assert {r["batched_cost_ratio"] for r in rows} == {1.0}  # a row is its one branch
    assert rows[1]["rounds"] == 4  # step reduction to aggressive's latency: 1 + ceil(5 / 2)
    aggressive = rows[2]
    assert (aggressive["devices"], aggressive["rounds"]) == (2, 1 + 3)  # 1 + ceil(5 / 2)
    assert aggressive["speedup_ideal"] == pytest.approx(6 / 4)
    chords = rows[-1]  # 2 cores starting at 0 and 3: 6 - 3 + 1 rounds, 4 + 3 evaluations
    assert (chords["setting"], chords["rounds"], chords["evaluations"]) == ("Chords(cores=2)", 4, 7)


def test_guided_synthetic_has_branch_split_rows_and_the_cost_ratio(tmp_path: Path) -> None:
    """Two branches (the default): serial split on 2 processes, and each parallel sampler with
    its branches together and split (every one of them has a round of one row at 6 steps, so
    the split needs fewer passes); the ratio is in every row and printed."""
    rows, printed = run_benchmark(tmp_path)
    check_rows(rows)
    layout = [(r["sampler"], r["devices"], r["guidance_devices"]) for r in rows]
    parallel = ["aggressive", "conservative", "srds", "srds", "paradigms", "chords"]
    assert layout == [
        ("serial", 1, 1),
        ("serial_reduced", 1, 1),
        ("serial", 2, 2),
        *[(name, 2, gd) for name in parallel for gd in (1, 2)],
    ]
    assert {r["branches"] for r in rows} == {2}
    (ratio,) = {r["batched_cost_ratio"] for r in rows}
    assert ratio > 0
    assert re.search(rf"costs {ratio:.3f} x one branch", printed)
    assert re.search(r"auto would choose [12] for serial and [12] for aggressive", printed)
    assert "serial with the branches split on 2 processes: speedup" in printed
    serial, split = rows[0], rows[2]
    assert (split["rounds"], split["passes"], serial["passes"]) == (6, 6, 12)
    assert split["speedup_ideal"] == pytest.approx(2.0)  # one pass a step instead of two
    assert split["setting"] == "Serial(), guidance_devices=2"
    assert split["max_abs_dev"] < 1e-3  # exact up to float rounding of the batch composition
    aggressive, aggressive_split = rows[3], rows[4]
    # rounds of 1, 2, 2, 1 rows: 2 passes each together; 1, 2, 2, 1 split (K G / 2 units each)
    assert aggressive["evaluations"] == 6
    assert (aggressive["passes"], aggressive_split["passes"]) == (8, 6)
    # a process receives the other's one unit (together: a guided row; split: a branch row)
    assert aggressive["bytes_per_round"] == split["bytes_per_round"] == 4 * 32 * 32 * 4
