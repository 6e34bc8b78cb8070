"""The SD2.1 / SDXL / SD3 recipes (their job: driffusion.recipes.text2image) on tiny random
models built in code: end to end on 1 and 2 processes, copied alone into another folder, a
configuration for a round budget, clean failures, and flag checks; in-process: no PNG when
decoding fails, refused Fabric precision, scheduler swaps."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from driffusion.adapters.diffusers import (
    NonFiniteImageError,
)
from driffusion.adapters.tiny import build_tiny_pipeline
from tests.support import ROOT, fabric_run, run_script


def check_recipe_outputs(out: Path, prompts: list[str], steps: int, sampler: str) -> dict:
    report = json.loads((out / "report.json").read_text())
    rows = report["images"]
    assert [r["prompt"] for r in rows] == prompts
    for k, row in enumerate(rows):
        image = Image.open(out / f"{row['id']}.png")
        assert image.text["prompt"] == prompts[k] and image.text["seed"] == str(7 + k)
        assert image.text["negative_prompt"] == "ugly" and image.text["steps"] == str(steps)
        assert image.text["sampler"].startswith(sampler) and image.text["guidance"] == "4.0"
        assert row["wall_s"] > 0 and row["evaluations"] == steps
    assert (out / "grid.png").is_file() and not list(out.glob("*.tmp"))
    return report


@pytest.mark.processes
@pytest.mark.parametrize("family", ["sd21", "sdxl", "sd3"])
def test_recipe_end_to_end_tiny(tmp_path: Path, family: str) -> None:
    prompts = ["a red cat", "a blue dog"]
    cmd = [sys.executable, str(ROOT / "recipes" / f"{family}.py"), "--tiny", "--steps", "5"]
    cmd += [
        "--sampler",
        "aggressive",
        "--seed",
        "7",
        "--guidance",
        "4",
        "--negative-prompt",
        "ugly",
    ]
    cmd += ["--prompt", prompts[0], "--prompt", prompts[1], "--out", str(tmp_path)]
    result = run_script([*cmd, "--accelerator", "cpu"], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    report = check_recipe_outputs(tmp_path, prompts, 5, "Aggressive(drafts=1, solver=")
    assert all(row["rounds"] == 5 for row in report["images"])  # one device: drafts = 1


@pytest.mark.processes
def test_sdxl_recipe_on_two_processes(tmp_path: Path) -> None:
    prompts = ["a red cat", "a blue dog", "a green bird"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    cmd = fabric_run(2)
    cmd += [str(ROOT / "recipes" / "sdxl.py"), "--tiny", "--steps", "5", "--seed", "7"]
    cmd += ["--guidance", "4", "--negative-prompt", "ugly", "--sampler", "conservative"]
    cmd += ["--solver", "dpmpp_2m"]
    cmd += ["--prompts-file", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "out")]
    result = run_script(cmd, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    report = check_recipe_outputs(tmp_path / "out", prompts, 5, "Conservative(drafts=2")
    assert all(row["devices"] == 2 for row in report["images"])
    assert all("dpmpp_2m" in row["sampler"] for row in report["images"])
    assert all(row["rounds"] == 2 * (5 // 3) + min(5 % 3, 2) for row in report["images"])


@pytest.mark.processes
def test_recipe_picks_a_configuration_for_a_round_budget(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "recipes" / "sd21.py"), "--tiny", "--rounds", "4"]
    cmd += ["--reference-points", "40", "--prompt", "a red cat", "--out", str(tmp_path)]
    result = run_script([*cmd, "--accelerator", "cpu"], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    calibration = report["calibration"]
    best = calibration["best"]
    assert best["err_ref"] == min(c["err_ref"] for c in calibration["candidates"])
    assert all(c["rounds"] <= 4 for c in calibration["candidates"])
    (image,) = report["images"]
    assert image["steps"] == best["steps"] and image["rounds"] <= 4
    assert best["solver"] in image["sampler"]
    assert "chose serial" in result.stdout  # one device: only serial configurations fit


@pytest.mark.processes
def test_recipe_without_weights_fails_cleanly(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "recipes" / "sd3.py"), "--prompt", "a cat"]
    cmd += ["--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    result = run_script(cmd, timeout=120)
    assert result.returncode == 2
    assert "could not load the sd3 model" in result.stdout and "--tiny" in result.stdout
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.processes
def test_the_same_drafts_give_the_same_image_on_one_and_two_processes(tmp_path: Path) -> None:
    """`fabric run --devices 2 recipes/sdxl.py` splits each round across 2 processes; plain
    `python` batches it on one: at the same drafts the images agree (PNG bytes: exactly)."""
    args = ["--tiny", "--prompt", "a lighthouse", "--prompt", "a red cat", "--steps", "7"]
    args += ["--sampler", "aggressive(drafts=2)"]
    one = run_script(
        [sys.executable, str(ROOT / "recipes" / "sdxl.py"), *args, "--out", str(tmp_path / "one")],
        timeout=300,
    )
    assert one.returncode == 0, one.stdout[-4000:]
    two = run_script(
        [*fabric_run(2), str(ROOT / "recipes" / "sdxl.py"), *args, "--out", str(tmp_path / "two")],
        timeout=300,
    )
    assert two.returncode == 0, two.stdout[-4000:]
    for name in ("00000.png", "00001.png"):
        a, b = Image.open(tmp_path / "one" / name), Image.open(tmp_path / "two" / name)
        assert a.text["rows"] == b.text["rows"] == "2"
        assert (a.text["devices"], b.text["devices"]) == ("1", "2")
        pixels = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        assert int(pixels.max()) <= 1  # stated tolerance: 1/255 (measured: 0)
    assert "7/7" in one.stdout and "rounds=4" in one.stdout  # progress: a tick per round


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--guidance", "nan"], "--guidance: must be a finite number >= 0, got nan"),
        (["--seed", "-1"], "--seed: must be an integer >= 0, got -1"),
        (["--height", "0"], "--height: must be an integer >= 1, got 0"),
        (["--steps", "0"], "--steps: must be an integer >= 1, got 0"),
        (["--drafts", "0"], "--drafts: must be an integer >= 1, got 0"),
        (["--tol", "inf"], "--tol: must be a finite number >= 0, got inf"),
        (["--prompts-file", "{tmp}"], "is a folder, not a file"),
        (["--prompts-file", "{tmp}/empty.txt"], "holds no prompt"),
        (["--prompts-file", "{tmp}/latin1.txt"], "is not UTF-8 text"),
    ],
)
def test_bad_flags_are_argument_errors_before_anything_loads(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    from driffusion.recipes import text2image

    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    prompt = [] if "--prompts-file" in argv else ["--prompt", "a"]
    with pytest.raises(SystemExit) as raised:
        text2image.parse_args(text2image.FAMILIES["sd3"], ["--tiny", *prompt, *argv])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_the_recipe_writes_no_png_when_decoding_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import driffusion.adapters.tiny as tiny

    def nan_vae(family: str, **kwargs):  # type: ignore[no-untyped-def]
        pipe = build_tiny_pipeline(family, **kwargs)
        original = pipe.vae.decode

        def overflowing(latents, *args, **kw):  # type: ignore[no-untyped-def]
            out = original(latents, *args, **kw)
            out.sample[:, 0, 0, 0] = float("nan")
            return out

        pipe.vae.decode = overflowing
        return pipe

    monkeypatch.setattr(tiny, "build_tiny_pipeline", nan_vae)
    from driffusion.recipes import text2image

    argv = ["--tiny", "--prompt", "a lighthouse", "--steps", "3", "--out", str(tmp_path / "out")]
    with pytest.raises(NonFiniteImageError):
        text2image.main("sdxl", [*argv, "--accelerator", "cpu"])
    assert not list(tmp_path.rglob("*.png"))


def test_fabric_precision_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    from driffusion.recipes import text2image

    monkeypatch.setenv("LT_CLI_USED", "1")
    monkeypatch.setenv("LT_PRECISION", "bf16-mixed")
    with pytest.raises(SystemExit, match="--precision fp16"):
        text2image.main("sd21", ["--tiny", "--prompt", "a"])


def test_the_recipe_swaps_the_scheduler_and_reports_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driffusion.recipes import text2image

    argv = ["--tiny", "--prompt", "a lighthouse", "--steps", "4", "--out", str(tmp_path)]
    argv += ["--scheduler", "DPMSolverMultistepScheduler", "--accelerator", "cpu"]
    rows = text2image.main("sd21", [*argv, "--sampler", "conservative(drafts=2)"])
    assert rows[0]["scheduler"] == "DPMSolverMultistepScheduler"
    assert rows[0]["sampler"].startswith("Conservative(drafts=2, solver=DPMSolverPP(")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["memory"]["draft_state_bytes"] == 2 * 1 * 4 * 16 * 16 * 4  # k B C h w fp32
    with pytest.raises(ValueError, match="not a diffusers scheduler"):
        text2image.main("sd21", [*argv[:-4], "--scheduler", "NoSuchScheduler"])


@pytest.mark.processes
def test_a_recipe_copied_alone_into_an_empty_folder_runs(tmp_path: Path) -> None:
    """`cp recipes/sdxl.py /tmp/x/ && cd /tmp/x && python sdxl.py --tiny --steps 4 --prompt x`:
    the recipe needs only the installed package, not the folder it came from."""
    folder = tmp_path / "x"
    folder.mkdir()
    shutil.copy(ROOT / "recipes" / "sdxl.py", folder / "sdxl.py")
    done = run_script(
        [sys.executable, "sdxl.py", "--tiny", "--steps", "4", "--prompt", "x"],
        timeout=300,
        cwd=folder,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    png = folder / "outputs" / "sdxl" / "00000.png"
    assert Image.open(png).text["prompt"] == "x"
