"""A diffusers scheduler as the core's pair: the [`Solver`][driffusion.core.solvers.Solver] of the
same method and the [`Schedule`][driffusion.core.schedule.Schedule] of the same grid.

The scheduler is read once, on a copy, after ``set_timesteps``; it is never stepped. Its own
arrays (``alphas_cumprod``, ``timesteps``, ``sigmas``) are used as they are, so every spacing
option and Karras / exponential / beta sigmas (non-integer network times included) come out as
diffusers makes them. A configuration the core cannot reproduce is an error naming what is
supported, never a silent fallback.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from driffusion.core.errors import UsageError
from driffusion.core.schedule import Schedule, flow_schedule, sigma_schedule, vp_schedule
from driffusion.core.solvers import (
    DDIM,
    DDPM,
    PLMS,
    DPMSolverPP,
    Euler,
    EulerAncestral,
    Solver,
    UniPC,
)

SUPPORTED_SCHEDULERS: dict[str, str] = {
    "DDIMScheduler": "ddim (eta=0, no clipping or thresholding)",
    "DDPMScheduler": "ddpm (fixed_small variance, no clipping)",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_ancestral",
    "FlowMatchEulerDiscreteScheduler": "euler (rectified flow)",
    "DPMSolverMultistepScheduler": "dpmpp_2m / dpmpp_3m / dpmpp_2m_sde (dpmsolver++ or "
    "sde-dpmsolver++, midpoint; also over flow sigmas with flow_prediction)",
    "UniPCMultistepScheduler": "unipc (bh2, predict_x0, no solver_p; also over flow sigmas with "
    "flow_prediction, Wan's set-up)",
    "PNDMScheduler": "plms (skip_prk_steps=True)",
    "CogVideoXDDIMScheduler": "ddim (CogVideoX's: SNR shift, zero terminal SNR; never clips)",
}
"""The diffusers schedulers that map to a core solver, with the settings each supports."""


class UnsupportedSchedulerError(UsageError, ValueError):
    """The scheduler (or one of its settings) has no exact counterpart in the core."""


def _unsupported(scheduler: Any, why: str) -> UnsupportedSchedulerError:
    supported = "; ".join(f"{k}: {v}" for k, v in SUPPORTED_SCHEDULERS.items())
    return UnsupportedSchedulerError(
        f"{type(scheduler).__name__} {why}; supported schedulers: {supported}"
    )


def _require(scheduler: Any, key: str, allowed: tuple[Any, ...]) -> None:
    value = scheduler.config.get(key, allowed[0])
    if value not in allowed:
        raise _unsupported(scheduler, f"with {key}={value!r} is not supported (need {allowed})")


def solver_from_scheduler(scheduler: Any) -> Solver:
    """The core solver that reproduces ``scheduler.step``.

    Raises:
        UnsupportedSchedulerError: for schedulers or settings outside
            [`SUPPORTED_SCHEDULERS`][driffusion.adapters.schedulers.SUPPORTED_SCHEDULERS].
    """
    name = type(scheduler).__name__
    config = scheduler.config
    if name not in SUPPORTED_SCHEDULERS:
        raise _unsupported(scheduler, "is not supported")
    _require(scheduler, "thresholding", (False,))
    if name == "DDIMScheduler":
        _require(scheduler, "clip_sample", (False,))
        return DDIM()
    if name == "CogVideoXDDIMScheduler":  # DDIM's step written through x0 (a_t x + b_t x0)
        return DDIM()
    if name == "DDPMScheduler":
        _require(scheduler, "clip_sample", (False,))
        _require(scheduler, "variance_type", ("fixed_small",))
        return DDPM()
    if name in ("EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler"):
        _require(scheduler, "timestep_type", ("discrete",))
        _require(scheduler, "stochastic_sampling", (False,))
        return Euler()
    if name == "EulerAncestralDiscreteScheduler":
        return EulerAncestral()
    if name == "DPMSolverMultistepScheduler":
        _require(scheduler, "algorithm_type", ("dpmsolver++", "sde-dpmsolver++"))
        _require(scheduler, "solver_type", ("midpoint",))
        _require(scheduler, "variance_type", (None,))
        _require_flow_pairing(scheduler)
        return DPMSolverPP(
            order=int(config.solver_order),
            lower_order_final=bool(config.lower_order_final),
            euler_at_final=bool(config.get("euler_at_final", False)),
            sde=config.algorithm_type == "sde-dpmsolver++",
        )
    if name == "UniPCMultistepScheduler":
        _require(scheduler, "solver_type", ("bh2",))
        _require(scheduler, "predict_x0", (True,))
        _require_flow_pairing(scheduler)
        if getattr(scheduler, "solver_p", None) is not None:
            raise _unsupported(scheduler, "with solver_p is not supported")
        return UniPC(
            order=int(config.solver_order),
            lower_order_final=bool(config.lower_order_final),
            disable_corrector=tuple(int(i) for i in config.disable_corrector),
        )
    # PNDMScheduler
    _require(scheduler, "skip_prk_steps", (True,))
    return PLMS()


def set_timesteps(scheduler: Any, steps: int, **options: Any) -> None:
    """``scheduler.set_timesteps`` as the pipelines call it (``retrieve_timesteps``): with
    explicit ``sigmas`` the step count is theirs; ``mu`` and other options pass through."""
    if options.get("sigmas") is not None:
        scheduler.set_timesteps(**options)
        if len(scheduler.timesteps) != steps:
            raise ValueError(f"{len(scheduler.timesteps)} sigmas given for {steps} steps")
    else:
        scheduler.set_timesteps(steps, **options)


def _require_flow_pairing(scheduler: Any) -> None:
    """Flow sigmas (``use_flow_sigmas``, Wan's set-up) go with ``flow_prediction`` and back."""
    flow_sigmas = bool(scheduler.config.get("use_flow_sigmas", False))
    flow_prediction = scheduler.config.get("prediction_type") == "flow_prediction"
    if flow_sigmas != flow_prediction:
        raise _unsupported(
            scheduler,
            f"with use_flow_sigmas={flow_sigmas} and prediction_type="
            f"{scheduler.config.get('prediction_type')!r} is not supported (flow sigmas need "
            "prediction_type='flow_prediction', and it needs them)",
        )


def schedule_from_scheduler(scheduler: Any, steps: int, **options: Any) -> Schedule:
    """The grid ``scheduler`` uses for ``steps`` steps (read on a copy; never mutated).

    The grid is the one the solver runs on before
    [`Solver.prepare`][driffusion.core.solvers.Solver.prepare]: for PNDM its ``N``
    distinct timesteps (PLMS repeats the second itself). ``options`` are what the pipeline gives
    ``set_timesteps`` besides the steps (``mu``, ``sigmas``; see
    [`Family.timestep_options`][driffusion.adapters.families.Family.timestep_options]).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    name = type(scheduler).__name__
    sched = copy.deepcopy(scheduler)
    set_timesteps(sched, steps, **options)
    prediction = sched.config.get("prediction_type", "epsilon")
    if name.startswith("FlowMatch"):
        return flow_schedule(sched.sigmas.cpu(), sched.config.num_train_timesteps)
    if sched.config.get("use_flow_sigmas", False):  # UniPC / DPM-Solver++ over flow sigmas
        sigmas = sched.sigmas.cpu().to(torch.float64)
        # the scheduler's own (integer) network times, and the final point's (never evaluated)
        times = torch.cat([sched.timesteps.cpu().to(torch.float64), torch.zeros(1)])
        return Schedule(1.0 - sigmas, sigmas, times, "flow", "flow")
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise _unsupported(scheduler, f"with prediction_type={prediction!r} is not supported")
    timesteps = sched.timesteps.cpu()
    if name == "PNDMScheduler":
        timesteps = torch.as_tensor(sched._timesteps).flip(0)  # the N distinct timesteps
    if name in STEP_BACK_SCHEDULERS:
        _check_steps_land_on_grid(scheduler, timesteps.long(), sched.config.num_train_timesteps)
    sigmas = getattr(sched, "sigmas", None)
    if name in STEP_BACK_SCHEDULERS or sigmas is None:
        final = float(getattr(sched, "final_alpha_cumprod", torch.tensor(1.0)))
        if name == "DDPMScheduler":  # DDPM's last step goes to abar = 1
            final = 1.0
        return vp_schedule(sched.alphas_cumprod.cpu(), timesteps.long(), final, prediction)
    return sigma_schedule(sigmas.cpu(), timesteps.to(torch.float64), prediction)


STEP_BACK_SCHEDULERS = (
    "DDIMScheduler",
    "CogVideoXDDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
)
"""Schedulers that step from ``t`` to ``t - T // N`` over their ``alphas_cumprod``."""


def _check_steps_land_on_grid(scheduler: Any, timesteps: torch.Tensor, train: int) -> None:
    """DDIM, DDPM and PNDM step from ``t`` to ``t - T // N``, not to the next grid timestep;
    the two agree for ``leading`` spacing (and ``trailing`` when ``N`` divides ``T``). Where they
    differ diffusers samples off its own grid, which no consistent solver reproduces."""
    n = timesteps.numel()
    target = timesteps - train // n
    expected = torch.cat([timesteps[1:], target[-1:].clamp(max=-1)])
    if not torch.equal(target.clamp(min=-1), expected.clamp(min=-1)):
        spacing = scheduler.config.get("timestep_spacing", "leading")
        raise _unsupported(
            scheduler,
            f"with timestep_spacing={spacing!r} and {n} steps moves from t to t - {train}//{n}, "
            "off its own grid (timesteps "
            f"{timesteps[:3].tolist()}...); use timestep_spacing='leading' (or 'trailing' with a "
            "step count that divides num_train_timesteps)",
        )


def from_scheduler(scheduler: Any, steps: int, **options: Any) -> tuple[Solver, Schedule]:
    """``(solver_from_scheduler(s), schedule_from_scheduler(s, steps, **options))``."""
    return solver_from_scheduler(scheduler), schedule_from_scheduler(scheduler, steps, **options)
