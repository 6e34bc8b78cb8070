"""Executors around a model: chunked and batched evaluation agree with the plain model and count
their network calls."""

from __future__ import annotations

import torch

from driffusion.core import (
    BatchedExecutor,
    ChunkedExecutor,
    sample_driffusion,
)
from tests.support import make_noise, make_oracle, make_vp


def test_executors_agree_and_count() -> None:
    sched = make_vp(20)
    oracle = make_oracle(sched)
    x = make_noise()
    reference = sample_driffusion(oracle, x, sched, drafts=4)
    chunked = ChunkedExecutor(oracle, max_states=3)
    result = sample_driffusion(chunked, x, sched, drafts=4)
    torch.testing.assert_close(result.x, reference.x, rtol=0, atol=1e-6)
    assert result.stats == reference.stats
    # 1 anchor round + 5 rounds of 4 drafts (last of 3): chunks of 3 rows -> 1 + 4*2 + 1 calls
    assert chunked.network_calls == 1 + 4 * 2 + 1
    batched = sample_driffusion(BatchedExecutor(oracle), x, sched, drafts=4)
    assert torch.equal(batched.x, reference.x)
