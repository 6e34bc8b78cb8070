"""The models a server samples: the embedded digits model and the diffusers image families.

Each is a [`ServedModel`][driffusion.serve.api.ServedModel] (size rules, defaults, how a prompt
becomes a condition) with a ``generate(generation, session, on_state)`` that every rank of a
draft group calls with the same [`Generation`][driffusion.serve.api.Generation]: the sampler's
rounds are split over the group exactly as in the recipes, so a served image equals the
recipe's for the same seed, sampler and settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from driffusion.core.errors import UsageError
from driffusion.core.samplers.settings import sampler_rows
from driffusion.io.images import png_bytes
from driffusion.lightning.module import DiffusionSamplerModule
from driffusion.lightning.session import Session
from driffusion.models.digits import (
    DEFAULT_GUIDANCE,
    DEFAULT_SOLVER,
    DEFAULT_STEPS,
    IMAGE_SIZE,
    NUM_CLASSES,
    load_digits,
)
from driffusion.serve.api import ApiError, Generation, ServedModel

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
OnState = Callable[[dict[str, Any]], None]


@dataclass
class Generated:
    """What a draft group's leader hands back: each image as PNG bytes (its settings and seed
    in the text chunks) and the sampler's stats."""

    images: list[bytes]
    stats: dict[str, Any] = field(default_factory=dict)


class DigitsServed(ServedModel):
    """The embedded class-conditional digits model (16 x 16): the prompt is the digit, ``"3"``
    or ``"three"``; defaults as ``recipes/digits.py`` (50 steps, guidance 2).

    Args:
        folder: a model folder (default: the one the package ships).
    """

    family = "digits"
    multiple = IMAGE_SIZE
    width = height = IMAGE_SIZE
    steps = DEFAULT_STEPS
    guidance = DEFAULT_GUIDANCE
    solver: str | None = DEFAULT_SOLVER
    max_steps = 1000  # the training grid's
    warmup_prompt = "0"

    def __init__(self, folder: Path | None = None) -> None:
        self.model = load_digits(folder)
        self.name = "digits" if folder is None else str(folder)

    def condition(self, prompt: str, negative_prompt: str | None) -> int:
        if negative_prompt is not None:
            raise ApiError(400, "negative_prompt", "negative_prompt: the digits model takes none")
        text = prompt.strip().lower()
        if text in DIGIT_NAMES:
            return DIGIT_NAMES.index(text)
        if text.isascii() and text.isdigit() and int(text) < NUM_CLASSES:
            return int(text)
        raise ApiError(
            400,
            "prompt",
            f"prompt: the digits model draws a digit, '0'..'9' or 'zero'..'nine', got "
            f"{prompt[:40]!r}",
        )

    def check_size(self, width: int, height: int) -> None:
        if (width, height) != (IMAGE_SIZE, IMAGE_SIZE):
            raise ApiError(400, "size", f"size: the digits model samples {IMAGE_SIZE}x{IMAGE_SIZE}")

    def generate(self, generation: Generation, session: Session, on_state: OnState) -> Generated:
        """Sample the generation's images as ``recipes/digits.py`` samples its items."""
        module = DiffusionSamplerModule(
            self.model.denoiser(generation.guidance),
            self.model.schedule(generation.steps),
            (1, IMAGE_SIZE, IMAGE_SIZE),
            generation.sampler,
        )
        module.step_callback = on_state
        session.fabric.to_device(module)
        rows = sampler_rows(generation.sampler)
        batch = {
            "id": list(range(generation.n)),
            "seed": generation.seeds,
            "cond": {"label": torch.full((generation.n,), int(generation.condition))},
        }
        result = module.sample(batch, lambda network: session.executor(network, rows=rows))
        meta = {**generation.settings(), "digit": generation.condition}
        images = [
            png_bytes(x, {**meta, "seed": seed})
            for x, seed in zip(result["x"].cpu(), generation.seeds, strict=True)
        ]
        return Generated(
            images, {**result["stats"], "guidance_devices": result["guidance_devices"]}
        )


