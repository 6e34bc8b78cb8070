"""Image-quality scores at the edge: torch-fidelity metrics, CLIP score, PickScore, HPSv2.1 and
the deviation from a stored serial run.

Everything takes images as ``[N, 3, H, W]`` floats in ``[-1, 1]`` (what the recipes decode) or
folders of PNGs, and loads weights from a local folder or hub id with a clear error when they are
missing (nothing is downloaded on machines without network).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from driffusion.eval.digits_fid import UInt8Images, register_digits_extractor


class ScorerWeightsMissing(FileNotFoundError):
    """A scorer's weights are neither at the given path nor in the local cache."""


def fidelity_metrics(
    generated: str | Path | Tensor,
    reference: str | Path | Tensor,
    *,
    metrics: Sequence[str] = ("fid",),
    feature_extractor: str | None = None,
    feature_extractor_weights_path: str | Path | None = None,
    cuda: bool = False,
) -> dict[str, float]:
    """torch-fidelity's ``calculate_metrics`` between two image sets.

    Args:
        generated: a folder of images or a ``[N, C, H, W]`` tensor in ``[-1, 1]``.
        reference: the same kinds.
        metrics: any of ``fid``, ``kid``, ``isc``, ``prc``.
        feature_extractor: torch-fidelity's extractor name (default Inception,
            ``inception-v3-compat``; ``driffusion-digits`` is registered here for offline use).
        feature_extractor_weights_path: local weights for the extractor (offline Inception).
        cuda: compute features on the GPU.

    Returns:
        torch-fidelity's result dict (e.g. ``frechet_inception_distance``), as floats.
    """
    import torch_fidelity

    register_digits_extractor()

    def as_input(value: str | Path | Tensor) -> Any:
        return UInt8Images(value) if isinstance(value, Tensor) else str(value)

    unknown = set(metrics) - {"fid", "kid", "isc", "prc"}
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; choose from fid, kid, isc, prc")
    kwargs: dict[str, Any] = {
        "input1": as_input(generated),
        "input2": as_input(reference),
        "cuda": cuda,
        "cache": False,
        "verbose": False,
        "save_cpu_ram": True,  # no DataLoader worker processes: small sets, few cores
        **{name: True for name in metrics},
    }
    if "kid" in metrics:
        sizes = [
            len(list(Path(v).glob("*.png"))) if not isinstance(v, Tensor) else len(v)
            for v in (generated, reference)
        ]
        kwargs["kid_subset_size"] = max(2, min(1000, *sizes))
    if feature_extractor:
        kwargs["feature_extractor"] = feature_extractor
    if feature_extractor_weights_path:
        kwargs["feature_extractor_weights_path"] = str(feature_extractor_weights_path)
    return {k: float(v) for k, v in torch_fidelity.calculate_metrics(**kwargs).items()}


def load_png_folder(
    folder: str | Path, names: Sequence[str] | None = None
) -> tuple[list[str], Tensor]:
    """PNGs of a folder (sorted, or the given stems) as ``[N, 3, H, W]`` in ``[-1, 1]``."""
    folder = Path(folder)
    paths = (
        [folder / f"{n}.png" for n in names] if names is not None else sorted(folder.glob("*.png"))
    )
    images = []
    for path in paths:
        with Image.open(path) as image:
            array = torch.tensor(list(image.convert("RGB").getdata()), dtype=torch.float32)
            images.append(array.view(image.height, image.width, 3).permute(2, 0, 1) / 127.5 - 1)
    return [p.stem for p in paths], torch.stack(images)


