"""Pure-torch sampling math: schedules, parameterisations, transitions, samplers, executors.

Nothing under ``driffusion.core`` imports ``torch.distributed``, diffusers, lightning, tqdm or
PIL: every function here is tensors and schedules in, tensors out.
"""

from driffusion.core.model import (
    BatchedExecutor,
    ChunkedExecutor,
    CountingModel,
    Model,
    RowwiseModel,
    SampleResult,
    SamplerStats,
)
from driffusion.core.noise import ddpm_noise, initial_noise
from driffusion.core.parameterization import (
    PREDICTION_TYPES,
    PredictionType,
    from_x0_eps,
    to_x0_eps,
)
from driffusion.core.samplers import (
    aggressive_rounds,
    block_boundaries,
    default_blocks,
    draft,
    reduced_grid,
    refine,
    sample_driffusion,
    sample_paradigms,
    sample_picard_driffusion,
    sample_serial,
    sample_serial_reduced,
    sample_srds,
)
from driffusion.core.samplers.registry import SAMPLER_NAMES, SamplerSpec, run_sampler
from driffusion.core.schedule import (
    Schedule,
    alphas_cumprod_from_betas,
    flow_schedule,
    flow_sigmas,
    vp_schedule,
    vp_timesteps,
)
from driffusion.core.transitions import (
    ddpm_posterior,
    ddpm_transition,
    ddpm_transition_from_x0,
    predict_x0_eps,
    skip_transition,
)

__all__ = [
    "PREDICTION_TYPES",
    "SAMPLER_NAMES",
    "BatchedExecutor",
    "ChunkedExecutor",
    "CountingModel",
    "Model",
    "PredictionType",
    "RowwiseModel",
    "SampleResult",
    "SamplerSpec",
    "SamplerStats",
    "Schedule",
    "aggressive_rounds",
    "alphas_cumprod_from_betas",
    "block_boundaries",
    "ddpm_noise",
    "ddpm_posterior",
    "ddpm_transition",
    "ddpm_transition_from_x0",
    "default_blocks",
    "draft",
    "flow_schedule",
    "flow_sigmas",
    "from_x0_eps",
    "initial_noise",
    "predict_x0_eps",
    "reduced_grid",
    "refine",
    "run_sampler",
    "sample_driffusion",
    "sample_paradigms",
    "sample_picard_driffusion",
    "sample_serial",
    "sample_serial_reduced",
    "sample_srds",
    "skip_transition",
    "to_x0_eps",
    "vp_schedule",
    "vp_timesteps",
]
