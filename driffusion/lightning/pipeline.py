"""``parallelize(pipe)``: a diffusers pipeline, called as before, sampled by a driffusion sampler.

    pipe = StableDiffusionXLPipeline.from_pretrained(...)
    ppipe = driffusion.parallelize(pipe, Aggressive(drafts=4))   # the one changed line
    image = ppipe("a lighthouse at dusk", generator=torch.Generator().manual_seed(0)).images[0]

The pipeline's own parts do the work: its scheduler (after ``pipe.scheduler = X.from_config(...)``)
becomes the core solver of the same method on the same grid, its ``encode_prompt`` the
conditioning, its ``prepare_latents`` the initial noise (same ``generator``, same draw), its VAE
and image processor the output. Started with plain ``python`` the drafts of a round are batched on
one device; started with ``fabric run --devices N`` the same script splits each round's
evaluations across the N processes (a row's classifier-free guidance branches together, or split
over the processes with ``guidance_devices=2``: exact, since the branches combine after the
gather).

Every argument is checked before any compute (a
[`PipelineInputError`][driffusion.adapters.diffusers.PipelineInputError] or
[`PipelineInputTypeError`][driffusion.adapters.diffusers.PipelineInputTypeError] naming it), and
calls on one pipeline serialise on a lock of the wrapped pipeline: a call never leaves the
pipeline's scheduler or components changed, so calls from threads give the images they give one
by one.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import inspect
import math
import numbers
import threading
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from driffusion.adapters.diffusers import (
    PipelineAdapter,
    PipelineInputError,
    PipelineInputTypeError,
    adapt_pipeline,
    pipeline_denoiser,
)
from driffusion.adapters.distributed import DistributedExecutor
from driffusion.adapters.families import pipeline_family
from driffusion.adapters.schedulers import set_timesteps
from driffusion.core.branches import check_guidance_devices
from driffusion.core.model import BatchedExecutor, Model, RowwiseModel, SampleResult
from driffusion.core.noise import ddpm_noise
from driffusion.core.samplers.base import SamplerFn
from driffusion.core.samplers.driffusion import Aggressive
from driffusion.core.samplers.registry import parse_sampler
from driffusion.core.samplers.settings import sampler_rows
from driffusion.core.solvers import Solver, get_solver
from driffusion.lightning.cli import rows_notes
from driffusion.lightning.launch import under_fabric_cli
from driffusion.lightning.module import compile_network

OUTPUT_TYPES = ("pil", "np", "pt", "latent")

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _pipeline_lock(pipe: Any) -> threading.RLock:
    """The one lock of ``pipe``, shared by every ParallelPipeline that wraps it (re-entrant: a
    callback may call the pipeline again); it goes with the pipeline."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(pipe)
        if lock is None:
            lock = _LOCKS[pipe] = threading.RLock()
        return lock


@dataclass
class ParallelPipelineOutput:
    """What a [`ParallelPipeline`][driffusion.lightning.pipeline.ParallelPipeline] call returns.

    Attributes:
        images: as the pipeline returns them for ``output_type`` (PIL images, a numpy array, a
            tensor, or latents); ``None`` for a video pipeline.
        stats: rounds, evaluations, rows (the most rows of a round: drafts, window, cores or
            blocks, as run), the sampler's label, steps, devices, guidance devices, bytes per
            round and image, and ``options``: the family's own keywords as the call applied
            them (FLUX: ``true_cfg_scale``, ``max_sequence_length``).
        frames: a video pipeline's videos, as it returns them for ``output_type`` (Wan: a
            ``[B, F, H, W, 3]`` array for ``"np"``, lists of PIL frames for ``"pil"``, ...);
            ``None`` for an image pipeline.
    """

    images: Any = None
    stats: dict[str, Any] = field(default_factory=dict)
    frames: Any = None


