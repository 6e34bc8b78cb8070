"""The shipped digit classifier as a torch-fidelity feature extractor, so FID/KID on digits run
offline (torch-fidelity's default Inception weights are downloaded at run time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from driffusion.models.digits import IMAGE_SIZE, SHIPPED, DigitsClassifier

EXTRACTOR_NAME = "driffusion-digits"
FEATURE = "64"


class DigitsFeatureExtractor(FeatureExtractorBase):
    """64-d penultimate features of [`DigitsClassifier`][driffusion.models.digits.DigitsClassifier].

    Takes torch-fidelity's input: ``uint8`` images ``[N, C, H, W]`` (C = 1 or 3); converts them
    to grayscale ``[-1, 1]`` at 16x16. ``feature_extractor_weights_path`` selects the weights
    (default: the shipped ``classifier.safetensors``).
    """

    def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
        super().__init__(name, features_list)
        from safetensors.torch import load_file

        path = kwargs.get("feature_extractor_weights_path") or SHIPPED / "classifier.safetensors"
        self.classifier = DigitsClassifier()
        self.classifier.load_state_dict(load_file(Path(path)))
        self.classifier.eval().requires_grad_(False)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (FEATURE, "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits"}.get(metric, FEATURE)

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        return torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
        gray = x.float().mean(dim=1, keepdim=True) / 127.5 - 1.0
        if gray.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            gray = F.interpolate(
                gray, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
            )
        features = self.classifier.features(gray)
        out = {FEATURE: features, "logits": self.classifier.head(features)}
        return tuple(out[name] for name in self.features_list)


def register_digits_extractor() -> str:
    """Register the extractor with torch-fidelity once; returns its name."""
    if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EXTRACTOR_NAME, DigitsFeatureExtractor)
    return EXTRACTOR_NAME


class UInt8Images(torch.utils.data.Dataset):
    """Images in ``[-1, 1]`` (``[N, C, H, W]``) served as torch-fidelity's ``uint8`` RGB."""

    def __init__(self, images: Tensor) -> None:
        self.images = to_uint8(images)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        image = self.images[index]
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image


def to_uint8(images: Tensor) -> Tensor:
    """``[-1, 1]`` floats to ``uint8`` ``[0, 255]`` (the rounding PNG writers use)."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def digits_fid(generated: Tensor, reference: Tensor, kid: bool = False) -> dict[str, float]:
    """FID (and optionally KID) between two image sets in ``[-1, 1]`` with the digits features."""
    from driffusion.eval.scores import fidelity_metrics

    metrics = ("fid", "kid") if kid else ("fid",)
    return fidelity_metrics(
        generated, reference, metrics=metrics, feature_extractor=register_digits_extractor()
    )
