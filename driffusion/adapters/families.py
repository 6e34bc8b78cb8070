"""Pipeline families: what differs between diffusers pipelines, one class each.

A family owns everything that is not the same across the pipelines it accepts: which pipeline
classes those are, the recipes' defaults, which network denoises and how it is called with its
guidance branches, the image sizes the model divides, the shift of the grid, prompt encoding and
the options of loading. Everything else (the scheduler read into a core solver, initial latents
from the pipeline's own ``prepare_latents``, VAE decoding) is shared and lives in
[`driffusion.adapters.diffusers`][driffusion.adapters.diffusers].

Supported (see [`FAMILIES`][driffusion.adapters.families.FAMILIES]): SD 1.5 / 2.x, SDXL with
img2img and one ControlNet, SD3 / SD3.5 (skip-layer guidance a third branch), FLUX.1 dev and
schnell with img2img (guidance-distilled; true CFG a second branch), Wan 2.1 and 2.2 (an expert
per row), HunyuanVideo (guidance-distilled video) and CogVideoX (frames-first latents).

Classifier-free guidance has two branches (the negative prompt and the prompt), batched in one
call of the network on one device or split over two
([`GuidedNetwork`][driffusion.core.branches.GuidedNetwork]); a per-step switch of the
pipeline (a ControlNet's keep, skip-layer guidance's window, Wan 2.2's expert, CogVideoX's
dynamic scale) is read from each row's own time, so drafted rows at other steps get theirs.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from driffusion.core.branches import GuidedNetwork, classifier_free_guidance, pick_rows
from driffusion.core.schedule import Schedule


def weight_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's (first) weights: what its inputs are cast to."""
    return next(module.parameters()).dtype


def grid_points(t: Tensor, times: Tensor) -> Tensor:
    """The grid point of each row's time ``t[M]`` among the grid's network ``times``: what a
    per-step switch of a pipeline (a ControlNet's keep, skip-layer guidance's window) reads.

    Raises:
        ValueError: a row's time is no point of the grid (a sampler evaluating between grid
            points would get this, never a silent switch).
    """
    match = torch.isclose(t.to(torch.float64)[:, None], times.to(t.device, torch.float64)[None])
    if not bool(match.any(dim=1).all()):
        raise ValueError(f"a row's time {t.tolist()} is not a step of the pipeline's grid")
    return match.to(torch.long).argmax(dim=1).to(times.device)


def per_row(values: Tensor, like: Tensor) -> Tensor:
    """``values[M]`` (one per row) shaped to broadcast over ``like[M, ...]``, in its dtype and
    device: a row's own scale, factor or keep."""
    return values.to(like.device, like.dtype).view(-1, *[1] * (like.ndim - 1))


