"""Solvers: each equals diffusers' own scheduler step loop on the exact oracle, every parallel
sampler keeps its exactness invariants under every solver, and unsupported configurations fail
with a clear error."""

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
    aggressive_rounds,
    ddpm_noise,
    sample_driffusion,
    sample_paradigms,
    sample_picard_driffusion,
    sample_serial,
    sample_srds,
)
from driffusion.core.schedule import (
    beta_sigmas,
    exponential_sigmas,
    karras_sigmas,
    sigma_to_t,
    training_sigmas,
)
from driffusion.core.solvers import (
    PLMS,
    SOLVER_NAMES,
    DPMSolverPP,
    draft_states,
    get_solver,
)
from driffusion.testing import GaussianMixtureDenoiser
from tests.support import ABAR64, SHAPE, make_flow, make_vp, oracle64, start64, step_noise

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


def test_flow_euler_equals_flow_match_euler() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    solver, schedule = from_scheduler(scheduler, 12)
    assert solver.name == "euler" and schedule.kind == "flow"
    model = oracle64("flow", flow=True)
    x = start64()
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(12)
    latents = x.clone()
    for t in sched.timesteps:
        out = model(latents[None], t.reshape(1).double())[0]
        latents = sched.step(out, t, latents).prev_sample
    ours = sample_serial(model, x, schedule, solver=solver).x
    assert float((ours - latents).norm() / latents.norm()) <= 1e-6


def test_sigma_grids_match_diffusers() -> None:
    train = training_sigmas(ABAR64)
    for flag, make in (
        ("use_karras_sigmas", karras_sigmas),
        ("use_exponential_sigmas", exponential_sigmas),
        ("use_beta_sigmas", beta_sigmas),
    ):
        sched = EulerDiscreteScheduler(**BETAS, **{flag: True})
        sched.set_timesteps(17)
        ours = make(float(train[0]), float(train[-1]), 17)
        assert torch.allclose(ours.float(), sched.sigmas[:-1], rtol=1e-6), flag
        times = sigma_to_t(ours, ABAR64)
        assert torch.allclose(times.float(), sched.timesteps, atol=1e-3), flag


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


def test_unknown_solver_and_noise_mismatches() -> None:
    sched = make_vp(6)
    model = oracle64("epsilon")
    x = start64()
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        sample_serial(model, x, sched, solver="rk4")
    with pytest.raises(ValueError, match="is stochastic: pass its pre-drawn noise"):
        sample_serial(model, x, sched, solver="euler_ancestral")
    with pytest.raises(ValueError, match="is deterministic"):
        sample_serial(model, x, sched, solver="dpmpp_2m", noise=step_noise(6))
    with pytest.raises(ValueError, match="draft_rule='solver'"):
        sample_driffusion(model, x, sched, drafts=3, solver="unipc", order=2)


# --- invariants of the parallel samplers, for every solver -----------------------------------


def setup(name: str, steps: int, family: str = "epsilon") -> tuple[Any, ...]:
    schedule = make_flow(steps) if family == "flow" else make_vp(steps, family, "trailing")
    model = oracle64("flow" if family == "flow" else family, flow=family == "flow")
    x = start64()
    solver = get_solver(name)
    grid_steps = solver.prepare(schedule).num_steps
    noise = (
        ddpm_noise([3, 4, 5], grid_steps, SHAPE, dtype=torch.float64) if solver.stochastic else None
    )
    return model, x, schedule, noise, grid_steps


def solver_families() -> list[tuple[str, str]]:
    out = []
    for name in SOLVER_NAMES:
        out.append((name, "epsilon"))
        out.append((name, "v_prediction"))
        if name not in ("ddpm",):  # DDPM is a VP posterior
            out.append((name, "flow"))
    return out


@pytest.mark.parametrize(("name", "family"), solver_families())
@pytest.mark.parametrize("mode", ["aggressive", "conservative"])
@pytest.mark.parametrize("rule", ["skip", "solver"])
def test_one_draft_is_serial_bit_for_bit(name: str, family: str, mode: str, rule: str) -> None:
    for steps in (1, 2, 9):
        model, x, schedule, noise, n = setup(name, steps, family)
        serial = sample_serial(model, x, schedule, solver=name, noise=noise)
        result = sample_driffusion(
            model,
            x,
            schedule,
            drafts=1,
            mode=mode,
            solver=name,
            draft_rule=rule,
            noise=noise,  # type: ignore[arg-type]
        )
        assert torch.equal(result.x, serial.x)
        assert result.stats.rounds == serial.stats.rounds == n
        assert result.stats.evaluations == n


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_rounds_and_evaluations_are_unchanged_by_the_solver(name: str) -> None:
    for steps in (5, 12):
        model, x, schedule, noise, n = setup(name, steps)
        for k in (2, 3, 4):
            aggressive = sample_driffusion(model, x, schedule, drafts=k, solver=name, noise=noise)
            assert aggressive.stats.rounds == aggressive_rounds(n, k)
            assert aggressive.stats.evaluations == n
            conservative = sample_driffusion(
                model, x, schedule, drafts=k, mode="conservative", solver=name, noise=noise
            )
            assert conservative.stats.rounds == 2 * (n // (k + 1)) + min(n % (k + 1), 2)


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_convergent_samplers_with_zero_tolerance_equal_serial(name: str) -> None:
    model, x, schedule, noise, _ = setup(name, 14)
    serial = sample_serial(model, x, schedule, solver=name, noise=noise).x
    picard = sample_picard_driffusion(
        model, x, schedule, window=4, tol=0.0, solver=name, noise=noise
    ).x
    assert torch.equal(picard, serial)
    paradigms = sample_paradigms(model, x, schedule, window=4, tol=0.0, solver=name, noise=noise).x
    assert torch.allclose(paradigms, serial, rtol=0, atol=1e-10)
    for pipelined in (False, True):
        srds = sample_srds(
            model, x, schedule, blocks=4, tol=0.0, pipelined=pipelined, solver=name, noise=noise
        ).x
        assert torch.allclose(srds, serial, rtol=0, atol=1e-10)


def test_multistep_drafts_by_the_solver_extrapolate_the_history() -> None:
    schedule = make_vp(30, "epsilon", "trailing")
    model = oracle64("epsilon")
    x = start64()
    solver = DPMSolverPP(order=2)
    state = solver.init(x, schedule)
    # walk five serial steps to build a history, then draft four points both ways
    for i in range(5):
        out = model(x[None], schedule.times([i]).double())[0]
        x_next, next_state = solver.step(x, out, schedule, i, state)
        if i < 4:
            x, state = x_next, next_state
    skip = draft_states(solver, x, out, schedule, 4, 4, state, "skip")
    own = draft_states(solver, x, out, schedule, 4, 4, state, "solver")
    assert torch.equal(skip[0], own[0])  # d_1 is the solver's step either way
    assert not torch.allclose(skip[1:], own[1:])
    # the 2M extrapolation over two steps is the 2M step with h spanning both
    assert torch.equal(own[1], solver.step(x, out, schedule, 4, state, target=6)[0])


def test_plms_grid_repeats_the_second_point() -> None:
    schedule = make_vp(5)
    stages = PLMS().prepare(schedule)
    assert stages.num_steps == 6
    assert stages.alpha(1) == stages.alpha(2) == schedule.alpha(1)
    assert torch.equal(stages.alphas[2:], schedule.alphas[1:])
    assert PLMS().prepare(make_vp(1)).num_steps == 1
