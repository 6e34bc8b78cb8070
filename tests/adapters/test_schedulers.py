"""The diffusers scheduler adapter: each supported scheduler becomes a solver and schedule whose
serial sampler equals diffusers' own scheduler step loop on the exact oracle, and unsupported
configurations fail with a clear error."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from driffusion.adapters.schedulers import (
    UnsupportedSchedulerError,
    from_scheduler,
    solver_from_scheduler,
)
from driffusion.core import (
    sample_serial,
)
from driffusion.testing import GaussianMixtureDenoiser
from tests.support import oracle64, start64, step_noise

BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
VE = (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)


def diffusers_loop(
    scheduler: Any, steps: int, model: GaussianMixtureDenoiser, x: torch.Tensor, stochastic: bool
) -> torch.Tensor:
    """The scheduler's own ``set_timesteps`` / ``scale_model_input`` / ``step`` loop.

    Its float32 sigmas are cast to float64 so that both sides compute in float64 (UniPC's solve
    refuses mixed dtypes, see ENVIRONMENT.md). Euler-family latents live in VE coordinates.
    """
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(steps)
    if isinstance(sched, (*VE, DPMSolverMultistepScheduler, UniPCMultistepScheduler)):
        sched.sigmas = sched.sigmas.to(torch.float64)
    latents = x.clone()
    if isinstance(sched, VE):
        latents = x * (sched.sigmas[0] ** 2 + 1).sqrt()
    for k, t in enumerate(sched.timesteps):
        model_input = sched.scale_model_input(latents, t) if isinstance(sched, VE) else latents
        out = model(model_input[None], torch.tensor([float(t)], dtype=torch.float64))[0]
        kwargs: dict[str, Any] = {}
        if stochastic and isinstance(sched, DPMSolverMultistepScheduler):
            kwargs["variance_noise"] = step_noise(steps)[k]
        elif stochastic:
            kwargs["generator"] = torch.Generator().manual_seed(1234 + k)
        latents = sched.step(out, t, latents, **kwargs).prev_sample
    return latents


def cases() -> list[tuple[str, Any]]:
    """(solver name, scheduler) for every solver, prediction type, spacing and sigma grid."""
    out: list[tuple[str, Any]] = []
    for pred in ("epsilon", "v_prediction"):
        kw = {**BETAS, "prediction_type": pred}
        for sp in ("leading", "trailing", "linspace"):
            spacing = {"timestep_spacing": sp, "steps_offset": 1 if sp == "leading" else 0}
            out += [
                ("euler", EulerDiscreteScheduler(**kw, **spacing)),
                ("euler_ancestral", EulerAncestralDiscreteScheduler(**kw, **spacing)),
                ("dpmpp_2m", DPMSolverMultistepScheduler(**kw, **spacing)),
                ("dpmpp_3m", DPMSolverMultistepScheduler(**kw, **spacing, solver_order=3)),
                (
                    "dpmpp_2m_sde",
                    DPMSolverMultistepScheduler(**kw, **spacing, algorithm_type="sde-dpmsolver++"),
                ),
                ("unipc", UniPCMultistepScheduler(**kw, **spacing)),
            ]
        for sp in ("leading", "trailing"):  # DDIM / DDPM / PNDM step to t - T // N
            spacing = {"timestep_spacing": sp, "steps_offset": 1 if sp == "leading" else 0}
            out += [
                ("ddim", DDIMScheduler(**kw, **spacing, clip_sample=False, set_alpha_to_one=False)),
                ("ddpm", DDPMScheduler(**kw, **spacing, clip_sample=False)),
                ("plms", PNDMScheduler(**kw, **spacing, skip_prk_steps=True)),
            ]
        for grid in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            out += [
                ("dpmpp_2m", DPMSolverMultistepScheduler(**kw, **{grid: True})),
                ("euler", EulerDiscreteScheduler(**kw, **{grid: True})),
                ("unipc", UniPCMultistepScheduler(**kw, **{grid: True})),
            ]
        out += [
            ("dpmpp_2m", DPMSolverMultistepScheduler(**kw, final_sigmas_type="sigma_min")),
            ("dpmpp_2m", DPMSolverMultistepScheduler(**kw, lower_order_final=False)),
            ("dpmpp_3m", DPMSolverMultistepScheduler(**kw, solver_order=3, euler_at_final=True)),
            (
                "dpmpp_2m_sde",
                DPMSolverMultistepScheduler(
                    **kw, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True
                ),
            ),
            ("unipc", UniPCMultistepScheduler(**kw, solver_order=3)),
            ("unipc", UniPCMultistepScheduler(**kw, disable_corrector=[0, 3])),
        ]
    return out


CASES = cases()


@pytest.mark.parametrize("steps", [8, 20])
@pytest.mark.parametrize(
    ("name", "scheduler"),
    CASES,
    ids=[
        f"{n}-{s.config.prediction_type}-{s.config.get('timestep_spacing')}-{k}"
        for k, (n, s) in enumerate(CASES)
    ],
)
def test_serial_solver_equals_the_diffusers_step_loop(
    name: str, scheduler: Any, steps: int
) -> None:
    solver, schedule = from_scheduler(scheduler, steps)
    assert solver.name == name
    model = oracle64(scheduler.config.prediction_type)
    x = start64()
    noise = step_noise(steps) if solver.stochastic else None
    ours = sample_serial(model, x, schedule, solver=solver, noise=noise).x
    theirs = diffusers_loop(scheduler, steps, model, x, solver.stochastic)
    assert float((ours - theirs).norm() / theirs.norm()) <= 1e-6


def flow_match_loop(sched: Any, model: GaussianMixtureDenoiser, x: torch.Tensor) -> torch.Tensor:
    """A FlowMatch scheduler's step loop on the grid it was set to."""
    latents = x.clone()
    for t in sched.timesteps:
        out = model(latents[None], t.reshape(1).double())[0]
        latents = sched.step(out, t, latents).prev_sample
    return latents


