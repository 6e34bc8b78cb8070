"""``parallelize(pipe)``: a diffusers pipeline, called as before, sampled by a driffusion sampler.

    pipe = StableDiffusionXLPipeline.from_pretrained(...)
    ppipe = driffusion.parallelize(pipe, Aggressive(drafts=4))   # the one changed line
    image = ppipe("a lighthouse at dusk", generator=torch.Generator().manual_seed(0)).images[0]

The pipeline's own parts do the work: its scheduler (after ``pipe.scheduler = X.from_config(...)``)
becomes the core solver of the same method on the same grid, its ``encode_prompt`` the
conditioning, its ``prepare_latents`` the initial noise (same ``generator``, same draw), its VAE
and image processor the output. Started with plain ``python`` the drafts of a round are batched on
one device; started with ``fabric run --devices N`` the same script splits each round's
evaluations across the N processes (classifier-free guidance pairs stay together in a row).
"""

from __future__ import annotations

import atexit
import dataclasses
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from driffusion.adapters.diffusers import PipelineAdapter, adapt_pipeline, pipeline_family
from driffusion.core.model import BatchedExecutor, Model, RowwiseModel, SampleResult
from driffusion.core.noise import ddpm_noise
from driffusion.core.samplers.base import SamplerFn
from driffusion.core.samplers.driffusion import Aggressive
from driffusion.core.solvers import Solver, get_solver
from driffusion.lightning.launch import under_fabric_cli

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class ParallelPipelineOutput:
    """What a [`ParallelPipeline`][driffusion.lightning.pipeline.ParallelPipeline] call returns.

    Attributes:
        images: as the pipeline returns them for ``output_type`` (PIL images, a numpy array, a
            tensor, or latents).
        stats: rounds, evaluations, rows (the most rows of a round: drafts, window, cores or
            blocks, as run), the sampler's label, steps, devices.
    """

    images: Any
    stats: dict[str, Any] = field(default_factory=dict)


