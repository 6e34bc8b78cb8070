"""Samplers sharing one leading signature: ``sample_X(model, x, schedule, *, ..., callback)``."""

from driffusion.core.samplers.base import Callback, evaluate, payload
from driffusion.core.samplers.driffusion import (
    aggressive_rounds,
    conservative_rounds,
    draft,
    refine,
    sample_driffusion,
)
from driffusion.core.samplers.paradigms import (
    reduced_grid,
    sample_paradigms,
    sample_serial_reduced,
)
from driffusion.core.samplers.picard_driffusion import sample_picard_driffusion
from driffusion.core.samplers.serial import sample_serial
from driffusion.core.samplers.srds import block_boundaries, default_blocks, sample_srds

__all__ = [
    "Callback",
    "aggressive_rounds",
    "block_boundaries",
    "conservative_rounds",
    "default_blocks",
    "draft",
    "evaluate",
    "payload",
    "reduced_grid",
    "refine",
    "sample_driffusion",
    "sample_paradigms",
    "sample_picard_driffusion",
    "sample_serial",
    "sample_serial_reduced",
    "sample_srds",
]
