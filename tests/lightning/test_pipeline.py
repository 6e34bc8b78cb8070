"""`parallelize(pipe)`: called like the pipeline, the pipeline's scheduler is the solver, and the
serial sampler reproduces `pipe(...)` with the same generator."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

import driffusion
from driffusion.adapters.families import pipeline_family
from driffusion.adapters.schedulers import UnsupportedSchedulerError
from driffusion.adapters.tiny import build_tiny_pipeline, tiny_inputs
from driffusion.core import Aggressive, Chords, Conservative, Serial
from driffusion.lightning.pipeline import parallelize
from tests.support import SCRIPTS, fabric_run, run_script


def sd15_pndm() -> object:
    """SD 1.5's scheduler: PNDM (PLMS with skip_prk_steps), leading spacing, steps_offset 1."""
    pipe = build_tiny_pipeline("sd21")
    pipe.scheduler = PNDMScheduler.from_config(
        pipe.scheduler.config, skip_prk_steps=True, steps_offset=1, timestep_spacing="leading"
    )
    return pipe


def sd3_dpmpp_flow_sigmas() -> object:
    """A multistep solver over flow sigmas on a flow model (Wan's set-up, flow_shift 5); with
    DPM-Solver++ rather than Wan's UniPC so that CHORDS runs too (UniPC's corrector refuses it;
    UniPC over flow sigmas is checked against its step loop in tests/adapters)."""
    pipe = build_tiny_pipeline("sd3")
    pipe.scheduler = DPMSolverMultistepScheduler(
        use_flow_sigmas=True, flow_shift=5.0, prediction_type="flow_prediction"
    )
    return pipe


def wan_flow_euler() -> object:
    """Wan 2.1 with diffusers' test scheduler, FlowMatchEuler with shift 7 (CHORDS runs)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = build_tiny_pipeline("wan")
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    return pipe


def wan_expand_timesteps() -> object:
    """Wan 2.2 TI2V's set-up: the transformer takes one time per latent token."""
    pipe = build_tiny_pipeline("wan")
    pipe.register_to_config(expand_timesteps=True)
    return pipe


def sdxl_dpmpp_karras() -> object:
    pipe = build_tiny_pipeline("sdxl")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, use_karras_sigmas=True
    )
    return pipe


