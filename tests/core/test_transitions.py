"""Skip transitions: identity, composition, and the diffusers schedulers' steps as oracle."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from driffusion.core import (
    PREDICTION_TYPES,
    ddpm_transition,
    flow_schedule,
    from_x0_eps,
    predict_x0_eps,
    skip_transition,
    vp_schedule,
)
from driffusion.core.parameterization import to_x0_eps
from tests.support import make_family

families = st.sampled_from(["epsilon", "v_prediction", "sample", "flow"])


def _tensors(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 5, generator=gen, dtype=torch.float64), torch.randn(
        2, 3, 5, generator=gen, dtype=torch.float64
    )


@settings(max_examples=60, deadline=None)
@given(family=families, n=st.integers(1, 40), data=st.data(), seed=st.integers(0, 10_000))
def test_skip_over_zero_steps_is_the_identity(family: str, n: int, data, seed: int) -> None:  # type: ignore[no-untyped-def]
    sched = make_family(n, family)
    i = data.draw(st.integers(0, n))
    x, out = _tensors(seed)
    assert torch.equal(skip_transition(x, out, sched, i, i), x)


@settings(max_examples=60, deadline=None)
@given(family=families, n=st.integers(2, 40), data=st.data(), seed=st.integers(0, 10_000))
def test_skips_compose(family: str, n: int, data, seed: int) -> None:  # type: ignore[no-untyped-def]
    """skip(skip(x, p, i->j), same prediction, j->k) == skip(x, p, i->k)."""
    sched = make_family(n, family)
    i = data.draw(st.integers(0, n - 2))
    j = data.draw(st.integers(i + 1, n - 1))
    k = data.draw(st.integers(j, n))
    x, out = _tensors(seed)
    x0, eps = predict_x0_eps(x, out, sched, i)
    x_j = skip_transition(x, out, sched, i, j)
    # the same prediction, re-expressed in the network's parameterisation at point j
    out_j = from_x0_eps(x0, eps, sched.alpha(j), sched.sigma(j), sched.prediction_type)
    torch.testing.assert_close(
        skip_transition(x_j, out_j, sched, j, k),
        skip_transition(x, out, sched, i, k),
        rtol=1e-9,
        atol=1e-9,
    )


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_parameterisations_round_trip(prediction_type: str) -> None:
    x0, eps = _tensors(3)
    alpha, sigma = (0.6, 0.8) if prediction_type != "flow" else (0.3, 0.7)
    x = alpha * x0 + sigma * eps
    out = from_x0_eps(x0, eps, alpha, sigma, prediction_type)  # type: ignore[arg-type]
    x0_hat, eps_hat = to_x0_eps(x, out, alpha, sigma, prediction_type)  # type: ignore[arg-type]
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize(
    ("spacing", "offset", "alpha_to_one", "steps"),
    [("leading", 1, False, 20), ("leading", 0, True, 10), ("trailing", 0, True, 25)],
)
def test_one_step_skip_is_ddim_step(
    prediction_type: str, spacing: str, offset: int, alpha_to_one: bool, steps: int
) -> None:
    ddim = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=alpha_to_one,
        steps_offset=offset,
        timestep_spacing=spacing,
        prediction_type=prediction_type,
    )
    ddim.set_timesteps(steps)
    sched = vp_schedule(
        ddim.alphas_cumprod,
        ddim.timesteps,
        float(ddim.final_alpha_cumprod),
        prediction_type,  # type: ignore[arg-type]
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    for i, t in enumerate(ddim.timesteps):
        out = torch.randn(x.shape, generator=gen)
        expected = ddim.step(out, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(skip_transition(x, out, sched, i, i + 1), expected)
        x = expected


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_one_step_ddpm_transition_is_ddpm_step(prediction_type: str, spacing: str) -> None:
    ddpm = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type=prediction_type,
        timestep_spacing=spacing,
    )
    ddpm.set_timesteps(15)
    # DDPM steps to the next grid timestep and ends at abar = 1.
    sched = vp_schedule(ddpm.alphas_cumprod, ddpm.timesteps, 1.0, prediction_type)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    for i, t in enumerate(ddpm.timesteps):
        out = torch.randn(x.shape, generator=gen)
        seed = 100 + i
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        expected = ddpm.step(out, t, x, generator=torch.Generator().manual_seed(seed)).prev_sample
        torch.testing.assert_close(ddpm_transition(x, out, sched, i, i + 1, noise), expected)
        x = expected


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_one_step_skip_is_flow_euler_step(shift: float) -> None:
    flow = FlowMatchEulerDiscreteScheduler(shift=shift)
    flow.set_timesteps(12)
    sched = flow_schedule(flow.sigmas)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    for i, t in enumerate(flow.timesteps):
        out = torch.randn(x.shape, generator=gen)
        expected = flow.step(out, t, x).prev_sample
        torch.testing.assert_close(skip_transition(x, out, sched, i, i + 1), expected)
        x = expected


def test_multi_step_ddpm_posterior_is_the_composed_chain_in_law() -> None:
    """Mean and variance of the k-step posterior equal those of k chained one-step posteriors."""
    sched = make_family(10, "epsilon")
    x = torch.zeros(1, 1, dtype=torch.float64)
    x0 = torch.ones(1, 1, dtype=torch.float64)
    out = (x - sched.alpha(2) * x0) / sched.sigma(2)  # epsilon that encodes x0 at point 2
    zero = torch.zeros_like(x)
    mean_direct = ddpm_transition(x, out, sched, 2, 6, zero)
    unit = torch.ones_like(x)
    var_direct = (ddpm_transition(x, out, sched, 2, 6, unit) - mean_direct) ** 2
    # chain: the mean goes through the means, the variance accumulates with the c_x factors
    from driffusion.core import ddpm_posterior

    mean, var = x, torch.zeros_like(x)
    for m in range(2, 6):
        c_x0, c_x, v = ddpm_posterior(sched, m, m + 1)
        mean = c_x0 * x0 + c_x * mean
        var = c_x**2 * var + v
    torch.testing.assert_close(mean_direct, mean)
    torch.testing.assert_close(var_direct, var)


def test_bad_transition_arguments() -> None:
    sched = make_family(5, "epsilon")
    x, out = _tensors(0)
    with pytest.raises(ValueError, match="i=3, j=2"):
        skip_transition(x, out, sched, 3, 2)
    with pytest.raises(ValueError, match="j=6"):
        skip_transition(x, out, sched, 0, 6)
    with pytest.raises(ValueError, match=r"noise shape \(1, 3, 5\)"):
        ddpm_transition(x, out, sched, 0, 1, x[:1])
    with pytest.raises(ValueError, match="VP schedule"):
        ddpm_transition(x, out, make_family(5, "flow"), 0, 1, x)
