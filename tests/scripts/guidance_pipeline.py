"""A diffusers user's script splitting the guidance branches (`guidance_devices=2`); run under
`fabric run --devices 2`: tiny SDXL, SD3, FLUX with true CFG (two branches), Wan 2.2 (two
experts, each with its scale), SDXL img2img, SDXL ControlNet, FLUX img2img with true CFG,
SD3.5 with skip-layer guidance (three branches), HunyuanVideo with true CFG and CogVideoX,
`pipe()` itself
and `parallelize(pipe, Serial(), guidance_devices=2)` with the same generator; and
guidance-distilled FLUX (one branch: drafts are its only axis) with 2 drafts over the two
processes; saved for tests/lightning/test_pipeline.py, which runs the same drafts in one
process (``run``) to compare."""

import sys

import numpy as np
import torch

import driffusion
from driffusion.adapters.families import pipeline_family
from driffusion.adapters.tiny import build_tiny_pipeline, tiny_inputs
from driffusion.core import Aggressive, Serial

CALL = {"num_inference_steps": 6, "guidance_scale": 3.0, "height": 32, "width": 32}
PROMPTS = ["a lighthouse", "a red cat"]
TRUE_CFG = {"negative_prompt": "blurry", "true_cfg_scale": 2.0, "max_sequence_length": 16}
EXTRA = {
    "sdxl": {},
    "sd3": {},
    "flux": TRUE_CFG,
    "wan22": {**tiny_inputs("wan22"), "guidance_scale_2": 1.5, "max_sequence_length": 16},
    "sdxl_img2img": tiny_inputs("sdxl_img2img"),  # the 32 x 32 image: the call's size
    "sdxl_controlnet": tiny_inputs("sdxl_controlnet"),
    "flux_img2img": {**tiny_inputs("flux_img2img"), **TRUE_CFG},
    "sd35": {"skip_guidance_layers": [1], "skip_layer_guidance_stop": 0.6},  # three branches
    "hunyuan_video": {**tiny_inputs("hunyuan_video"), **TRUE_CFG},
    "cogvideox": {**tiny_inputs("cogvideox"), "num_inference_steps": 10},
}


def run(family: str, sampler: object, guidance_devices: int = 1) -> dict:
    """One call of the tiny ``family`` through ``parallelize``: its images (or frames) as an
    array and its stats (on the devices of the run: 1 in a plain process)."""
    pipe = build_tiny_pipeline(family)
    ppipe = driffusion.parallelize(pipe, sampler, guidance_devices=guidance_devices, progress=False)
    out = ppipe(
        PROMPTS,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
        **{**CALL, **EXTRA[family]},
    )
    return {"images": np.asarray(getattr(out, pipeline_family(pipe).output)), "stats": out.stats}


def main(path: str) -> None:
    results = {}
    for family, extra in EXTRA.items():
        pipe = build_tiny_pipeline(family)
        field = pipeline_family(pipe).output  # images, or a video pipeline's frames
        generator = torch.Generator().manual_seed(3)
        reference = pipe(PROMPTS, generator=generator, output_type="np", **{**CALL, **extra})
        outputs = {
            (name, devices): run(family, sampler, devices)
            for name, sampler in (("serial", Serial()), ("aggressive", Aggressive(drafts=2)))
            for devices in (1, 2)
        }
        results[family] = {"pipe": np.asarray(getattr(reference, field)), "parallel": outputs}
    distilled = driffusion.parallelize(
        build_tiny_pipeline("flux"), Aggressive(drafts=2), progress=False
    )
    out = distilled(
        PROMPTS,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
        **{**CALL, "max_sequence_length": 16},
    )
    results["flux-distilled"] = {"latents": out.images, "stats": out.stats}
    session = distilled.session
    if session is None or session.is_leader:
        torch.save(results, path)


if __name__ == "__main__":
    main(sys.argv[1])