def deviation_from_serial(images: Tensor, serial: Tensor) -> dict[str, float]:
    """How far images are from the serial images of the same seeds.

    Returns ``psnr`` (dB on the ``[-1, 1]`` range of 2, over the pooled MSE of all images, so
    one identical image does not make it infinite), ``psnr_min`` (the worst single image), and
    the max / mean absolute deviation. PSNR is torchmetrics'; identical sets give ``inf``.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    if images.shape != serial.shape:
        raise ValueError(f"shapes differ: {tuple(images.shape)} vs {tuple(serial.shape)}")
    images, serial = images.double(), serial.double()
    per_image = peak_signal_noise_ratio(
        images, serial, data_range=2.0, reduction="none", dim=tuple(range(1, images.ndim))
    )
    diff = (images - serial).abs()
    return {
        "psnr": float(peak_signal_noise_ratio(images, serial, data_range=2.0)),
        "psnr_min": float(per_image.min()),
        "max_abs_dev": float(diff.max()),
        "mean_abs_dev": float(diff.mean()),
    }


class ClipScorer:
    """CLIP-style text-image scores with a transformers ``CLIPModel``.

    ``clip_score = 100 * max(cos(image, text), 0)`` (the torchmetrics definition); PickScore is
    the same computation with the PickScore checkpoint (``logit_scale * cos``).

    Args:
        model: hub id or local folder of a ``CLIPModel`` with its processor.
        processor: folder or id of the processor if it lives elsewhere (PickScore uses
            ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``'s).
        kind: ``"clip"`` or ``"pickscore"``.
    """

    def __init__(
        self, model: str | Path, processor: str | Path | None = None, kind: str = "clip"
    ) -> None:
        from transformers import CLIPModel, CLIPProcessor

        if kind not in ("clip", "pickscore"):
            raise ValueError(f"kind must be 'clip' or 'pickscore', got {kind!r}")
        try:
            self.model = CLIPModel.from_pretrained(str(model)).eval()
            self.processor = CLIPProcessor.from_pretrained(str(processor or model))
        except (OSError, ValueError) as error:
            raise ScorerWeightsMissing(
                f"{kind} weights not found at {model!r} ({error.__class__.__name__}); download "
                "them where there is network access and pass the local folder"
            ) from error
        self.kind = kind

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Per-image scores for ``images`` (``[N, 3, H, W]`` in ``[-1, 1]``) and their prompts."""
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        inputs = self.processor(
            text=list(prompts),
            images=list(pixels),
            return_tensors="pt",
            padding=True,
            truncation=True,
        )
        image_features = self.model.get_image_features(pixel_values=inputs["pixel_values"])
        text_features = self.model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        )
        image_features = torch.nn.functional.normalize(_projected(image_features), dim=-1)
        text_features = torch.nn.functional.normalize(_projected(text_features), dim=-1)
        cosine = (image_features * text_features).sum(dim=-1)
        if self.kind == "pickscore":
            return self.model.logit_scale.exp() * cosine
        return 100 * cosine.clamp(min=0)


def _projected(features: Any) -> Tensor:
    """transformers 4 returns the projected embeddings; 5 returns an output whose pooler_output
    holds them."""
    return features if isinstance(features, Tensor) else features.pooler_output


class HPSv21Scorer:
    """HPSv2.1 (Human Preference Score v2.1): an open_clip ViT-H-14 with the HPS checkpoint.

    Needs ``open_clip_torch`` and the ``HPS_v2.1_compressed.pt`` checkpoint on disk; raises
    [`ScorerWeightsMissing`][driffusion.eval.scores.ScorerWeightsMissing] with what is missing
    otherwise.
    """

    def __init__(self, checkpoint: str | Path) -> None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise ScorerWeightsMissing(
                f"HPSv2.1 checkpoint {checkpoint} not found: download HPS_v2.1_compressed.pt "
                "(xswu/HPSv2) where there is network access and pass its path"
            )
        try:
            import open_clip
        except ImportError as error:
            raise ScorerWeightsMissing("HPSv2.1 needs `pip install open_clip_torch`") from error
        model, _, preprocess = open_clip.create_model_and_transforms("ViT-H-14", pretrained=None)
        state = torch.load(checkpoint, map_location="cpu")
        model.load_state_dict(state.get("state_dict", state))
        self.model, self.preprocess = model.eval(), preprocess
        self.tokenizer = open_clip.get_tokenizer("ViT-H-14")

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Per-image HPSv2.1 scores (cosine similarity, as the reference implementation)."""
        from torchvision.transforms.functional import to_pil_image

        pixels = [to_pil_image(((im.clamp(-1, 1) + 1) / 2).float()) for im in images]
        batch = torch.stack([self.preprocess(p) for p in pixels])
        image_features = torch.nn.functional.normalize(self.model.encode_image(batch), dim=-1)
        text_features = torch.nn.functional.normalize(
            self.model.encode_text(self.tokenizer(list(prompts))), dim=-1
        )
        return (image_features * text_features).sum(dim=-1)
