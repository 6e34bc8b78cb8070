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

TINY_FAMILIES = (
    "sd21",
    "sdxl",
    "sdxl_img2img",
    "sdxl_controlnet",
    "sd3",
    "sd35",
    "flux",
    "flux_schnell",
    "flux_img2img",
    "wan",
    "wan22",
    "hunyuan_video",
    "cogvideox",
)


COGVIDEOX_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "snr_shift_scale": 3.0,
    "set_alpha_to_one": True,
    "clip_sample": False,
}
"""CogVideoX-2b's published ``CogVideoXDDIMScheduler`` configuration: v-prediction, SNR shift 3,
zero terminal SNR, trailing spacing."""


def tiny_tokenizer() -> Any:
    """A CLIP BPE tokenizer over lowercase letters and digits, built from an in-code vocab."""
    from transformers import CLIPTokenizer

    symbols = list(string.ascii_lowercase + string.digits)
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *[s + "</w>" for s in symbols]]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def tiny_clip(
    projection_dim: int | None = None, hidden: int = 32, seed: int = 0, positions: int = 16
) -> Any:
    """A 2-layer CLIP text encoder (with projection when ``projection_dim`` is given) over
    ``positions`` tokens."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tiny_tokenizer()),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=positions,
        projection_dim=projection_dim or hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    cls = CLIPTextModelWithProjection if projection_dim else CLIPTextModel
    return cls(config).eval()


def tiny_t5_tokenizer() -> Any:
    """A T5 (sentencepiece-free, unigram) tokenizer over lowercase letters and digits."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(s, -1.0) for s in ["\u2581", *string.ascii_lowercase, *string.digits]]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_t5(d_model: int = 32, seed: int = 0, umt5: bool = False) -> Any:
    """A 2-layer T5 encoder (``umt5``: UMT5, Wan's text encoder class) over
    [`tiny_t5_tokenizer`][driffusion.adapters.tiny.tiny_t5_tokenizer]'s vocabulary."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = (UMT5Config if umt5 else T5Config)(
        vocab_size=len(tiny_t5_tokenizer()),
        d_model=d_model,
        d_ff=2 * d_model,
        d_kv=8,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
    )
    return (UMT5EncoderModel if umt5 else T5EncoderModel)(config).eval()


def tiny_llama_tokenizer() -> Any:
    """A byte-level tokenizer (no merges: one token per byte) with Llama's special tokens, as
    a fast tokenizer built in code: HunyuanVideo's prompt template tokenizes like any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(alphabet)}}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def tiny_llama(hidden: int = 16, seed: int = 0) -> Any:
    """A 2-layer ``LlamaModel`` over
    [`tiny_llama_tokenizer`][driffusion.adapters.tiny.tiny_llama_tokenizer]'s vocabulary
    (diffusers' HunyuanVideo test configuration)."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tiny_llama_tokenizer()),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_hidden_layers=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaModel(config).eval()


def tiny_wan_transformer(seed: int = 0) -> Any:
    """A 2-layer ``WanTransformer3DModel`` (diffusers' test configuration)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


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
    """A random-weight pipeline of ``family``: ``sd21``, ``sdxl``, ``sdxl_img2img``,
    ``sdxl_controlnet`` (a ControlNet made from the UNet, random weights), ``sd3``, ``sd35``
    (SD3.5's transformer: dual attention layers, qk norm), ``flux`` (FLUX.1-dev: guidance
    embedding, dynamic shift), ``flux_schnell``, ``flux_img2img``, ``wan`` (Wan 2.1: UniPC over
    flow sigmas), ``wan22`` (two experts split at ``boundary_ratio``), ``hunyuan_video``
    (guidance-distilled; a byte-level Llama tokenizer built in code) or ``cogvideox``
    (CogVideoX-2b's DDIM: v-prediction, zero terminal SNR)."""
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
    if family == "sdxl_controlnet":
        from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

        sdxl = build_tiny_pipeline("sdxl", prediction_type, seed)
        controlnet = ControlNetModel.from_unet(
            sdxl.unet, conditioning_embedding_out_channels=(16, 32)
        )
        generator = torch.Generator().manual_seed(seed + 2)
        for parameter in controlnet.parameters():  # trained-like: its zero convolutions are not
            parameter.data.normal_(0.0, 0.05, generator=generator)
        return StableDiffusionXLControlNetPipeline(**sdxl.components, controlnet=controlnet.eval())
    if family == "sdxl_img2img":
        from diffusers import StableDiffusionXLImg2ImgPipeline

        components = build_tiny_pipeline("sdxl", prediction_type, seed).components
        return StableDiffusionXLImg2ImgPipeline(**components, requires_aesthetics_score=False)
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
    if family in ("sd3", "sd35"):
        torch.manual_seed(seed)
        sd35 = {"dual_attention_layers": (0,), "qk_norm": "rms_norm"} if family == "sd35" else {}
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
            **sd35,  # SD3.5: MMDiT-X dual attention in the first layer, RMS-normed q and k
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
    if family in ("flux", "flux_schnell"):
        from diffusers import FluxPipeline, FluxTransformer2DModel

        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,  # 2x2 patches of 4 latent channels
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,  # T5's d_model
            pooled_projection_dim=32,  # CLIP's pooled output
            guidance_embeds=family == "flux",  # dev is guidance-distilled; schnell has none
            axes_dims_rope=(4, 4, 8),
        ).eval()
        # FLUX.1's scheduler config (dev: dynamic shift from the image's token count)
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0 if family == "flux" else 1.0,
            use_dynamic_shifting=family == "flux",
            base_image_seq_len=256,
            max_image_seq_len=4096,
            base_shift=0.5,
            max_shift=1.15,
        )
        return FluxPipeline(
            scheduler=scheduler,
            vae=tiny_vae(seed=seed, scaling_factor=0.3611, shift_factor=0.1159),
            text_encoder=tiny_clip(seed=seed),
            tokenizer=tiny_tokenizer(),
            text_encoder_2=tiny_t5(seed=seed + 1),
            tokenizer_2=tiny_t5_tokenizer(),
            transformer=transformer,
        )
    if family == "flux_img2img":
        from diffusers import FluxImg2ImgPipeline

        return FluxImg2ImgPipeline(**build_tiny_pipeline("flux", prediction_type, seed).components)
    if family in ("wan", "wan22"):
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

        torch.manual_seed(seed)
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ).eval()
        # the published configs' scheduler: UniPC over flow sigmas (Wan 2.1 480p: shift 3)
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        )
        two_experts = family == "wan22"  # Wan 2.2: a low-noise expert below the boundary
        return WanPipeline(
            tokenizer=tiny_t5_tokenizer(),
            text_encoder=tiny_t5(seed=seed, umt5=True),
            transformer=tiny_wan_transformer(seed),
            vae=vae,
            scheduler=scheduler,
            transformer_2=tiny_wan_transformer(seed + 1) if two_experts else None,
            boundary_ratio=0.875 if two_experts else None,
        )
    if family == "cogvideox":
        from diffusers import (
            AutoencoderKLCogVideoX,
            CogVideoXDDIMScheduler,
            CogVideoXPipeline,
            CogVideoXTransformer3DModel,
        )

        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=4,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            time_embed_dim=2,
            text_embed_dim=32,  # T5's d_model
            num_layers=1,
            sample_width=2,
            sample_height=2,
            sample_frames=9,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=16,
        ).eval()
        torch.manual_seed(seed)
        vae = AutoencoderKLCogVideoX(
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
        ).eval()
        scheduler = CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER)
        return CogVideoXPipeline(
            tokenizer=tiny_t5_tokenizer(),
            text_encoder=tiny_t5(seed=seed),
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
        )
    if family == "hunyuan_video":
        from diffusers import (
            AutoencoderKLHunyuanVideo,
            HunyuanVideoPipeline,
            HunyuanVideoTransformer3DModel,
        )

        torch.manual_seed(seed)
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=10,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            patch_size=1,
            patch_size_t=1,
            guidance_embeds=True,  # guidance-distilled
            text_embed_dim=16,  # the Llama's hidden size
            pooled_projection_dim=8,  # CLIP's
            rope_axes_dim=(2, 4, 4),
        ).eval()
        torch.manual_seed(seed)
        vae = AutoencoderKLHunyuanVideo(
            latent_channels=4,
            down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            norm_num_groups=4,
            scaling_factor=0.476986,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
            mid_block_add_attention=True,
        ).eval()
        return HunyuanVideoPipeline(
            text_encoder=tiny_llama(seed=seed),
            tokenizer=tiny_llama_tokenizer(),
            transformer=transformer,
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
            text_encoder_2=tiny_clip(hidden=8, seed=seed + 1, positions=77),  # 77: as called
            tokenizer_2=tiny_tokenizer(),
        )
    raise ValueError(f"unknown family {family!r}; choose one of {TINY_FAMILIES}")


def tiny_inputs(family: str, size: int = 32) -> dict[str, Any]:
    """The keyword inputs a call of ``build_tiny_pipeline(family)`` needs beyond the prompt
    (img2img: a ``size`` x ``size`` image made in code and a ``strength``; ControlNet: such an
    image as the control image; Wan, HunyuanVideo: 9 frames of 16 x 16; none
    for the others)."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {TINY_FAMILIES}")
    if family in ("sdxl_img2img", "sdxl_controlnet", "flux_img2img"):
        from PIL import Image

        ramp = torch.linspace(0, 255, size, dtype=torch.float64)
        rgb = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size)])
        rgb = torch.cat([rgb, 255 - rgb[:1]]).permute(1, 2, 0).round().to(torch.uint8)
        image = Image.fromarray(rgb.numpy())
        if family == "sdxl_controlnet":
            return {"image": image}
        return {"image": image, "strength": 0.7}
    if family in ("wan", "wan22", "hunyuan_video"):
        return {"num_frames": 9, "height": 16, "width": 16}
    if family == "cogvideox":  # its positional embedding holds 16 text tokens
        return {"num_frames": 9, "height": 16, "width": 16, "max_sequence_length": 16}
    return {}
