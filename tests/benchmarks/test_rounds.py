"""benchmarks/rounds.py writes the documented JSON and its numbers follow the closed forms."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import rounds
from driffusion.core import chords_evaluations, chords_rounds, parse_sampler, sampler_names
from driffusion.core.samplers.chords import resolve_starts

KEYS = {"sampler", "steps", "rows", "rounds", "evaluations", "speedup_ideal", "max_abs_dev"}
KEYS |= {"rel_dev", "setting"}


def test_rounds_benchmark_json(tmp_path: Path) -> None:
    out = tmp_path / "rounds.json"
    rounds.main(["--steps", "9", "16", "--rows", "2", "3", "--json", str(out), "--batch", "2"])
    rows = json.loads(out.read_text())
    assert {r["sampler"] for r in rows} == set(sampler_names())  # every registered sampler
    for row in rows:
        assert row.keys() >= KEYS
        sampler = parse_sampler(row["setting"])  # the label is the sampler, as text
        assert repr(sampler) == row["setting"]
        assert row["sampler"] == sampler.name
        n = row["steps"]
        assert row["speedup_ideal"] == n / row["rounds"]
        assert row["rounds"] <= n  # no default or configuration is slower than serial
        if row["sampler"] == "serial":
            assert (row["rounds"], row["max_abs_dev"]) == (n, 0.0)
        if row["sampler"] == "chords":  # k cores; the fastest or the second to finish
            starts = resolve_starts(sampler.cores, sampler.starts, n)
            assert row["rounds"] == chords_rounds(starts, n, sampler.index)
            assert row["evaluations"] == chords_evaluations(starts, n, row["rounds"])
            assert row["rows"] == len(starts)
        if row["sampler"] == "aggressive":
            k = sampler.drafts
            assert row["rounds"] == 1 + math.ceil((n - 1) / k)
            assert row["evaluations"] == n and row["rows"] == min(k, n - 1)
            assert row["max_abs_dev"] > 0
        if row["sampler"] == "srds":
            assert row["rows"] <= (sampler.blocks or round(math.sqrt(n)))
    reduced = [parse_sampler(r["setting"]) for r in rows if r["sampler"] == "serial_reduced"]
    assert {s.rounds for s in reduced} >= {1 + math.ceil((16 - 1) / k) for k in (2, 3)}
    srds = [parse_sampler(r["setting"]) for r in rows if r["sampler"] == "srds"]
    assert any(s.blocks is None for s in srds)  # the defaults: sqrt(N) blocks
    converged = [
        r
        for r in rows
        if r["sampler"] in ("srds", "paradigms")
        and getattr(parse_sampler(r["setting"]), "max_iters", None) is None
        and getattr(parse_sampler(r["setting"]), "rule", "sigma") == "sigma"
    ]
    assert converged and all(r["rel_dev"] < 1e-3 for r in converged)  # to the serial sample


def test_srds_at_its_defaults_takes_no_more_rounds_than_serial() -> None:
    """The issue's check: SRDS rows at N in {25, 50, 100} with default settings."""
    rows = rounds.main(["--steps", "25", "50", "100", "--rows", "2", "--batch", "1"])
    srds = [r for r in rows if r["sampler"] == "srds"]
    defaults = [r for r in srds if r["setting"] == "SRDS(tol=0.001)"]
    assert {r["steps"] for r in defaults} == {25, 50, 100}
    assert all(r["rounds"] < r["steps"] for r in defaults)  # it saves rounds
    assert all(r["rel_dev"] < 1e-4 for r in defaults)  # and stays at the serial sample
    assert all(r["rounds"] <= r["steps"] for r in srds)
