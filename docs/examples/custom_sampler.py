"""Compose a sampler from the public pieces: a "draft-twice" variant of DRiffusion.

Run by the test suite (tests/test_docs.py), so it cannot drift from the code.
"""

import torch

from driffusion.core import (
    CountingModel,
    SampleResult,
    alphas_cumprod_from_betas,
    draft,
    evaluate,
    refine,
    sample_serial,
    vp_schedule,
    vp_timesteps,
)
from driffusion.testing import GaussianMixtureDenoiser, VPNoiseLevels


def sample_draft_refine_twice(model, x, schedule, *, drafts=3):
    """Conservative-style blocks whose drafts are evaluated twice: once at the drafts, once at
    the refined states, then refined again (3 rounds per block of `drafts` steps)."""
    counter = CountingModel(model)
    i, n = 0, schedule.num_steps
    while i < n:
        anchor = evaluate(counter, [x], [i], schedule)[0]
        k = min(drafts, n - 1 - i)
        if k == 0:
            return SampleResult(refine(x, anchor[None], schedule, i)[-1], counter.stats())
        states = draft(x, anchor, schedule, i, k)
        outs = evaluate(counter, list(states), list(range(i + 1, i + k + 1)), schedule)
        refined = refine(x, torch.cat([anchor[None], outs[:-1]]), schedule, i)
        # second pass: evaluate at the refined states and refine again
        outs = evaluate(counter, list(refined[:-1]), list(range(i + 1, i + k)), schedule)
        refined = refine(x, torch.cat([anchor[None], outs]), schedule, i)
        x, i = refined[-1], i + k
    return SampleResult(x, counter.stats())


abar = alphas_cumprod_from_betas()
schedule = vp_schedule(abar, vp_timesteps(30, spacing="trailing"))
model = GaussianMixtureDenoiser.random((4, 8, 8), noise_levels=VPNoiseLevels(abar))
x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))

serial = sample_serial(model, x, schedule)
mine = sample_draft_refine_twice(model, x, schedule, drafts=5)
deviation = float((mine.x - serial.x).abs().max())
print(
    f"serial: {serial.stats.rounds} rounds; mine: {mine.stats.rounds} rounds, dev {deviation:.2e}"
)
assert mine.stats.rounds < serial.stats.rounds
assert deviation < 0.05
