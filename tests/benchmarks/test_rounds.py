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
