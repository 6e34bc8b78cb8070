"""Lightning layer: a [`Session`][driffusion.lightning.session.Session] that owns a run, a
LightningModule whose ``predict_step`` runs any sampler, the Fabric predict loop that spreads the
evaluations of each round across a draft group, and the shared command-line flags."""

from driffusion.lightning.callbacks import LatentWriter, PredictCallback, ProgressBar
from driffusion.lightning.cli import (
    add_fabric_args,
    add_sampler_args,
    add_session_args,
    check_sampler_args,
    samplers_from_args,
)
from driffusion.lightning.launch import LaunchError
from driffusion.lightning.loop import PredictOutput, run_predict
from driffusion.lightning.module import DiffusionSamplerModule
from driffusion.lightning.session import Session
from driffusion.lightning.text2image import PromptSamplerModule, collate_prompts

__all__ = [
    "DiffusionSamplerModule",
    "LatentWriter",
    "LaunchError",
    "PredictCallback",
    "PredictOutput",
    "ProgressBar",
    "PromptSamplerModule",
    "Session",
    "add_fabric_args",
    "add_sampler_args",
    "add_session_args",
    "check_sampler_args",
    "collate_prompts",
    "run_predict",
    "samplers_from_args",
]
