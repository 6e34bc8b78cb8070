"""Samplers: pure functions ``sample_X(model, x, schedule, *, ..., callback)`` and, over them,
frozen sampler values (``Aggressive(drafts=4)``) called as ``sampler(model, x, schedule)``."""

from driffusion.core.samplers.base import Callback, Sampler, SamplerFn, evaluate, payload
from driffusion.core.samplers.chords import (
    Chords,
    chords_evaluations,
    chords_rounds,
    default_starts,
    sample_chords,
)
from driffusion.core.samplers.driffusion import (
    Aggressive,
    Conservative,
    aggressive_rounds,
    conservative_rounds,
    draft,
    refine,
    sample_driffusion,
)
from driffusion.core.samplers.paradigms import (
    ParaDiGMS,
    SerialReduced,
    reduced_grid,
    sample_paradigms,
    sample_serial_reduced,
)
from driffusion.core.samplers.picard_driffusion import PicardDRiffusion, sample_picard_driffusion
from driffusion.core.samplers.registry import (
    SAMPLER_NAMES,
    SAMPLERS,
    parse_sampler,
    sampler_name,
    unique_names,
)
from driffusion.core.samplers.serial import Serial, sample_serial
from driffusion.core.samplers.srds import SRDS, block_boundaries, default_blocks, sample_srds

__all__ = [
    "SAMPLERS",
    "SAMPLER_NAMES",
    "SRDS",
    "Aggressive",
    "Callback",
    "Chords",
    "Conservative",
    "ParaDiGMS",
    "PicardDRiffusion",
    "Sampler",
    "SamplerFn",
    "Serial",
    "SerialReduced",
    "aggressive_rounds",
    "block_boundaries",
    "chords_evaluations",
    "chords_rounds",
    "conservative_rounds",
    "default_blocks",
    "default_starts",
    "draft",
    "evaluate",
    "parse_sampler",
    "payload",
    "reduced_grid",
    "refine",
    "sample_chords",
    "sample_driffusion",
    "sample_paradigms",
    "sample_picard_driffusion",
    "sample_serial",
    "sample_serial_reduced",
    "sample_srds",
    "sampler_name",
    "unique_names",
]