class ParallelPipeline:
    """A pipeline sampled by ``sampler``; build it with
    [`parallelize`][driffusion.lightning.pipeline.parallelize]."""

    def __init__(
        self,
        pipe: Any,
        sampler: SamplerFn | None = None,
        session: Any = None,
        progress: bool = True,
    ) -> None:
        self.family = pipeline_family(pipe)  # refuses unsupported pipelines at once
        self.pipe = pipe
        self.session = session
        self.progress = progress
        if self.session is None and under_fabric_cli():
            from driffusion.lightning.session import Session

            self.session = Session().launch()
            self.pipe.to(self.session.device)
            # joined here, so torn down here: every rank meets at exit, then the group goes
            atexit.register(self.session.__exit__, None, None, None)
        devices = self.session.draft_devices if self.session is not None else 1
        self.sampler: SamplerFn = (
            sampler if sampler is not None else Aggressive(drafts=max(2, devices))
        )
        self.defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(type(pipe).__call__).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }

    @property
    def devices(self) -> int:
        """Processes that share each round's evaluations."""
        return self.session.draft_devices if self.session is not None else 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)  # components, config, device, ... as on the pipeline

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: Tensor | None = None,
        output_type: str = "pil",
        callback: Any = None,
    ) -> ParallelPipelineOutput:
        """Generate like ``pipe(...)``; the defaults are the wrapped pipeline's own.

        Args:
            prompt: a prompt or a list of prompts.
            negative_prompt: as in the pipeline (``None``: its own default, zeros for SDXL).
            num_inference_steps: grid steps (default: the pipeline's).
            guidance_scale: classifier-free guidance (default: the pipeline's).
            height: image height (default: the model's ``sample_size`` x VAE scale).
            width: image width (default: the model's).
            num_images_per_prompt: images per prompt.
            generator: the initial latents are drawn from it exactly as ``pipe`` draws them.
            latents: initial latents (instead of drawing them).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            callback: called with the samplers' payload after each new state (a progress bar
                shows the step reached and the rounds spent, on the leader).

        Raises:
            driffusion.adapters.diffusers.NonFiniteImageError: a decoded image is NaN or inf.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        steps = num_inference_steps or int(self.defaults.get("num_inference_steps", 50))
        guidance = float(
            guidance_scale if guidance_scale is not None else self.defaults["guidance_scale"]
        )
        if not math.isfinite(guidance):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = _broadcast(negative_prompt, len(prompts))
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        if negatives is not None:
            negatives = [n for n in negatives for _ in range(num_images_per_prompt)]
        adapter = adapt_pipeline(self.pipe, steps, height=height, width=width, guidance=guidance)
        sampler = self._with_solver(adapter.solver)
        cond = adapter.encode(prompts, negatives)
        x = adapter.state_from_latents(
            self._initial_latents(adapter, len(prompts), generator, latents)
        )
        model: Model = BatchedExecutor(RowwiseModel(adapter.network, cond))
        if self.session is not None:
            model = self.session.executor(RowwiseModel(adapter.network, cond))
        extra: dict[str, Any] = {}
        solver = getattr(sampler, "solver", None)
        if isinstance(solver, (str, Solver)) and get_solver(solver).stochastic:
            seeds = [
                int(torch.randint(0, 2**31 - 1, (), generator=_first(generator))) for _ in prompts
            ]
            steps_with_noise = get_solver(solver).prepare(adapter.schedule).num_steps
            extra["noise"] = ddpm_noise(
                seeds, steps_with_noise, adapter.latent_shape, device=x.device
            )
        with tqdm(
            total=adapter.schedule.num_steps,
            desc=repr(sampler),
            unit="step",
            disable=not self.progress or (self.session is not None and not self.session.is_leader),
            dynamic_ncols=True,
        ) as bar:

            def on_state(payload: dict[str, Any]) -> None:
                bar.update(max(0, min(payload["i"], bar.total) - bar.n))  # one tick per round
                bar.set_postfix(rounds=payload["rounds"], refresh=False)
                if callback is not None:
                    callback(payload)

            result: SampleResult = sampler(model, x, adapter.schedule, callback=on_state, **extra)
        stats = {
            **result.stats.as_dict(),
            "sampler": repr(sampler),
            "steps": steps,
            "guidance_scale": guidance,
            "devices": self.devices,
            "scheduler": type(self.pipe.scheduler).__name__,
            "batch": len(prompts),
            "latent_shape": list(adapter.latent_shape),
        }
        if output_type == "latent":
            return ParallelPipelineOutput(adapter.latents_from_state(result.x), stats)
        images = adapter.decode(result.x)
        processed = self.pipe.image_processor.postprocess(images, output_type=output_type)
        return ParallelPipelineOutput(processed, stats)

    def _with_solver(self, solver: Solver) -> SamplerFn:
        """The sampler over the pipeline's scheduler, unless it names a solver of its own."""
        if dataclasses.is_dataclass(self.sampler) and getattr(self.sampler, "solver", 0) is None:
            return dataclasses.replace(self.sampler, solver=solver)
        return self.sampler

    def _initial_latents(
        self, adapter: PipelineAdapter, batch: int, generator: Any, latents: Tensor | None
    ) -> Tensor:
        """The pipeline's own initial latents: ``prepare_latents`` after ``set_timesteps``
        (Euler-family schedulers scale the noise by their first sigma)."""
        pipe = self.pipe
        scheduler_kwargs: dict[str, Any] = {}
        if adapter.family == "sd3" and adapter.mu is not None:
            scheduler_kwargs["mu"] = adapter.mu
        pipe.scheduler.set_timesteps(
            adapter.schedule.num_steps, device=pipe.device, **scheduler_kwargs
        )
        dtype = adapter.network_dtype
        channels, height, width = adapter.latent_shape
        factor = pipe.vae_scale_factor
        return pipe.prepare_latents(
            batch, channels, height * factor, width * factor, dtype, pipe.device, generator, latents
        )


def parallelize(
    pipe: Any, sampler: SamplerFn | None = None, *, session: Any = None, progress: bool = True
) -> ParallelPipeline:
    """Wrap a diffusers pipeline so that a driffusion sampler samples it.

    Supported: ``StableDiffusionPipeline`` (SD 1.5, SD 2.x; epsilon and v-prediction),
    ``StableDiffusionXLPipeline`` and ``StableDiffusion3Pipeline``; anything else is a
    ``ValueError``. The pipeline's scheduler maps to the core solver of the same method and grid
    (an unsupported scheduler configuration is an
    [`UnsupportedSchedulerError`][driffusion.adapters.schedulers.UnsupportedSchedulerError]
    naming the supported ones).

    Args:
        pipe: a loaded pipeline.
        sampler: any sampler; a built-in one without a ``solver`` runs over the pipeline's
            scheduler. Default: ``Aggressive(drafts=max(2, devices))``. The image depends on the
            sampler and its drafts, never on where the drafts run.
        session: a [`Session`][driffusion.lightning.session.Session] to spread the evaluations
            over (default: one is joined under ``fabric run``, none otherwise).
        progress: a progress bar per call, one tick per round.

    Returns:
        A [`ParallelPipeline`][driffusion.lightning.pipeline.ParallelPipeline], called like the
        pipeline.
    """
    return ParallelPipeline(pipe, sampler, session, progress)


def _broadcast(value: str | Sequence[str] | None, count: int) -> list[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise ValueError(f"{len(values)} negative prompts for {count} prompts")
    return values


def _first(generator: Any) -> torch.Generator | None:
    return generator[0] if isinstance(generator, list) else generator
