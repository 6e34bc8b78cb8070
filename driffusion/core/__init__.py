"""Pure-torch sampling math: schedules, parameterisations, transitions, samplers, executors.

Nothing under ``driffusion.core`` imports ``torch.distributed``, diffusers, lightning, tqdm or
PIL: every function here is tensors and schedules in, tensors out.
"""

from driffusion.core.branches import (
    GuidedNetwork,
    RoundPlan,
    choose_guidance_devices,
    classifier_free_guidance,
    pick_rows,
    round_passes,
)
from driffusion.core.calibration import (
    Calibration,
    Candidate,
    calibrate,
    candidates,
    reference_solution,
    relative_error,
)
from driffusion.core.drafting import DRAFT_RULES, DraftRule, draft, refine
from driffusion.core.errors import UsageError
from driffusion.core.model import (
    BatchedExecutor,
    ChunkedExecutor,
    CountingModel,
    Model,
    NonFiniteStateError,
    RowwiseModel,
    SampleResult,
    SamplerStats,
)
from driffusion.core.noise import ddpm_noise, initial_noise
from driffusion.core.parameterization import (
    PREDICTION_TYPES,
    PredictionType,
    from_x0_eps,
)
from driffusion.core.samplers import *  # noqa: F403 - re-exported: see samplers.__all__
from driffusion.core.samplers import __all__ as _samplers_all
from driffusion.core.schedule import (
    Schedule,
    alphas_cumprod_from_betas,
    beta_sigmas,
    exponential_sigmas,
    flow_schedule,
    flow_sigmas,
    karras_sigmas,
    reference_schedule,
    sigma_schedule,
    sigma_to_t,
    training_sigmas,
    vp_schedule,
    vp_timesteps,
)
from driffusion.core.solvers import (
    DDIM,
    DDPM,
    PLMS,
    SOLVER_NAMES,
    DPMSolverPP,
    Euler,
    EulerAncestral,
    Solver,
    SolverState,
    UniPC,
    get_solver,
)
from driffusion.core.transitions import (
    ddpm_posterior,
    ddpm_transition,
    ddpm_transition_from_x0,
    predict_x0_eps,
    skip_transition,
)

__all__ = [
    *_samplers_all,
    "DDIM",
    "DRAFT_RULES",
    "DDPM",
    "PLMS",
    "PREDICTION_TYPES",
    "SOLVER_NAMES",
    "BatchedExecutor",
    "GuidedNetwork",
    "RoundPlan",
    "choose_guidance_devices",
    "classifier_free_guidance",
    "pick_rows",
    "round_passes",
    "Calibration",
    "Candidate",
    "ChunkedExecutor",
    "CountingModel",
    "DPMSolverPP",
    "DraftRule",
    "Euler",
    "EulerAncestral",
    "Model",
    "NonFiniteStateError",
    "UsageError",
    "PredictionType",
    "RowwiseModel",
    "SampleResult",
    "SamplerStats",
    "Schedule",
    "Solver",
    "SolverState",
    "UniPC",
    "alphas_cumprod_from_betas",
    "beta_sigmas",
    "calibrate",
    "candidates",
    "ddpm_noise",
    "ddpm_posterior",
    "ddpm_transition",
    "ddpm_transition_from_x0",
    "draft",
    "exponential_sigmas",
    "flow_schedule",
    "flow_sigmas",
    "from_x0_eps",
    "get_solver",
    "initial_noise",
    "karras_sigmas",
    "predict_x0_eps",
    "reference_schedule",
    "reference_solution",
    "refine",
    "relative_error",
    "sigma_schedule",
    "sigma_to_t",
    "skip_transition",
    "training_sigmas",
    "vp_schedule",
    "vp_timesteps",
]
