"""Schedules from a diffusers scheduler's facts, and the skip-transition invariants."""

import torch

from driffusion.core import (
    alphas_cumprod_from_betas,
    flow_schedule,
    flow_sigmas,
    skip_transition,
    vp_schedule,
    vp_timesteps,
)

abar = alphas_cumprod_from_betas(0.00085, 0.012, 1000, "scaled_linear")  # SD's betas
sd21 = vp_schedule(abar, vp_timesteps(50, spacing="leading", steps_offset=1), 1.0, "v_prediction")
sd3 = flow_schedule(flow_sigmas(28, shift=3.0))
print(sd21, sd3)

x, out = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
assert torch.equal(skip_transition(x, out, sd21, 7, 7), x)  # zero steps: identity
euler = x + (sd3.sigma(5) - sd3.sigma(2)) * out  # flow: a skip is one Euler step
assert torch.allclose(skip_transition(x, out, sd3, 2, 5), euler)
coarse = sd21.subgrid([0, 10, 20, 30, 40, 50])  # a 5-step coarse grid of the same model
assert coarse.num_steps == 5
