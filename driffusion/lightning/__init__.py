"""Lightning layer: a LightningModule whose ``predict_step`` runs a core sampler, and a Fabric
predict loop that spreads the drafts of each round across the ranks of a draft group."""

from driffusion.lightning.callbacks import LatentWriter, PredictCallback, ProgressBar
from driffusion.lightning.launch import add_fabric_args, build_fabric, finish
from driffusion.lightning.loop import PredictOutput, run_predict
from driffusion.lightning.module import DiffusionSamplerModule
from driffusion.lightning.text2image import PromptSamplerModule, collate_prompts

__all__ = [
    "DiffusionSamplerModule",
    "LatentWriter",
    "PredictCallback",
    "PredictOutput",
    "ProgressBar",
    "PromptSamplerModule",
    "add_fabric_args",
    "build_fabric",
    "collate_prompts",
    "finish",
    "run_predict",
]
