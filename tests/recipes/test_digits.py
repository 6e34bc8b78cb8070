"""The main job, recipes/digits.py: its report, grid and PNGs on 1 process, its choice of a
configuration for a round budget, and 2 processes under `fabric run` (also with a user's sampler
file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from driffusion.models.digits import (
    NUM_CLASSES,
)
from tests.support import ROOT, fabric_run, run_script

# every test runs recipes/digits.py in a process of its own or under `fabric run`
pytestmark = pytest.mark.processes


def check_outputs(out: Path, samplers: list[str], steps: int, devices: int) -> list[dict]:
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    keys = {"sampler", "devices", "steps", "rounds", "wall_s", "speedup", "max_abs_dev"}
    keys |= {"err_ref", "accuracy", "fid", "setting"}
    assert [r["sampler"] for r in rows] == samplers
    for row in rows:
        assert keys <= row.keys()
        assert 0 < row["err_ref"] < 0.5  # every sampler lands near the reference solution
        if row["sampler"].startswith("serial@"):  # the same solver at the same latency
            assert row["devices"] == 1 and row["rounds"] == row["steps"] < steps
        else:
            assert row["steps"] == steps
    assert rows[0]["max_abs_dev"] == 0.0 and rows[0]["rounds"] == steps
    parallel = [r for r in rows[1:] if not r["sampler"].startswith("serial")]
    assert {r["devices"] for r in parallel} == {devices}
    assert "dpmpp_2m" in rows[0]["setting"] and report["solver"] == "dpmpp_2m"
    assert "rank 0" in report["serial_spread"]
    grid = Image.open(out / "grid.png")
    assert grid.height >= 16 * 4 * len(samplers)
    png = Image.open(out / samplers[-1] / "digit7_seed700.png")  # the name holds its seed
    assert png.text["digit"] == "7" and png.text["seed"] == "700"
    assert png.text["sampler"] == rows[-1]["setting"]
    assert len(list((out / samplers[-1]).glob("*.png"))) == NUM_CLASSES
    assert not list(out.rglob("*.tmp"))
    return rows


def test_main_job_on_one_process(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "recipes" / "digits.py"), "--accelerator", "cpu"]
    cmd += ["--steps", "8", "--n-per-class", "1"]
    cmd += ["--sampler", "serial", "--sampler", "aggressive", "--sampler", "srds"]
    cmd += ["--reference-points", "60"]
    result = run_script([*cmd, "--out", str(tmp_path)], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    rows = check_outputs(tmp_path, ["serial", "aggressive", "srds"], 8, devices=1)
    assert rows[1]["rounds"] == 1 + 7  # one device: drafts=1, the serial sampler itself
    assert rows[1]["max_abs_dev"] == 0.0
    assert all(r["fid"] >= 0 for r in rows)
    assert "| sampler | devices |" in result.stdout


def test_main_job_picks_a_configuration_for_a_round_budget(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "recipes" / "digits.py"), "--accelerator", "cpu"]
    cmd += ["--rounds", "6", "--n-per-class", "1", "--no-fid", "--reference-points", "60"]
    result = run_script([*cmd, "--out", str(tmp_path)], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    calibration = report["calibration"]
    # one device: only serial configurations fit, one per solver, each within 6 rounds
    assert {c["sampler"] for c in calibration["candidates"]} == {"serial"}
    assert all(c["rounds"] <= 6 for c in calibration["candidates"])
    best = calibration["best"]
    assert best["err_ref"] == min(c["err_ref"] for c in calibration["candidates"])
    assert [r["sampler"] for r in report["rows"]] == ["serial", "best_serial"]
    assert f"chose serial {best['solver']}" in result.stdout
    cached = json.loads((tmp_path / "calibration.json").read_text())
    assert cached["settings"]["rounds"] == 6 and cached["calibration"] == calibration


def test_main_job_on_two_processes(tmp_path: Path) -> None:
    cmd = fabric_run(2)
    cmd += [str(ROOT / "recipes" / "digits.py"), "--steps", "8", "--n-per-class", "1"]
    cmd += ["--sampler", "serial", "--sampler", "aggressive", "--sampler", "conservative"]
    cmd += ["--sampler", "chords(starts=(0, 2))", "--no-fid", "--out", str(tmp_path)]
    # one draft per process, asked for: over 8 steps the default would be 1 (measured safe)
    cmd += ["--reference-points", "60", "--drafts", "2"]
    result = run_script(cmd, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "note: aggressive: as asked, outside the measured safe region" in result.stdout
    samplers = ["serial", "aggressive", "serial@5", "conservative", "serial@6", "chords"]
    samplers.append("serial@7")
    rows = check_outputs(tmp_path, samplers, 8, devices=2)
    assert rows[1]["rounds"] == 1 + 4  # 1 + ceil(7 / 2)
    assert rows[3]["rounds"] == 2 * (8 // 3) + min(8 % 3, 2)
    assert rows[1]["max_abs_dev"] > 0
    # CHORDS: one core per process (the start list sets the cores), 8 - 2 + 1 rounds
    assert rows[5]["setting"] == "Chords(starts=(0, 2), solver='dpmpp_2m')"
    assert rows[5]["rounds"] == 7 and rows[5]["max_abs_dev"] > 0


def test_a_user_sampler_file_runs_through_the_main_job_on_two_processes(tmp_path: Path) -> None:
    """`--sampler path/to/file.py:NAME` under `fabric run --devices 2`: in the report by label."""
    example = ROOT / "docs" / "examples" / "custom_sampler.py"
    cmd = fabric_run(2)
    cmd += [str(ROOT / "recipes" / "digits.py"), "--steps", "20", "--n-per-class", "1"]
    cmd += ["--sampler", f"{example}:DRAFT_TWICE", "--no-fid", "--reference-points", "60"]
    result = run_script([*cmd, "--out", str(tmp_path)], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert [r["sampler"] for r in rows][:2] == ["serial", "draft_twice"]
    mine = rows[1]
    assert mine["setting"] == "DraftTwice(drafts=4)" and mine["devices"] == 2
    assert mine["rounds"] == 3 * 5  # 3 rounds per block of 4 steps
    assert mine["max_abs_dev"] > 0 and mine["err_ref"] < 0.5
    assert "| draft_twice | 2 | 1 | 20 | 15 |" in result.stdout  # guidance_devices 1
    png = Image.open(tmp_path / "draft_twice" / "digit0_seed0.png")
    assert png.text["sampler"] == "DraftTwice(drafts=4)"


def test_the_main_job_says_whether_srds_and_paradigms_help(tmp_path: Path) -> None:
    """SRDS at its defaults takes no more rounds than serial on 2 processes, and the report says,
    per parallel sampler and from its own numbers, whether it saves rounds and whether it beats
    serial at equal rounds."""
    cmd = fabric_run(2)
    cmd += [str(ROOT / "recipes" / "digits.py"), "--steps", "8", "--n-per-class", "1"]
    cmd += ["--sampler", "serial", "--sampler", "srds"]
    cmd += ["--sampler", "paradigms(rule='paper', tol=0.1)", "--no-fid", "--out", str(tmp_path)]
    cmd += ["--reference-points", "60"]
    result = run_script(cmd, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {r["sampler"]: r for r in report["rows"]}
    serial, srds, paradigms = rows["serial"], rows["srds"], rows["paradigms"]
    assert srds["rounds"] <= serial["rounds"] == 8
    verdicts = {line.split(" ", 1)[0]: line for line in report["verdicts"]}
    assert set(verdicts) == {"srds", "paradigms"}  # one line per parallel sampler
    for name, row in (("srds", srds), ("paradigms", paradigms)):
        line = verdicts[name]
        assert line in result.stdout
        if row["rounds"] >= serial["rounds"]:
            assert "saves no rounds" in line
            continue
        same = rows[f"serial@{row['rounds']}"]
        helps = row["err_ref"] <= same["err_ref"]
        assert ("it helps" in line) == helps
        assert ("further from the solution" in line) == (not helps)
    assert paradigms["rounds"] < serial["rounds"]  # the authors' rule saves rounds here


def test_the_guidance_branches_split_over_two_processes(tmp_path: Path) -> None:
    """`--guidance-devices 2`: the serial baseline keeps a row's branches on one device, then
    serial runs again with them split (the exact split); every other run splits too; the split
    serial sample is the baseline's up to float rounding, with the same rounds."""
    cmd = fabric_run(2)
    cmd += [str(ROOT / "recipes" / "digits.py"), "--steps", "8", "--n-per-class", "1"]
    cmd += ["--sampler", "serial", "--sampler", "aggressive", "--drafts", "2"]
    cmd += ["--guidance-devices", "2", "--no-fid", "--reference-points", "60"]
    result = run_script([*cmd, "--out", str(tmp_path)], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {row["sampler"]: row for row in report["rows"]}
    assert list(rows) == ["serial", "serial_split", "aggressive", "serial@5"]
    serial, split = rows["serial"], rows["serial_split"]
    assert (serial["devices"], serial["guidance_devices"]) == (1, 1)
    assert (split["devices"], split["guidance_devices"]) == (2, 2)
    assert split["rounds"] == serial["rounds"] == 8
    assert split["max_abs_dev"] <= 1e-4  # a row of a B batch against one of 2B: rounding
    assert split["err_ref"] == pytest.approx(serial["err_ref"], rel=1e-3)
    assert split["bytes_per_image"] > 0  # one latent of the other branch, every round
    assert split["bytes_per_round"] == 16 * 16 * 4 * 10  # a 1x16x16 float32 latent x batch
    assert rows["aggressive"]["guidance_devices"] == rows["serial@5"]["guidance_devices"] == 2
    assert not any(line.startswith("serial") for line in report["verdicts"])
    assert json.loads((tmp_path / "manifest.json").read_text())["guidance_devices"] == 2
