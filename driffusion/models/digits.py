"""The embedded default: a class-conditional pixel-space diffusion model of 16x16 digits.

Trained here by ``recipes/train_digits.py`` on scikit-learn's bundled 8x8 digits (upsampled),
with label dropout so that classifier-free guidance works; shipped inside the package in
diffusers' format (``unet/`` and ``scheduler/``) beside a small digit classifier that serves as
the class-accuracy judge and as the FID feature extractor.

Everything loads through [`load_digits`][driffusion.models.digits.load_digits], which takes the
shipped default or a local folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from driffusion.core.branches import GuidedNetwork, classifier_free_guidance, pick_rows
from driffusion.core.errors import UsageError
from driffusion.core.schedule import Schedule, vp_schedule, vp_timesteps

SHIPPED = Path(__file__).resolve().parent / "digits"
IMAGE_SIZE = 16
NUM_CLASSES = 10
NULL_LABEL = NUM_CLASSES  # the "no label" class used for classifier-free guidance
# what recipes/digits.py samples with unless told, and the server's defaults on this model (so
# that a served digit equals the recipe's for the same seed and sampler)
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 2.0
DEFAULT_SOLVER = "dpmpp_2m"


class MissingWeightsError(UsageError, FileNotFoundError):
    """The model folder lacks its weights (train them with recipes/train_digits.py)."""


def digits_dataset(
    split: str = "train", size: int = IMAGE_SIZE, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 8x8 digits, upsampled to ``size`` and scaled to ``[-1, 1]``.

    A fixed, seeded 80/20 split: ``"train"`` (1437 images) or ``"test"`` (360, held out for FID
    and classifier accuracy). Returns ``(images[N, 1, size, size], labels[N])``.
    """
    from sklearn.datasets import load_digits  # the data ships with scikit-learn: no download

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0  # [N, 1, 8, 8] in [0,1]
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(labels))
    index = order[:cut] if split == "train" else order[cut:]
    images = F.interpolate(images[index], size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp(0, 1) * 2 - 1, labels[index]


def unet_config() -> dict:
    """The small class-conditional ``UNet2DModel`` configuration (about 0.95 M parameters)."""
    return {
        "sample_size": IMAGE_SIZE,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": (32, 48, 64),
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "num_class_embeds": NUM_CLASSES + 1,
        "attention_head_dim": 32,
    }


class DigitsClassifier(nn.Module):
    """A small CNN on ``[N, 1, 16, 16]`` images in ``[-1, 1]``; ``features`` is 64-dimensional."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, self.feature_dim),
            nn.GELU(),
        )
        self.head = nn.Linear(self.feature_dim, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        """The 64-d penultimate features (the FID feature space)."""
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class GuidedDigitsDenoiser(GuidedNetwork):
    """The UNet behind the per-row contract ``net(x[M,1,16,16], t[M], label[M]) -> eps``.

    Classifier-free guidance has two branches, the label (branch 0) and the null label
    (branch 1), batched in one UNet call: ``eps = eps_null + w * (eps_label - eps_null)``;
    ``w = 1`` is the plain conditional model (one branch).
    """

    def __init__(self, unet: nn.Module, guidance: float = 1.0) -> None:
        super().__init__()
        self.unet = unet
        self.guidance = guidance
        self.branches = 1 if guidance == 1.0 else 2

    def evaluate_branches(self, x: Tensor, t: Tensor, branch: Tensor, **cond: Tensor) -> Tensor:
        label = cond["label"].to(device=x.device, dtype=torch.long)
        if self.branches == 2:
            label = pick_rows(branch, [label, torch.full_like(label, NULL_LABEL)])
        return self.unet(x, t, class_labels=label).sample

    def combine(self, outputs: Tensor, t: Tensor) -> Tensor:
        if self.branches == 1:
            return outputs[0]
        return classifier_free_guidance(outputs[1], outputs[0], self.guidance)


@dataclass
class DigitsModel:
    """The loaded embedded model: UNet, scheduler facts, classifier and training metadata."""

    unet: nn.Module
    classifier: DigitsClassifier
    alphas_cumprod: Tensor
    prediction_type: str
    training: dict
    path: Path

    def schedule(self, steps: int, spacing: str = "trailing") -> Schedule:
        """The sampling grid for ``steps`` steps (ends at ``abar = 1``)."""
        timesteps = vp_timesteps(steps, len(self.alphas_cumprod), spacing)  # type: ignore[arg-type]
        return vp_schedule(self.alphas_cumprod, timesteps, 1.0, self.prediction_type)  # type: ignore[arg-type]

    def denoiser(self, guidance: float = 1.0) -> GuidedDigitsDenoiser:
        """The guided per-row network ``net(x, t, label)`` with guidance scale ``guidance``."""
        return GuidedDigitsDenoiser(self.unet, guidance)

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        """Predicted digit for ``[N, 1, 16, 16]`` images in ``[-1, 1]``."""
        return self.classifier(images.clamp(-1, 1)).argmax(dim=1)


REFERENCE = {"digit": 3, "seed": 0, "steps": 20, "guidance": 2.0}


def reference_sample(model: DigitsModel) -> Tensor:
    """The serial DDIM sample that ``training.json`` checksums: digit 3, seed 0, 20 steps, w=2."""
    from driffusion.core import RowwiseModel, initial_noise, sample_serial

    network = RowwiseModel(
        model.denoiser(REFERENCE["guidance"]), {"label": torch.tensor([REFERENCE["digit"]])}
    )
    x = initial_noise([int(REFERENCE["seed"])], (1, IMAGE_SIZE, IMAGE_SIZE))
    with torch.inference_mode():
        return sample_serial(network, x, model.schedule(int(REFERENCE["steps"]))).x


def checksum(x: Tensor) -> dict[str, float]:
    """Summary numbers of a sample, stable across runs on one machine to about 1e-5."""
    x = x.double()
    return {"sum": float(x.sum()), "abs_sum": float(x.abs().sum()), "max": float(x.max())}


def load_digits(path: str | Path | None = None) -> DigitsModel:
    """Load the embedded digits model: the shipped default or a folder written by training.

    Raises:
        MissingWeightsError: the folder lacks ``unet/``, ``scheduler/`` or the classifier.
    """
    from diffusers import DDPMScheduler, UNet2DModel
    from safetensors.torch import load_file

    root = Path(path) if path is not None else SHIPPED
    needed = [
        root / "unet" / "config.json",
        root / "unet" / "diffusion_pytorch_model.safetensors",
        root / "scheduler" / "scheduler_config.json",
        root / "classifier.safetensors",
    ]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise MissingWeightsError(
            f"the digits model at {root} is incomplete (missing {missing}); train it with "
            f"`python recipes/train_digits.py --out {root}` or pass a folder that has it"
        )
    unet = UNet2DModel.from_pretrained(root / "unet").eval().requires_grad_(False)
    scheduler = DDPMScheduler.from_pretrained(root / "scheduler")
    classifier = DigitsClassifier()
    classifier.load_state_dict(load_file(root / "classifier.safetensors"))
    classifier.eval().requires_grad_(False)
    meta_path = root / "training.json"
    training = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return DigitsModel(
        unet,
        classifier,
        scheduler.alphas_cumprod.clone(),
        scheduler.config.prediction_type,
        training,
        root,
    )
