"""The main job's checks, run in this process (no launch needed): its output folder holds one
configuration (a rerun under other settings is refused before any compute and leaves the folder
as it was, ``--new-out`` keeps both runs, a rerun under the same settings rewrites the same
files), and flags that would fail later fail at parse time."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT

SMALL = ["--accelerator", "cpu", "--n-per-class", "1", "--no-fid", "--reference-points", "20"]
SMALL += ["--sampler", "serial", "--sampler", "aggressive(drafts=2)", "--batch-size", "10"]


def load_digits_recipe() -> Any:
    spec = importlib.util.spec_from_file_location("digits_recipe", ROOT / "recipes" / "digits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def recipe() -> Any:
    return load_digits_recipe()


@pytest.fixture(scope="module")
def first_run(recipe: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "run"
    recipe.main([*SMALL, "--steps", "6", "--out", str(out)])
    return out


def test_a_rerun_under_other_settings_is_refused_and_the_folder_is_unchanged(
    recipe: Any, first_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(first_run)
    assert {"serial", "aggressive", "serial@4"} <= {p.name for p in first_run.iterdir()}
    with pytest.raises(SystemExit) as stop:
        # the script's entry point, as `python recipes/digits.py` runs it
        recipe.cli.exit_on_usage_error(
            lambda: recipe.main([*SMALL, "--steps", "8", "--out", str(first_run)])
        )
    assert stop.value.code == 2
    message = capsys.readouterr().err
    assert "other settings" in message and "steps: folder has 6, this run 8" in message
    assert "Traceback" not in message
    assert snapshot(first_run) == before  # no serial@4 of one run beside another's report


def test_new_out_keeps_both_runs(recipe: Any, first_run: Path) -> None:
    recipe.main([*SMALL, "--steps", "4", "--out", str(first_run), "--new-out"])
    second = first_run.with_name(first_run.name + "-2")
    assert json.loads((second / "manifest.json").read_text())["steps"] == 4
    assert json.loads((first_run / "manifest.json").read_text())["steps"] == 6
    rows = json.loads((second / "report.json").read_text())["rows"]
    assert [r["steps"] for r in rows if r["sampler"] == "serial"] == [4]


def test_a_rerun_under_the_same_settings_rewrites_the_same_files(
    recipe: Any, first_run: Path
) -> None:
    names = set(snapshot(first_run))
    recipe.main([*SMALL, "--steps", "6", "--out", str(first_run)])
    assert set(snapshot(first_run)) == names
    manifest = json.loads((first_run / "manifest.json").read_text())
    assert manifest["samplers"] == [
        "Serial(solver='dpmpp_2m')",
        "Aggressive(drafts=2, solver='dpmpp_2m')",
    ]
    assert manifest["world_size"] == 1


def test_seeds_that_overflow_a_generator_fail_at_parse_time(
    recipe: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from driffusion.lightning.cli import MAX_SEED

    last_ok = MAX_SEED - 100 * 9 - 1  # 2 samples per digit: digit 9's second seed is the last
    assert recipe.parse_args(["--seed", str(last_ok), "--n-per-class", "2"]).seed == last_ok
    with pytest.raises(SystemExit) as stop:
        recipe.parse_args(["--seed", str(last_ok + 1), "--n-per-class", "2"])
    assert stop.value.code == 2
    assert f"seeds go up to {MAX_SEED + 1}" in capsys.readouterr().err


def test_the_report_notes_drafts_outside_the_measured_region(
    recipe: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*SMALL[:-4], "--sampler", "aggressive(drafts=3)", "--steps", "6"]
    recipe.main([*argv, "--out", str(tmp_path)])
    notes = json.loads((tmp_path / "report.json").read_text())["configuration"]
    assert len(notes) == 1 and notes[0].startswith("aggressive: as asked, outside the measured")
    assert "err_ref" in notes[0]
    assert "note: aggressive: as asked" in capsys.readouterr().err  # said before sampling too