class ParallelPipeline:
    """A pipeline sampled by ``sampler``; build it with
    [`parallelize`][driffusion.lightning.pipeline.parallelize].

    Safe to call from threads: calls serialise on a lock of the wrapped pipeline (shared by every
    ParallelPipeline wrapping the same ``pipe``), and give the same images as the same calls made
    one by one; for throughput use replicas (one pipeline per device or process). A call leaves
    the pipeline's scheduler and components as they were, also when it raises.
    """

    def __init__(
        self,
        pipe: Any,
        sampler: SamplerFn | str | None = None,
        session: Any = None,
        progress: bool = True,
        guidance_devices: int | str | None = None,
        compile: bool = False,
    ) -> None:
        self.family = pipeline_family(pipe)  # refuses unsupported pipelines at once
        if guidance_devices is not None:
            try:
                check_guidance_devices(guidance_devices)
            except ValueError as error:
                raise PipelineInputError(str(error)) from None
        if not isinstance(compile, bool):
            raise PipelineInputTypeError(f"compile must be True or False, got {compile!r}")
        self.pipe = pipe
        self._lock = _pipeline_lock(pipe)
        self.session = session
        self.progress = progress
        if self.session is None and under_fabric_cli():
            from driffusion.lightning.session import Session

            self.session = Session().launch()
            self.pipe.to(self.session.device)
            # joined here, so torn down here: every rank meets at exit, then the group goes
            atexit.register(self.session.__exit__, None, None, None)
        devices = self.session.draft_devices if self.session is not None else 1
        # a label (and the default, aggressive DRiffusion) takes its rows at each call, from the
        # devices and the steps: no more drafts than were measured safe over those steps
        self._label: str | None = "aggressive" if sampler is None else None
        self._label_devices = max(2, devices) if sampler is None else devices
        if isinstance(sampler, str):
            self._label = sampler
        self.sampler: SamplerFn = (
            _sampler(sampler, devices)
            if sampler is not None
            else Aggressive(drafts=max(2, devices))
        )
        self.guidance_devices = (
            guidance_devices
            if guidance_devices is not None
            else (self.session.guidance_devices if self.session is not None else 1)
        )
        self.compile = compile
        if compile:  # once: the denoiser every call's network wraps, one graph per shape
            compile_network(pipeline_denoiser(pipe))
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
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: Tensor | None = None,
        output_type: str | None = None,
        callback: Any = None,
        **options: Any,
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
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (default: the
                pipeline's, ``"pil"`` for images, ``"np"`` for Wan's videos).
            callback: called with the samplers' payload after each new state (a progress bar
                shows the step reached and the rounds spent, on the leader).
            **options: the family's own keywords of the pipeline's ``__call__``
                ([`Family.call_options`][driffusion.adapters.families.Family.call_options],
                e.g. FLUX's ``true_cfg_scale`` and ``max_sequence_length``); any other keyword
                of the pipeline is refused by name.

        Raises:
            driffusion.adapters.diffusers.PipelineInputError: an argument with a value the
                pipeline cannot take (a ``ValueError``; raised before any compute, naming it).
            driffusion.adapters.diffusers.PipelineInputTypeError: an argument of a type the
                pipeline cannot take (a ``TypeError``; raised before any compute, naming it).
            driffusion.adapters.diffusers.NonFiniteImageError: a decoded image is NaN or inf.
        """
        if output_type is None:
            output_type = self.defaults.get("output_type") or "pil"
        if output_type not in OUTPUT_TYPES:
            raise PipelineInputError(
                f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}"
            )
        steps = _positive_int(
            "num_inference_steps",
            self.defaults.get("num_inference_steps", 50)
            if num_inference_steps is None
            else num_inference_steps,
        )
        guidance = _finite(
            "guidance_scale",
            self.defaults["guidance_scale"] if guidance_scale is None else guidance_scale,
        )
        per_prompt = _positive_int("num_images_per_prompt", num_images_per_prompt)
        prompts = _strings("prompt", prompt)
        negatives = _broadcast(negative_prompt, len(prompts))
        options = self._options(options, negatives is not None)
        if latents is not None and not self.family.takes_latents:
            raise PipelineInputError(
                f"latents: {type(self.pipe).__name__} starts from the image's latents, noised at "
                "the first kept step; pass image and strength instead"
            )
        batch = len(prompts) * per_prompt
        _check_generator(generator, batch)
        if callback is not None and not callable(callback):
            raise PipelineInputTypeError(
                f"callback must be callable, got {type(callback).__name__}"
            )
        with self._lock:
            adapter = adapt_pipeline(
                self.pipe, steps, height=height, width=width, guidance=guidance, options=options
            )  # checks height and width, and the trajectory the options ask for
            _check_latents(latents, adapter, len(prompts), per_prompt)
            return self._generate(
                adapter,
                steps,
                prompts,
                negatives,
                per_prompt,
                generator,
                latents,
                output_type,
                callback,
            )

    def _options(self, given: dict[str, Any], negative: bool) -> dict[str, Any]:
        """The family's call options of a call (the pipeline's defaults where not given), as
        the pipeline applies them; a keyword the family does not honour is refused by name."""
        family = self.family
        for name in given:
            if name in family.call_options:
                continue
            pipeline = type(self.pipe).__name__
            if name in self.defaults:
                raise PipelineInputError(
                    f"{name} is a keyword of {pipeline} that the parallel sampler does not "
                    f"honour; honoured besides the common ones: {sorted(family.call_options)}"
                )
            raise PipelineInputTypeError(f"{pipeline} takes no keyword {name!r}")
        options = {name: self.defaults.get(name, d) for name, d in family.call_options.items()}
        try:
            return family.effective_options(self.pipe, {**options, **given}, negative)
        except ValueError as error:
            raise PipelineInputError(str(error)) from None

    def _generate(
        self,
        adapter: PipelineAdapter,
        steps: int,
        prompts: list[str],
        negatives: list[str] | None,
        per_prompt: int,
        generator: Any,
        latents: Tensor | None,
        output_type: str,
        callback: Any,
    ) -> ParallelPipelineOutput:
        """The call, once its arguments are checked (under the pipeline's lock)."""
        prompts = [p for p in prompts for _ in range(per_prompt)]
        if negatives is not None:
            negatives = [n for n in negatives for _ in range(per_prompt)]
        guidance = adapter.guidance
        sampler, why = self._sampler_for(steps, adapter.solver)
        cond = adapter.encode(prompts, negatives)
        x = adapter.state_from_latents(
            self._initial_latents(adapter, len(prompts), generator, latents)
        )
        network = RowwiseModel(adapter.network, cond)
        model: Model = BatchedExecutor(network, fixed_shape=self.compile)
        if self.session is not None:
            model = self.session.executor(
                network,
                rows=sampler_rows(sampler),
                fixed_shape=self.compile,
                guidance_devices=self.guidance_devices,
            )
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
            desc=repr(sampler) if why is None else f"{sampler!r} [{why.split(':')[0]}]",
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
            "configuration": why,
            "steps": steps,
            "guidance_scale": guidance,
            "devices": self.devices,
            **wire_stats(model, len(prompts)),
            "scheduler": type(self.pipe.scheduler).__name__,
            "batch": len(prompts),
            "latent_shape": list(adapter.latent_shape),
            "options": dict(adapter.options),  # the family's own keywords, as applied
        }
        if output_type == "latent":
            output = adapter.latents_from_state(result.x)
        else:
            output = self.family.postprocess(self.pipe, adapter.decode(result.x), output_type)
        return ParallelPipelineOutput(stats=stats, **{self.family.output: output})

    def _sampler_for(self, steps: int, solver: Solver) -> tuple[SamplerFn, str | None]:
        """The sampler of a call over ``steps`` steps, and why it takes fewer drafts than
        devices (``None`` when it does not); a sampler outside the measured safe region runs,
        with a warning giving the measured error."""
        sampler = self.sampler
        if self._label is not None:
            defaults = {"rows": self._label_devices, "num_steps": steps}
            sampler = parse_sampler(self._label, defaults)
        note, warning = rows_notes(sampler, self._label_devices, steps)
        if warning is not None:
            warnings.warn(warning, UserWarning, stacklevel=5)  # the caller of pipe()
        return self._with_solver(sampler, solver), note

    def _with_solver(self, sampler: SamplerFn, solver: Solver) -> SamplerFn:
        """The sampler over the pipeline's scheduler, unless it names a solver of its own."""
        if dataclasses.is_dataclass(sampler) and getattr(sampler, "solver", 0) is None:
            return dataclasses.replace(sampler, solver=solver)
        return sampler

    def _initial_latents(
        self, adapter: PipelineAdapter, batch: int, generator: Any, latents: Tensor | None
    ) -> Tensor:
        """The pipeline's own initial latents: ``prepare_latents`` after ``set_timesteps``
        (Euler-family schedulers scale the noise by their first sigma)."""
        with _scheduler_copy(self.pipe, adapter.steps, **adapter.timestep_options):
            return adapter.family.initial_latents(
                adapter.call, batch, adapter.network_dtype, generator, latents
            )


