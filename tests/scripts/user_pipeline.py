"""A diffusers user's script with one changed line (`driffusion.parallelize`); run with plain
`python` or under `fabric run --devices 2` with no other change. Saves the latents."""

import sys

import torch

import driffusion
from driffusion.adapters.tiny import build_tiny_pipeline
from driffusion.core import Aggressive

pipe = build_tiny_pipeline("sdxl")
pipe = driffusion.parallelize(pipe, Aggressive(drafts=2), progress=False)  # the changed line
out = pipe(
    ["a lighthouse", "a red cat"],
    num_inference_steps=7,
    height=32,
    width=32,
    generator=torch.Generator().manual_seed(3),
    output_type="latent",
)
if pipe.session is None or pipe.session.is_leader:
    torch.save({"latents": out.images, "stats": out.stats}, sys.argv[1])
