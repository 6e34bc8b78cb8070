"""benchmarks/rounds.py writes the documented JSON and its numbers follow the closed forms."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import rounds
from driffusion.core import parse_sampler

KEYS = {"sampler", "steps", "k", "rounds", "evaluations", "speedup_ideal", "max_abs_dev", "rel_dev"}
KEYS |= {"width", "setting"}


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
        "picard_driffusion",
        "serial_reduced",
    }
    for row in rows:
        assert row.keys() >= KEYS
        sampler = parse_sampler(row["setting"])  # the label is the sampler, as text
        assert repr(sampler) == row["setting"]
        pipelined = getattr(sampler, "pipelined", False)
        assert row["sampler"] == sampler.name + "_pipelined" * pipelined
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
    exact = [r for r in rows if r["sampler"] in ("srds", "srds_pipelined", "paradigms")]
    assert all(r["rel_dev"] < 1e-3 for r in exact)  # they converge to the serial sample


def test_frontier_benchmark_quick(tmp_path: Path) -> None:
    from benchmarks import frontier

    args = [
        "--models",
        "oracle",
        "--quick",
        "--ref-points",
        "200",
        "--json",
        str(tmp_path / "f.json"),
    ]
    results = frontier.main([*args, "--plot", str(tmp_path / "f.png")])
    assert (tmp_path / "f.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved == json.loads(json.dumps(results))
    oracle = saved["oracle"]
    # the reference is checked by a second solver, far below the errors compared
    checks = oracle["reference"]
    assert checks["diff_unipc3_same_grid"] < 1e-4 and checks["diff_dpmpp_3m_half_points"] < 1e-4
    rows = oracle["rows"]
    keys = {"model", "sampler", "solver", "steps", "k", "rounds", "evaluations", "err_ref"}
    assert all(keys | {"rel_dev"} <= row.keys() for row in rows)
    assert min(r["err_ref"] for r in rows) > 100 * checks["diff_unipc3_same_grid"]
    serial = {(r["solver"], r["steps"]): r for r in rows if r["sampler"] == "serial"}
    assert {s for s, _ in serial} == {"ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "plms"}
    assert all(r["rel_dev"] == 0.0 for r in serial.values())
    for solver in ("ddim", "dpmpp_2m"):  # more steps, closer to the solution
        assert serial[solver, 50]["err_ref"] < serial[solver, 14]["err_ref"]
    samplers = {(r["sampler"], r["solver"]) for r in rows}
    for name in ("aggressive", "conservative", "picard_driffusion", "paradigms"):
        assert {(name, "ddim"), (name, "dpmpp_2m")} <= samplers
    aggressive = next(
        r
        for r in rows
        if (r["sampler"], r["solver"], r["steps"], r["k"]) == ("aggressive", "dpmpp_2m", 50, 4)
    )
    assert aggressive["rounds"] == 14 and aggressive["evaluations"] == 50
    assert aggressive["rel_dev"] > 0 and aggressive["err_ref"] < serial["dpmpp_2m", 14]["err_ref"]
    assert [s["rounds"] for s in oracle["summary"]] == [8, 14, 26]