@contextlib.contextmanager
def _scheduler_copy(pipe: Any, steps: int, **kwargs: Any) -> Iterator[None]:
    """Within the block ``pipe.scheduler`` is a copy of it after ``set_timesteps(steps)``; the
    pipeline's own scheduler, never stepped, is back afterwards (also on an error)."""
    original = pipe.scheduler
    scheduler = copy.deepcopy(original)
    set_timesteps(scheduler, steps, device=pipe.device, **kwargs)
    # object.__setattr__: DiffusionPipeline.__setattr__ would re-register the component in the
    # pipeline's config; the swap is invisible to it (and runs under the pipeline's lock)
    object.__setattr__(pipe, "scheduler", scheduler)
    try:
        yield
    finally:
        object.__setattr__(pipe, "scheduler", original)


def wire_stats(model: Any, batch: int) -> dict[str, Any]:
    """What a call moved between devices: ``guidance_devices`` (as run), the bytes this rank
    received in all-gathers per round and per image (0 on one device)."""
    if not isinstance(model, DistributedExecutor):
        return {"guidance_devices": 1, "bytes_per_round": 0, "bytes_per_image": 0}
    return {
        "guidance_devices": model.guidance_devices,
        "bytes_per_round": round(model.bytes_per_round),
        "bytes_per_image": round(model.bytes_received / batch),
    }


