"""Evaluation callbacks for the Fabric predict loop (plain classes, dispatched by ``fabric.call``).

They act in ``on_predict_end``, when every rank holds all replicas' outputs, and compute on
global rank 0 only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from driffusion.eval.scores import deviation_from_serial, fidelity_metrics
from driffusion.lightning.callbacks import PredictCallback


def _images(outputs: list[Any]) -> torch.Tensor:
    images = [o.images if o.images is not None else o.x for o in outputs]
    return torch.cat(images)


class FidelityCallback(PredictCallback):
    """FID / KID / ISC / PRC of the generated images against a reference, via torch-fidelity.

    Args:
        reference: a folder of images or a ``[N, C, H, W]`` tensor in ``[-1, 1]``.
        metrics: torch-fidelity metrics to compute (``fid``, ``kid``, ``isc``, ``prc``).
        feature_extractor: extractor name (Inception by default; ``driffusion-digits`` offline).
        feature_extractor_weights_path: local weights of the extractor.

    After the loop, ``results`` holds torch-fidelity's dict on rank 0 (``None`` elsewhere).
    """

    def __init__(
        self,
        reference: str | Path | torch.Tensor,
        metrics: tuple[str, ...] = ("fid",),
        feature_extractor: str | None = None,
        feature_extractor_weights_path: str | Path | None = None,
    ) -> None:
        self.reference = reference
        self.metrics = metrics
        self.feature_extractor = feature_extractor
        self.weights = feature_extractor_weights_path
        self.results: dict[str, float] | None = None

    def on_predict_end(self, loop: Any, outputs: list[Any]) -> None:
        if loop.fabric.global_rank != 0:
            return
        self.results = fidelity_metrics(
            _images(outputs),
            self.reference,
            metrics=self.metrics,
            feature_extractor=self.feature_extractor,
            feature_extractor_weights_path=self.weights,
        )


class SerialDeviationCallback(PredictCallback):
    """PSNR and max / mean abs deviation from a stored serial run with the same seeds.

    Args:
        serial: ``{id: image}`` of the serial sampler's outputs (e.g. from an earlier run).
    """

    def __init__(self, serial: dict[Any, torch.Tensor]) -> None:
        self.serial = serial
        self.results: dict[str, float] | None = None

    def on_predict_end(self, loop: Any, outputs: list[Any]) -> None:
        if loop.fabric.global_rank != 0:
            return
        ids = [i for o in outputs for i in o.ids]
        reference = torch.stack([self.serial[i] for i in ids])
        self.results = deviation_from_serial(_images(outputs), reference)
