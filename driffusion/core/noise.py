"""Deterministic noise: one CPU generator per sample seed.

An image depends on (condition, seed, sampler) only: not on the world size, the rank, the
batch composition or the device, because every sample's noise is drawn from its own CPU
``torch.Generator`` and only then moved to the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def initial_noise(
    seeds: Sequence[int],
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``[len(seeds), *shape]`` standard normal noise, row ``b`` from ``Generator(seeds[b])``."""
    rows = [torch.randn(tuple(shape), generator=_generator(seed), dtype=dtype) for seed in seeds]
    if not rows:
        raise ValueError("seeds must hold at least one seed")
    return torch.stack(rows).to(device)


def ddpm_noise(
    seeds: Sequence[int],
    num_steps: int,
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Per-step DDPM noise ``[num_steps, len(seeds), *shape]``, drawn after the initial noise.

    Each seed's generator first yields the initial state
    (see [`initial_noise`][driffusion.core.noise.initial_noise]) and then the
    step noises, so a DDPM sample is a function of its seed alone.
    """
    per_seed = []
    for seed in seeds:
        gen = _generator(seed)
        torch.randn(tuple(shape), generator=gen, dtype=dtype)  # skip the initial state's draw
        per_seed.append(torch.randn((num_steps, *shape), generator=gen, dtype=dtype))
    return torch.stack(per_seed, dim=1).to(device)


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seeds must be non-negative integers, got {seed!r}")
    return torch.Generator(device="cpu").manual_seed(seed)