def parallelize(
    pipe: Any,
    sampler: SamplerFn | str | None = None,
    *,
    session: Any = None,
    progress: bool = True,
    guidance_devices: int | str | None = None,
    compile: bool = False,
) -> ParallelPipeline:
    """Wrap a diffusers pipeline so that a driffusion sampler samples it.

    Supported: every pipeline of a [`Family`][driffusion.adapters.families.Family] in
    [`FAMILIES`][driffusion.adapters.families.FAMILIES] (SD 1.5 / 2.x, SDXL with img2img and
    ControlNet, SD3 / SD3.5, FLUX.1 with img2img, Wan 2.1 / 2.2, HunyuanVideo, CogVideoX);
    anything else is a ``ValueError`` listing them. Video pipelines return ``out.frames``.
    The pipeline's scheduler maps to the core solver of the same method and grid (an
    unsupported scheduler configuration is an
    [`UnsupportedSchedulerError`][driffusion.adapters.schedulers.UnsupportedSchedulerError]
    naming the supported ones).

    Calls serialise on a lock of ``pipe`` (from threads, and through several wrappers of one
    pipeline): for throughput use replicas, one pipeline per device or process.

    Args:
        pipe: a loaded pipeline.
        sampler: any sampler, or its label (``"aggressive(drafts=2)"``, read by
            [`parse_sampler`][driffusion.core.samplers.registry.parse_sampler] with the devices
            as its rows); a built-in one without a ``solver`` runs over the pipeline's
            scheduler. Default: ``Aggressive`` with ``max(2, devices)`` drafts, or fewer at each
            call where more were measured to ruin the sample over its steps
            ([`safe_drafts`][driffusion.core.samplers.driffusion.safe_drafts]; a label without
            drafts alike); ``out.stats["configuration"]`` and the progress bar say why, and a
            sampler outside the measured region runs with a warning. The image depends on the
            sampler and its drafts, never on where the drafts run.
        session: a [`Session`][driffusion.lightning.session.Session] to spread the evaluations
            over (default: one is joined under ``fabric run``, none otherwise).
        progress: a progress bar per call, one tick per round.
        guidance_devices: ``1`` keeps a row's guidance branches (negative prompt and prompt) on
            one device, ``2`` splits them over the devices (exact: on 2 devices the serial
            sampler at the speed of two), ``"auto"`` splits where it pays on the measured cost
            of a batched row (default: the session's, else 1). ``out.stats`` gives the value
            run and the bytes gathered per round and per image.
        compile: ``torch.compile`` the UNet or transformer once (``dynamic=False``) and keep
            every device's batch shape fixed over the rounds, so it compiles once per shape.

    Returns:
        A [`ParallelPipeline`][driffusion.lightning.pipeline.ParallelPipeline], called like the
        pipeline.

    Raises:
        ValueError: an unsupported pipeline.
        driffusion.adapters.diffusers.PipelineInputError: a sampler label that cannot be read.
        driffusion.adapters.diffusers.PipelineInputTypeError: a sampler that is neither a
            callable nor a label.
    """
    return ParallelPipeline(pipe, sampler, session, progress, guidance_devices, compile)


