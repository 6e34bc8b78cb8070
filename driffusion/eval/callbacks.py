"""Evaluation callbacks for the Fabric predict loop: the one place where samples become metrics.

Each is a plain object with an ``on_predict_end`` hook (dispatched by the loop, per
[`Session.predict`][driffusion.lightning.session.Session.predict] call or for the whole session).
They act when every rank holds all replicas' outputs, compute on global rank 0 only, and leave
their numbers in ``results`` (``None`` on the other ranks). Samples are matched by id, so the
order in which replicas produced them does not matter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from driffusion.core.calibration import relative_error
from driffusion.eval.scores import deviation_from_serial, fidelity_metrics
from driffusion.lightning.callbacks import PredictCallback


def outputs_by_id(outputs: list[Any], images: bool = True) -> dict[Any, Tensor]:
    """``{id: image}`` of the loop's outputs (final states where nothing was decoded, or with
    ``images=False``)."""
    found: dict[Any, Tensor] = {}
    for output in outputs:
        values = output.images if images and output.images is not None else output.x
        found.update(zip(output.ids, values, strict=True))
    return found


class EvaluationCallback(PredictCallback, ABC):
    """Base: ``results = compute(outputs)`` on global rank 0 at the end of prediction."""

    def __init__(self) -> None:
        self.results: dict[str, float] | None = None

    def on_predict_end(self, loop: Any, outputs: list[Any]) -> None:
        if loop.fabric.global_rank == 0:
            self.results = self.compute(outputs)

    @abstractmethod
    def compute(self, outputs: list[Any]) -> dict[str, float]:
        """The metrics of the outputs (every item once)."""


class FidelityCallback(EvaluationCallback):
    """FID / KID / ISC / PRC of the generated images against a reference, via torch-fidelity.

    Args:
        reference: a folder of images or a ``[N, C, H, W]`` tensor in ``[-1, 1]``.
        metrics: torch-fidelity metrics to compute (``fid``, ``kid``, ``isc``, ``prc``).
        feature_extractor: extractor name (Inception by default; ``driffusion-digits`` offline).
        feature_extractor_weights_path: local weights of the extractor.
    """

    def __init__(
        self,
        reference: str | Path | Tensor,
        metrics: tuple[str, ...] = ("fid",),
        feature_extractor: str | None = None,
        feature_extractor_weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.reference = reference
        self.metrics = metrics
        self.feature_extractor = feature_extractor
        self.weights = feature_extractor_weights_path

    def compute(self, outputs: list[Any]) -> dict[str, float]:
        return fidelity_metrics(
            torch.stack(list(outputs_by_id(outputs).values())),
            self.reference,
            metrics=self.metrics,
            feature_extractor=self.feature_extractor,
            feature_extractor_weights_path=self.weights,
        )


class SerialDeviationCallback(EvaluationCallback):
    """PSNR and max / mean abs deviation from a serial run with the same seeds.

    Args:
        serial: ``{id: image}`` of the serial sampler's outputs (e.g.
            [`outputs_by_id`][driffusion.eval.callbacks.outputs_by_id] of an earlier run).
    """

    def __init__(self, serial: Mapping[Any, Tensor]) -> None:
        super().__init__()
        self.serial = serial

    def compute(self, outputs: list[Any]) -> dict[str, float]:
        mine = outputs_by_id(outputs)
        reference = torch.stack([self.serial[i] for i in mine])
        return deviation_from_serial(torch.stack(list(mine.values())), reference)


class ReferenceErrorCallback(EvaluationCallback):
    """``err_ref = ||x - x_ref|| / ||x_ref||`` of the final states (all samples pooled) against
    a reference solution of the sampling ODE.

    Args:
        reference: ``{id: x_ref}`` final states of the reference solve.
    """

    def __init__(self, reference: Mapping[Any, Tensor]) -> None:
        super().__init__()
        self.reference = reference

    def compute(self, outputs: list[Any]) -> dict[str, float]:
        mine = outputs_by_id(outputs, images=False)
        x_ref = torch.stack([self.reference[i] for i in mine])
        return {"err_ref": relative_error(torch.stack(list(mine.values())), x_ref)}


class AccuracyCallback(EvaluationCallback):
    """The share of samples a classifier assigns to their intended class.

    Args:
        classify: ``classify(x[N, ...]) -> labels[N]`` on the final states.
        labels: ``{id: intended label}``.
    """

    def __init__(self, classify: Callable[[Tensor], Tensor], labels: Mapping[Any, int]) -> None:
        super().__init__()
        self.classify = classify
        self.labels = labels

    def compute(self, outputs: list[Any]) -> dict[str, float]:
        mine = outputs_by_id(outputs, images=False)
        predicted = self.classify(torch.stack(list(mine.values())))
        wanted = torch.tensor([self.labels[i] for i in mine])
        return {"accuracy": float((predicted.cpu() == wanted).float().mean())}
