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

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor

from driffusion.core.branches import (
    RoundPlan,
    check_guidance_devices,
    choose_guidance_devices,
    network_branches,
)
from driffusion.core.model import BatchedExecutor, NetworkFn, check_output, pad_rows

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
    """Split each round's work across a draft group and all-gather the outputs, once a round.

    With the branches together (``guidance_devices=1``) each rank evaluates ``ceil(K / g)`` of
    the round's ``K`` rows, every branch of a row batched in one call, and the guided outputs
    are gathered. With the branches split (``guidance_devices=2``, a network with branches)
    the ``K G`` (row, branch) units are spread instead
    ([`RoundPlan`][driffusion.core.branches.RoundPlan]), the raw branch outputs are gathered
    and every rank combines them: the same arithmetic as one device, so the sample does not
    depend on where a unit ran (bit for bit where the network's kernels give a row the same
    result in a batch of another size; within float rounding otherwise). With a group of one
    it is the batched executor.

    ``K`` need not divide by the group size: the last ranks take fewer units or none; missing
    units are padded with zeros *after* the network (padding costs no compute), unless
    ``fixed_shape``: then every rank evaluates the same number of units every round (the most
    any round has needed so far; padded with copies of a real unit), so that a compiled network
    sees one shape per width.

    Args:
        network: this rank's model replica, ``network(xs[k, B, ...], t[k]) -> out``; to split
            branches it needs ``branches``, ``evaluate_units`` and ``combine``
            ([`RowwiseModel`][driffusion.core.model.RowwiseModel] of a
            [`GuidedNetwork`][driffusion.core.branches.GuidedNetwork] has them).
        layout: the [`ParallelLayout`][driffusion.adapters.distributed.ParallelLayout].
        verify: before every round, all-reduce a checksum of the inputs and raise
            [`CollectiveError`][driffusion.adapters.distributed.CollectiveError] if the ranks of the
            group disagree (a debug aid: it costs
            two small collectives per round).
        guidance_devices: 1, 2 (see above; 2 on a network without branches is 1) or
            ``"auto"``: at the first round every rank times one guided row batched against one
            branch ([`batched_cost_ratio`][driffusion.adapters.distributed.batched_cost_ratio]),
            the group takes the leader's ratio, and the branches are split where
            [`choose_guidance_devices`][driffusion.core.branches.choose_guidance_devices] says it
            pays for ``rows`` rows a round.
        fixed_shape: the same per-rank batch every round (for ``torch.compile``).
        rows: the sampler's rows per round, for ``"auto"`` (default: the group size).

    Attributes:
        bytes_received: bytes this rank received in all-gathers so far.
        round: rounds evaluated so far.
        cost_ratio: the measured batched-over-branch cost ratio (``"auto"`` only).
    """

    def __init__(
        self,
        network: NetworkFn,
        layout: ParallelLayout,
        verify: bool = False,
        guidance_devices: int | str = 1,
        fixed_shape: bool = False,
        rows: int | None = None,
    ) -> None:
        check_guidance_devices(guidance_devices)
        self.network = network
        self.layout = layout
        self.verify = verify
        self.branches = network_branches(network)
        self.split = guidance_devices == 2 and self.branches > 1
        self.fixed_shape = fixed_shape
        self.round = 0
        self.bytes_received = 0
        self.cost_ratio: float | None = None
        self._auto = guidance_devices == "auto" and self.branches > 1
        self._rows = rows
        self._local = BatchedExecutor(network, fixed_shape)
        self._width = 0

    @property
    def guidance_devices(self) -> int:
        """2 when the branches are split over the group, else 1 (``"auto"``: once decided)."""
        return 2 if self.split else 1

    @property
    def bytes_per_round(self) -> float:
        """Mean bytes this rank received per round so far (0 on a group of one)."""
        return self.bytes_received / self.round if self.round else 0.0

    def __call__(self, xs: Tensor, t: Tensor) -> Tensor:
        self.round += 1
        g = self.layout.draft_devices
        if g == 1:
            return self._local(xs, t)
        if self.verify:
            self._verify_identical(xs, t)
        if self._auto:
            self._decide(xs, t)
        plan = RoundPlan(xs.shape[0], self.branches, g, self.split)
        self._width = max(self._width, plan.per_device) if self.fixed_shape else plan.per_device
        units = plan.device_units(self.layout.rank_in_group)
        local = torch.zeros((self._width, *xs.shape[1:]), dtype=xs.dtype, device=xs.device)
        if len(units) or self.fixed_shape:
            out = self._evaluate(plan, units, xs, t)
            local[: len(units)] = out[: len(units)]
        gathered = [torch.empty_like(local) for _ in range(g)]
        self._collective(
            "all_gather", dist.all_gather, gathered, local, group=self.layout.draft_group
        )
        self.bytes_received += (g - 1) * local.numel() * local.element_size()
        # each rank's block holds its units first (then padding: the width may exceed its share)
        outputs = torch.cat(
            [block[: len(plan.device_units(r))] for r, block in enumerate(gathered)]
        )
        if self.split:  # every rank combines the branches: one device's arithmetic
            by_branch = rearrange(outputs, "(g k) ... -> g k ...", g=self.branches)
            return check_output(self.network.combine(by_branch, t), xs)  # type: ignore[attr-defined]
        return outputs

    def _decide(self, xs: Tensor, t: Tensor) -> None:
        """``"auto"``: measure the cost ratio, take the leader's, split where it pays."""
        self._auto = False
        ratio = torch.tensor([batched_cost_ratio(self.network, xs[:1], t[:1])], dtype=torch.float64)
        ratios = [torch.empty_like(ratio) for _ in range(self.layout.draft_devices)]
        self._collective(
            "cost ratio", dist.all_gather, ratios, ratio, group=self.layout.draft_group
        )
        self.cost_ratio = float(ratios[0])
        rows = self._rows or self.layout.draft_devices
        g = self.layout.draft_devices
        self.split = choose_guidance_devices(self.branches, g, rows, self.cost_ratio) == 2

    def _evaluate(self, plan: RoundPlan, units: range, xs: Tensor, t: Tensor) -> Tensor:
        """This rank's units in one network call (padded to the fixed width if asked)."""
        if self.split:
            rows, branch = plan.unit_rows(units)
        else:
            rows = torch.arange(units.start, units.stop)
            branch = torch.zeros(len(units), dtype=torch.long)
        if self.fixed_shape:  # a rank without units evaluates a copy of the round's first
            if len(rows) == 0:
                rows, branch = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
            rows, branch = pad_rows(self._width, rows, branch)
        index = rows.to(xs.device)
        if self.split:
            out = self.network.evaluate_units(xs[index], t[index], branch)  # type: ignore[attr-defined]
        else:
            out = self.network(xs[index], t[index])
        return check_output(out, xs[index])

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


def batched_cost_ratio(network: Any, xs: Tensor, t: Tensor, repeats: int = 3) -> float:
    """Seconds of one guided round batched (every branch, one call) over one branch alone.

    ``network`` is a model with branches (``evaluate_units``); ``xs[K, B, ...]`` and ``t[K]``
    the states to time it on. About the number of branches on a CPU; less on a GPU at small
    sizes, where a batch of ``2B`` costs little more than ``B``. The median of ``repeats``
    after a warm-up of each.
    """
    import time

    k = xs.shape[0]
    branch = torch.zeros(k, dtype=torch.long)

    def seconds(work: Any) -> float:
        work()  # warm-up
        times = []
        for _ in range(repeats):
            _synchronize(xs.device)
            start = time.perf_counter()
            work()
            _synchronize(xs.device)
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    with torch.inference_mode():
        batched = seconds(lambda: network(xs, t))
        one = seconds(lambda: network.evaluate_units(xs, t, branch))
    return batched / max(one, 1e-9)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
