"""Text to image as a LightningModule: prompts are encoded by the pipeline's own text encoders
inside ``predict_step``, so a batch is plain data (ids, seeds, prompts, negative prompts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from driffusion.adapters.diffusers import PipelineAdapter
from driffusion.core import SamplerFn
from driffusion.lightning.module import DiffusionSamplerModule


class PromptSamplerModule(DiffusionSamplerModule):
    """Encodes the batch's prompts with the pipeline's own text encoders."""

    def __init__(self, adapter: PipelineAdapter, sampler: SamplerFn) -> None:
        super().__init__(
            adapter.network, adapter.schedule, adapter.latent_shape, sampler, decode=adapter.decode
        )
        self.adapter = adapter

    def conditioning(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return self.adapter.encode(batch["prompt"], batch["negative_prompt"])


def collate_prompts(items: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch prompt items: lists of ids, seeds, prompts and negative prompts."""
    return {
        "id": [i["id"] for i in items],
        "seed": [i["seed"] for i in items],
        "prompt": [i["prompt"] for i in items],
        "negative_prompt": [i["negative_prompt"] for i in items],
    }
