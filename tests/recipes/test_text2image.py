"""The SD2.1 / SDXL / SD3 recipes (their job: driffusion.recipes.text2image) on tiny random
models built in code: end to end on 1 and 2 processes, copied alone into another folder, a
configuration for a round budget, clean failures, flag checks, and a run that keeps its work
(Ctrl-C, then a resume equal to an uninterrupted run); in-process: no PNG when decoding fails,
refused Fabric precision, scheduler swaps, resume only under the same settings, errors before
the model loads."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from PIL import Image

from driffusion.adapters.diffusers import (
    NonFiniteImageError,
)
from driffusion.adapters.tiny import build_tiny_pipeline
from driffusion.lightning import cli
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
    cmd += ["--solver", "dpmpp_2m", "--drafts", "2"]  # asked for: over 5 steps the default is 1
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
        (["--prompts-file", "{tmp}/gap.txt"], "gap.txt: line 2 is empty"),
        (["--prompts-file", "{tmp}/blank.txt"], "blank.txt: line 3 is empty"),
        (["--seed", str(2**64 - 1), "--prompt", "b"], f"seeds go up to {2**64}, above the largest"),
        (["--scheduler", "LCMScheduler"], "invalid choice: 'LCMScheduler'"),
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
    (tmp_path / "gap.txt").write_text("a\n\nb\n")
    (tmp_path / "blank.txt").write_text("a\nb\n \t\nc")
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


def test_fabric_precision_is_refused_not_ignored(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from driffusion.recipes import text2image

    monkeypatch.setenv("LT_CLI_USED", "1")
    monkeypatch.setenv("LT_PRECISION", "bf16-mixed")
    with pytest.raises(SystemExit) as raised:
        cli.exit_on_usage_error(lambda: text2image.main("sd21", ["--tiny", "--prompt", "a"]))
    assert raised.value.code == 2
    assert "--precision fp16" in capsys.readouterr().err


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


def test_prompt_ids_follow_the_lines_of_the_prompts_file(tmp_path: Path) -> None:
    from driffusion.recipes import text2image

    (tmp_path / "prompts.txt").write_text(" a cat \r\nb\n")  # one final newline is no line
    argv = ["--prompt", "first", "--prompts-file", str(tmp_path / "prompts.txt")]
    args = text2image.parse_args(text2image.FAMILIES["sd21"], argv)
    assert args.prompts == ["first", "a cat", "b"]
    last = ["--prompt", "a", "--seed", str(2**64 - 1)]  # the largest seed torch takes
    assert text2image.parse_args(text2image.FAMILIES["sd21"], last).seed == 2**64 - 1


@pytest.mark.parametrize(
    ("family", "argv", "message"),
    [
        ("sd3", ["--height", "520"], "--height must be a multiple of 16 for sd3, got 520"),
        ("sdxl", ["--width", "36"], "--width must be a multiple of 8 for sdxl, got 36"),
    ],
)
def test_a_size_the_family_cannot_take_is_an_argument_error(
    capsys: pytest.CaptureFixture[str], family: str, argv: list[str], message: str
) -> None:
    from driffusion.recipes import text2image

    with pytest.raises(SystemExit) as raised:
        text2image.parse_args(text2image.FAMILIES[family], ["--prompt", "a", *argv])
    assert raised.value.code == 2 and message in capsys.readouterr().err


def fail_if_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    from driffusion.recipes import text2image

    def load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(text2image, "load_family_pipeline", load)


def recipe_error(family: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What the recipe's entry point prints for a usage error (asserting exit status 2)."""
    from driffusion.recipes import text2image

    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        cli.exit_on_usage_error(lambda: text2image.main(family, [*argv, "--accelerator", "cpu"]))
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--scheduler", "LCMScheduler"],
            "'LCMScheduler' (choose from 'DDIMScheduler', 'DDPMScheduler'",
        ),
        (["--out", "{tmp}/file"], "error: --out {tmp}/file is a file, not a folder\n"),
    ],
)
def test_errors_a_user_can_fix_come_before_the_model_loads(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    (tmp_path / "file").write_text("")
    fail_if_loaded(monkeypatch)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    err = recipe_error("sd21", ["--tiny", "--prompt", "a", *argv], capsys)
    assert message.replace("{tmp}", str(tmp_path)) in err


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file of ``folder``: (inode, mtime, size), to tell kept files from rewritten ones."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def test_a_rerun_continues_only_under_the_same_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun keeps every finished image and redoes only the missing or broken ones; more
    prompts appended continue the folder; other prompts are refused (the folder untouched) or,
    with --new-out, go to out-2."""
    from driffusion.recipes import text2image

    out = tmp_path / "out"
    prompts = [f"a red cat {k}" for k in range(4)]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    same = ["--tiny", "--steps", "4", "--batch-size", "2", "--accelerator", "cpu"]
    argv = [*same, "--prompts-file", str(tmp_path / "prompts.txt")]
    rows = text2image.main("sdxl", [*argv, "--out", str(out)])
    assert [row["prompt"] for row in rows] == prompts
    first = snapshot(out)
    assert {f"{k:05d}.{ext}" for k in range(4) for ext in ("png", "json")} < first.keys()
    originals = {k: (out / f"0000{k}.png").read_bytes() for k in (1, 2)}

    broken = out / "00002.png"
    broken.write_bytes(broken.read_bytes()[:40])  # a crash mid-write elsewhere: does not decode
    (out / "00001.json").unlink()  # a PNG without its record is no finished image either
    text2image.main("sdxl", [*argv, "--out", str(out)])
    again = snapshot(out)
    rewritten = {name for name in first if again[name] != first[name]}
    assert rewritten == {"00001.png", "00001.json", "00002.png", "00002.json"} | {
        "report.json",
        "grid.png",
    }
    report = json.loads((out / "report.json").read_text())
    assert (report["reused"], report["generated"], report["complete"]) == (2, 2, True)
    for k, original in originals.items():  # redone in their whole batches: the same bytes
        assert (out / f"0000{k}.png").read_bytes() == original

    capsys.readouterr()
    text2image.main("sdxl", [*argv, "--out", str(out)])  # the same settings: everything kept
    assert "4 of 4 image(s) already in" in capsys.readouterr().out
    kept = snapshot(out)
    assert {k: v for k, v in kept.items() if k.startswith("0")} == {
        k: v for k, v in again.items() if k.startswith("0")
    }
    assert json.loads((out / "report.json").read_text())["generated"] == 0

    (tmp_path / "other.txt").write_text("a blue dog\na green bird\n")
    other = [*same, "--prompts-file", str(tmp_path / "other.txt")]
    fail_if_loaded(monkeypatch)
    err = recipe_error("sdxl", [*other, "--out", str(out)], capsys)
    assert err.startswith("error: ") and err.count("\n") == 1  # one line
    assert "prompts[0]: folder has 'a red cat 0', this run 'a blue dog'" in err
    assert snapshot(out) == kept  # left as it was
    monkeypatch.undo()

    rows = text2image.main("sdxl", [*other, "--out", str(out), "--new-out"])
    assert [row["prompt"] for row in rows] == ["a blue dog", "a green bird"]
    assert sorted(p.name for p in (tmp_path / "out-2").glob("*.png")) == [
        "00000.png",
        "00001.png",
        "grid.png",
    ]
    assert snapshot(out) == kept

    (tmp_path / "prompts.txt").write_text("\n".join([*prompts, "a yellow fish"]) + "\n")
    rows = text2image.main("sdxl", [*argv, "--out", str(out)])  # a prompt appended: continues
    assert [row["prompt"] for row in rows] == [*prompts, "a yellow fish"]
    report = json.loads((out / "report.json").read_text())
    assert (report["reused"], report["generated"]) == (4, 1)
    assert {k: v for k, v in snapshot(out).items() if k.startswith("0000") and k < "00004"} == {
        k: v for k, v in kept.items() if k.startswith("0000")
    }


@pytest.mark.processes
def test_ctrl_c_keeps_finished_images_and_the_resume_equals_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """Ctrl-C during a run: the images written before it stay, untouched by the resume, which
    generates only the rest (whole batches); the folder then equals an uninterrupted run's,
    byte for byte."""
    (tmp_path / "prompts.txt").write_text("\n".join(f"a lighthouse {k}" for k in range(16)))
    cmd = [sys.executable, str(ROOT / "recipes" / "sd21.py"), "--tiny", "--steps", "8"]
    cmd += ["--batch-size", "2", "--prompts-file", str(tmp_path / "prompts.txt")]
    cmd += ["--accelerator", "cpu"]
    # the same environment as run_script: thread settings change the last bit of a pixel
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out, whole = tmp_path / "out", tmp_path / "whole"

    def tail(log: IO[str]) -> str:
        log.seek(0)
        return log.read()[-4000:]

    with tempfile.TemporaryFile("w+") as log, tempfile.TemporaryFile("w+") as proc_log:
        # the uninterrupted run, meanwhile
        uninterrupted = subprocess.Popen(
            [*cmd, "--out", str(whole)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        try:
            proc = subprocess.Popen(
                [*cmd, "--out", str(out)],
                stdout=proc_log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                # as in a terminal: a runner started in the background (SIGINT ignored, which
                # children inherit) would otherwise make the Ctrl-C a no-op
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
            try:
                deadline = time.monotonic() + 240
                while len(list(out.glob("*.png"))) < 3:
                    code = proc.poll()
                    assert code is None, f"exited ({code}) before the interrupt:\n{tail(proc_log)}"
                    assert time.monotonic() < deadline, tail(proc_log)
                    time.sleep(0.02)
                proc.send_signal(signal.SIGINT)
                assert proc.wait(timeout=120) != 0, tail(proc_log)
            finally:
                proc.kill()
                proc.wait()
            if uninterrupted.wait(timeout=240) != 0:
                pytest.fail(tail(log))
        finally:
            uninterrupted.kill()
            uninterrupted.wait()
    kept = {name: v for name, v in snapshot(out).items() if name.endswith(".png")}
    kept.pop("grid.png", None)  # (none: the grid comes at the end)
    assert 3 <= len(kept) < 16, sorted(kept)
    report = json.loads((out / "report.json").read_text())  # written on the way out
    assert report["complete"] is False
    assert {f"{row['id']}.png" for row in report["images"] if row["complete"]} <= kept.keys()

    resumed = run_script([*cmd, "--out", str(out)], timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert f"{len(kept)} of 16 image(s) already in {out}, kept" in resumed.stdout
    report = json.loads((out / "report.json").read_text())
    assert (report["reused"], report["generated"]) == (len(kept), 16 - len(kept))
    assert report["complete"] is True and all(row["complete"] for row in report["images"])
    after = snapshot(out)
    assert {name: after[name] for name in kept} == kept  # not recomputed, not rewritten
    names = sorted(p.name for p in whole.glob("0*.png"))
    assert names == [f"{k:05d}.png" for k in range(16)]
    assert sorted(p.name for p in out.glob("0*.png")) == names
    for name in names:
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert not list(out.glob(".*.tmp")) and not (out / ".lock").exists()


def test_the_report_says_which_configuration_ran_and_why(tmp_path: Path) -> None:
    from driffusion.recipes import text2image

    argv = ["--tiny", "--prompt", "a lighthouse", "--steps", "6", "--accelerator", "cpu"]
    text2image.main("sd21", [*argv, "--out", str(tmp_path / "default")])
    report = json.loads((tmp_path / "default" / "report.json").read_text())
    assert report["configuration"]["sampler"] == report["images"][0]["sampler"]
    assert report["configuration"]["rows"] == 1
    assert report["configuration"]["why"] == "1 row(s) per round on 1 device(s) of each draft group"
    text2image.main("sd21", [*argv, "--drafts", "3", "--out", str(tmp_path / "asked")])
    why = json.loads((tmp_path / "asked" / "report.json").read_text())["configuration"]["why"]
    assert why.startswith("as asked, outside the measured safe region: Aggressive(drafts=3")


def test_devices_beyond_the_safe_drafts_become_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    from driffusion.adapters.diffusers import FAMILIES
    from driffusion.core import safe_drafts
    from driffusion.recipes import text2image

    monkeypatch.setenv("WORLD_SIZE", "4")  # as on a rank of a 4-process launch
    short = text2image.parse_args(FAMILIES["sdxl"], ["--tiny", "--prompt", "a", "--steps", "20"])
    text2image.spare_devices_as_replicas(short)
    assert safe_drafts("aggressive", 20, 4) == 2
    assert short.draft_devices == 2 and "2 draft group(s) of 2" in short.spare_note
    asked = ["--tiny", "--prompt", "a", "--steps", "20", "--drafts", "4"]
    explicit = text2image.parse_args(FAMILIES["sdxl"], asked)
    text2image.spare_devices_as_replicas(explicit)  # drafts asked for: one group of 4
    assert explicit.draft_devices is None


@pytest.mark.processes
def test_flux_recipe_with_drafts_gives_the_same_image_on_one_and_two_processes(
    tmp_path: Path,
) -> None:
    """`recipes/flux.py --tiny --sampler 'aggressive(drafts=2)'` writes a PNG with its settings;
    under `fabric run --devices 2` (a draft a process) the image is the one process's."""
    cmd = [str(ROOT / "recipes" / "flux.py"), "--tiny", "--prompt", "a lighthouse"]
    cmd += ["--sampler", "aggressive(drafts=2)", "--steps", "8", "--max-sequence-length", "16"]
    one = run_script([sys.executable, *cmd, "--out", str(tmp_path / "one")], timeout=300)
    assert one.returncode == 0, one.stdout[-4000:]
    two = run_script([*fabric_run(2), *cmd, "--out", str(tmp_path / "two")], timeout=300)
    assert two.returncode == 0, two.stdout[-4000:]
    images = [np.asarray(Image.open(tmp_path / run / "00000.png")) for run in ("one", "two")]
    assert images[0].shape == (32, 32, 3)
    assert int(np.abs(images[0].astype(int) - images[1].astype(int)).max()) <= 1
    reports = [json.loads((tmp_path / run / "report.json").read_text()) for run in ("one", "two")]
    rows = [report["images"][0] for report in reports]
    assert [row["devices"] for row in rows] == [1, 2]
    assert rows[0]["rounds"] == rows[1]["rounds"] == 1 + math.ceil((8 - 1) / 2)
    assert rows[0]["sampler"] == rows[1]["sampler"]
    assert Image.open(tmp_path / "one" / "00000.png").text["max_sequence_length"] == "16"


@pytest.mark.processes
def test_wan_recipe_writes_an_mp4_and_its_contact_sheet_alike_on_one_and_two_processes(
    tmp_path: Path,
) -> None:
    """`recipes/wan.py --tiny --frames 9` writes `<id>.mp4` (9 frames, the settings in its
    metadata) and the contact sheet `<id>.png`; under `fabric run --devices 2` with the same
    drafts the frames are the one process's."""
    from driffusion.io.video import mp4_frames, mp4_metadata

    cmd = [str(ROOT / "recipes" / "wan.py"), "--tiny", "--prompt", "a cat surfing"]
    cmd += ["--frames", "9", "--fps", "8", "--steps", "8", "--max-sequence-length", "16"]
    cmd += ["--sampler", "aggressive(drafts=2)", "--negative-prompt", "blurry"]
    one = run_script([sys.executable, *cmd, "--out", str(tmp_path / "one")], timeout=300)
    assert one.returncode == 0, one.stdout[-4000:]
    two = run_script([*fabric_run(2), *cmd, "--out", str(tmp_path / "two")], timeout=300)
    assert two.returncode == 0, two.stdout[-4000:]
    videos = [mp4_frames(tmp_path / run / "00000.mp4") for run in ("one", "two")]
    assert videos[0].shape == (9, 3, 32, 32)
    assert float((videos[0] - videos[1]).abs().max()) <= 2 / 255
    meta = mp4_metadata(tmp_path / "one" / "00000.mp4")
    assert meta is not None and meta["prompt"] == "a cat surfing" and meta["num_frames"] == 9
    assert meta["fps"] == 8 and meta["sampler"].startswith("Aggressive(drafts=2")
    sheet = Image.open(tmp_path / "one" / "00000.png")
    assert sheet.text["num_frames"] == "9" and sheet.width > 8 * 32  # 8 frames a row
    rows = [
        json.loads((tmp_path / r / "report.json").read_text())["images"][0] for r in ("one", "two")
    ]
    assert [row["devices"] for row in rows] == [1, 2] and rows[0]["video"] == "00000.mp4"
    assert rows[0]["rounds"] == rows[1]["rounds"] == 1 + math.ceil((8 - 1) / 2)
