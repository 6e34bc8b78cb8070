"""Spread the evaluations of a round across the ranks of a draft group (torch.distributed).

The world of ``W`` processes is cut into ``W / g`` *draft groups* of ``g`` consecutive ranks.
Inside a group every rank holds the same state and runs the same pure sampler math; only the
``K`` network evaluations of a round are split: rank ``r`` evaluates rows
``[r * ceil(K/g), (r+1) * ceil(K/g))`` on its own model replica and an ``all_gather`` returns all
``K`` outputs, in order, to every rank. Identical inputs keep the ranks in step without ever
broadcasting a state. Different groups are data-parallel replicas that sample different inputs.

All collectives run on process groups created here with a bounded timeout, so a rank that dies
or hangs turns into a [`CollectiveError`][driffusion.adapters.distributed.CollectiveError] on its
peers instead of a silent hang.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from driffusion.core.model import NetworkFn, check_output

DEFAULT_TIMEOUT_S = 180.0


class CollectiveError(RuntimeError):
    """A collective did not complete: a peer rank died, hung, or diverged."""


@dataclass(frozen=True)
class ParallelLayout:
    """Where this process sits in ``world = draft_devices x replicas``.

    Attributes:
        world_size: number of processes.
        global_rank: this process's rank.
        draft_devices: ranks per draft group, ``g``.
        draft_group: the process group of this rank's draft group (``None`` when ``g == 1``).
        world_group: a process group over all ranks with the bounded timeout (``None`` when
            there is one process).
        timeout_s: the collective timeout of both groups.
    """

    world_size: int
    global_rank: int
    draft_devices: int
    draft_group: Any = None
    world_group: Any = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def replicas(self) -> int:
        """Number of data-parallel replicas ``r = world / g``."""
        return self.world_size // self.draft_devices

    @property
    def replica(self) -> int:
        """This rank's replica (draft-group) index."""
        return self.global_rank // self.draft_devices

    @property
    def rank_in_group(self) -> int:
        """This rank's position inside its draft group."""
        return self.global_rank % self.draft_devices

    @property
    def group_ranks(self) -> list[int]:
        """Global ranks of this rank's draft group."""
        first = self.replica * self.draft_devices
        return list(range(first, first + self.draft_devices))

    @property
    def is_group_leader(self) -> bool:
        """True on the first rank of each draft group: the one that writes its outputs."""
        return self.rank_in_group == 0

    def shard(self, count: int) -> list[int]:
        """Indices ``0..count-1`` that this rank's replica owns (``i % r == replica``)."""
        return list(range(self.replica, count, self.replicas))