PIPELINES = {
    "sd15-pndm": sd15_pndm,
    "sd21-ddim-v": lambda: build_tiny_pipeline("sd21", prediction_type="v_prediction"),
    "sdxl-euler": lambda: build_tiny_pipeline("sdxl"),
    "sdxl-dpmpp-karras": sdxl_dpmpp_karras,
    "sd3-flow": lambda: build_tiny_pipeline("sd3"),
    "sd35-flow": lambda: build_tiny_pipeline("sd35"),
    "sd35-skip-layer-guidance": lambda: build_tiny_pipeline("sd35"),
    "sd3-dpmpp-flow-sigmas": sd3_dpmpp_flow_sigmas,
    "flux-dev": lambda: build_tiny_pipeline("flux"),
    "flux-schnell": lambda: build_tiny_pipeline("flux_schnell"),
    "flux-true-cfg": lambda: build_tiny_pipeline("flux"),
    "sdxl-img2img": lambda: build_tiny_pipeline("sdxl_img2img"),
    "sdxl-controlnet": lambda: build_tiny_pipeline("sdxl_controlnet"),
    "sdxl-controlnet-window": lambda: build_tiny_pipeline("sdxl_controlnet"),
    "flux-img2img": lambda: build_tiny_pipeline("flux_img2img"),
    "flux-img2img-resized": lambda: build_tiny_pipeline("flux_img2img"),
    "wan-unipc-flow": lambda: build_tiny_pipeline("wan"),
    "wan-flow-euler": wan_flow_euler,
    "wan22-experts": lambda: build_tiny_pipeline("wan22"),
    "wan-expand-timesteps": wan_expand_timesteps,
    "hunyuan-video": lambda: build_tiny_pipeline("hunyuan_video"),
    "hunyuan-video-true-cfg": lambda: build_tiny_pipeline("hunyuan_video"),
    "cogvideox": lambda: build_tiny_pipeline("cogvideox"),
    "cogvideox-dynamic-cfg": lambda: build_tiny_pipeline("cogvideox"),
}
CALL = {"num_inference_steps": 6, "guidance_scale": 3.0, "height": 32, "width": 32}
EXTRA = {  # a family's own keywords of the call, honoured as the pipeline honours them
    "sd35-skip-layer-guidance": {"skip_guidance_layers": [1], "skip_layer_guidance_stop": 0.6},
    "flux-dev": {"max_sequence_length": 16},
    "flux-schnell": {"max_sequence_length": 16},
    "flux-true-cfg": {"max_sequence_length": 16, "negative_prompt": "blurry", "true_cfg_scale": 2},
    "sdxl-img2img": {**tiny_inputs("sdxl_img2img"), "height": None, "width": None},
    "sdxl-controlnet": tiny_inputs("sdxl_controlnet"),
    "sdxl-controlnet-window": {
        **tiny_inputs("sdxl_controlnet"),
        "control_guidance_start": 0.3,
        "control_guidance_end": 0.7,
        "controlnet_conditioning_scale": 0.5,
    },
    "flux-img2img": {**tiny_inputs("flux_img2img"), "max_sequence_length": 16},
    "flux-img2img-resized": {  # FLUX resizes the image to the call's size, unlike SDXL
        **tiny_inputs("flux_img2img"),
        "max_sequence_length": 16,
        "height": 48,
        "width": 40,
        "strength": 0.8,
    },
    "wan-unipc-flow": {**tiny_inputs("wan"), "negative_prompt": "blurry"},
    "wan-flow-euler": tiny_inputs("wan"),
    "wan22-experts": {**tiny_inputs("wan22"), "guidance_scale_2": 1.5},
    "wan-expand-timesteps": tiny_inputs("wan"),
    "hunyuan-video": {**tiny_inputs("hunyuan_video"), "max_sequence_length": 16},
    "hunyuan-video-true-cfg": {
        **tiny_inputs("hunyuan_video"),
        "max_sequence_length": 16,
        "negative_prompt": "blurry",
        "true_cfg_scale": 2.0,
    },
    # CogVideoX's trailing DDIM grid needs a step count dividing 1000 (6 is a clear error)
    "cogvideox": {
        **tiny_inputs("cogvideox"),
        "negative_prompt": "blurry",
        "num_inference_steps": 10,
    },
    "cogvideox-dynamic-cfg": {
        **tiny_inputs("cogvideox"),
        "use_dynamic_cfg": True,
        "num_inference_steps": 10,
    },
}
UNIPC = {
    "wan-unipc-flow",
    "wan22-experts",
    "wan-expand-timesteps",
}  # CHORDS refuses UniPC's corrector, by name
CASE: dict[int, str] = {}  # id(pipe) -> its PIPELINES name


def generate(pipe, output_type: str, sampler=None, seed: int = 0, **extra):  # type: ignore[no-untyped-def]
    """``pipe()``'s images (video: frames) without a sampler, else the parallel call's output
    (``.images`` is its images or frames, as the pipeline names them)."""
    kwargs = {**CALL, **EXTRA.get(CASE.get(id(pipe), ""), {}), **extra, "output_type": output_type}
    kwargs = {name: value for name, value in kwargs.items() if value is not None}  # None: unset
    prompts = ["a red cat", "two dogs"]
    generator = torch.Generator().manual_seed(seed)
    output = pipeline_family(pipe).output
    if sampler is None:
        return getattr(pipe(prompts, generator=generator, **kwargs), output)
    out = parallelize(pipe, sampler)(prompts, generator=generator, **kwargs)
    return dataclasses.replace(out, images=getattr(out, output))


