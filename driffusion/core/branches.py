r"""A guided evaluation is several *branches* combined; a round's work is rows x branches.

Classifier-free guidance evaluates the network twice per state (conditional and unconditional)
and combines the two outputs, $\hat\epsilon = \epsilon_u + w\,(\epsilon_c - \epsilon_u)$. One
device usually batches both branches into one call of ``2B`` rows (diffusers' way). Two devices
can instead evaluate one branch each and combine after one all-gather: the *branch split*, exact
because the combination is the same arithmetic wherever the branches ran.

A network that has branches says so here, in one place:
[`GuidedNetwork`][driffusion.core.branches.GuidedNetwork] gives ``branches`` (how many),
``evaluate_branches(x, t, branch, **cond)`` (rows of any branches in one call; row ``m`` is
evaluated under branch ``branch[m]``) and ``combine(outputs[G, M, ...], t[M])``; its ``forward`` is
the batched guided call. A network without branches is one branch.

A round of ``K`` rows on ``D`` devices is planned by
[`RoundPlan`][driffusion.core.branches.RoundPlan]: with the branches together each device takes
``ceil(K / D)`` rows and evaluates their ``G`` branches batched; split, the ``K * G``
*(row, branch) units* are ordered branch-major (all rows of branch 0, then branch 1, ...) and each
device takes ``ceil(K G / D)`` consecutive units in one call. Latency is counted in *passes*: one
branch of one row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

GUIDANCE_DEVICES = (1, 2)
"""The values of ``guidance_devices`` besides ``"auto"``: 1 keeps a row's branches on one device
(batched), 2 splits them over the devices of the draft group."""


def network_branches(network: Any) -> int:
    """The branches of a network's evaluation (1 for a network that declares none)."""
    branches = getattr(network, "branches", 1)
    if isinstance(branches, bool) or not isinstance(branches, int) or branches < 1:
        raise ValueError(f"a network's branches must be an integer >= 1, got {branches!r}")
    return branches


def pick_rows(branch: Tensor, options: Sequence[Tensor]) -> Tensor:
    """Row ``m`` of ``options[branch[m]]``: the per-row conditioning of mixed-branch rows.

    Args:
        branch: ``[M]`` branch index per row.
        options: one ``[M, ...]`` tensor per branch (e.g. negative and positive embeddings).
    """
    if len(options) == 1:
        return options[0]
    stacked = torch.stack([option.to(options[0].device) for option in options])  # [G, M, ...]
    rows = torch.arange(branch.shape[0], device=stacked.device)
    return stacked[branch.to(stacked.device).long(), rows]


def classifier_free_guidance(
    unconditional: Tensor, conditional: Tensor, scale: float | Tensor
) -> Tensor:
    """``u + w (c - u)``: the combination every guided family uses (``w = 1``: ``c``)."""
    return unconditional + scale * (conditional - unconditional)


class GuidedNetwork(nn.Module):
    """Base of a per-row network ``net(x[M, ...], t[M], **cond) -> out[M, ...]`` with branches.

    Subclasses set ``branches`` and implement
    [`evaluate_branches`][driffusion.core.branches.GuidedNetwork.evaluate_branches] and
    [`combine`][driffusion.core.branches.GuidedNetwork.combine]; ``forward`` evaluates every
    branch of every row in one batched call (branch-major rows) and combines.
    """

    branches: int = 1

    def evaluate_branches(self, x: Tensor, t: Tensor, branch: Tensor, **cond: Tensor) -> Tensor:
        """Raw outputs ``[M, ...]``: row ``m`` evaluated under branch ``branch[m]``, one call.

        ``cond`` holds the per-row conditioning of both branches (``[M, ...]`` each); the
        network picks each row's own ([`pick_rows`][driffusion.core.branches.pick_rows]).
        """
        raise NotImplementedError

    def combine(self, outputs: Tensor, t: Tensor) -> Tensor:
        """``outputs[G, M, ...]`` (one slice per branch) -> the guided output ``[M, ...]``;
        ``t[M]`` are the rows' times (a combination may depend on them: Wan 2.2 guides each
        expert's steps with its own scale)."""
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        g, m = self.branches, x.shape[0]
        branch = torch.arange(g, device=x.device).repeat_interleave(m)
        tiled = {name: repeat(v, "m ... -> (g m) ...", g=g) for name, v in cond.items()}
        out = self.evaluate_branches(
            repeat(x, "m ... -> (g m) ...", g=g), repeat(t, "m -> (g m)", g=g), branch, **tiled
        )
        return self.combine(rearrange(out, "(g m) ... -> g m ...", g=g), t)


