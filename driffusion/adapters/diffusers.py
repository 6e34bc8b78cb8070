"""Turn a loaded diffusers pipeline into the core's pieces: network, schedule, conditioning,
decoder. Uses the pipeline's own parts (``encode_prompt``, the UNet / transformer, the VAE),
never its ``__call__``; reads the scheduler once and never steps it.

Supported: ``StableDiffusionPipeline`` (SD 2.1; epsilon or v-prediction, read from the
scheduler config), ``StableDiffusionXLPipeline`` (two text encoders, pooled embeddings,
``add_time_ids``) and ``StableDiffusion3Pipeline`` (MMDiT transformer, flow matching with shift,
three text encoders, T5 optional).

Classifier-free guidance has two branches (the negative prompt and the prompt), batched in one
call of the network on one device or split over two
([`GuidedNetwork`][driffusion.core.branches.GuidedNetwork]); the samplers only see the guided
prediction. Latents stay float32 while the network runs in
its own dtype.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from driffusion.adapters.schedulers import from_scheduler
from driffusion.core.branches import GuidedNetwork, classifier_free_guidance, pick_rows
from driffusion.core.errors import UsageError
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import Solver


@dataclass(frozen=True)
class Family:
    """A supported model family: its diffusers pipeline and the defaults the recipes use.

    Attributes:
        name: ``sd21``, ``sdxl`` or ``sd3``.
        pipeline_class: the diffusers pipeline class name.
        model: the default hub id.
        steps: default sampling steps.
        guidance: default classifier-free guidance scale.
        size: default image size in pixels.
    """

    name: str
    pipeline_class: str
    model: str
    steps: int
    guidance: float
    size: int


WEIGHT_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
"""Weight dtypes by the names the command lines use."""

FAMILIES: dict[str, Family] = {
    "sd21": Family(
        "sd21", "StableDiffusionPipeline", "stabilityai/stable-diffusion-2-1", 50, 7.5, 768
    ),
    "sdxl": Family(
        "sdxl",
        "StableDiffusionXLPipeline",
        "stabilityai/stable-diffusion-xl-base-1.0",
        50,
        5.0,
        1024,
    ),
    "sd3": Family(
        "sd3",
        "StableDiffusion3Pipeline",
        "stabilityai/stable-diffusion-3-medium-diffusers",
        28,
        7.0,
        1024,
    ),
}


def _has_fp16_variant(model: str) -> bool:
    """True for a local folder holding ``*.fp16.*`` weight files (diffusers' variant naming)."""
    from pathlib import Path

    folder = Path(model)
    return folder.is_dir() and any(folder.rglob("*.fp16.*"))


class ModelNotAvailableError(UsageError, RuntimeError):
    """The requested weights are neither in the local cache nor reachable."""


class PipelineInputError(UsageError, ValueError):
    """An argument of a pipeline call has a value the pipeline cannot take (``num_inference_steps``
    0, a ``height`` the model cannot divide, ``latents`` of another shape, ...); the message names
    the argument, and nothing was computed."""


class PipelineInputTypeError(UsageError, TypeError):
    """An argument of a pipeline call has a type the pipeline cannot take (a prompt that is not a
    string, a ``guidance_scale`` that is not a number, ...); the message names the argument."""


def pipeline_family(pipe: Any) -> str:
    """``sd21``, ``sdxl`` or ``sd3`` for a supported pipeline; ``ValueError`` otherwise."""
    name = type(pipe).__name__
    for family in FAMILIES.values():
        if family.pipeline_class == name:
            return family.name
    supported = ", ".join(f.pipeline_class for f in FAMILIES.values())
    raise ValueError(f"unsupported pipeline {name}; supported: {supported}")


def pipeline_denoiser(pipe: Any) -> nn.Module:
    """The network a supported pipeline denoises with: SD3's transformer, else the UNet."""
    return pipe.transformer if pipeline_family(pipe) == "sd3" else pipe.unet


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


class _ClassifierFreeGuidance(GuidedNetwork):
    """Diffusers' classifier-free guidance: branch 0 the negative prompt (unconditional),
    branch 1 the prompt, batched ``[uncond; cond]`` as the pipelines do; one branch (the prompt)
    when ``guidance <= 1``."""

    def __init__(self, guidance: float) -> None:
        super().__init__()
        self.guidance = guidance
        self.branches = 2 if guidance > 1.0 else 1

    def _pick(self, branch: Tensor, cond: dict[str, Tensor], name: str, negative: str) -> Tensor:
        """The per-row tensor ``name`` of each row's branch (``negative`` on branch 0)."""
        if self.branches == 1:
            return cond[name]
        return pick_rows(branch, [cond[negative], cond[name]])

    def combine(self, outputs: Tensor) -> Tensor:
        if self.branches == 1:
            return outputs[0]
        return classifier_free_guidance(outputs[0], outputs[1], self.guidance)


class GuidedUNet(_ClassifierFreeGuidance):
    """SD / SDXL UNet behind the per-row contract, with classifier-free guidance.

    ``forward(x, t, prompt_embeds, negative_prompt_embeds, [text_embeds, negative_text_embeds,
    time_ids])``: one UNet call on ``[uncond; cond]`` rows when ``guidance > 1`` (as diffusers).
    """

    def __init__(self, unet: nn.Module, guidance: float) -> None:
        super().__init__(guidance)
        self.unet = unet

    def evaluate_branches(self, x: Tensor, t: Tensor, branch: Tensor, **cond: Tensor) -> Tensor:
        dtype = _dtype(self.unet)
        embeds = self._pick(branch, cond, "prompt_embeds", "negative_prompt_embeds")
        added = None
        if "text_embeds" in cond:
            added = {
                "text_embeds": self._pick(branch, cond, "text_embeds", "negative_text_embeds"),
                "time_ids": cond["time_ids"],
            }
        return self.unet(
            x.to(dtype), t, encoder_hidden_states=embeds.to(dtype), added_cond_kwargs=added
        ).sample.float()


class GuidedSD3Transformer(_ClassifierFreeGuidance):
    """SD3's transformer behind the per-row contract, with classifier-free guidance.

    ``forward(x, t, prompt_embeds, negative_prompt_embeds, pooled, negative_pooled)``; ``t`` is
    the network time ``1000 * sigma``.
    """

    def __init__(self, transformer: nn.Module, guidance: float) -> None:
        super().__init__(guidance)
        self.transformer = transformer

    def evaluate_branches(self, x: Tensor, t: Tensor, branch: Tensor, **cond: Tensor) -> Tensor:
        dtype = _dtype(self.transformer)
        embeds = self._pick(branch, cond, "prompt_embeds", "negative_prompt_embeds")
        pooled = self._pick(branch, cond, "pooled", "negative_pooled")
        return self.transformer(
            hidden_states=x.to(dtype),
            timestep=t,
            encoder_hidden_states=embeds.to(dtype),
            pooled_projections=pooled.to(dtype),
            return_dict=False,
        )[0].float()


@dataclass
class PipelineAdapter:
    """The core's view of a pipeline.

    Attributes:
        pipe: the diffusers pipeline (its parts are used; ``__call__`` never is).
        family: ``sd21``, ``sdxl`` or ``sd3``.
        network: guided per-row network ``net(x, t, **cond)``.
        schedule: the sampling grid of the pipeline's scheduler.
        solver: the core solver of the pipeline's scheduler (same method, same grid).
        latent_shape: ``(C, H / f, W / f)``.
        height, width: image size in pixels.
        guidance: the classifier-free guidance scale.
        mu: SD3's dynamic shift of the grid (``None`` without dynamic shifting).
    """

    pipe: Any
    family: str
    network: nn.Module
    schedule: Schedule
    solver: Solver
    latent_shape: tuple[int, int, int]
    height: int
    width: int
    guidance: float
    mu: float | None = None

    @property
    def network_dtype(self) -> torch.dtype:
        """The denoiser's weight dtype (prompt embeddings and initial latents are drawn in it)."""
        return _dtype(self.network)

    @torch.no_grad()
    def encode(
        self, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """Conditioning tensors ``[B, ...]`` for the network, one row per prompt."""
        pipe, device = self.pipe, self.pipe.device
        prompts = list(prompts)
        negative = list(negative_prompts) if negative_prompts is not None else None
        guided = self.guidance > 1.0
        if self.family == "sd21":
            embeds, negative_embeds = pipe.encode_prompt(
                prompts, device, 1, guided, negative_prompt=negative
            )
            cond = {"prompt_embeds": embeds}
            if guided:
                cond["negative_prompt_embeds"] = negative_embeds
            return cond
        if self.family == "sdxl":
            embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
                prompts, device=device, do_classifier_free_guidance=guided, negative_prompt=negative
            )
            projection = (
                pipe.text_encoder_2.config.projection_dim
                if pipe.text_encoder_2 is not None
                else int(pooled.shape[-1])
            )
            size = (self.height, self.width)
            time_ids = pipe._get_add_time_ids(
                size, (0, 0), size, dtype=embeds.dtype, text_encoder_projection_dim=projection
            ).to(device)
            cond = {
                "prompt_embeds": embeds,
                "text_embeds": pooled,
                "time_ids": time_ids.repeat(len(prompts), 1),
            }
            if guided:
                cond["negative_prompt_embeds"] = negative_embeds
                cond["negative_text_embeds"] = negative_pooled
            return cond
        embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompts,
            None,
            None,
            device=device,
            do_classifier_free_guidance=guided,
            negative_prompt=negative,
        )
        cond = {"prompt_embeds": embeds, "pooled": pooled}
        if guided:
            cond["negative_prompt_embeds"] = negative_embeds
            cond["negative_pooled"] = negative_pooled
        return cond

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents to images ``[B, 3, H, W]`` in ``[-1, 1]`` (float32) with the VAE.

        A half-precision VAE whose config says ``force_upcast`` decodes in float32, as diffusers
        does (the SDXL VAE overflows in fp16).

        Raises:
            NonFiniteImageError: the decoded images hold NaN or inf (nothing should be saved).
        """
        vae = self.pipe.vae
        scaling = vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = latents / scaling + shift
        dtype = _dtype(vae)
        upcast = dtype in (torch.float16, torch.bfloat16) and vae.config.get("force_upcast", False)
        if upcast:
            vae.to(torch.float32)
        try:
            images = vae.decode(latents.to(_dtype(vae))).sample.float()
        finally:
            if upcast:
                vae.to(dtype)
        if not bool(torch.isfinite(images).all()):
            bad = int((~torch.isfinite(images)).flatten(1).any(dim=1).sum())
            raise NonFiniteImageError(
                f"the VAE decoded {bad} of {images.shape[0]} image(s) to NaN or inf (VAE dtype "
                f"{dtype}{', upcast to float32' if upcast else ''}); nothing was written. Decode "
                "in float32 (--precision fp32, or a VAE with force_upcast) or check the latents."
            )
        return images.clamp(-1, 1)

    def state_from_latents(self, latents: Tensor) -> Tensor:
        """The core's state at grid point 0 from the pipeline's initial latents.

        Euler-family schedulers keep latents in variance-exploding coordinates
        ``x_VE = x / alpha``; every other scheduler already works on the core's state.
        """
        if _variance_exploding(self.pipe.scheduler):
            return latents.float() * self.schedule.alpha(0)
        return latents.float()

    def latents_from_state(self, x: Tensor) -> Tensor:
        """The pipeline's latents for the core's final state (the inverse at the last point)."""
        if _variance_exploding(self.pipe.scheduler):
            return x / self.schedule.alpha(self.schedule.num_steps)
        return x


class NonFiniteImageError(RuntimeError):
    """Decoding produced NaN or inf: an error, never a black image on disk."""


def _variance_exploding(scheduler: Any) -> bool:
    return type(scheduler).__name__ in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")


def image_size(pipe: Any, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """``(height, width)`` in pixels: the model's default (``sample_size`` x VAE scale) where
    ``None``.

    Raises:
        PipelineInputError: a size that is not a positive multiple of what the model divides by
            (0 included: it is an error, not the default).
        PipelineInputTypeError: a size that is not an integer.
    """
    family = pipeline_family(pipe)
    factor = pipe.vae_scale_factor
    if family == "sd3":
        default = pipe.default_sample_size * factor
        multiple = factor * pipe.transformer.config.patch_size
    else:
        default = pipe.unet.config.sample_size * factor
        multiple = factor
    sizes = {"height": default if height is None else height}
    sizes["width"] = default if width is None else width
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise PipelineInputTypeError(
                f"{name} must be an integer (a positive multiple of {multiple}), got {value!r}"
            )
        if value < multiple or value % multiple:
            raise PipelineInputError(
                f"{name} must be a positive multiple of {multiple}, got {value}"
            )
    return int(sizes["height"]), int(sizes["width"])


def adapt_pipeline(
    pipe: Any, steps: int, *, height: int | None = None, width: int | None = None, guidance: float
) -> PipelineAdapter:
    """Build the [`PipelineAdapter`][driffusion.adapters.diffusers.PipelineAdapter] of a loaded
    pipeline."""
    family = pipeline_family(pipe)
    factor = pipe.vae_scale_factor
    denoiser = pipeline_denoiser(pipe)
    channels = int(denoiser.config.in_channels)  # type: ignore[union-attr,arg-type]
    height, width = image_size(pipe, height, width)
    mu = None
    if family == "sd3" and pipe.scheduler.config.get("use_dynamic_shifting", False):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            calculate_shift,
        )

        patch = pipe.transformer.config.patch_size
        config = pipe.scheduler.config
        mu = calculate_shift(
            (height // factor // patch) * (width // factor // patch),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.16),
        )
    solver, schedule = from_scheduler(pipe.scheduler, steps, mu=mu)
    network: nn.Module = (
        GuidedSD3Transformer(denoiser, guidance)
        if family == "sd3"
        else GuidedUNet(denoiser, guidance)
    )
    shape = (channels, height // factor, width // factor)
    return PipelineAdapter(
        pipe, family, network, schedule, solver, shape, height, width, guidance, mu
    )


def load_pipeline(
    family: str,
    model: str,
    dtype: torch.dtype = torch.float32,
    *,
    no_t5: bool = False,
    device: torch.device | str | None = None,
) -> Any:
    """``from_pretrained`` with a clear error when the weights cannot be had (e.g. offline).

    Args:
        family: ``sd21``, ``sdxl`` or ``sd3``.
        model: a hub id or a local folder written by ``save_pretrained``.
        dtype: weight dtype (latents stay float32 regardless). In half precision the ``fp16``
            variant of the weights is used where the folder has it (half the bytes to read).
        no_t5: SD3 without its T5 text encoder (about 19 GB in fp32 saved).
        device: a CUDA device loads the weights straight onto it (``device_map``), so that
            each rank of a run does not first hold the whole pipeline in host memory; other
            devices load on the CPU (move the pipeline afterwards).
    """
    import diffusers

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")
    cls = getattr(diffusers, FAMILIES[family].pipeline_class)
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    if family == "sd21":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if no_t5:
        if family != "sd3":
            raise ValueError("no_t5 applies to sd3 only")
        kwargs.update(text_encoder_3=None, tokenizer_3=None)
    if dtype in (torch.float16, torch.bfloat16) and _has_fp16_variant(model):
        kwargs["variant"] = "fp16"
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))  # diffusers maps "cuda" to the current one
        kwargs["device_map"] = "cuda"
    try:
        return cls.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelNotAvailableError(
            f"could not load the {family} model {model!r}: {error.__class__.__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}\n"
            "The weights are not in the local Hugging Face cache and cannot be downloaded here. "
            "Download them on a machine with network access (e.g. `huggingface-cli download "
            f"{model}`) or pass a local folder: --model /path/to/folder (a diffusers "
            "`save_pretrained` directory). For a quick offline run, use --tiny."
        ) from error
