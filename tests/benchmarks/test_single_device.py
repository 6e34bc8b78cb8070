"""benchmarks/single_device.py on random weights: one row per model and sampler, written as JSON."""

from __future__ import annotations

import json
from pathlib import Path


def test_single_device_benchmark_smoke(tmp_path: Path) -> None:
    from benchmarks import single_device

    args = ["--random-weights", "--device", "cpu", "--reduced", "--steps", "4", "--drafts", "2"]
    rows = single_device.main([*args, "--repeats", "1", "--json", str(tmp_path / "s.json")])
    assert {r["model"] for r in rows} == {"sd21", "sdxl", "sd3"}
    for row in rows:
        assert row["s_per_image"] > 0 and row["steps"] == 4
        if row["sampler"] == "aggressive":
            assert row["rounds"] == 1 + 2  # 1 + ceil(3 / 2)
    assert json.loads((tmp_path / "s.json").read_text()) == rows