@dataclass(frozen=True)
class RoundPlan:
    """Where the work of one round runs: ``rows`` states x ``branches`` on ``devices`` devices.

    Attributes:
        rows: ``K``, the states the sampler evaluates this round.
        branches: ``G``, the branches of one evaluation.
        devices: ``D``, the devices of the draft group.
        split: the branches are separate units (``guidance_devices=2``); else a row and its
            branches are one unit, evaluated batched.
    """

    rows: int
    branches: int
    devices: int
    split: bool

    @property
    def units(self) -> int:
        """``K G`` when split, else ``K``."""
        return self.rows * self.branches if self.split else self.rows

    @property
    def per_device(self) -> int:
        """Units per device: ``ceil(units / D)`` (the last devices take fewer or none)."""
        return math.ceil(self.units / self.devices)

    @property
    def passes(self) -> int:
        """The round's latency in passes (one branch of one row): ``ceil(K G / D)`` split,
        ``G ceil(K / D)`` with the branches of a row on one device."""
        return self.per_device * (1 if self.split else self.branches)

    def device_units(self, device: int) -> range:
        """The units device ``device`` evaluates (consecutive, possibly empty)."""
        start = min(device * self.per_device, self.units)
        return range(start, min(start + self.per_device, self.units))

    def unit_rows(self, units: range) -> tuple[Tensor, Tensor]:
        """``(row, branch)`` index tensors of split units (branch-major: unit ``u`` is row
        ``u mod K`` of branch ``u div K``)."""
        index = torch.arange(units.start, units.stop)
        return index % self.rows, index // self.rows


def round_passes(round_rows: Sequence[int], branches: int, devices: int, split: bool) -> int:
    """A run's latency in passes on ``devices`` devices: ``sum_r RoundPlan(K_r, ...).passes``."""
    return sum(RoundPlan(k, branches, devices, split).passes for k in round_rows)


def choose_guidance_devices(
    branches: int, devices: int, rows: int, batched_cost_ratio: float
) -> int:
    """``auto``: split the branches (2) when it lowers the per-round cost, else keep them (1).

    One row with its ``G`` branches batched costs ``batched_cost_ratio`` single-branch passes
    (about ``G`` on a CPU, less on a GPU at small sizes). A round of ``K = rows`` rows costs
    ``ceil(K / D) * ratio`` unsplit and ``ceil(K G / D)`` split; the split is taken when it is
    at least 5% cheaper (the margin covers the gather of ``G`` times the bytes).

    Args:
        branches: ``G`` (1: nothing to split).
        devices: devices of the draft group.
        rows: rows per round of the sampler (its drafts, window, blocks or cores).
        batched_cost_ratio: measured cost of one guided row batched over one branch.
    """
    if branches < 2 or devices < 2:
        return 1
    unsplit = math.ceil(rows / devices) * batched_cost_ratio
    split = math.ceil(rows * branches / devices)
    return 2 if split < 0.95 * unsplit else 1


def check_guidance_devices(value: Any) -> int | str:
    """``1``, ``2`` or ``"auto"``; anything else is a ``ValueError`` naming the setting."""
    if value == "auto" or (
        isinstance(value, int) and not isinstance(value, bool) and value in GUIDANCE_DEVICES
    ):
        return value
    raise ValueError(f"guidance_devices must be 1, 2 or 'auto', got {value!r}")
