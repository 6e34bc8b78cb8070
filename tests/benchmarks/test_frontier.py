"""benchmarks/frontier.py --quick on the oracle: the checked reference, serial curves, parallel rows
and CHORDS rows that follow the closed forms, the summary, and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from driffusion.core import chords_evaluations, chords_rounds, parse_sampler
from driffusion.core.samplers.chords import resolve_starts
from driffusion.core.samplers.registry import builtin_samplers

# frontier.py maps its rows over 2 worker processes (--workers 2, its default)
pytestmark = pytest.mark.processes


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
    keys = {"model", "sampler", "solver", "steps", "rows", "rounds", "evaluations", "err_ref"}
    assert all(keys | {"rel_dev"} <= row.keys() for row in rows)
    assert min(r["err_ref"] for r in rows) > 100 * checks["diff_unipc3_same_grid"]
    serial = {(r["solver"], r["steps"]): r for r in rows if r["sampler"] == "serial"}
    assert {s for s, _ in serial} == {"ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "plms"}
    assert all(r["rel_dev"] == 0.0 for r in serial.values())
    for solver in ("ddim", "dpmpp_2m"):  # more steps, closer to the solution
        assert serial[solver, 50]["err_ref"] < serial[solver, 14]["err_ref"]
    samplers = {(r["sampler"], r["solver"]) for r in rows}
    for name in (c.name for c in builtin_samplers() if c.parallel):  # every registered one
        assert {(name, "ddim"), (name, "dpmpp_2m")} <= samplers
    for row in rows:  # the setting is the sampler's label, and N
        label, steps = row["setting"].rsplit(", N=", 1)
        sampler = parse_sampler(label)
        assert int(steps) == row["steps"] and repr(sampler) == label
        assert row["rows"] == (sampler.rows or 1)
    paper = [r for r in rows if "rule='paper'" in r["setting"]]  # ParaDiGMS under both rules
    assert paper and all(r["sampler"] == "paradigms" for r in paper)
    aggressive = next(
        r
        for r in rows
        if (r["sampler"], r["solver"], r["steps"], r["rows"]) == ("aggressive", "dpmpp_2m", 50, 4)
    )
    assert aggressive["rounds"] == 14 and aggressive["evaluations"] == 50
    assert aggressive["rel_dev"] > 0 and aggressive["err_ref"] < serial["dpmpp_2m", 14]["err_ref"]
    assert [s["rounds"] for s in oracle["summary"]] == [8, 14, 26]
    chords = [r for r in rows if r["sampler"] == "chords"]
    assert {r["solver"] for r in chords} == {"ddim", "dpmpp_2m"}
    fastest = {}
    for row in chords:  # k cores at their start list, the index-th to finish
        sampler = parse_sampler(row["setting"].rsplit(", N=", 1)[0])
        starts = resolve_starts(sampler.cores, sampler.starts, row["steps"])
        assert row["rounds"] == chords_rounds(starts, row["steps"], sampler.index)
        assert row["evaluations"] == chords_evaluations(starts, row["steps"], row["rounds"])
        if sampler.starts is None:
            fastest[sampler.cores, row["steps"], sampler.index] = row["rounds"]
    assert fastest[4, 50, 1] == 17 and fastest[4, 50, 2] == 28


def test_the_guided_oracle_is_the_oracle_under_guidance() -> None:
    """oracle-guided: the frontier's mixture and start states, two exact branches combined at
    the guidance scale, one label per sample; guidance 1 would be the conditional oracle."""
    import torch

    from benchmarks import frontier

    plain, guided = frontier.oracle_problem(True), frontier.guided_oracle_problem(True)
    assert (plain.branches, guided.branches) == (1, 2) and guided.name == "oracle-guided"
    assert torch.equal(plain.x, guided.x)
    network = guided.model.network
    assert network.guidance == frontier.ORACLE_GUIDANCE > 1
    assert torch.equal(guided.model.cond["label"], torch.arange(len(guided.x)))
    xs, t = plain.x[None], torch.tensor([500])
    with torch.inference_mode():
        unconditional, out = plain.model(xs, t), guided.model(xs, t)
    assert not torch.allclose(out, unconditional)
    assert set(frontier.PROBLEMS) >= {"oracle", "oracle-guided", "digits"}
