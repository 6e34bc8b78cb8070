"""benchmarks/compare.py --quick on the oracle: rows, each family's best within a budget, the
evenly spaced CHORDS lists and the summary table."""

from __future__ import annotations

import json
from pathlib import Path

from driffusion.core import chords_rounds, default_starts, parse_sampler


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