def make_layout(
    draft_devices: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> ParallelLayout:
    """Build the layout from the initialised default process group (or a single process).

    Every rank must call this, in the same order, since it creates process groups.

    Args:
        draft_devices: ranks per draft group; ``None`` puts all ranks in one group.
        timeout_s: collective timeout for the groups created here.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if not (dist.is_available() and dist.is_initialized()):
        if draft_devices not in (None, 1):
            raise ValueError(
                f"draft_devices={draft_devices} needs {draft_devices} processes, got 1"
            )
        return ParallelLayout(1, 0, 1, timeout_s=timeout_s)
    world, rank = dist.get_world_size(), dist.get_rank()
    g = world if draft_devices is None else draft_devices
    if isinstance(g, bool) or not isinstance(g, int) or g < 1 or world % g:
        raise ValueError(f"draft_devices must divide the world size {world}, got {draft_devices!r}")
    timeout = timedelta(seconds=timeout_s)
    world_group = dist.new_group(list(range(world)), timeout=timeout)
    draft_group = None
    for first in range(0, world, g):  # every rank creates every group, in the same order
        group = dist.new_group(list(range(first, first + g)), timeout=timeout)
        if first <= rank < first + g:
            draft_group = group
    return ParallelLayout(
        world, rank, g, draft_group if g > 1 else None, world_group, timeout_s=timeout_s
    )


class DistributedExecutor:
    """Split each round's ``K`` evaluations across a draft group and all-gather the outputs.

    With a group of one it is the batched executor. ``K`` need not divide by the group size:
    each rank takes ``ceil(K / g)`` rows, the last ranks fewer or none; missing rows are padded
    with zeros *after* the network (padding costs no compute).

    Args:
        network: this rank's model replica, ``network(xs[k, B, ...], t[k]) -> out``.
        layout: the [`ParallelLayout`][driffusion.adapters.distributed.ParallelLayout].
        verify: before every round, all-reduce a checksum of the inputs and raise
            [`CollectiveError`][driffusion.adapters.distributed.CollectiveError] if the ranks of the
            group disagree (a debug aid: it costs
            two small collectives per round).
    """

    def __init__(self, network: NetworkFn, layout: ParallelLayout, verify: bool = False) -> None:
        self.network = network
        self.layout = layout
        self.verify = verify
        self.round = 0

    def __call__(self, xs: Tensor, t: Tensor) -> Tensor:
        self.round += 1
        g = self.layout.draft_devices
        if g == 1:
            return check_output(self.network(xs, t), xs)
        if self.verify:
            self._verify_identical(xs, t)
        k = xs.shape[0]
        per_rank = math.ceil(k / g)
        start = min(self.layout.rank_in_group * per_rank, k)
        stop = min(start + per_rank, k)
        local = torch.zeros((per_rank, *xs.shape[1:]), dtype=xs.dtype, device=xs.device)
        if stop > start:
            local[: stop - start] = check_output(
                self.network(xs[start:stop], t[start:stop]), xs[start:stop]
            )
        gathered = [torch.empty_like(local) for _ in range(g)]
        self._collective(
            "all_gather", dist.all_gather, gathered, local, group=self.layout.draft_group
        )
        return torch.cat(gathered)[:k]

    def _verify_identical(self, xs: Tensor, t: Tensor) -> None:
        checksum = torch.stack([xs.double().sum(), (xs.double() ** 2).sum(), t.double().sum()])
        high, low = checksum.clone(), checksum.clone()
        group = self.layout.draft_group
        self._collective("verify", dist.all_reduce, high, op=dist.ReduceOp.MAX, group=group)
        self._collective("verify", dist.all_reduce, low, op=dist.ReduceOp.MIN, group=group)
        if not torch.equal(high, low):
            raise CollectiveError(
                f"rank {self.layout.global_rank}: draft group {self.layout.group_ranks} diverged "
                f"before round {self.round} (input checksums differ: {low.tolist()} vs "
                f"{high.tolist()})"
            )

    def _collective(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        collective(self.layout, f"{what} in round {self.round}", fn, *args, **kwargs)


def collective(layout: ParallelLayout, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a torch.distributed collective, turning failures into a
    [`CollectiveError`][driffusion.adapters.distributed.CollectiveError]."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # gloo/nccl raise RuntimeError or DistBackendError
        ranks = layout.group_ranks if layout.draft_devices > 1 else range(layout.world_size)
        peers = [r for r in ranks if r != layout.global_rank]  # never itself
        raise CollectiveError(
            f"rank {layout.global_rank}: {what} failed (timeout {layout.timeout_s:g}s): peer "
            f"rank(s) {peers} died, hung or diverged. Cause: {type(error).__name__}: {error}"
        ) from error


def gather_objects(layout: ParallelLayout, obj: Any) -> list[Any]:
    """All ranks' ``obj`` in rank order (a list of one on a single process)."""
    if layout.world_size == 1:
        return [obj]
    out: list[Any] = [None] * layout.world_size
    collective(
        layout, "gather of results", dist.all_gather_object, out, obj, group=layout.world_group
    )
    return out


def barrier(layout: ParallelLayout, what: str = "barrier") -> None:
    """A world barrier with the bounded timeout."""
    if layout.world_size > 1:
        collective(layout, what, dist.barrier, group=layout.world_group)