def evaluate_groups(
    groups: list[tuple[Tensor, Any]], evaluate: Callable[[Tensor, Any], Tensor]
) -> Tensor:
    """Rows split by boolean masks ``[M]`` (each row in one group), each group's rows
    evaluated in one call ``evaluate(index, key)`` with the group's key (a Wan 2.2 expert,
    skip-layer guidance's skipped layers), the outputs in row order; a group holding every row
    is one call."""
    rows = len(groups[0][0])
    out: Tensor | None = None
    for mask, key in groups:
        index = mask.nonzero().flatten()
        if not len(index):
            continue
        part = evaluate(index, key)
        if len(index) == rows:
            return part
        out = part.new_empty((rows, *part.shape[1:])) if out is None else out
        out[index] = part
    assert out is not None, "no group holds a row"
    return out


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

    def combine(self, outputs: Tensor, t: Tensor) -> Tensor:
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
        dtype = weight_dtype(self.unet)
        embeds, added = self._text_inputs(branch, cond, dtype)
        residuals = self._residuals(x.to(dtype), t, embeds, added, cond)
        return self.unet(
            x.to(dtype), t, encoder_hidden_states=embeds, added_cond_kwargs=added, **residuals
        ).sample.float()

    def _text_inputs(
        self, branch: Tensor, cond: dict[str, Tensor], dtype: torch.dtype
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Each row's branch's text embeddings and SDXL's added conditioning."""
        embeds = self._pick(branch, cond, "prompt_embeds", "negative_prompt_embeds").to(dtype)
        if "text_embeds" not in cond:
            return embeds, None
        time_ids = cond["time_ids"]
        if "negative_time_ids" in cond:
            time_ids = self._pick(branch, cond, "time_ids", "negative_time_ids")
        text = self._pick(branch, cond, "text_embeds", "negative_text_embeds")
        return embeds, {"text_embeds": text, "time_ids": time_ids}

    def _residuals(
        self,
        x: Tensor,
        t: Tensor,
        embeds: Tensor,
        added: dict[str, Tensor] | None,
        cond: dict[str, Tensor],
    ) -> dict[str, Any]:
        """Extra inputs of the UNet call (a ControlNet's residuals); none here."""
        return {}


class GuidedControlNetUNet(GuidedUNet):
    """An SD / SDXL UNet with a ControlNet: every row runs the ControlNet at its own state and
    time, and its residuals, scaled by ``conditioning_scale`` where the row's step lies inside
    ``[control_guidance_start, control_guidance_end]`` (0 outside, as the pipeline's
    ``controlnet_keep``), go into the UNet call. ``cond["control_image"]`` is each row's
    preprocessed control image.
    """

    times: Tensor  # the grid's network times, and the ControlNet's keep at each (buffers)
    keep: Tensor

    def __init__(
        self,
        unet: nn.Module,
        controlnet: nn.Module,
        guidance: float,
        scale: float,
        times: Tensor,
        keep: Tensor,
    ) -> None:
        super().__init__(unet, guidance)
        self.controlnet = controlnet
        self.scale = scale
        self.register_buffer("times", times.to(torch.float64), persistent=False)
        self.register_buffer("keep", keep.to(torch.float64), persistent=False)

    def _residuals(
        self,
        x: Tensor,
        t: Tensor,
        embeds: Tensor,
        added: dict[str, Tensor] | None,
        cond: dict[str, Tensor],
    ) -> dict[str, Any]:
        factor = self.scale * self.keep[grid_points(t, self.times)]
        down, mid = self.controlnet(
            x,
            t,
            encoder_hidden_states=embeds,
            controlnet_cond=cond["control_image"].to(x.dtype),
            conditioning_scale=1.0,  # the row's own factor below
            guess_mode=False,
            added_cond_kwargs=added,
            return_dict=False,
        )

        return {
            "down_block_additional_residuals": [d * per_row(factor, d) for d in down],
            "mid_block_additional_residual": mid * per_row(factor, mid),
        }


class GuidedSD3Transformer(_ClassifierFreeGuidance):
    """SD3's transformer behind the per-row contract, with classifier-free guidance.

    ``forward(x, t, prompt_embeds, negative_prompt_embeds, pooled, negative_pooled)``; ``t`` is
    the network time ``1000 * sigma``.

    Skip-layer guidance (SD3.5, ``skip_guidance_layers`` under classifier-free guidance) is a
    third branch, the prompt with those layers skipped: a row at grid point ``i`` with
    ``N start < i < N stop`` adds ``(c - s) scale`` to its guided output, as the pipeline does
    (its branch is evaluated for every row; outside the window it is not used).
    """

    times: Tensor  # the grid's network times (a buffer; skip-layer guidance's window reads it)

    def __init__(
        self,
        transformer: nn.Module,
        guidance: float,
        skip_layers: list[int] | None = None,
        skip_scale: float = 0.0,
        window: tuple[float, float] = (0.0, 0.0),
        times: Tensor | None = None,
    ) -> None:
        super().__init__(guidance)
        self.transformer = transformer
        self.skip_layers = list(skip_layers) if skip_layers and self.branches == 2 else None
        self.skip_scale = skip_scale
        self.window = window
        if self.skip_layers is not None:
            self.branches = 3
        self.register_buffer(
            "times", torch.zeros(0) if times is None else times.to(torch.float64), persistent=False
        )

    def evaluate_branches(self, x: Tensor, t: Tensor, branch: Tensor, **cond: Tensor) -> Tensor:
        skipped = branch == 2  # the prompt's conditioning, with the layers skipped
        picked = torch.where(skipped, torch.ones_like(branch), branch)
        embeds = self._pick(picked, cond, "prompt_embeds", "negative_prompt_embeds")
        pooled = self._pick(picked, cond, "pooled", "negative_pooled")
        return evaluate_groups(
            [(skipped, self.skip_layers), (~skipped, None)],
            lambda i, layers: self._call(x[i], t[i], embeds[i], pooled[i], layers),
        )

    def _call(
        self, x: Tensor, t: Tensor, embeds: Tensor, pooled: Tensor, skip: list[int] | None
    ) -> Tensor:
        dtype = weight_dtype(self.transformer)
        extra = {} if skip is None else {"skip_layers": skip}
        return self.transformer(
            hidden_states=x.to(dtype),
            timestep=t,
            encoder_hidden_states=embeds.to(dtype),
            pooled_projections=pooled.to(dtype),
            return_dict=False,
            **extra,
        )[0].float()

    def combine(self, outputs: Tensor, t: Tensor) -> Tensor:
        guided = super().combine(outputs[:2], t)
        if self.branches < 3:
            return guided
        n = self.times.numel()
        points = grid_points(t, self.times).to(outputs.device)
        start, stop = self.window
        inside = (points > n * start) & (points < n * stop)  # the pipeline's should_skip_layers
        difference = outputs[1] - outputs[2]
        return guided + difference * per_row(inside.to(torch.float64) * self.skip_scale, difference)


@dataclass(frozen=True)
class Call:
    """One call of a pipeline as a family's hooks see it: the pipeline, the image size, the
    grid's steps (``num_inference_steps``) and the family's call options as applied.

    Attributes:
        pipe: the diffusers pipeline.
        height: image height in pixels.
        width: image width in pixels.
        steps: the pipeline's grid steps.
        options: the family's [`call_options`][driffusion.adapters.families.Family.call_options],
            as the call applies them.
    """

    pipe: Any
    height: int
    width: int
    steps: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.height, self.width


class Family:
    """A pipeline family: the pipelines it accepts, the recipes' defaults, and what differs.

    Attributes:
        name: the family's name on the command lines (``sd21``, ``sdxl``, ``sd3``).
        pipeline_classes: the diffusers pipeline class names it accepts (the first is loaded).
        model: the default hub id.
        steps: default sampling steps.
        guidance: default classifier-free guidance scale.
        size: default image size in pixels.
        pixel_multiple: what height and width must be a multiple of with the real weights (VAE
            factor x patch size; a tiny model's is checked once it is built).
        vp_grid: the grid is a variance-preserving one (``--rounds`` calibrates against a VP
            reference solve).
        call_options: keywords of the pipeline's ``__call__`` it honours beyond the common ones.
    """

    name: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]
    model: ClassVar[str]
    steps: ClassVar[int]
    guidance: ClassVar[float]
    size: ClassVar[int]
    pixel_multiple: ClassVar[int] = 8
    vp_grid: ClassVar[bool] = True
    takes_latents: ClassVar[bool] = True
    """Whether a call may pass initial ``latents`` (img2img starts from its image's)."""
    call_options: ClassVar[dict[str, Any]] = {}
    """Keywords of the pipeline's ``__call__`` beyond the common ones that the family honours,
    with their defaults (the pipeline's)."""
    output: ClassVar[str] = "images"
    """The pipeline output's field of the result (``images``; video pipelines' ``frames``)."""

    @property
    def pipeline_class(self) -> str:
        """The pipeline class a model of this family loads as."""
        return self.pipeline_classes[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def accepts(self, pipe: Any) -> bool:
        """Whether ``pipe`` is one of this family's pipelines."""
        return type(pipe).__name__ in self.pipeline_classes

    def denoiser(self, pipe: Any) -> nn.Module:
        """The network the pipeline denoises with."""
        return pipe.unet

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """The model's default ``(height, width)`` in pixels."""
        side = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
        return side, side

    def size_multiple(self, pipe: Any) -> int:
        """What this model's height and width must be a multiple of, in pixels."""
        return int(pipe.vae_scale_factor)

    def timestep_options(self, call: Call) -> dict[str, Any]:
        """The keyword arguments the pipeline gives ``scheduler.set_timesteps`` besides the steps
        (a dynamic shift ``mu``, explicit ``sigmas``): the grid is the pipeline's only with
        them."""
        return {}

    def latent_shape(self, call: Call) -> tuple[int, ...]:
        """The shape of one sample's state, as ``prepare_latents`` makes it for the call (its
        size; video: the options' ``num_frames``)."""
        pipe, height, width = call.pipe, call.height, call.width
        factor = pipe.vae_scale_factor
        channels = int(self.denoiser(pipe).config.in_channels)  # type: ignore[union-attr,arg-type]
        return (channels, height // factor, width // factor)

    def initial_latents(
        self,
        call: Call,
        batch: int,
        dtype: torch.dtype,
        generator: Any,
        latents: Tensor | None,
    ) -> Tensor:
        """The pipeline's own initial latents (``prepare_latents``; call it with the pipeline's
        scheduler set to the call's grid: Euler-family schedulers scale the noise by their first
        sigma)."""
        pipe, (height, width) = call.pipe, call.size
        channels = self.latent_shape(call)[0]
        return pipe.prepare_latents(
            batch, channels, height, width, dtype, pipe.device, generator, latents
        )

    def vae_latents(self, call: Call, latents: Tensor) -> Tensor:
        """The final state as the VAE takes it (before its scaling)."""
        return latents

    def vae_input(self, call: Call, latents: Tensor) -> Tensor:
        """What ``vae.decode`` takes for the final state: ``latents / scaling_factor +
        shift_factor`` of the unpacked latents."""
        config = call.pipe.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        return self.vae_latents(call, latents) / config.scaling_factor + shift

    def postprocess(self, pipe: Any, decoded: Tensor, output_type: str) -> Any:
        """Decoded pixels in ``[-1, 1]`` as the pipeline returns them for ``output_type``."""
        return pipe.image_processor.postprocess(decoded, output_type=output_type)

    def network(self, call: Call, guidance: float, schedule: Schedule) -> GuidedNetwork:
        """The guided per-row network over the pipeline's denoiser for the call (its options:
        the family's [`call_options`][driffusion.adapters.families.Family.call_options], as
        applied) on the sampler's grid ``schedule``."""
        return GuidedUNet(self.denoiser(call.pipe), guidance)

    def effective_options(
        self, pipe: Any, options: dict[str, Any], negative: bool
    ) -> dict[str, Any]:
        """The call's options as the pipeline applies them, given whether a negative prompt
        came (``options`` holds every key of ``call_options``).

        Raises:
            ValueError: an option the pipeline cannot take (the message names it).
        """
        return options

    def call_size(
        self, pipe: Any, height: int | None, width: int | None, options: dict[str, Any]
    ) -> tuple[int | None, int | None]:
        """The call's ``(height, width)`` before defaults (img2img: the image's)."""
        return height, width

    def first_step(self, steps: int, options: dict[str, Any]) -> int:
        """The grid point the sampler starts from (img2img: the first step kept)."""
        return 0

    def encode(
        self,
        call: Call,
        prompts: list[str],
        negative: list[str] | None,
        guided: bool,
    ) -> dict[str, Tensor]:
        """The network's conditioning ``[B, ...]``, one row per prompt (the negative branch's
        too when ``guided``), with the pipeline's own ``encode_prompt``."""
        raise NotImplementedError

    def load_options(self, no_t5: bool) -> dict[str, Any]:
        """``from_pretrained`` keyword arguments this family's loading needs."""
        if no_t5:
            raise ValueError(f"no_t5 applies to sd3 only, not {self.name}")
        return {}


class StableDiffusion(Family):
    """SD 2.1 (``StableDiffusionPipeline``): one CLIP text encoder; epsilon or v-prediction."""

    name = "sd21"
    pipeline_classes = ("StableDiffusionPipeline",)
    model = "stabilityai/stable-diffusion-2-1"
    steps, guidance, size = 50, 7.5, 768

    def encode(
        self,
        call: Call,
        prompts: list[str],
        negative: list[str] | None,
        guided: bool,
    ) -> dict[str, Tensor]:
        pipe = call.pipe
        embeds, negative_embeds = pipe.encode_prompt(
            prompts, pipe.device, 1, guided, negative_prompt=negative
        )
        cond = {"prompt_embeds": embeds}
        if guided:
            cond["negative_prompt_embeds"] = negative_embeds
        return cond

    def load_options(self, no_t5: bool) -> dict[str, Any]:
        super().load_options(no_t5)
        return {"safety_checker": None, "requires_safety_checker": False}


class StableDiffusionXL(Family):
    """SDXL (``StableDiffusionXLPipeline``): two text encoders, pooled embeddings and
    ``add_time_ids``."""

    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    model = "stabilityai/stable-diffusion-xl-base-1.0"
    steps, guidance, size = 50, 5.0, 1024

    def encode(
        self,
        call: Call,
        prompts: list[str],
        negative: list[str] | None,
        guided: bool,
    ) -> dict[str, Tensor]:
        pipe, size = call.pipe, call.size
        embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompts,
            device=pipe.device,
            do_classifier_free_guidance=guided,
            negative_prompt=negative,
        )
        projection = (
            pipe.text_encoder_2.config.projection_dim
            if pipe.text_encoder_2 is not None
            else int(pooled.shape[-1])
        )
        time_ids, negative_time_ids = self.time_ids(pipe, size, embeds.dtype, projection)
        cond = {
            "prompt_embeds": embeds,
            "text_embeds": pooled,
            "time_ids": time_ids.to(pipe.device).repeat(len(prompts), 1),
        }
        if guided:
            cond["negative_prompt_embeds"] = negative_embeds
            cond["negative_text_embeds"] = negative_pooled
            if negative_time_ids is not None:
                cond["negative_time_ids"] = negative_time_ids.to(pipe.device).repeat(
                    len(prompts), 1
                )
        return cond

    def time_ids(
        self, pipe: Any, size: tuple[int, int], dtype: torch.dtype, projection: int
    ) -> tuple[Tensor, Tensor | None]:
        """``add_time_ids`` (original size, crop, target size) of the prompt's branch and, where
        they differ, of the negative branch (``None``: the same)."""
        ids = pipe._get_add_time_ids(
            size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=projection
        )
        return ids, None


class StableDiffusionXLImg2Img(StableDiffusionXL):
    """SDXL image to image (``StableDiffusionXLImg2ImgPipeline``): the sampler starts at the
    first kept step, ``t_start = N - int(N strength)``, from the image's latents noised there by
    the pipeline's own ``prepare_latents`` (VAE encoding, ``scheduler.add_noise``); the size is
    the image's; ``add_time_ids`` with the aesthetic scores where the model wants them."""

    name = "sdxl_img2img"
    pipeline_classes = ("StableDiffusionXLImg2ImgPipeline",)
    steps, guidance = 50, 5.0
    takes_latents = False
    call_options: ClassVar[dict[str, Any]] = {"image": None, "strength": 0.3}

    def effective_options(
        self, pipe: Any, options: dict[str, Any], negative: bool
    ) -> dict[str, Any]:
        strength = _image_and_strength(options)
        image = options["image"]
        if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] != 3:
            image = pipe.image_processor.preprocess(image)  # PIL, arrays: [B, 3, H, W] in [-1, 1]
        return {**options, "image": image, "strength": float(strength)}

    def call_size(
        self, pipe: Any, height: int | None, width: int | None, options: dict[str, Any]
    ) -> tuple[int | None, int | None]:
        image_height, image_width = (int(side) for side in options["image"].shape[-2:])
        for name, asked, have in (("height", height, image_height), ("width", width, image_width)):
            if asked is not None and asked != have:
                raise ValueError(f"{name} is the image's ({have}) in img2img, got {asked}")
        return image_height, image_width

    def first_step(self, steps: int, options: dict[str, Any]) -> int:
        kept = min(int(steps * options["strength"]), steps)  # the pipeline's get_timesteps
        return _first_kept(steps, steps - kept, options["strength"])

    def initial_latents(
        self,
        call: Call,
        batch: int,
        dtype: torch.dtype,
        generator: Any,
        latents: Tensor | None,
    ) -> Tensor:
        pipe, steps, options = call.pipe, call.steps, call.options
        timesteps, _ = pipe.get_timesteps(steps, options["strength"], pipe.device)
        first = timesteps[:1].repeat(batch)
        image = options["image"].to(pipe.device)
        return pipe.prepare_latents(image, first, batch, 1, dtype, pipe.device, generator)

    def time_ids(
        self, pipe: Any, size: tuple[int, int], dtype: torch.dtype, projection: int
    ) -> tuple[Tensor, Tensor | None]:
        ids, negative_ids = pipe._get_add_time_ids(
            size, (0, 0), size, 6.0, 2.5, size, (0, 0), size, dtype, projection
        )  # the pipeline's defaults: aesthetic scores 6 and 2.5, negative sizes = the image's
        return ids, None if torch.equal(ids, negative_ids) else negative_ids


