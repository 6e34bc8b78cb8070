"""benchmarks/compare.py --quick on the oracle: rows, each family's best within a budget, the
evenly spaced CHORDS lists and the summary table."""

from __future__ import annotations

import json
from pathlib import Path

from driffusion.core import chords_rounds, default_starts, parse_sampler, sampler_names
from driffusion.core.samplers.registry import builtin_samplers


def test_compare_benchmark_quick(tmp_path: Path) -> None:
    from benchmarks import compare

    out = tmp_path / "c.json"
    args = ["--models", "oracle", "--quick", "--ref-points", "200", "--workers", "1"]
    results = compare.main([*args, "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    rows, best = saved["oracle"]["rows"], saved["oracle"]["best"]
    parallel = [c.name for c in builtin_samplers() if c.parallel]
    assert {r["family"] for r in rows} == {"serial", *parallel}  # every registered sampler
    assert set(sampler_names()) >= {r["family"] for r in rows}
    for row in rows:
        sampler = parse_sampler(row["setting"])
        assert repr(sampler) == row["setting"]
        d = row["devices"]
        if row["family"] == "serial":
            assert d == 1 and row["rounds"] == row["latency"] == row["steps"]
        else:  # every parallel sampler gets its devices' rows a round: drafts, window, cores
            assert row["rows"] <= d  # every parallel sampler gets its devices' rows a round
            assert row["latency"] == row["rounds"]
        if row["family"] in ("srds", "paradigms", "picard_driffusion"):
            assert sampler.tol == (0.1 if getattr(sampler, "rule", "") == "paper" else 1e-2)
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
    table = compare.summary_rows(best)
    families = compare.families(rows)
    assert families[0] == "serial" and set(families) == {r["family"] for r in rows}
    assert len(table) == 2 * len(compare.BUDGETS) and set(families) <= table[0].keys()