def test_flow_euler_equals_flow_match_euler() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    solver, schedule = from_scheduler(scheduler, 12)
    assert solver.name == "euler" and schedule.kind == "flow"
    model = oracle64("flow", flow=True)
    x = start64()
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(12)
    latents = flow_match_loop(sched, model, x)
    ours = sample_serial(model, x, schedule, solver=solver).x
    assert float((ours - latents).norm() / latents.norm()) <= 1e-6


@pytest.mark.parametrize(
    ("scheduler", "fragment"),
    [
        (LMSDiscreteScheduler(**BETAS), "LMSDiscreteScheduler is not supported"),
        (DDIMScheduler(**BETAS, thresholding=True, clip_sample=False), "thresholding"),
        (DDIMScheduler(**BETAS), "clip_sample"),
        (
            DPMSolverMultistepScheduler(
                **BETAS, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"
            ),
            "algorithm_type",
        ),
        (DPMSolverMultistepScheduler(**BETAS, solver_type="heun"), "solver_type"),
        (UniPCMultistepScheduler(**BETAS, solver_type="bh1"), "solver_type"),
        (PNDMScheduler(**BETAS), "skip_prk_steps"),
    ],
)
def test_unsupported_configurations_are_clear_errors(scheduler: Any, fragment: str) -> None:
    with pytest.raises(UnsupportedSchedulerError, match=fragment) as info:
        solver_from_scheduler(scheduler)
    assert "supported schedulers" in str(info.value)


def test_off_grid_spacing_is_a_clear_error() -> None:
    scheduler = DDIMScheduler(**BETAS, clip_sample=False, timestep_spacing="linspace")
    with pytest.raises(UnsupportedSchedulerError, match="off its own grid"):
        from_scheduler(scheduler, 20)
    from_scheduler(DDIMScheduler(**BETAS, clip_sample=False, timestep_spacing="trailing"), 20)
    with pytest.raises(UnsupportedSchedulerError, match="off its own grid"):
        from_scheduler(DDIMScheduler(**BETAS, clip_sample=False, timestep_spacing="trailing"), 30)


FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
FLOW_CASES = [  # Wan's documented set-up: UniPC over flow sigmas, flow_shift 5 (720p) or 3
    ("unipc", UniPCMultistepScheduler(**FLOW_SIGMAS, flow_shift=5.0)),
    ("unipc", UniPCMultistepScheduler(**FLOW_SIGMAS, flow_shift=3.0, solver_order=3)),
    ("dpmpp_2m", DPMSolverMultistepScheduler(**FLOW_SIGMAS, flow_shift=5.0)),
    ("dpmpp_3m", DPMSolverMultistepScheduler(**FLOW_SIGMAS, flow_shift=3.0, solver_order=3)),
]


