"""A diffusers user's script splitting the guidance branches (`guidance_devices=2`); run under
`fabric run --devices 2`: tiny SDXL and SD3, `pipe()` itself and `parallelize(pipe, Serial(),
guidance_devices=2)` with the same generator, saved for tests/lightning/test_pipeline.py."""

import sys

import numpy as np
import torch

import driffusion
from driffusion.adapters.tiny import build_tiny_pipeline
from driffusion.core import Aggressive, Serial

CALL = {"num_inference_steps": 6, "guidance_scale": 3.0, "height": 32, "width": 32}
PROMPTS = ["a lighthouse", "a red cat"]

results = {}
for family in ("sdxl", "sd3"):
    pipe = build_tiny_pipeline(family)
    reference = pipe(PROMPTS, generator=torch.Generator().manual_seed(3), output_type="np", **CALL)
    outputs = {}
    for name, sampler in (("serial", Serial()), ("aggressive", Aggressive(drafts=2))):
        for devices in (1, 2):
            ppipe = driffusion.parallelize(pipe, sampler, guidance_devices=devices, progress=False)
            out = ppipe(
                PROMPTS, generator=torch.Generator().manual_seed(3), output_type="np", **CALL
            )
            outputs[name, devices] = {"images": np.asarray(out.images), "stats": out.stats}
    results[family] = {"pipe": np.asarray(reference.images), "parallel": outputs}
    session = ppipe.session
if session is None or session.is_leader:
    torch.save(results, sys.argv[1])
