r"""Bytes on the wire: what one round's all-gather moves, beside what sequence parallelism
moves per step for the same transformer (the reason drafts suit PCIe and multi-node users).

A draft group's all-gather gives every rank the other ``D - 1`` ranks' shares of the round:
each share is ``ceil(units / D)`` latents (a row with its branches combined, or one branch of
a row when the branches are split), so a rank receives

$$(D - 1) \lceil U / D \rceil \cdot |latent| \cdot \text{itemsize}$$

bytes a round. Sequence parallelism splits the ``S`` tokens of every attention layer instead;
per step and per GPU, with hidden size ``d`` and ``L`` layers (the standard counts), Ulysses moves
$4 (N-1) / N^2 \cdot S d L$ elements (four all-to-alls a layer) and Ring attention
$2 (N-1) / N \cdot S d L$ (keys and values passed around the ring).
"""

from __future__ import annotations

import math

from driffusion.core.branches import RoundPlan


def gather_bytes(latent_numel: int, plan: RoundPlan, itemsize: int = 4, batch: int = 1) -> int:
    """Bytes one rank receives in a round's all-gather.

    Args:
        latent_numel: elements of one sample's latent (``C * H * W``).
        plan: the round ([`RoundPlan`][driffusion.core.branches.RoundPlan]).
        itemsize: bytes per element of the gathered outputs (float32 latents: 4).
        batch: samples per row.
    """
    return (plan.devices - 1) * plan.per_device * batch * latent_numel * itemsize


def ulysses_bytes(tokens: int, hidden: int, layers: int, devices: int, itemsize: int = 2) -> int:
    """Bytes per GPU per step of Ulysses sequence parallelism: ``4 (N-1)/N^2 S d L``."""
    return round(4 * (devices - 1) / devices**2 * tokens * hidden * layers * itemsize)


def ring_bytes(tokens: int, hidden: int, layers: int, devices: int, itemsize: int = 2) -> int:
    """Bytes per GPU per step of Ring attention: ``2 (N-1)/N S d L``."""
    return round(2 * (devices - 1) / devices * tokens * hidden * layers * itemsize)


def image_tokens(height: int, width: int, vae_scale: int, patch: int) -> int:
    """Image tokens of a transformer: latent positions over patches,
    ``(H / f / p) (W / f / p)``."""
    return math.ceil(height / vae_scale / patch) * math.ceil(width / vae_scale / patch)


def format_bytes(count: float) -> str:
    """``count`` bytes in KiB, MiB or GiB with three significant figures."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count:.0f} B"
