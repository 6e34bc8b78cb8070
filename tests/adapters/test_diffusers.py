"""The diffusers adapter on tiny random models built in code (SD2.1, SDXL, SD3): the schedule is
read from the scheduler, serial through the adapter reproduces the pipeline, guidance is one
batched call, decoding (a NaN decode is an error, a force_upcast VAE decodes in float32), and
loading (offline errors, save_pretrained round trip, fp16 variants)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from driffusion.adapters.diffusers import (
    ModelNotAvailableError,
    NonFiniteImageError,
    PipelineInputError,
    PipelineInputTypeError,
    adapt_pipeline,
    image_size,
    load_pipeline,
)
from driffusion.adapters.families import FAMILIES
from driffusion.adapters.schedulers import schedule_from_scheduler
from driffusion.adapters.tiny import build_tiny_pipeline
from driffusion.core import (
    RowwiseModel,
    Serial,
    initial_noise,
    parse_sampler,
    sample_driffusion,
    sample_serial,
)
from driffusion.lightning.pipeline import parallelize

CALL = {"num_inference_steps": 6, "guidance_scale": 3.0, "height": 32, "width": 32}
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
    expected = "flow" if adapter.family.name == "sd3" else pipe.scheduler.config.prediction_type
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
        parallel = parse_sampler(mode, {"rows": 3})(model, x, adapter.schedule)
    assert torch.equal(drafted, serial)
    assert parallel.stats.evaluations == 6 and not torch.equal(parallel.x, serial)


def test_guidance_is_one_batched_call(tiny) -> None:  # type: ignore[no-untyped-def]
    _, adapter, _, _, cond, x = tiny
    calls: list[int] = []
    inner = adapter.network.unet if adapter.family.name != "sd3" else adapter.network.transformer
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


def test_image_size_zero_is_an_error_not_the_default() -> None:
    pipe = build_tiny_pipeline("sd21")
    default = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert image_size(pipe) == (default, default)
    assert image_size(pipe, 32, None) == (32, default)
    with pytest.raises(PipelineInputError, match="height must be a positive multiple of 2, got 0"):
        image_size(pipe, 0, 32)
    with pytest.raises(PipelineInputError, match="width must be a positive multiple of 2, got -4"):
        image_size(pipe, 32, -4)
    with pytest.raises(PipelineInputTypeError, match="width must be an integer"):
        image_size(pipe, 32, "32")  # type: ignore[arg-type]
    assert issubclass(PipelineInputError, ValueError) and issubclass(
        PipelineInputTypeError, TypeError
    )


def test_missing_model_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="--model /path/to/folder"):
        load_pipeline("sdxl", "stabilityai/stable-diffusion-xl-base-1.0")


@pytest.mark.parametrize("family", ["sd21", "flux", "wan22", "hunyuan_video", "cogvideox"])
def test_save_pretrained_round_trip_loads_through_the_real_path(
    tmp_path: Path, family: str
) -> None:
    pipe = build_tiny_pipeline(family)
    pipe.save_pretrained(tmp_path / f"tiny-{family}")
    loaded = load_pipeline(family, str(tmp_path / f"tiny-{family}"))
    assert type(loaded).__name__ == FAMILIES[family].pipeline_class
    assert dict(loaded.config).get("boundary_ratio") == dict(pipe.config).get("boundary_ratio")
    modules = {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
    assert FAMILIES[family].denoiser(pipe) in modules.values()  # Wan 2.2: both experts too
    for name, module in modules.items():
        again = loaded.components[name]
        for a, b in zip(module.parameters(), again.parameters(), strict=True):
            assert torch.equal(a, b), name


def test_half_precision_folders_load_their_fp16_variant(tmp_path: Path) -> None:
    build_tiny_pipeline("sd21").save_pretrained(tmp_path / "tiny", variant="fp16")
    loaded = load_pipeline("sd21", str(tmp_path / "tiny"), torch.float16)
    assert loaded.unet.dtype == torch.float16
    with pytest.raises(ValueError, match="sd3 only"):
        load_pipeline("sd21", str(tmp_path / "tiny"), no_t5=True)


def test_a_nan_decode_is_an_error_and_the_recipe_writes_no_png(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = build_tiny_pipeline("sdxl").to(torch.float16)
    pipe.vae.register_to_config(force_upcast=False)
    original = pipe.vae.decode

    def overflowing(latents, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = original(latents, *args, **kwargs)
        out.sample[0, 0, 0, 0] = float("nan")  # what the real SDXL VAE does in fp16
        return out

    monkeypatch.setattr(pipe.vae, "decode", overflowing)
    with pytest.raises(NonFiniteImageError, match="NaN or inf"):
        parallelize(pipe, Serial())("a lighthouse", **CALL)


def test_a_force_upcast_vae_decodes_in_float32() -> None:
    pipe = build_tiny_pipeline("sdxl").to(torch.float16)
    pipe.vae.register_to_config(force_upcast=True)
    seen: list[torch.dtype] = []
    original = pipe.vae.decode

    def recording(latents, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(latents.dtype)
        return original(latents, *args, **kwargs)

    pipe.vae.decode = recording
    images = parallelize(pipe, Serial(), progress=False)("a", output_type="pt", **CALL).images
    assert seen == [torch.float32] and pipe.vae.dtype == torch.float16  # upcast, then restored
    assert bool(torch.isfinite(images).all())