class StableDiffusionXLControlNet(StableDiffusionXL):
    """SDXL with one ControlNet (``StableDiffusionXLControlNetPipeline``): the control image
    (the call's ``image``, resized to the call's size by the pipeline's ``prepare_image``) is
    conditioning of every row; ``controlnet_conditioning_scale`` and
    ``control_guidance_start/end`` are honoured per row, from the row's own step."""

    name = "sdxl_controlnet"
    pipeline_classes = ("StableDiffusionXLControlNetPipeline",)
    call_options: ClassVar[dict[str, Any]] = {
        "image": None,
        "controlnet_conditioning_scale": 1.0,
        "control_guidance_start": 0.0,
        "control_guidance_end": 1.0,
    }

    def effective_options(
        self, pipe: Any, options: dict[str, Any], negative: bool
    ) -> dict[str, Any]:
        if type(pipe.controlnet).__name__ != "ControlNetModel":
            raise ValueError(f"one ControlNetModel is supported, not {type(pipe.controlnet)}")
        if options["image"] is None:
            raise ValueError("image is required: the control image")
        for name in ("controlnet_conditioning_scale", "control_guidance_start"):
            value = options[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        start, end = options["control_guidance_start"], options["control_guidance_end"]
        if isinstance(end, bool) or not isinstance(end, (int, float)) or not 0 <= start < end <= 1:
            raise ValueError(
                "control_guidance_start and control_guidance_end must satisfy "
                f"0 <= start < end <= 1, got {start!r} and {end!r}"
            )
        return options

    def network(self, call: Call, guidance: float, schedule: Schedule) -> GuidedNetwork:
        pipe, options = call.pipe, call.options
        n = schedule.num_steps
        start, end = options["control_guidance_start"], options["control_guidance_end"]
        keep = torch.tensor([1.0 - float(i / n < start or (i + 1) / n > end) for i in range(n)])
        scale = float(options["controlnet_conditioning_scale"])
        times = schedule.timesteps[:n]
        return GuidedControlNetUNet(pipe.unet, pipe.controlnet, guidance, scale, times, keep)

    def encode(
        self,
        call: Call,
        prompts: list[str],
        negative: list[str] | None,
        guided: bool,
    ) -> dict[str, Tensor]:
        pipe, (height, width), options = call.pipe, call.size, call.options
        cond = super().encode(call, prompts, negative, guided)
        image = pipe.prepare_image(
            image=options["image"],
            width=width,
            height=height,
            batch_size=len(prompts),
            num_images_per_prompt=1,
            device=pipe.device,
            dtype=pipe.controlnet.dtype,
            do_classifier_free_guidance=False,
            guess_mode=False,
        )
        if image.shape[0] != len(prompts):
            raise ValueError(
                f"image: give one control image or one per image ({len(prompts)}), got "
                f"{image.shape[0]}"
            )
        cond["control_image"] = image
        return cond


class StableDiffusion3(Family):
    """SD3 (``StableDiffusion3Pipeline``): an MMDiT transformer over patches, flow matching with
    a (possibly dynamic) shift, three text encoders with T5 optional."""

    name = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    model = "stabilityai/stable-diffusion-3-medium-diffusers"
    steps, guidance, size = 28, 7.0, 1024
    pixel_multiple = 16
    vp_grid = False
    call_options: ClassVar[dict[str, Any]] = {
        "skip_guidance_layers": None,  # SD3.5's skip-layer guidance: a third branch
        "skip_layer_guidance_scale": 2.8,
        "skip_layer_guidance_stop": 0.2,
        "skip_layer_guidance_start": 0.01,
    }

    def denoiser(self, pipe: Any) -> nn.Module:
        return pipe.transformer

    def default_size(self, pipe: Any) -> tuple[int, int]:
        side = int(pipe.default_sample_size * pipe.vae_scale_factor)
        return side, side

    def size_multiple(self, pipe: Any) -> int:
        return int(pipe.vae_scale_factor * pipe.transformer.config.patch_size)

    def timestep_options(self, call: Call) -> dict[str, Any]:
        pipe, height, width = call.pipe, call.height, call.width
        if not pipe.scheduler.config.get("use_dynamic_shifting", False):
            return {}
        patch = self.size_multiple(pipe)
        return {"mu": _shift(pipe.scheduler, (height // patch) * (width // patch), 1.16)}

    def effective_options(
        self, pipe: Any, options: dict[str, Any], negative: bool
    ) -> dict[str, Any]:
        layers = options["skip_guidance_layers"]
        if layers is None:
            return options
        if not isinstance(layers, (list, tuple)) or not all(
            isinstance(layer, int) and not isinstance(layer, bool) for layer in layers
        ):
            raise ValueError(f"skip_guidance_layers must be a list of integers, got {layers!r}")
        count = int(pipe.transformer.config.num_layers)
        if not layers or not all(0 <= layer < count for layer in layers):
            raise ValueError(
                f"skip_guidance_layers must name layers of the transformer (0..{count - 1}), "
                f"got {list(layers)}"
            )
        return {**options, "skip_guidance_layers": list(layers)}

    def network(self, call: Call, guidance: float, schedule: Schedule) -> GuidedNetwork:
        pipe, options = call.pipe, call.options
        window = (options["skip_layer_guidance_start"], options["skip_layer_guidance_stop"])
        return GuidedSD3Transformer(
            self.denoiser(pipe),
            guidance,
            options["skip_guidance_layers"],
            float(options["skip_layer_guidance_scale"]),
            (float(window[0]), float(window[1])),
            schedule.timesteps[: schedule.num_steps],
        )

    def encode(
        self,
        call: Call,
        prompts: list[str],
        negative: list[str] | None,
        guided: bool,
    ) -> dict[str, Tensor]:
        pipe = call.pipe
        embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompts,
            None,
            None,
            device=pipe.device,
            do_classifier_free_guidance=guided,
            negative_prompt=negative,
        )
        cond = {"prompt_embeds": embeds, "pooled": pooled}
        if guided:
            cond["negative_prompt_embeds"] = negative_embeds
            cond["negative_pooled"] = negative_pooled
        return cond

    def load_options(self, no_t5: bool) -> dict[str, Any]:
        return {"text_encoder_3": None, "tokenizer_3": None} if no_t5 else {}


class _GuidanceDistilled(_ClassifierFreeGuidance):
    """A guidance-distilled transformer: one call per state with the guidance scale an input
    of the network (``distilled_guidance``); "true CFG" (``true_cfg_scale > 1`` with a negative
    prompt) adds the negative prompt's branch, combined ``neg + s (pos - neg)`` as
    classifier-free guidance is."""

    def __init__(self, transformer: nn.Module, guidance: float, true_cfg_scale: float) -> None:
        super().__init__(true_cfg_scale)  # the branches and their combination: true CFG
        self.transformer = transformer
        self.distilled_guidance = guidance


class GuidedFluxTransformer(_GuidanceDistilled):
    """FLUX.1's transformer behind the per-row contract (guidance-distilled; schnell has no
    guidance input). ``t`` is ``1000 sigma``; the position ids travel in the conditioning
    (``txt_ids``, ``img_ids``: the same for every row)."""

    def evaluate_branches(self, x: Tensor, t: Tensor, branch: Tensor, **cond: Tensor) -> Tensor:
        dtype = weight_dtype(self.transformer)
        embeds = self._pick(branch, cond, "prompt_embeds", "negative_prompt_embeds")
        pooled = self._pick(branch, cond, "pooled", "negative_pooled")
        guidance = None
        if self.transformer.config.guidance_embeds:  # type: ignore[union-attr]
            guidance = torch.full((x.shape[0],), self.distilled_guidance, device=x.device)
        return self.transformer(
            hidden_states=x.to(dtype),
            timestep=(t / 1000).to(dtype),
            guidance=guidance,
            pooled_projections=pooled.to(dtype),
            encoder_hidden_states=embeds.to(dtype),
            txt_ids=cond["txt_ids"][0],
            img_ids=cond["img_ids"][0],
            return_dict=False,
        )[0].float()


class GuidedHunyuanVideoTransformer(_GuidanceDistilled):
    """HunyuanVideo's transformer behind the per-row contract: guidance-distilled (the scale
    times 1000 is its ``guidance`` input), the Llama embeddings with their attention mask and
    CLIP's pooled embedding per row; ``t`` is ``1000 sigma``."""

    def evaluate_branches(self, x: Tensor, t: Tensor, branch: Tensor, **cond: Tensor) -> Tensor:
        dtype = weight_dtype(self.transformer)
        embeds = self._pick(branch, cond, "prompt_embeds", "negative_prompt_embeds")
        mask = self._pick(branch, cond, "attention_mask", "negative_attention_mask")
        pooled = self._pick(branch, cond, "pooled", "negative_pooled")
        guidance = torch.full((x.shape[0],), self.distilled_guidance, dtype=dtype, device=x.device)
        return self.transformer(
            hidden_states=x.to(dtype),
            timestep=t.float(),
            encoder_hidden_states=embeds.to(dtype),
            encoder_attention_mask=mask.to(dtype),
            pooled_projections=pooled.to(dtype),
            guidance=guidance * 1000.0,
            return_dict=False,
        )[0].float()


class Flux(Family):
    """FLUX.1 (``FluxPipeline``; dev and schnell): packed latents (2x2 patches as tokens),
    explicit sigmas ``linspace(1, 1/N, N)`` shifted by ``mu`` from the token count, a
    guidance-distilled transformer (``guidance_scale`` is an input of the network, not two
    branches; true CFG optional), CLIP pooled + T5 embeddings."""

    name = "flux"
    pipeline_classes = ("FluxPipeline",)
    model = "black-forest-labs/FLUX.1-dev"
    steps, guidance, size = 28, 3.5, 1024
    pixel_multiple = 16
    vp_grid = False
    call_options: ClassVar[dict[str, Any]] = {"true_cfg_scale": 1.0, "max_sequence_length": 512}

    def denoiser(self, pipe: Any) -> nn.Module:
        return pipe.transformer

    def default_size(self, pipe: Any) -> tuple[int, int]:
        side = int(pipe.default_sample_size * pipe.vae_scale_factor)
        return side, side

    def size_multiple(self, pipe: Any) -> int:
        return int(pipe.vae_scale_factor * 2)  # the VAE's factor, then 2x2 packing

    def latent_shape(self, call: Call) -> tuple[int, ...]:
        pipe, height, width = call.pipe, call.height, call.width
        tokens = (height // self.size_multiple(pipe)) * (width // self.size_multiple(pipe))
        return (tokens, int(pipe.transformer.config.in_channels))

    def timestep_options(self, call: Call) -> dict[str, Any]:
        pipe, steps = call.pipe, call.steps
        import numpy as np

        tokens = self.latent_shape(call)[0]
        options: dict[str, Any] = {"mu": _shift(pipe.scheduler, tokens, 1.15)}
        if not pipe.scheduler.config.get("use_flow_sigmas", False):
            options["sigmas"] = np.linspace(1.0, 1 / steps, steps)
        return options

    def initial_latents(
        self,
        call: Call,
        batch: int,
        dtype: torch.dtype,
        generator: Any,
        latents: Tensor | None,
    ) -> Tensor:
        pipe, (height, width) = call.pipe, call.size
        channels = int(pipe.transformer.config.in_channels) // 4
        packed, _ = pipe.prepare_latents(
            batch, channels, height, width, dtype, pipe.device, generator, latents
        )
        return packed

    def vae_latents(self, call: Call, latents: Tensor) -> Tensor:
        pipe = call.pipe
        return pipe._unpack_latents(latents, *call.size, pipe.vae_scale_factor)

    def effective_options(
        self, pipe: Any, options: dict[str, Any], negative: bool
    ) -> dict[str, Any]:
        return _true_cfg_applied(options, negative)

    def network(self, call: Call, guidance: float, schedule: Schedule) -> GuidedNetwork:
        pipe, options = call.pipe, call.options
        true_cfg = float(options["true_cfg_scale"])
        return GuidedFluxTransformer(self.denoiser(pipe), guidance, true_cfg)

    def encode(
        self,
        call: Call,
        prompts: list[str],
        negative: list[str] | None,
        guided: bool,
    ) -> dict[str, Tensor]:
        pipe, size, options = call.pipe, call.size, call.options

        def one(texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
            embeds, pooled, text_ids = pipe.encode_prompt(
                texts, device=pipe.device, max_sequence_length=options["max_sequence_length"]
            )
            return embeds, pooled, text_ids

        embeds, pooled, text_ids = one(prompts)
        height, width = (side // self.size_multiple(pipe) for side in size)
        image_ids = pipe._prepare_latent_image_ids(
            len(prompts), height, width, pipe.device, embeds.dtype
        )
        b = len(prompts)
        cond = {
            "prompt_embeds": embeds,
            "pooled": pooled,
            "txt_ids": text_ids.expand(b, *text_ids.shape),
            "img_ids": image_ids.expand(b, *image_ids.shape),
        }
        if guided:
            assert negative is not None  # true CFG needs the negative prompt
            cond["negative_prompt_embeds"], cond["negative_pooled"], _ = one(negative)
        return cond


class FluxSchnell(Flux):
    """FLUX.1-schnell: the FLUX pipeline without a guidance embedding, 4 steps, static shift."""

    name = "flux_schnell"
    # the same pipeline class: a loaded schnell is handled by Flux (the transformer's config
    # says it has no guidance embedding); this name gives schnell's defaults and hub id
    model = "black-forest-labs/FLUX.1-schnell"
    steps, guidance = 4, 0.0


class GuidedWanTransformer(_ClassifierFreeGuidance):
    """Wan's transformer behind the per-row contract, with classifier-free guidance (two calls
    per step in the pipeline, one batched call here).

    Wan 2.2's two experts: a row at ``t >= boundary`` runs ``transformer`` and is guided with
    ``guidance``, any other ``transformer_2`` with ``guidance_2``, so the rows of one round
    straddling the boundary each run their own expert (one call per expert present).
    ``expand_timesteps`` (Wan 2.2 TI2V) gives the transformer one time per latent token.
    """

    def __init__(
        self,
        transformer: nn.Module,
        guidance: float,
        transformer_2: nn.Module | None = None,
        guidance_2: float | None = None,
        boundary: float | None = None,
        expand_timesteps: bool = False,
    ) -> None:
        super().__init__(guidance)
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.guidance_2 = guidance if guidance_2 is None else guidance_2
        self.boundary = boundary
        self.expand_timesteps = expand_timesteps

    def _high_noise(self, t: Tensor) -> Tensor:
        """Which rows are the first expert's (all without a boundary)."""
        if self.boundary is None:
            return torch.ones_like(t, dtype=torch.bool)
        return t >= self.boundary

    def evaluate_branches(self, x: Tensor, t: Tensor, branch: Tensor, **cond: Tensor) -> Tensor:
        embeds = self._pick(branch, cond, "prompt_embeds", "negative_prompt_embeds")
        high = self._high_noise(t)
        return evaluate_groups(
            [(high, self.transformer), (~high, self.transformer_2)],
            lambda i, expert: self._call(expert, x[i], t[i], embeds[i]),
        )

    def _call(self, expert: nn.Module | None, x: Tensor, t: Tensor, embeds: Tensor) -> Tensor:
        assert expert is not None, "a row below the boundary needs transformer_2"
        dtype = weight_dtype(expert)
        timestep = t
        if self.expand_timesteps:  # one time per token of the (1, 2, 2)-patched latents
            tokens = x[:, 0, :, ::2, ::2].flatten(1).shape[1]
            timestep = t[:, None].expand(-1, tokens)
        return expert(
            hidden_states=x.to(dtype),
            timestep=timestep,
            encoder_hidden_states=embeds.to(dtype),
            return_dict=False,
        )[0].float()

    def combine(self, outputs: Tensor, t: Tensor) -> Tensor:
        if self.branches == 1:
            return outputs[0]
        scale = torch.where(self._high_noise(t), self.guidance, self.guidance_2)
        return classifier_free_guidance(outputs[0], outputs[1], per_row(scale, outputs[0]))


class _Video(Family):
    """What the text-to-video families share: 5-D latents ``(C, (F - 1) / 4 + 1, H / 8, W / 8)``
    drawn in float32 by ``prepare_latents``, ``num_frames`` with ``F - 1`` a multiple of the
    VAE's temporal factor, the call's own default size, ``frames`` out of the video processor."""

    vp_grid = False
    output = "frames"

    def denoiser(self, pipe: Any) -> nn.Module:
        return pipe.transformer

    def default_size(self, pipe: Any) -> tuple[int, int]:
        defaults = inspect.signature(type(pipe).__call__).parameters  # e.g. Wan's 480 x 832
        return int(defaults["height"].default), int(defaults["width"].default)

    def size_multiple(self, pipe: Any) -> int:
        patch: Any = self.denoiser(pipe).config.patch_size  # type: ignore[union-attr]
        side = patch[1] if isinstance(patch, (tuple, list)) else patch  # Wan: (t, h, w)
        return int(pipe.vae_scale_factor_spatial * side)

    def latent_shape(self, call: Call) -> tuple[int, ...]:
        pipe, height, width, options = call.pipe, call.height, call.width, call.options
        frames = (options["num_frames"] - 1) // pipe.vae_scale_factor_temporal + 1
        factor = pipe.vae_scale_factor_spatial
        channels = int(self.denoiser(pipe).config.in_channels)  # type: ignore[union-attr,arg-type]
        return (channels, frames, height // factor, width // factor)

    def effective_options(
        self, pipe: Any, options: dict[str, Any], negative: bool
    ) -> dict[str, Any]:
        frames, temporal = options["num_frames"], pipe.vae_scale_factor_temporal
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"num_frames must be an integer >= 1, got {frames!r}")
        if (frames - 1) % temporal:
            below = (frames - 1) // temporal * temporal + 1
            raise ValueError(
                f"num_frames - 1 must be divisible by {temporal} (the VAE's temporal factor), "
                f"got {frames}: {below} or {below + temporal}"
            )
        return options

    def initial_latents(
        self,
        call: Call,
        batch: int,
        dtype: torch.dtype,
        generator: Any,
        latents: Tensor | None,
    ) -> Tensor:
        pipe, (height, width) = call.pipe, call.size
        channels = self.latent_shape(call)[0]
        frames = call.options["num_frames"]
        return pipe.prepare_latents(  # float32, as the pipeline draws them
            batch, channels, height, width, frames, torch.float32, pipe.device, generator, latents
        )

    def postprocess(self, pipe: Any, decoded: Tensor, output_type: str) -> Any:
        return pipe.video_processor.postprocess_video(decoded, output_type=output_type)


class Wan(_Video):
    """Wan 2.1 text to video (``WanPipeline``): a UMT5 text encoder, classifier-free guidance,
    UniPC over flow sigmas (the published configs; FlowMatchEuler with shift works too);
    decoded per channel (``latents_mean``, ``latents_std``) by the causal 3-D VAE."""

    name = "wan"
    pipeline_classes = ("WanPipeline",)
    model = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    steps, guidance, size = 50, 5.0, 480
    pixel_multiple = 16
    call_options: ClassVar[dict[str, Any]] = {
        "num_frames": 81,
        "guidance_scale_2": None,
        "max_sequence_length": 512,
    }

    def denoiser(self, pipe: Any) -> nn.Module:
        return pipe.transformer if pipe.transformer is not None else pipe.transformer_2

    def effective_options(
        self, pipe: Any, options: dict[str, Any], negative: bool
    ) -> dict[str, Any]:
        if options["guidance_scale_2"] is not None and pipe.config.boundary_ratio is None:
            raise ValueError(
                "guidance_scale_2 is only supported when the pipeline's boundary_ratio is set "
                "(Wan 2.2's two experts)"
            )
        return super().effective_options(pipe, options, negative)

    def vae_input(self, call: Call, latents: Tensor) -> Tensor:
        config = call.pipe.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(latents)
        std = torch.tensor(config.latents_std).view(shape).to(latents)
        return latents * std + mean

    def network(self, call: Call, guidance: float, schedule: Schedule) -> GuidedNetwork:
        pipe, options = call.pipe, call.options
        ratio = pipe.config.boundary_ratio
        boundary = None if ratio is None else ratio * pipe.scheduler.config.num_train_timesteps
        return GuidedWanTransformer(
            pipe.transformer,
            guidance,
            pipe.transformer_2,
            options["guidance_scale_2"],
            boundary,
            bool(pipe.config.get("expand_timesteps", False)),
        )

    def encode(
        self,
        call: Call,
        prompts: list[str],
        negative: list[str] | None,
        guided: bool,
    ) -> dict[str, Tensor]:
        return _negative_branch_encode(call, prompts, negative, guided)


class Wan22(Wan):
    """Wan 2.2 (``WanPipeline`` with ``transformer_2`` and ``boundary_ratio``): the high-noise
    expert with ``guidance_scale`` above the boundary, the low-noise one with
    ``guidance_scale_2`` below (the pipeline's own scale where not given)."""

    name = "wan22"
    # the same pipeline class: a loaded Wan 2.2 is handled by Wan (its config has the
    # boundary); this name gives Wan 2.2's defaults and hub id
    model = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
    steps, guidance, size = 40, 4.0, 720


class HunyuanVideo(_Video):
    """HunyuanVideo text to video (``HunyuanVideoPipeline``): guidance-distilled (the scale is
    an input of the network; true CFG with a negative prompt adds a branch), Llama embeddings
    through the pipeline's prompt template with their attention mask plus CLIP's pooled one,
    FlowMatchEuler over the pipeline's sigmas ``linspace(1, 0, N + 1)[:-1]`` shifted by the
    scheduler, decoded by the 3-D VAE (``latents / scaling_factor``)."""

    name = "hunyuan_video"
    pipeline_classes = ("HunyuanVideoPipeline",)
    model = "hunyuanvideo-community/HunyuanVideo"
    steps, guidance, size = 50, 6.0, 720
    pixel_multiple = 16
    call_options: ClassVar[dict[str, Any]] = {
        "num_frames": 129,
        "true_cfg_scale": 1.0,
        "max_sequence_length": 256,
    }

    def timestep_options(self, call: Call) -> dict[str, Any]:
        import numpy as np

        return {"sigmas": np.linspace(1.0, 0.0, call.steps + 1)[:-1]}

    def effective_options(
        self, pipe: Any, options: dict[str, Any], negative: bool
    ) -> dict[str, Any]:
        return _true_cfg_applied(super().effective_options(pipe, options, negative), negative)

    def network(self, call: Call, guidance: float, schedule: Schedule) -> GuidedNetwork:
        pipe, options = call.pipe, call.options
        true_cfg = float(options["true_cfg_scale"])
        return GuidedHunyuanVideoTransformer(pipe.transformer, guidance, true_cfg)

    def encode(
        self,
        call: Call,
        prompts: list[str],
        negative: list[str] | None,
        guided: bool,
    ) -> dict[str, Tensor]:
        pipe, options = call.pipe, call.options

        def one(texts: list[str]) -> dict[str, Tensor]:
            embeds, pooled, mask = pipe.encode_prompt(
                prompt=texts,
                device=pipe.device,
                max_sequence_length=options["max_sequence_length"],
            )
            return {"prompt_embeds": embeds, "pooled": pooled, "attention_mask": mask}

        cond = one(prompts)
        if guided:
            assert negative is not None  # true CFG needs the negative prompt
            cond.update({f"negative_{name}": value for name, value in one(negative).items()})
        return cond


class GuidedCogVideoXTransformer(_ClassifierFreeGuidance):
    """CogVideoX's transformer behind the per-row contract: frames-first latents, batched
    classifier-free guidance, rotary embeddings (5B) travelling in the conditioning
    (``rotary_cos``, ``rotary_sin``: the same for every row). With ``dynamic`` (the pipeline's
    ``use_dynamic_cfg``) each row is guided with the scale of its own time,
    ``1 + w (1 - cos(pi ((N - t) / N)^5)) / 2``, as the pipeline computes it."""

    def __init__(self, transformer: nn.Module, guidance: float, dynamic: bool, steps: int):
        super().__init__(guidance)
        self.transformer = transformer
        self.dynamic = dynamic
        self.steps = steps

    def evaluate_branches(self, x: Tensor, t: Tensor, branch: Tensor, **cond: Tensor) -> Tensor:
        dtype = weight_dtype(self.transformer)
        embeds = self._pick(branch, cond, "prompt_embeds", "negative_prompt_embeds")
        rotary = None
        if "rotary_cos" in cond:
            rotary = (cond["rotary_cos"][0], cond["rotary_sin"][0])
        return self.transformer(
            hidden_states=x.to(dtype),
            encoder_hidden_states=embeds.to(dtype),
            timestep=t,
            image_rotary_emb=rotary,
            return_dict=False,
        )[0].float()

    def combine(self, outputs: Tensor, t: Tensor) -> Tensor:
        if self.branches == 1 or not self.dynamic:
            return super().combine(outputs, t)
        n = self.steps
        phase = ((n - t.to(torch.float64)) / n) ** 5.0
        scale = 1 + self.guidance * (1 - torch.cos(math.pi * phase)) / 2
        return classifier_free_guidance(outputs[0], outputs[1], per_row(scale, outputs[0]))


class CogVideoX(_Video):
    """CogVideoX text to video (``CogVideoXPipeline``): frames-first latents
    ``(F', C, H / 8, W / 8)`` (frames padded to the temporal patch where the transformer has
    one, dropped before decoding), a T5 text encoder, batched classifier-free guidance
    (``use_dynamic_cfg`` per row), ``CogVideoXDDIMScheduler`` (DDIM over its shifted alphas);
    the default size and frames are the transformer's sample size."""

    name = "cogvideox"
    pipeline_classes = ("CogVideoXPipeline",)
    model = "THUDM/CogVideoX-2b"
    steps, guidance, size = 50, 6.0, 480
    pixel_multiple = 16
    call_options: ClassVar[dict[str, Any]] = {
        "num_frames": None,  # the transformer's sample_frames
        "use_dynamic_cfg": False,
        "max_sequence_length": 226,
    }

    def default_size(self, pipe: Any) -> tuple[int, int]:
        config, factor = pipe.transformer.config, pipe.vae_scale_factor_spatial
        return int(config.sample_height * factor), int(config.sample_width * factor)

    def effective_options(
        self, pipe: Any, options: dict[str, Any], negative: bool
    ) -> dict[str, Any]:
        if not isinstance(options["use_dynamic_cfg"], bool):
            raise ValueError(
                f"use_dynamic_cfg must be True or False, got {options['use_dynamic_cfg']!r}"
            )
        frames = options["num_frames"]
        options = {
            **options,
            "num_frames": pipe.transformer.config.sample_frames if frames is None else frames,
        }
        return super().effective_options(pipe, options, negative)

    def _padding(self, pipe: Any, options: dict[str, Any]) -> int:
        """Latent frames the pipeline adds to fill the transformer's temporal patch."""
        frames = (options["num_frames"] - 1) // pipe.vae_scale_factor_temporal + 1
        patch = pipe.transformer.config.patch_size_t
        return 0 if patch is None or frames % patch == 0 else patch - frames % patch

    def latent_shape(self, call: Call) -> tuple[int, ...]:
        pipe, options = call.pipe, call.options
        channels, frames, h, w = super().latent_shape(call)
        return (frames + self._padding(pipe, options), channels, h, w)

    def initial_latents(
        self,
        call: Call,
        batch: int,
        dtype: torch.dtype,
        generator: Any,
        latents: Tensor | None,
    ) -> Tensor:
        pipe, (height, width), options = call.pipe, call.size, call.options
        channels = int(pipe.transformer.config.in_channels)
        frames = (
            options["num_frames"] + self._padding(pipe, options) * pipe.vae_scale_factor_temporal
        )
        return pipe.prepare_latents(
            batch, channels, frames, height, width, dtype, pipe.device, generator, latents
        )

    def vae_input(self, call: Call, latents: Tensor) -> Tensor:
        pipe, options = call.pipe, call.options
        latents = latents[:, self._padding(pipe, options) :]  # the frames the pipeline added
        return latents.permute(0, 2, 1, 3, 4) / pipe.vae_scaling_factor_image

    def network(self, call: Call, guidance: float, schedule: Schedule) -> GuidedNetwork:
        pipe, options = call.pipe, call.options
        dynamic = bool(options["use_dynamic_cfg"])
        return GuidedCogVideoXTransformer(pipe.transformer, guidance, dynamic, schedule.num_steps)

    def encode(
        self,
        call: Call,
        prompts: list[str],
        negative: list[str] | None,
        guided: bool,
    ) -> dict[str, Tensor]:
        pipe = call.pipe
        cond = _negative_branch_encode(call, prompts, negative, guided)
        if pipe.transformer.config.use_rotary_positional_embeddings:
            frames = self.latent_shape(call)[0]
            cos, sin = pipe._prepare_rotary_positional_embeddings(*call.size, frames, pipe.device)
            b = len(prompts)
            cond["rotary_cos"], cond["rotary_sin"] = (r.expand(b, *r.shape) for r in (cos, sin))
        return cond


class FluxImg2Img(Flux):
    """FLUX.1 image to image (``FluxImg2ImgPipeline``): the image resized to the call's size
    (the model's default where not given), VAE-encoded and noised by the pipeline's own
    ``prepare_latents`` (``scale_noise``) at the first kept step of FLUX's grid,
    ``t_start = int(N - N strength)``; the sampler runs the grid from there."""

    name = "flux_img2img"
    pipeline_classes = ("FluxImg2ImgPipeline",)
    takes_latents = False
    call_options: ClassVar[dict[str, Any]] = {**Flux.call_options, "image": None, "strength": 0.6}

    def effective_options(
        self, pipe: Any, options: dict[str, Any], negative: bool
    ) -> dict[str, Any]:
        strength = _image_and_strength(options)
        return super().effective_options(pipe, {**options, "strength": strength}, negative)

    def first_step(self, steps: int, options: dict[str, Any]) -> int:
        start = int(max(steps - min(steps * options["strength"], steps), 0))  # get_timesteps
        return _first_kept(steps, start, options["strength"])

    def initial_latents(
        self,
        call: Call,
        batch: int,
        dtype: torch.dtype,
        generator: Any,
        latents: Tensor | None,
    ) -> Tensor:
        pipe, (height, width), options = call.pipe, call.size, call.options
        image = pipe.image_processor.preprocess(options["image"], height=height, width=width)
        timesteps, _ = pipe.get_timesteps(call.steps, options["strength"], pipe.device)
        channels = int(pipe.transformer.config.in_channels) // 4
        packed, _ = pipe.prepare_latents(
            image.to(torch.float32),
            timesteps[:1].repeat(batch),
            batch,
            channels,
            height,
            width,
            dtype,
            pipe.device,
            generator,
        )
        return packed


def _true_cfg_applied(options: dict[str, Any], negative: bool) -> dict[str, Any]:
    """A guidance-distilled call's options as its pipeline applies them: true CFG only with a
    negative prompt (the pipelines' ``do_true_cfg``)."""
    return options if negative else {**options, "true_cfg_scale": 1.0}


def _negative_branch_encode(
    call: Call, prompts: list[str], negative: list[str] | None, guided: bool
) -> dict[str, Tensor]:
    """``prompt_embeds`` (and ``negative_prompt_embeds`` when ``guided``) from a T5-style
    pipeline's ``encode_prompt(prompt, negative_prompt, do_classifier_free_guidance, ...,
    max_sequence_length, device)`` (Wan, CogVideoX)."""
    pipe = call.pipe
    embeds, negative_embeds = pipe.encode_prompt(
        prompts,
        negative,
        guided,
        max_sequence_length=call.options["max_sequence_length"],
        device=pipe.device,
    )
    cond = {"prompt_embeds": embeds}
    if guided:
        cond["negative_prompt_embeds"] = negative_embeds
    return cond


def _image_and_strength(options: dict[str, Any]) -> float:
    """An img2img call's ``strength``, checked with its ``image``.

    Raises:
        ValueError: no image, or a strength that is not a number in ``(0, 1]``.
    """
    if options["image"] is None:
        raise ValueError("image is required: the image to start from")
    strength = options["strength"]
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    if not 0 < float(strength) <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return float(strength)


def _first_kept(steps: int, start: int, strength: float) -> int:
    """``start``, the first kept step of an img2img grid, when it keeps at least one step."""
    if start >= steps:
        raise ValueError(
            f"strength {strength} keeps no step of {steps}: raise strength or num_inference_steps"
        )
    return start


def _shift(scheduler: Any, tokens: int, max_shift: float) -> float:
    """The pipelines' ``calculate_shift`` of ``mu`` from the image's token count, read from the
    scheduler's config (``max_shift`` where the config has none: the pipelines' defaults differ)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = scheduler.config
    return float(
        calculate_shift(
            tokens,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", max_shift),
        )
    )


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        StableDiffusion(),
        StableDiffusionXL(),
        StableDiffusionXLImg2Img(),
        StableDiffusionXLControlNet(),
        StableDiffusion3(),
        Flux(),
        FluxSchnell(),
        FluxImg2Img(),
        Wan(),
        Wan22(),
        HunyuanVideo(),
        CogVideoX(),
    )
}
"""Every supported family by name."""


def pipeline_family(pipe: Any) -> Family:
    """The family of a supported pipeline.

    Raises:
        ValueError: no family accepts ``pipe``'s class (the message lists those supported).
    """
    for family in FAMILIES.values():
        if family.accepts(pipe):
            return family
    supported = ", ".join(dict.fromkeys(n for f in FAMILIES.values() for n in f.pipeline_classes))
    raise ValueError(f"unsupported pipeline {type(pipe).__name__}; supported: {supported}")
