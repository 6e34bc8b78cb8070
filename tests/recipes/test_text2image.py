"""The diffusers adapter and the SD2.1 / SDXL / SD3 recipes on tiny random models built in code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from driffusion.adapters.diffusers import (
    ModelNotAvailableError,
    adapt_pipeline,
    load_pipeline,
)
from driffusion.adapters.schedulers import schedule_from_scheduler
from driffusion.adapters.tiny import build_tiny_pipeline
from driffusion.core import (
    SAMPLERS,
    RowwiseModel,
    initial_noise,
    sample_driffusion,
    sample_serial,
)
from tests.support import ROOT, fabric_run, run_script

CASES = [("sd21", "epsilon"), ("sd21", "v_prediction"), ("sdxl", "epsilon"), ("sd3", "epsilon")]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def tiny(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    family, prediction = request.param
    pipe = build_tiny_pipeline(family, prediction_type=prediction)
    adapter = adapt_pipeline(pipe, 6, height=32, width=32, guidance=3.0)
    prompts, negative = ["a red cat", "two dogs"], ["blurry", ""]
    cond = adapter.encode(prompts, negative)
    x = initial_noise([11, 12], adapter.latent_shape)
    return pipe, adapter, prompts, negative, cond, x


def test_schedule_is_read_from_the_scheduler(tiny) -> None:  # type: ignore[no-untyped-def]
    pipe, adapter = tiny[0], tiny[1]
    expected = "flow" if adapter.family == "sd3" else pipe.scheduler.config.prediction_type
    assert adapter.schedule.prediction_type == expected
    assert adapter.schedule.num_steps == 6
    assert getattr(pipe.scheduler, "num_inference_steps", None) is None  # a copy was stepped


def test_serial_through_the_adapter_reproduces_the_pipeline(tiny) -> None:  # type: ignore[no-untyped-def]
    pipe, adapter, prompts, negative, cond, x = tiny
    with torch.no_grad():
        ours = sample_serial(RowwiseModel(adapter.network, cond), x, adapter.schedule).x
        reference = pipe(
            prompts,
            negative_prompt=negative,
            num_inference_steps=6,
            guidance_scale=3.0,
            height=32,
            width=32,
            latents=x.clone(),
            output_type="latent",
        ).images
    scale = float(reference.abs().max())
    torch.testing.assert_close(ours, reference.float(), rtol=0, atol=1e-5 * max(1.0, scale))


@pytest.mark.parametrize("mode", ["aggressive", "conservative"])
def test_one_draft_equals_serial_through_the_adapter(tiny, mode: str) -> None:  # type: ignore[no-untyped-def]
    _, adapter, _, _, cond, x = tiny
    model = RowwiseModel(adapter.network, cond)
    with torch.no_grad():
        serial = sample_serial(model, x, adapter.schedule).x
        drafted = sample_driffusion(model, x, adapter.schedule, drafts=1, mode=mode).x  # type: ignore[arg-type]
        parallel = SAMPLERS[mode](drafts=3)(model, x, adapter.schedule)  # type: ignore[call-arg]
    assert torch.equal(drafted, serial)
    assert parallel.stats.evaluations == 6 and not torch.equal(parallel.x, serial)


def test_guidance_is_one_batched_call(tiny) -> None:  # type: ignore[no-untyped-def]
    _, adapter, _, _, cond, x = tiny
    calls: list[int] = []
    inner = adapter.network.unet if adapter.family != "sd3" else adapter.network.transformer
    handle = inner.register_forward_hook(lambda m, args, out: calls.append(1))
    try:
        with torch.no_grad():
            adapter.network(x, torch.full((2,), 500.0), **cond)
    finally:
        handle.remove()
    assert calls == [1]


def test_decode_gives_images(tiny) -> None:  # type: ignore[no-untyped-def]
    _, adapter, _, _, _, x = tiny
    images = adapter.decode(x)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert float(images.abs().max()) <= 1.0


def test_schedule_from_scheduler_rejects_bad_steps() -> None:
    pipe = build_tiny_pipeline("sd21")
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        schedule_from_scheduler(pipe.scheduler, 0)
    with pytest.raises(ValueError, match="multiple of 2, got 33"):
        adapt_pipeline(pipe, 4, height=33, width=32, guidance=1.0)


def test_missing_model_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="--model /path/to/folder"):
        load_pipeline("sdxl", "stabilityai/stable-diffusion-xl-base-1.0")


def test_save_pretrained_round_trip_loads_through_the_real_path(tmp_path: Path) -> None:
    pipe = build_tiny_pipeline("sd21")
    pipe.save_pretrained(tmp_path / "tiny-sd21")
    loaded = load_pipeline("sd21", str(tmp_path / "tiny-sd21"))
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    for a, b in zip(pipe.unet.parameters(), loaded.unet.parameters(), strict=True):
        assert torch.equal(a, b)


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


def test_recipe_without_weights_fails_cleanly(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "recipes" / "sd3.py"), "--prompt", "a cat"]
    cmd += ["--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    result = run_script(cmd, timeout=120)
    assert result.returncode == 2
    assert "could not load the sd3 model" in result.stdout and "--tiny" in result.stdout
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "out").exists()


def test_single_device_benchmark_smoke(tmp_path: Path) -> None:
    from benchmarks import single_device

    args = ["--random-weights", "--device", "cpu", "--reduced", "--steps", "4", "--drafts", "2"]
    rows = single_device.main([*args, "--repeats", "1", "--json", str(tmp_path / "s.json")])
    assert {r["model"] for r in rows} == {"sd21", "sdxl", "sd3"}
    for row in rows:
        assert row["s_per_image"] > 0 and row["steps"] == 4
        if row["sampler"] == "aggressive":
            assert row["rounds"] == 1 + 2  # 1 + ceil(3 / 2)
    assert json.loads((tmp_path / "s.json").read_text()) == rows


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
        assert a.text["drafts"] == b.text["drafts"] == "2"
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
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    sys.path.insert(0, str(ROOT / "recipes"))
    import text2image

    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    prompt = [] if "--prompts-file" in argv else ["--prompt", "a"]
    with pytest.raises(SystemExit) as raised:
        text2image.parse_args(text2image.FAMILIES["sd3"], ["--tiny", *prompt, *argv])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err
