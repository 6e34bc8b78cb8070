"""benchmarks/drafts_region.py --quick end to end, in this process: the JSON, the printed tables,
the generated module (it imports, and it holds the JSON's region), and --check on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import drafts_region
from driffusion.core import aggressive_rounds, allowed_drafts, conservative_rounds


def test_drafts_region_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = tmp_path / "region.py"
    common = ["--quick", "--ref-points", "40", "--workers", "1", "--threads", "1"]
    args = [*common, "--json", str(tmp_path / "r.json"), "--module", str(module)]
    result = drafts_region.main(args)
    out = capsys.readouterr().out
    assert "the aggressive default on D devices over N steps" in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved == json.loads(json.dumps(result))
    rows = saved["rows"]
    steps, drafts = drafts_region.QUICK_STEPS, drafts_region.QUICK_DRAFTS
    assert len(rows) == 2 * 2 * 2 * len(steps) * len(drafts)  # models, modes, solvers, N, k
    assert {r["model"] for r in rows} == {"digits", "oracle"}
    for row in rows:
        closed = aggressive_rounds if row["mode"] == "aggressive" else conservative_rounds
        assert row["rounds"] == closed(row["steps"], row["drafts"])
        assert row["err_ref"] > 0
        if row["drafts"] == 1:  # serial itself, measured twice
            assert row["err_ref"] == row["serial_err_ref"]
    for cell in saved["first_unsafe"]:  # where each region ends: k = s(N) + 1, above serial
        line = next(x for x in saved["region"] if x["steps"] == cell["steps"])
        assert cell["drafts"] == line[f"{cell['mode']}_measured"] + 1
        assert cell["err_ref"] > cell["serial_err_ref"]
    # the generated module imports and holds the region the JSON reports
    table = drafts_region.load_module(module)
    source = module.read_text()
    assert source.startswith('"""The measured region') and "GENERATED" in source
    assert steps == table.STEPS and drafts == table.DRAFTS and table.REF_POINTS == 40
    for line in saved["region"]:
        for mode in ("aggressive", "conservative"):
            assert table.LARGEST_SAFE[mode][line["steps"]] == line[f"{mode}_measured"]
            assert line[f"{mode}_rule"] == allowed_drafts(table.LARGEST_SAFE[mode], line["steps"])
    for line in saved["defaults"]:  # what the default picks, and its measured cells
        k = min(line["devices"], allowed_drafts(table.LARGEST_SAFE["aggressive"], line["steps"]))
        assert line["drafts"] == k
        cell = next(
            r
            for r in rows
            if (r["model"], r["mode"], r["solver"], r["steps"], r["drafts"])
            == ("digits", "aggressive", "ddim", line["steps"], k)
        )
        assert line["ddim_err_ref"] == cell["err_ref"]
    # --check: up to date as written; stale once a measured cell is edited by hand
    only_oracle = [*common, "--models", "oracle", "--module", str(module)]
    drafts_region.main([*only_oracle, "--json", str(tmp_path / "o.json")])
    drafts_region.main([*only_oracle, "--check"])
    assert "the generated table is up to date" in capsys.readouterr().out
    text = module.read_text()
    start = '    ("aggressive", "oracle", "ddim", 6, 2, '
    line = next(line for line in text.splitlines() if line.startswith(start))
    fields = line.strip().rstrip("),").split(", ")
    fields[6] = repr(float(fields[6]) * 1.01)  # err_ref, 1% off
    module.write_text(text.replace(line, "    " + ", ".join(fields) + "),"))
    with pytest.raises(SystemExit) as stale:
        drafts_region.main([*only_oracle, "--check"])
    assert stale.value.code == 1
    assert "stale cell(s)" in capsys.readouterr().out