@pytest.mark.parametrize("steps", [8, 50])
@pytest.mark.parametrize(
    ("name", "scheduler"),
    FLOW_CASES,
    ids=[f"{n}-shift{s.config.flow_shift:g}" for n, s in FLOW_CASES],
)
def test_solvers_over_flow_sigmas_equal_the_diffusers_step_loop(
    name: str, scheduler: Any, steps: int
) -> None:
    """UniPC and DPM-Solver++ with ``use_flow_sigmas`` / ``flow_shift`` /
    ``prediction_type="flow_prediction"``: the flow grid (alpha = 1 - sigma) with the
    scheduler's own network times, float64 against its step loop."""
    solver, schedule = from_scheduler(scheduler, steps)
    assert solver.name == name and schedule.kind == "flow"
    model = oracle64("flow", flow=True)
    x = start64()
    ours = sample_serial(model, x, schedule, solver=solver).x
    theirs = diffusers_loop(scheduler, steps, model, x, stochastic=False)
    assert float((ours - theirs).norm() / theirs.norm()) <= 1e-6


@pytest.mark.parametrize("name", ["unipc", "dpmpp"])
def test_flow_sigmas_and_flow_prediction_come_together_or_not_at_all(name: str) -> None:
    cls = UniPCMultistepScheduler if name == "unipc" else DPMSolverMultistepScheduler
    for config in ({"use_flow_sigmas": True}, {"prediction_type": "flow_prediction"}):
        with pytest.raises(UnsupportedSchedulerError, match="flow sigmas need"):
            solver_from_scheduler(cls(**config))


def test_flow_euler_on_the_pipelines_explicit_sigmas_and_dynamic_shift() -> None:
    """FLUX's grid: explicit ``sigmas = linspace(1, 1/N, N)`` shifted by ``mu`` (dynamic
    shifting), read with the options the pipeline gives ``set_timesteps``; float64 against the
    step loop on the same grid, and not the grid ``set_timesteps(N, mu=mu)`` alone would make."""
    import numpy as np

    steps, mu = 10, 1.1
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    options = {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu}
    solver, schedule = from_scheduler(scheduler, steps, **options)
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(**options)
    torch.testing.assert_close(schedule.sigmas, sched.sigmas.double(), rtol=0, atol=0)
    implicit = copy.deepcopy(scheduler)
    implicit.set_timesteps(steps, mu=mu)
    assert not torch.allclose(implicit.sigmas, sched.sigmas)  # the grid the pipeline does not use
    model = oracle64("flow", flow=True)
    x = start64()
    latents = flow_match_loop(sched, model, x)
    ours = sample_serial(model, x, schedule, solver=solver).x
    assert float((ours - latents).norm() / latents.norm()) <= 1e-6


@pytest.mark.parametrize("zero_snr", [True, False])
@pytest.mark.parametrize("steps", [10, 50])
def test_cogvideox_ddim_equals_its_step_loop(zero_snr: bool, steps: int) -> None:
    """CogVideoX's DDIM (its alphas shifted by `snr_shift_scale`, zero terminal SNR in the
    published config, v-prediction, trailing spacing) is the core DDIM on its own grid."""
    from diffusers import CogVideoXDDIMScheduler

    from driffusion.adapters.tiny import COGVIDEOX_SCHEDULER
    from driffusion.testing import GaussianMixtureDenoiser, VPNoiseLevels

    scheduler = CogVideoXDDIMScheduler(
        **{**COGVIDEOX_SCHEDULER, "rescale_betas_zero_snr": zero_snr}
    )
    solver, schedule = from_scheduler(scheduler, steps)
    assert solver.name == "ddim" and schedule.alpha(0) == (0.0 if zero_snr else schedule.alpha(0))
    levels = VPNoiseLevels(scheduler.alphas_cumprod.to(torch.float64))
    model = GaussianMixtureDenoiser.random(
        tuple(start64().shape[1:]), noise_levels=levels, prediction_type="v_prediction", seed=0
    )
    x = start64()
    ours = sample_serial(model, x, schedule, solver=solver).x
    theirs = diffusers_loop(scheduler, steps, model, x, False)
    assert float((ours - theirs).norm() / theirs.norm()) <= 1e-6
