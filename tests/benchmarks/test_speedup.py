"""benchmarks/speedup.py under `fabric run --devices 2`: its rows, speedups and round counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import ROOT, fabric_run, run_script

pytestmark = pytest.mark.processes  # the benchmark runs under `fabric run --devices 2`


def test_speedup_benchmark_runs_under_fabric(tmp_path: Path) -> None:
    out = tmp_path / "speedup.json"
    cmd = fabric_run(2)
    script = str(ROOT / "benchmarks" / "speedup.py")
    args = ["--eval-ms", "2", "--steps", "6", "--repeats", "1", "--json", str(out)]
    result = run_script([*cmd, script, *args], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    rows = json.loads(out.read_text())
    keys = {"sampler", "devices", "steps", "rounds", "wall_s", "serial_wall_s", "speedup"}
    keys |= {"speedup_ideal", "efficiency"}
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
    for row in rows:
        assert keys <= row.keys()
        assert row["wall_s"] > 0 and row["speedup"] == pytest.approx(
            row["serial_wall_s"] / row["wall_s"]
        )
    assert rows[1]["rounds"] == 4  # step reduction to aggressive's latency: 1 + ceil(5 / 2)
    aggressive = rows[2]
    assert (aggressive["devices"], aggressive["rounds"]) == (2, 1 + 3)  # 1 + ceil(5 / 2)
    assert aggressive["speedup_ideal"] == pytest.approx(6 / 4)
    chords = rows[-1]  # 2 cores starting at 0 and 3: 6 - 3 + 1 rounds, 4 + 3 evaluations
    assert (chords["setting"], chords["rounds"], chords["evaluations"]) == ("Chords(cores=2)", 4, 7)
