"""benchmarks/rounds.py writes the documented JSON and its numbers follow the closed forms."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import rounds
from driffusion.core import chords_evaluations, chords_rounds, default_starts, parse_sampler

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
        "chords",
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
        if row["sampler"] == "chords":  # k cores; the fastest or the second to finish
            starts = default_starts(k, n)
            assert row["rounds"] == chords_rounds(starts, n, sampler.index)
            assert row["evaluations"] == chords_evaluations(starts, n, row["rounds"])
            assert row["width"] == k and row["max_abs_dev"] > 0
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
    chords = [r for r in rows if r["sampler"] == "chords"]
    assert {r["solver"] for r in chords} == {"ddim", "dpmpp_2m", "dpmpp_3m"}
    for row in chords:  # k cores at the default start list, the index-th to finish
        starts = default_starts(row["k"], row["steps"])
        assert row["rounds"] == chords_rounds(starts, row["steps"], row["index"])
        assert row["evaluations"] == chords_evaluations(starts, row["steps"], row["rounds"])
    fastest = {(r["k"], r["steps"], r["index"]): r["rounds"] for r in chords}
    assert fastest[4, 50, 1] == 17 and fastest[4, 50, 2] == 28


def test_compare_benchmark_quick(tmp_path: Path) -> None:
    from benchmarks import compare

    out = tmp_path / "c.json"
    args = ["--models", "oracle", "--quick", "--ref-points", "200", "--workers", "1"]
    results = compare.main([*args, "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    rows, best = saved["oracle"]["rows"], saved["oracle"]["best"]
    assert {r["family"] for r in rows} == set(compare.FAMILIES)
    for row in rows:
        sampler = parse_sampler(row["setting"])
        assert repr(sampler) == row["setting"]
        d = row["devices"]
        if row["family"] == "serial":
            assert d == 1 and row["rounds"] == row["latency"] == row["steps"]
        else:  # every parallel sampler gets its devices' rows a round: drafts, window, cores
            assert row["latency"] == row["rounds"] if row["width"] <= d else row["latency"] > 0
        if row["family"] == "chords":  # d cores: the default list or an evenly spaced one
            n = row["steps"]
            starts = sampler.starts or default_starts(d, n)
            assert len(starts) == d and sampler.index < d
            assert row["rounds"] == chords_rounds(starts, n, sampler.index)
    assert {(e["devices"], e["budget"]) for e in best} == {
        (d, b) for d in (2, 4) for b in compare.BUDGETS
    }
    for entry in best:  # the least error among the family's rows within the budget
        family, d, budget = entry["family"], entry["devices"], entry["budget"]
        within = [
            r
            for r in rows
            if r["family"] == family
            and (r["devices"] == 1 if family == "serial" else 2 <= r["devices"] <= d)
            and r["latency"] <= budget
        ]
        if not within:
            assert entry["best"] is None
            continue
        assert entry["best"]["err_ref"] == min(r["err_ref"] for r in within)
        assert entry["best"]["latency"] <= budget
    assert compare.arithmetic_starts(4, 50, 2) == (0, 10, 20, 30)
    assert compare.arithmetic_starts(2, 50, 3) == (0, 12)
    assert compare.arithmetic_starts(8, 10, 2) is None
    table = compare.summary_rows(best)
    assert len(table) == 2 * len(compare.BUDGETS) and set(compare.FAMILIES) <= table[0].keys()
