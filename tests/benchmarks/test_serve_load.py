"""benchmarks/serve_load.py, small: both layouts on 2 processes, every request answered once with
the image its seed determines, a row per layout and concurrency."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, run_script

pytestmark = pytest.mark.processes  # it starts the server under `fabric run --devices 2`


def test_both_layouts_answer_every_request_with_its_image(tmp_path: Path) -> None:
    out = tmp_path / "serve_load.json"
    script = str(ROOT / "benchmarks" / "serve_load.py")
    small = ["--requests", "4", "--concurrency", "1", "2", "--steps", "6"]
    result = run_script([sys.executable, script, *small, "--json", str(out)], timeout=400)
    assert result.returncode == 0, result.stdout[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["layout"], r["concurrency"]) for r in rows] == [
        ("one draft group (1 x 2)", 1),
        ("one draft group (1 x 2)", 2),
        ("replicas (2 x 1)", 1),
        ("replicas (2 x 1)", 2),
    ]
    for row in rows:
        assert (row["errors"], row["exact"]) == (0, 4)
        assert row["max_level_diff"] <= 1
        assert row["throughput_rps"] > 0 and 0 < row["p50_s"] <= row["p95_s"]
    group, replicas = rows[0], rows[2]
    assert group["rounds"] == 4 and group["sampler"] == "Aggressive(drafts=2, solver='dpmpp_2m')"
    assert replicas["rounds"] == 6
    assert rows[3]["replicas_used"] == [0, 1]  # two clients: both replicas took requests
    assert "| layout | concurrency |" in result.stdout