@pytest.fixture(scope="module", params=list(PIPELINES))
def pipe(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    built = PIPELINES[request.param]()
    CASE[id(built)] = request.param
    return built


def test_serial_reproduces_the_pipeline(pipe) -> None:  # type: ignore[no-untyped-def]
    reference = generate(pipe, "latent").float()
    ours = generate(pipe, "latent", Serial())
    scale = float(reference.abs().max())
    assert float((ours.images - reference).abs().max()) <= 1e-4 * scale  # latents, 1e-4 relative
    pixels = np.abs(generate(pipe, "np", Serial()).images - generate(pipe, "np"))
    assert float(pixels.max()) <= 2 / 255
    kept = int(6 * EXTRA.get(CASE[id(pipe)], {}).get("strength", 1))  # img2img: the last steps
    assert ours.stats["rounds"] == ours.stats["evaluations"] >= kept
    assert ours.stats["scheduler"] == type(pipe.scheduler).__name__


def test_one_draft_is_the_serial_sampler_bit_for_bit(pipe) -> None:  # type: ignore[no-untyped-def]
    serial = generate(pipe, "latent", Serial()).images
    for sampler in (Aggressive(drafts=1), Conservative(drafts=1)):
        assert torch.equal(generate(pipe, "latent", sampler).images, serial)
    if CASE[id(pipe)] in UNIPC:
        with pytest.raises(ValueError, match="CHORDS cannot run over unipc"):
            generate(pipe, "latent", Chords(cores=1))
    else:
        assert torch.equal(generate(pipe, "latent", Chords(cores=1)).images, serial)
        cores = generate(pipe, "latent", Chords(starts=(0, 3)))  # over the pipeline's scheduler
        assert cores.stats["rounds"] < cores.stats["steps"]
        assert cores.stats["sampler"].startswith("Chords(starts=(0, 3), solver=")
    fast = generate(pipe, "latent", Aggressive(drafts=3))
    steps = generate(pipe, "latent", Serial()).stats["rounds"]  # N (img2img: the kept steps)
    assert fast.stats["rounds"] == 1 + math.ceil((steps - 1) / 3)
    assert fast.stats["rows"] == 3 and fast.stats["devices"] == 1


def test_outputs_as_the_pipeline_returns_them() -> None:
    pipe = build_tiny_pipeline("sd21")
    ppipe = parallelize(pipe, Serial())
    pil = ppipe("a red cat", generator=torch.Generator().manual_seed(0), **CALL).images
    assert len(pil) == 1 and pil[0].size == (32, 32)
    pt = ppipe(["a", "b"], num_images_per_prompt=2, output_type="pt", **CALL).images
    assert pt.shape == (4, 3, 32, 32) and float(pt.min()) >= 0 and float(pt.max()) <= 1
    default = ppipe("a red cat", num_inference_steps=2, output_type="pt").images
    expected = pipe.unet.config.sample_size * pipe.vae_scale_factor  # the model's own size
    assert default.shape[-2:] == (expected, expected)
    with pytest.raises(ValueError, match="output_type"):
        ppipe("a", output_type="jpeg")
    assert driffusion.parallelize is parallelize


def test_unsupported_scheduler_and_pipeline_are_clear_errors() -> None:
    pipe = build_tiny_pipeline("sd21")
    pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(UnsupportedSchedulerError, match="DDIMScheduler"):
        parallelize(pipe, Serial())("a red cat", **CALL)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, solver_type="bh1")
    with pytest.raises(UnsupportedSchedulerError, match="bh1"):
        parallelize(pipe, Serial())("a red cat", **CALL)
    with pytest.raises(ValueError, match="unsupported pipeline"):
        parallelize(object())


