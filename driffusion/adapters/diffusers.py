"""Turn a loaded diffusers pipeline into the core's pieces: network, schedule, conditioning,
decoder. Uses the pipeline's own parts (``encode_prompt``, the UNet / transformer, the VAE),
never its ``__call__``; reads the scheduler once and never steps it.

What differs between pipelines (which network, its guidance branches, prompt encoding,
sizes, the grid's shift) is the pipeline's [`Family`][driffusion.adapters.families.Family];
everything here is shared. Latents stay float32 while the network runs in its own dtype.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from driffusion.adapters.families import FAMILIES, Call, Family, pipeline_family, weight_dtype
from driffusion.adapters.schedulers import from_scheduler
from driffusion.core.branches import network_branches
from driffusion.core.errors import UsageError
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import Solver

WEIGHT_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
"""Weight dtypes by the names the command lines use."""


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


def pipeline_denoiser(pipe: Any) -> nn.Module:
    """The network a supported pipeline denoises with (its UNet or transformer)."""
    return pipeline_family(pipe).denoiser(pipe)


@dataclass
class PipelineAdapter:
    """The core's view of a pipeline.

    Attributes:
        pipe: the diffusers pipeline (its parts are used; ``__call__`` never is).
        family: the pipeline's family (what differs between pipelines).
        network: guided per-row network ``net(x, t, **cond)``.
        schedule: the sampling grid of the pipeline's scheduler.
        solver: the core solver of the pipeline's scheduler (same method, same grid).
        latent_shape: one sample's state, as ``prepare_latents`` makes it (``(C, H / f, W / f)``;
            FLUX: ``(tokens, 4C)``, packed).
        height, width: image size in pixels.
        guidance: the classifier-free guidance scale.
        timestep_options: what the pipeline gives ``set_timesteps`` besides the steps (``mu``,
            ``sigmas``).
        options: the family's call options, as the call applies them.
        start: the grid point the sampler starts from (img2img: the first kept step); the
            ``schedule`` is the grid from there.
    """

    pipe: Any
    family: Family
    network: nn.Module
    schedule: Schedule
    solver: Solver
    latent_shape: tuple[int, ...]
    height: int
    width: int
    guidance: float
    timestep_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    start: int = 0

    @property
    def steps(self) -> int:
        """The pipeline's grid steps (``num_inference_steps``); the sampler runs the last
        ``schedule.num_steps`` of them, from grid point ``start``."""
        return self.start + self.schedule.num_steps

    @property
    def call(self) -> Call:
        """The call as the family's hooks see it."""
        return Call(self.pipe, self.height, self.width, self.steps, self.options)

    @property
    def network_dtype(self) -> torch.dtype:
        """The denoiser's weight dtype (prompt embeddings and initial latents are drawn in it)."""
        return weight_dtype(self.network)

    @torch.no_grad()
    def encode(
        self, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """Conditioning tensors ``[B, ...]`` for the network, one row per prompt."""
        negative = list(negative_prompts) if negative_prompts is not None else None
        guided = network_branches(self.network) > 1
        return self.family.encode(self.call, list(prompts), negative, guided)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents to images ``[B, 3, H, W]`` (video: ``[B, 3, F, H, W]``) in ``[-1, 1]``
        (float32) with the VAE.

        A half-precision VAE whose config says ``force_upcast`` decodes in float32, as diffusers
        does (the SDXL VAE overflows in fp16).

        Raises:
            NonFiniteImageError: the decoded images hold NaN or inf (nothing should be saved).
        """
        vae = self.pipe.vae
        latents = self.family.vae_input(self.call, latents)
        dtype = weight_dtype(vae)
        upcast = dtype in (torch.float16, torch.bfloat16) and vae.config.get("force_upcast", False)
        if upcast:
            vae.to(torch.float32)
        try:
            images = vae.decode(latents.to(weight_dtype(vae))).sample.float()
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
    """``(height, width)`` in pixels: the model's default (``sample_size`` x VAE scale; video
    pipelines: their call's) where ``None``.

    Raises:
        PipelineInputError: a size that is not a positive multiple of what the model divides by
            (0 included: it is an error, not the default).
        PipelineInputTypeError: a size that is not an integer.
    """
    family = pipeline_family(pipe)
    (default_height, default_width), multiple = (
        family.default_size(pipe),
        family.size_multiple(pipe),
    )
    sizes = {"height": default_height if height is None else height}
    sizes["width"] = default_width if width is None else width
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
    pipe: Any,
    steps: int,
    *,
    height: int | None = None,
    width: int | None = None,
    guidance: float,
    options: dict[str, Any] | None = None,
) -> PipelineAdapter:
    """Build the [`PipelineAdapter`][driffusion.adapters.diffusers.PipelineAdapter] of a loaded
    pipeline; ``options`` are the family's call options as the call applies them (default: the
    pipeline's defaults)."""
    family = pipeline_family(pipe)
    options = {**family.call_options, **(options or {})}
    try:  # what the family's options ask of the call (img2img: the image's size, strength)
        size = family.call_size(pipe, height, width, options)
        start = family.first_step(steps, options)
    except ValueError as error:
        raise PipelineInputError(str(error)) from None
    height, width = image_size(pipe, *size)
    call = Call(pipe, height, width, steps, options)
    timestep_options = family.timestep_options(call)
    solver, schedule = from_scheduler(pipe.scheduler, steps, **timestep_options)
    if start:  # the sampler's trajectory is the kept part of the pipeline's grid
        schedule = schedule.slice(start, steps)
    network = family.network(call, guidance, schedule)
    shape = family.latent_shape(call)
    return PipelineAdapter(
        pipe,
        family,
        network,
        schedule,
        solver,
        shape,
        height,
        width,
        guidance,
        timestep_options,
        options,
        start,
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
    kwargs: dict[str, Any] = {"torch_dtype": dtype, **FAMILIES[family].load_options(no_t5)}
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
