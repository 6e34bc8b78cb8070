"""Tiny random-weight pipelines of the real architectures, built in code with no download.

SD2.1 (``StableDiffusionPipeline``), SDXL (``StableDiffusionXLPipeline``) and SD3
(``StableDiffusion3Pipeline``) each get a small denoiser, VAE, CLIP text encoders and tokenizers
of the same classes as the published models, so every code path (prompt encoding, guidance,
added conditioning, VAE decoding with ``scaling_factor``/``shift_factor``) runs on a CPU in
seconds. The images are noise: these exist to test the plumbing, not to look at.
"""

from __future__ import annotations

import string
from typing import Any

import torch

TINY_FAMILIES = ("sd21", "sdxl", "sd3")


def tiny_tokenizer() -> Any:
    """A CLIP BPE tokenizer over lowercase letters and digits, built from an in-code vocab."""
    from transformers import CLIPTokenizer

    symbols = list(string.ascii_lowercase + string.digits)
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *[s + "</w>" for s in symbols]]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def tiny_clip(projection_dim: int | None = None, hidden: int = 32, seed: int = 0) -> Any:
    """A 2-layer CLIP text encoder (with projection when ``projection_dim`` is given)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tiny_tokenizer()),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=projection_dim or hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    cls = CLIPTextModelWithProjection if projection_dim else CLIPTextModel
    return cls(config).eval()


def tiny_vae(latent_channels: int = 4, seed: int = 0, **config: Any) -> Any:
    """A 2-block ``AutoencoderKL`` (downscale 2) with ``latent_channels`` latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=latent_channels,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=32,
        **config,
    ).eval()


def build_tiny_pipeline(family: str, prediction_type: str = "epsilon", seed: int = 0) -> Any:
    """A random-weight pipeline of ``family`` (``sd21``, ``sdxl`` or ``sd3``)."""
    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    if family == "sd21":
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            norm_num_groups=8,
        ).eval()
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type=prediction_type,
            timestep_spacing="leading",
        )
        return StableDiffusionPipeline(
            vae=tiny_vae(seed=seed, scaling_factor=0.18215),
            text_encoder=tiny_clip(seed=seed),
            tokenizer=tiny_tokenizer(),
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if family == "sdxl":
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=64,  # two encoders' hidden states, concatenated
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            norm_num_groups=8,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8,
            transformer_layers_per_block=(1, 1),
        ).eval()
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
            prediction_type=prediction_type,
        )
        return StableDiffusionXLPipeline(
            vae=tiny_vae(seed=seed, scaling_factor=0.13025),
            text_encoder=tiny_clip(seed=seed),
            text_encoder_2=tiny_clip(projection_dim=32, seed=seed + 1),
            tokenizer=tiny_tokenizer(),
            tokenizer_2=tiny_tokenizer(),
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
        )
    if family == "sd3":
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=16,
            pooled_projection_dim=64,
            pos_embed_max_size=16,
        ).eval()
        return StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=tiny_vae(latent_channels=16, seed=seed, scaling_factor=1.5305, shift_factor=0.0609),
            text_encoder=tiny_clip(projection_dim=32, seed=seed),
            tokenizer=tiny_tokenizer(),
            text_encoder_2=tiny_clip(projection_dim=32, seed=seed + 1),
            tokenizer_2=tiny_tokenizer(),
            text_encoder_3=None,  # T5 is optional for SD3
            tokenizer_3=None,
        )
    raise ValueError(f"unknown family {family!r}; choose one of {TINY_FAMILIES}")
