"""Latency of serial sampling against DRiffusion's batched drafts on ONE device, for the
full-size SD2.1, SDXL and SD3 denoiser architectures with random weights (no download).

    python benchmarks/single_device.py --random-weights --device cuda --dtype bf16 [--json PATH]
    python benchmarks/single_device.py --random-weights --device cpu --reduced     # smoke test

On one device the drafts of a round run as one batch of ``k`` (x2 for guidance) rows, so the
speedup is what the device's spare parallelism gives: large for small batches on a big GPU,
about none on a CPU. Only the denoiser runs (text encoders and VAE are outside the loop and
identical for every sampler); conditioning tensors are random with the real shapes.
Columns: model, sampler, drafts, steps, rounds, s_per_image, speedup.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from driffusion.adapters.families import GuidedSD3Transformer, GuidedUNet
from driffusion.core import (
    Aggressive,
    BatchedExecutor,
    Conservative,
    RowwiseModel,
    SamplerFn,
    Schedule,
    Serial,
    alphas_cumprod_from_betas,
    flow_schedule,
    flow_sigmas,
    initial_noise,
    reduced_grid,
    sampler_name,
    vp_schedule,
    vp_timesteps,
)
from driffusion.io import markdown_table, write_json
from driffusion.lightning import cli

if not __package__:  # run as `python benchmarks/single_device.py`: the repo root holds it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import timed
from driffusion.adapters.diffusers import WEIGHT_DTYPES

KEYS = ["model", "sampler", "drafts", "steps", "rounds", "s_per_image", "speedup"]


def unet_sd21(reduced: bool) -> dict[str, Any]:
    channels = (32, 64, 64, 64) if reduced else (320, 640, 1280, 1280)
    return {
        "sample_size": 96,
        "block_out_channels": channels,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "attention_head_dim": (2, 4, 4, 4) if reduced else (5, 10, 20, 20),
        "cross_attention_dim": 64 if reduced else 1024,
        "use_linear_projection": True,
        "layers_per_block": 1 if reduced else 2,
        "norm_num_groups": 16 if reduced else 32,
    }


def unet_sdxl(reduced: bool) -> dict[str, Any]:
    return {
        "sample_size": 128,
        "block_out_channels": (32, 64, 64) if reduced else (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 1, 2) if reduced else (1, 2, 10),
        "attention_head_dim": (2, 4, 4) if reduced else (5, 10, 20),
        "cross_attention_dim": 64 if reduced else 2048,
        "use_linear_projection": True,
        "layers_per_block": 1 if reduced else 2,
        "norm_num_groups": 16 if reduced else 32,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 16 if reduced else 256,
        "projection_class_embeddings_input_dim": (32 + 6 * 16) if reduced else 2816,
    }


def transformer_sd3(reduced: bool) -> dict[str, Any]:
    return {
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 2 if reduced else 24,
        "attention_head_dim": 16 if reduced else 64,
        "num_attention_heads": 2 if reduced else 24,
        "joint_attention_dim": 64 if reduced else 4096,
        "caption_projection_dim": 32 if reduced else 1536,
        "pooled_projection_dim": 32 if reduced else 2048,
        "pos_embed_max_size": 192,
    }


def build(model: str, reduced: bool, dtype: torch.dtype, device: str, guidance: float) -> tuple:
    """(guided network, schedule, latent shape, conditioning) for one architecture."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    torch.manual_seed(0)
    if model == "sd3":
        config = transformer_sd3(reduced)
        net: nn.Module = GuidedSD3Transformer(SD3Transformer2DModel(**config), guidance)
        side = 32 if reduced else 128
        shape = (16, side, side)
        text, pooled = (config["joint_attention_dim"], config["pooled_projection_dim"])
        cond = {
            "prompt_embeds": torch.randn(1, 333 if not reduced else 16, text),
            "pooled": torch.randn(1, pooled),
        }
        cond["negative_prompt_embeds"] = torch.randn_like(cond["prompt_embeds"])
        cond["negative_pooled"] = torch.randn_like(cond["pooled"])
        schedule: Schedule = flow_schedule(flow_sigmas(28, shift=3.0))
    else:
        config = unet_sd21(reduced) if model == "sd21" else unet_sdxl(reduced)
        net = GuidedUNet(UNet2DConditionModel(**config), guidance)
        side = 16 if reduced else config["sample_size"]
        shape = (4, side, side)
        cond = {"prompt_embeds": torch.randn(1, 77, config["cross_attention_dim"])}
        cond["negative_prompt_embeds"] = torch.randn_like(cond["prompt_embeds"])
        if model == "sdxl":
            pooled = 32 if reduced else 1280
            cond["text_embeds"] = torch.randn(1, pooled)
            cond["negative_text_embeds"] = torch.randn(1, pooled)
            size = float(side * 8)
            cond["time_ids"] = torch.tensor([[size, size, 0.0, 0.0, size, size]])
        prediction = "v_prediction" if model == "sd21" else "epsilon"
        timesteps = vp_timesteps(50, spacing="leading", steps_offset=1)
        schedule = vp_schedule(alphas_cumprod_from_betas(), timesteps, 1.0, prediction)  # type: ignore[arg-type]
    net = net.to(device=device, dtype=dtype).eval()
    cond = {k: v.to(device) for k, v in cond.items()}
    return net, schedule, shape, cond


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--random-weights",
        action="store_true",
        required=True,
        help="build the architectures with random weights (no download)",
    )
    parser.add_argument("--models", nargs="+", default=["sd21", "sdxl", "sd3"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(WEIGHT_DTYPES), default=None)
    parser.add_argument("--drafts", type=cli.positive_int, nargs="+", default=[2, 4])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="a reduced grid of this many steps (default and most: 50; SD3: 28)",
    )
    parser.add_argument("--reduced", action="store_true", help="small widths: a CPU smoke test")
    parser.add_argument("--repeats", type=cli.positive_int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    dtype = WEIGHT_DTYPES[args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")]
    rows: list[dict[str, Any]] = []
    for model in args.models:
        net, schedule, shape, cond = build(model, args.reduced, dtype, args.device, 5.0)
        if args.steps is not None and args.steps != schedule.num_steps:
            schedule = reduced_grid(schedule, args.steps)  # evenly spaced points, ends kept
        x = initial_noise([0], shape, device=args.device)
        executor = BatchedExecutor(RowwiseModel(net, cond))

        def run(
            sampler: SamplerFn,
            x: torch.Tensor = x,
            executor: BatchedExecutor = executor,
            schedule: Schedule = schedule,
        ) -> Any:
            with torch.inference_mode():
                return sampler(executor, x, schedule, check_finite=False)

        samplers: list[SamplerFn] = [Serial()]
        samplers += [mode(drafts=k) for mode in (Aggressive, Conservative) for k in args.drafts]
        run(samplers[0])  # warm-up (kernels, allocator)
        serial_wall = 0.0
        for sampler in samplers:
            wall, result = timed(lambda s=sampler: run(s), args.device, args.repeats)
            serial_wall = serial_wall or wall
            rows.append(
                {
                    "model": model,
                    "sampler": sampler_name(sampler),
                    "drafts": getattr(sampler, "drafts", 1),
                    "steps": schedule.num_steps,
                    "rounds": result.stats.rounds,
                    "s_per_image": wall,
                    "speedup": serial_wall / wall,
                    "device": args.device,
                    "dtype": str(dtype).split(".")[-1],
                    "reduced": args.reduced,
                    "setting": repr(sampler),
                }
            )
        del net
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"\nsingle-device latency on {args.device} ({dtype}), reduced={args.reduced}\n")
    print(markdown_table(rows, KEYS))
    if args.json:
        write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
