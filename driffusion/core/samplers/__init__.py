"""Samplers: pure functions ``sample_X(model, x, schedule, *, ..., callback)`` and, over them,
frozen sampler values (``Aggressive(drafts=4)``) called as ``sampler(model, x, schedule)``.

Importing a sampler's module registers its value by name (see
[`Sampler`][driffusion.core.samplers.base.Sampler]); the order here is the registry's order.
"""

from driffusion.core.samplers.base import Callback, Sampler, SamplerFn, evaluate, payload
from driffusion.core.samplers.serial import Serial, sample_serial  # isort: split

from driffusion.core.samplers.driffusion import (  # isort: split
    Aggressive,
    Conservative,
    aggressive_rounds,
    allowed_drafts,
    conservative_rounds,
    safe_drafts,
    sample_driffusion,
    unsafe_drafts_reason,
)

from driffusion.core.samplers.settings import (
    Setting,
    flag_values,
    rows_name,
    rows_setting,
    sampler_rows,
    setting,
    settings_of,
    solver_setting,
    tolerance_setting,
)
from driffusion.core.samplers.srds import (  # isort: split
    SRDS,
    block_boundaries,
    default_blocks,
    sample_srds,
)

from driffusion.core.samplers.paradigms import (  # isort: split
    ParaDiGMS,
    SerialReduced,
    reduced_grid,
    sample_paradigms,
    sample_serial_reduced,
)

from driffusion.core.samplers.picard_driffusion import (  # isort: split
    PicardDRiffusion,
    sample_picard_driffusion,
)

from driffusion.core.samplers.chords import (  # isort: split
    Chords,
    chords_evaluations,
    chords_rounds,
    default_starts,
    even_starts,
    sample_chords,
)

from driffusion.core.samplers.parastep import ParaStep, sample_parastep  # isort: split

from driffusion.core.samplers.registry import (  # isort: split
    builtin_samplers,
    parse_sampler,
    sampler_name,
    sampler_names,
    unique_names,
    unregister,
)

__all__ = [
    "SRDS",
    "Aggressive",
    "Callback",
    "Chords",
    "Conservative",
    "ParaDiGMS",
    "ParaStep",
    "PicardDRiffusion",
    "Sampler",
    "SamplerFn",
    "Serial",
    "SerialReduced",
    "Setting",
    "aggressive_rounds",
    "allowed_drafts",
    "block_boundaries",
    "builtin_samplers",
    "chords_evaluations",
    "chords_rounds",
    "conservative_rounds",
    "default_blocks",
    "default_starts",
    "evaluate",
    "even_starts",
    "flag_values",
    "parse_sampler",
    "payload",
    "reduced_grid",
    "rows_name",
    "rows_setting",
    "safe_drafts",
    "sample_chords",
    "sample_driffusion",
    "sample_paradigms",
    "sample_parastep",
    "sample_picard_driffusion",
    "sample_serial",
    "sample_serial_reduced",
    "sample_srds",
    "sampler_name",
    "sampler_names",
    "sampler_rows",
    "setting",
    "settings_of",
    "solver_setting",
    "tolerance_setting",
    "unique_names",
    "unregister",
    "unsafe_drafts_reason",
]