def _sampler(sampler: Any, devices: int) -> SamplerFn:
    """A sampler given to ``parallelize``: a callable as it is, a label parsed."""
    if isinstance(sampler, str):
        try:
            return parse_sampler(sampler, {"rows": devices})
        except ValueError as error:
            raise PipelineInputError(f"sampler {sampler!r} cannot be read: {error}") from None
    if not callable(sampler):
        raise PipelineInputTypeError(
            "sampler must be a sampler (a callable such as Aggressive(drafts=4)) or its label "
            f"(such as 'aggressive(drafts=4)'), got {type(sampler).__name__}"
        )
    return sampler


def _positive_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` when it is an integer >= 1 (``bool`` is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PipelineInputTypeError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise PipelineInputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _finite(name: str, value: Any) -> float:
    """``value`` as a ``float`` when it is a finite real number (``bool`` is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PipelineInputTypeError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise PipelineInputError(f"{name} must be finite, got {value!r}")
    return float(value)


def _strings(name: str, value: Any) -> list[str]:
    """A prompt argument as a non-empty list of strings."""
    if isinstance(value, str):
        return [value]
    if value is None:
        raise PipelineInputError(f"{name} is required: a string or a list of strings")
    if not isinstance(value, Sequence):
        raise PipelineInputTypeError(
            f"{name} must be a string or a list of strings, got {type(value).__name__}"
        )
    values = list(value)
    if not values:
        raise PipelineInputError(f"{name} is an empty list: give at least one string")
    for index, item in enumerate(values):
        if not isinstance(item, str):
            raise PipelineInputTypeError(
                f"{name} must hold strings only, got {type(item).__name__} at index {index}"
            )
    return values


def _broadcast(value: str | Sequence[str] | None, count: int) -> list[str] | None:
    """``negative_prompt`` for ``count`` prompts: one for all, or one each."""
    if value is None:
        return None
    values = _strings("negative_prompt", value)
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise PipelineInputError(
            f"negative_prompt has {len(values)} entries for {count} prompts: give one or {count}"
        )
    return values


def _check_generator(generator: Any, batch: int) -> None:
    """``None``, a ``torch.Generator``, or a list of one per image of the batch."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, list):
        raise PipelineInputTypeError(
            f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}"
        )
    for index, item in enumerate(generator):
        if not isinstance(item, torch.Generator):
            raise PipelineInputTypeError(
                "generator must be a torch.Generator or a list of them, got "
                f"{type(item).__name__} at index {index}"
            )
    if len(generator) != batch:
        raise PipelineInputError(
            f"generator is a list of {len(generator)} generators for a batch of {batch} images "
            f"(prompts x num_images_per_prompt): give one generator or {batch}"
        )


def _check_latents(latents: Any, adapter: PipelineAdapter, prompts: int, per_prompt: int) -> None:
    """``None`` or a tensor of the call's shape: ``(prompts x per_prompt, *latent_shape)``."""
    if latents is None:
        return
    expected = (prompts * per_prompt, *adapter.latent_shape)
    if not isinstance(latents, Tensor):
        raise PipelineInputTypeError(
            f"latents must be a tensor of shape {expected}, got {type(latents).__name__}"
        )
    if tuple(latents.shape) != expected:
        raise PipelineInputError(
            f"latents must have shape {expected} ({prompts} prompt(s) x {per_prompt} image(s) "
            f"per prompt, then {tuple(adapter.latent_shape)} for height {adapter.height} and "
            f"width {adapter.width}), got {tuple(latents.shape)}"
        )


def _first(generator: Any) -> torch.Generator | None:
    return generator[0] if isinstance(generator, list) else generator
