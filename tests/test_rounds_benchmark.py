"""benchmarks/rounds.py writes the documented JSON and its numbers follow the closed forms."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import rounds

KEYS = {"sampler", "steps", "k", "rounds", "evaluations", "speedup_ideal", "max_abs_dev", "rel_dev"}


def test_rounds_benchmark_json(tmp_path: Path) -> None:
    out = tmp_path / "rounds.json"
    rounds.main(["--steps", "9", "16", "--k", "2", "3", "--json", str(out), "--batch", "2"])
    rows = json.loads(out.read_text())
    assert {r["sampler"] for r in rows} == {
        "serial",
        "aggressive",
        "conservative",
        "srds",
        "srds_pipelined",
        "paradigms",
        "serial_reduced",
    }
    for row in rows:
        assert row.keys() >= KEYS
        n, k = row["steps"], row["k"]
        assert row["speedup_ideal"] == n / row["rounds"]
        if row["sampler"] == "serial":
            assert (row["rounds"], row["max_abs_dev"]) == (n, 0.0)
        if row["sampler"] == "aggressive":
            assert row["rounds"] == 1 + math.ceil((n - 1) / k)
            assert row["evaluations"] == n
            assert row["max_abs_dev"] > 0
    reduced = [r for r in rows if r["sampler"] == "serial_reduced"]
    assert all(r["rounds"] == 1 + math.ceil((r["steps"] - 1) / r["k"]) for r in reduced)
    assert all(r["max_abs_dev"] > 0 for r in reduced)
    srds_k = {(r["steps"], r["k"]) for r in rows if r["sampler"] == "srds"}
    assert (16, 4) in srds_k  # sqrt(N) blocks are included


def test_frontier_benchmark_quick(tmp_path: Path) -> None:
    from benchmarks import frontier

    args = ["--models", "oracle", "--steps", "10", "--quick", "--json", str(tmp_path / "f.json")]
    rows = frontier.main([*args, "--plot", str(tmp_path / "f.png")])
    assert (tmp_path / "f.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved == json.loads(json.dumps(rows))
    keys = {"sampler", "setting", "steps", "rounds", "evaluations", "rel_dev", "fid", "accuracy"}
    assert all(keys <= row.keys() for row in saved)
    by_line = {row["sampler"] for row in saved}
    assert {
        "serial",
        "serial_reduced",
        "aggressive",
        "conservative",
        "picard_driffusion",
    } <= by_line
    assert {"aggressive_order2", "aggressive_adaptive", "paradigms", "srds_pipelined"} <= by_line
    serial = next(r for r in saved if r["sampler"] == "serial")
    assert (serial["rounds"], serial["rel_dev"]) == (10, 0.0)