class PipelineServed(ServedModel):
    """A diffusers image pipeline of a supported family, sampled through
    [`parallelize`][driffusion.lightning.pipeline.parallelize] on the session's draft group:
    image ``i`` from ``torch.Generator().manual_seed(seed + i)``, as the recipes draw it.

    Args:
        pipe: the loaded pipeline (moved to the session's device here).
        name: what ``/info`` calls it (the model id or folder).
        session: the session it is sampled in (``None``: one process, its own device).
    """

    max_steps = 1000
    warmup_prompt = "a photo"
    solver = None  # the pipeline's scheduler

    def __init__(self, pipe: Any, name: str, session: Session | None = None) -> None:
        from driffusion.adapters.diffusers import image_size
        from driffusion.adapters.families import pipeline_family
        from driffusion.lightning.pipeline import parallelize

        self.pipe = pipe if session is None else pipe.to(session.device)
        self.name = name
        family = pipeline_family(pipe)
        if family.output != "images":
            raise UsageError(
                f"{family.name} makes videos; the server answers /v1/images/generations only"
            )
        self.family = family.name
        self.multiple = family.size_multiple(pipe)
        self.height, self.width = image_size(pipe)
        # the session's own: without one, parallelize would join a second under `fabric run`
        self.defaults = parallelize(pipe, session=session, progress=False).defaults
        self.steps = int(self.defaults.get("num_inference_steps") or 50)
        self.guidance = float(self.defaults.get("guidance_scale", 0.0))

    def condition(self, prompt: str, negative_prompt: str | None) -> str:
        return prompt

    def check_size(self, width: int, height: int) -> None:
        from driffusion.adapters.diffusers import image_size

        try:
            image_size(self.pipe, height, width)
        except ValueError as error:
            raise ApiError(400, "size", f"size: {error}") from None

    def generate(self, generation: Generation, session: Session, on_state: OnState) -> Generated:
        """Sample the generation's images through the pipeline, as the recipes call it."""
        from driffusion.lightning.pipeline import parallelize

        pipe = parallelize(self.pipe, generation.sampler, session=session, progress=False)
        out = pipe(
            generation.prompt,
            negative_prompt=generation.negative_prompt,
            num_inference_steps=generation.steps,
            guidance_scale=generation.guidance,
            height=generation.height,
            width=generation.width,
            num_images_per_prompt=generation.n,
            generator=[torch.Generator().manual_seed(seed) for seed in generation.seeds],
            output_type="pt",
            callback=on_state,
        )
        meta = {**generation.settings(), "model": self.name}
        images = [
            png_bytes(image * 2 - 1, {**meta, "seed": seed})
            for image, seed in zip(out.images, generation.seeds, strict=True)
        ]
        return Generated(images, dict(out.stats))


def load_served(model: str, tiny: bool = False, session: Session | None = None) -> Any:
    """The model ``--model`` names: ``digits`` (the embedded model), a digits model folder, a
    family name with ``tiny`` (a tiny random pipeline built in code), or a diffusers folder
    (``save_pretrained``; its family read from the pipeline class), on ``session``'s device.

    Raises:
        UsageError: a name that is none of these, or weights that cannot be loaded.
    """
    from driffusion.adapters.families import FAMILIES

    path = Path(model)
    if model == "digits":
        return DigitsServed()
    if (path / "unet").is_dir() and (path / "training.json").is_file():
        return DigitsServed(path)
    if model in FAMILIES:
        if not tiny:
            raise UsageError(
                f"--model {model}: give the weights as a folder (save_pretrained), or --tiny for "
                "a tiny random pipeline built in code"
            )
        from driffusion.adapters.tiny import build_tiny_pipeline

        return PipelineServed(build_tiny_pipeline(model), f"tiny-{model}", session)
    if (path / "model_index.json").is_file():
        import json

        from driffusion.adapters.diffusers import load_pipeline

        cls = json.loads((path / "model_index.json").read_text()).get("_class_name")
        family = next((f for f in FAMILIES.values() if f.pipeline_class == cls), None)
        if family is None:
            raise UsageError(f"--model {model}: {cls} is not a supported pipeline")
        device = None if session is None else session.device
        return PipelineServed(load_pipeline(family.name, model, device=device), model, session)
    raise UsageError(
        f"--model {model!r}: 'digits', a digits model folder, a family "
        f"({', '.join(sorted(FAMILIES))}) with --tiny, or a diffusers folder"
    )