@pytest.mark.processes
def test_the_users_script_spreads_over_fabric_run_unchanged(tmp_path: Path) -> None:
    script = [str(SCRIPTS / "user_pipeline.py")]
    one = run_script([sys.executable, *script, str(tmp_path / "one.pt")], timeout=300)
    assert one.returncode == 0, one.stdout[-4000:]
    two = run_script([*fabric_run(2), *script, str(tmp_path / "two.pt")], timeout=300)
    assert two.returncode == 0, two.stdout[-4000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (a["stats"]["devices"], b["stats"]["devices"]) == (1, 2)
    assert a["stats"]["rounds"] == b["stats"]["rounds"] == 4
    torch.testing.assert_close(b["latents"], a["latents"], rtol=0, atol=1e-5)


def test_the_default_takes_no_more_drafts_than_are_safe_over_the_steps_and_says_why() -> None:
    from driffusion.core import safe_drafts

    pipe = build_tiny_pipeline("sdxl")
    ppipe = parallelize(pipe, progress=False)  # default: aggressive, max(2, devices) drafts
    prompts, generator = ["a red cat"], torch.Generator().manual_seed(0)
    short = ppipe(prompts, generator=generator, **{**CALL, "output_type": "latent"})
    assert safe_drafts("aggressive", 6, 2) == 1  # measured: 2 drafts over 6 steps ruin it
    assert short.stats["rows"] == 1 and short.stats["sampler"].startswith("Aggressive(drafts=1")
    assert short.stats["configuration"].startswith("1 draft rather than 2: over 6 steps")
    assert "err_ref" in short.stats["configuration"]  # with the measured numbers
    assert safe_drafts("aggressive", 20, 2) == 2
    long = ppipe(prompts, generator=generator, **{**CALL, "num_inference_steps": 20})
    assert long.stats["rows"] == 2 and long.stats["configuration"] is None
    labelled = parallelize(pipe, "aggressive", progress=False)  # a label: rows at each call
    assert labelled(prompts, **{**CALL, "output_type": "latent"}).stats["rows"] == 1


def test_drafts_chosen_outside_the_measured_region_run_with_a_warning_giving_the_error() -> None:
    pipe = build_tiny_pipeline("sdxl")
    ppipe = parallelize(pipe, Aggressive(drafts=3), progress=False)
    with pytest.warns(UserWarning, match=r"drafts more than the 1 draft measured safe.*err_ref"):
        out = ppipe(["a red cat"], **{**CALL, "output_type": "latent"})
    assert out.stats["rows"] == 3  # as asked
    assert "measured safe" in out.stats["configuration"]


@pytest.mark.processes
def test_the_guidance_branches_split_over_fabric_run_reproduce_the_pipeline(
    tmp_path: Path,
) -> None:
    """`parallelize(pipe, Serial(), guidance_devices=2)` under `fabric run --devices 2` is
    `pipe()` (2/255 in pixels), for tiny SDXL, SD3, FLUX with true CFG, Wan 2.2 (frames; two
    experts), SDXL img2img, SDXL ControlNet, FLUX img2img, SD3.5 with skip-layer guidance (three
    branches over two devices), HunyuanVideo with true CFG and CogVideoX; drafts give the same
    images with the branches split as together, and the split gathers raw branches (more bytes
    per round) and the same as one process. Guidance-distilled FLUX with 2 drafts over 2
    processes is the 1-process run."""
    from tests.scripts.guidance_pipeline import run

    script = [str(SCRIPTS / "guidance_pipeline.py"), str(tmp_path / "out.pt")]
    result = run_script([*fabric_run(2), *script], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    saved = torch.load(tmp_path / "out.pt", weights_only=False)
    families = ("sdxl", "sd3", "flux", "wan22", "sdxl_img2img", "sdxl_controlnet")
    families += ("flux_img2img", "sd35", "hunyuan_video", "cogvideox")
    for family in families:
        reference, runs = saved[family]["pipe"], saved[family]["parallel"]
        for devices in (1, 2):
            serial = runs["serial", devices]
            assert float(np.abs(serial["images"] - reference).max()) <= 2 / 255
            assert serial["stats"]["guidance_devices"] == devices
            assert serial["stats"]["devices"] == 2
        drafts = [runs["aggressive", devices] for devices in (1, 2)]
        assert float(np.abs(drafts[0]["images"] - drafts[1]["images"]).max()) <= 2 / 255
        alone = run(family, Aggressive(drafts=2))  # the same drafts in one process
        assert alone["stats"]["devices"] == 1
        assert float(np.abs(alone["images"] - drafts[0]["images"]).max()) <= 2 / 255
        kept = runs["serial", 1]["stats"]["rounds"]  # the steps (img2img: those kept)
        assert drafts[0]["stats"]["rounds"] == drafts[1]["stats"]["rounds"]
        assert drafts[0]["stats"]["rounds"] == 1 + math.ceil((kept - 1) / 2)
        bytes_per_round = [d["stats"]["bytes_per_round"] for d in drafts]
        assert 0 < bytes_per_round[0] < bytes_per_round[1]
    distilled = saved["flux-distilled"]
    alone = parallelize(build_tiny_pipeline("flux"), Aggressive(drafts=2), progress=False)(
        ["a lighthouse", "a red cat"],
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
        **{**CALL, "max_sequence_length": 16},
    )
    assert (distilled["stats"]["devices"], alone.stats["devices"]) == (2, 1)
    assert distilled["stats"]["guidance_devices"] == 1  # no branches to split
    assert distilled["stats"]["rounds"] == alone.stats["rounds"] == 4
    torch.testing.assert_close(distilled["latents"], alone.images, rtol=0, atol=1e-5)


def test_guidance_devices_and_compile_are_checked_before_any_compute() -> None:
    from driffusion.adapters.diffusers import PipelineInputError, PipelineInputTypeError

    pipe = build_tiny_pipeline("sdxl")
    with pytest.raises(PipelineInputError, match="guidance_devices must be 1, 2 or 'auto'"):
        parallelize(pipe, guidance_devices=3)
    with pytest.raises(PipelineInputTypeError, match="compile must be True or False"):
        parallelize(pipe, compile="yes")
    out = parallelize(pipe, Serial(), guidance_devices=2, progress=False)(
        ["a red cat"], generator=torch.Generator().manual_seed(0), **CALL, output_type="latent"
    )
    # one process: nothing to split, nothing gathered
    assert (out.stats["guidance_devices"], out.stats["bytes_per_round"]) == (1, 0)


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_a_pipeline_with_a_lora_loaded_samples_with_it(tmp_path: Path, family: str) -> None:
    """A LoRA made and saved in code, loaded with `load_lora_weights`: serial through
    `parallelize` is `pipe()` with the LoRA (it changes the sample), and one draft is serial."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    trained = build_tiny_pipeline(family)
    denoiser = trained.transformer if family == "flux" else trained.unet
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    config = LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)
    denoiser.add_adapter(config)  # random A and B: the LoRA changes the network
    layers = get_peft_model_state_dict(denoiser)
    name = "transformer_lora_layers" if family == "flux" else "unet_lora_layers"
    type(trained).save_lora_weights(tmp_path, **{name: layers})

    pipe = build_tiny_pipeline(family)
    CASE[id(pipe)] = {"flux": "flux-dev"}.get(family, family)
    without = generate(pipe, "latent", Serial()).images
    pipe.load_lora_weights(tmp_path)
    reference = generate(pipe, "latent").float()
    ours = generate(pipe, "latent", Serial()).images
    scale = float(reference.abs().max())
    assert float((ours - reference).abs().max()) <= 1e-4 * scale
    assert float((without - reference).abs().max()) > 1e-2 * scale  # the LoRA is in the sample
    assert torch.equal(generate(pipe, "latent", Aggressive(drafts=1)).images, ours)


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"image": None}, "image is required"),
        ({"strength": 0.0}, r"strength must be in \(0, 1\]"),
        ({"strength": "high"}, "strength must be a number"),
        ({"strength": 0.1}, "keeps no step of 6"),
        ({"height": 64}, r"height is the image's \(32\) in img2img, got 64"),
        ({"latents": torch.zeros(2, 4, 16, 16)}, "latents: StableDiffusionXLImg2ImgPipeline"),
    ],
)
def test_img2img_inputs_are_checked_before_any_compute(
    change: dict, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driffusion.adapters.diffusers import PipelineInputError

    pipe = build_tiny_pipeline("sdxl_img2img")
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a, **k: pytest.fail("computed"))
    call = {**CALL, "height": None, "width": None, **tiny_inputs("sdxl_img2img"), **change}
    call = {name: value for name, value in call.items() if value is not None or name == "image"}
    with pytest.raises(PipelineInputError, match=text):
        parallelize(pipe, Serial(), progress=False)(["a", "b"], **call)


def test_the_controlnet_runs_at_every_rows_own_state_and_step() -> None:
    """The ControlNet is in the sample (scale 0 differs), a window of steps switches it per row's
    own step (differs from both, and equals `pipe()` with the same window), and drafted rows,
    each at its own time, give the rounds of 3 drafts."""
    pipe = build_tiny_pipeline("sdxl_controlnet")
    CASE[id(pipe)] = "sdxl-controlnet"
    serial = generate(pipe, "latent", Serial()).images
    off = generate(pipe, "latent", Serial(), controlnet_conditioning_scale=0.0).images
    window = generate(pipe, "latent", Serial(), control_guidance_end=0.5).images
    scale = float(serial.abs().max())
    assert float((serial - off).abs().max()) > 1e-2 * scale  # the ControlNet is in the sample
    assert float((window - serial).abs().max()) > 1e-3 * scale
    assert float((window - off).abs().max()) > 1e-3 * scale
    drafted = generate(pipe, "latent", Aggressive(drafts=3))
    assert drafted.stats["rounds"] == 1 + math.ceil((6 - 1) / 3)
    reference = generate(pipe, "latent", control_guidance_end=0.5).float()  # pipe() itself
    assert float((window - reference).abs().max()) <= 1e-4 * float(reference.abs().max())
