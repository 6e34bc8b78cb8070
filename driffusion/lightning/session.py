"""One owner for a run: the Fabric, the layout of draft groups x data groups, the executor, the
collectives and the teardown, in one context manager.

Recipes and benchmarks open a ``Session`` and ask it for everything distributed; none of them
calls a collective or tears a process group down itself:

    with Session.from_args(args) as session:          # launches, or joins `fabric run`
        module = DiffusionSamplerModule(network, schedule, shape, Aggressive(drafts=2))
        outputs = session.predict(module, items)      # drafts split across the draft group
        wall, _ = session.timed(lambda: session.predict(module, items))
        if session.is_leader:
            write(outputs)
    # every rank waits for the leader's writes, then the process group is destroyed
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from lightning.fabric import Fabric

from driffusion.adapters.distributed import (
    DEFAULT_TIMEOUT_S,
    DistributedExecutor,
    ParallelLayout,
    barrier,
    gather_objects,
    make_layout,
)
from driffusion.core.branches import check_guidance_devices
from driffusion.core.model import NetworkFn
from driffusion.core.samplers.settings import sampler_rows
from driffusion.lightning.launch import finish, launch_fabric, launch_timeout
from driffusion.lightning.loop import PredictOutput, run_predict
from driffusion.lightning.module import DiffusionSamplerModule

T = TypeVar("T")


class Session:
    """Owns a multi-process sampling run from launch to teardown.

    On entry it launches Fabric (``Fabric(...).launch()`` when started with plain ``python``, or
    joins the processes of ``fabric run``, which then owns accelerator, devices, strategy, nodes
    and precision) and cuts the world into draft groups of ``draft_devices`` ranks. Inside a
    draft group the evaluations of each round are split across the ranks
    ([`DistributedExecutor`][driffusion.adapters.distributed.DistributedExecutor]); different
    groups are data-parallel replicas that take different items. On a clean exit every rank
    waits for the others (so the leader's writes are complete), and the process group is
    destroyed on any exit.

    Args:
        accelerator: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"`` (ignored under ``fabric run``).
        devices: devices per node (ignored under ``fabric run``).
        strategy: e.g. ``"ddp"`` (ignored under ``fabric run``).
        num_nodes: nodes (ignored under ``fabric run``).
        precision: Fabric precision (ignored under ``fabric run``).
        draft_devices: ranks per draft group ``g`` (``None``: all ranks in one group).
        timeout_s: the bound on every wait: the launch (every rank must join the first
            process group in time, else a
            [`LaunchError`][driffusion.lightning.launch.LaunchError]; a launch waits at least
            [`LAUNCH_MIN_S`][driffusion.lightning.launch.LAUNCH_MIN_S], the time ranks need to
            start) and every collective (a dead or hung peer becomes a
            [`CollectiveError`][driffusion.adapters.distributed.CollectiveError]).
        callbacks: objects with ``on_predict_*`` hooks, run in every
            [`predict`][driffusion.lightning.session.Session.predict].
        verify: checksum every round's inputs across the draft group (a debug aid).
        guidance_devices: ``1`` keeps a row's guidance branches on one device (batched), ``2``
            splits them over the draft group (exact: the combination runs after the gather),
            ``"auto"`` splits where it pays on the measured cost of a batched row against one
            branch (see
            [`DistributedExecutor`][driffusion.adapters.distributed.DistributedExecutor]).

    Examples:
        >>> from driffusion.core import Aggressive
        >>> from driffusion.lightning import DiffusionSamplerModule, Session
        >>> from driffusion.testing import OracleNetwork, toy_problem
        >>> oracle, _, schedule = toy_problem(steps=20)  # an exact denoiser and a grid
        >>> network = OracleNetwork(oracle)
        >>> module = DiffusionSamplerModule(network, schedule, (4, 8, 8), Aggressive(drafts=2))
        >>> items = [{"id": f"s{seed}", "seed": seed} for seed in range(3)]
        >>> with Session(accelerator="cpu") as session:
        ...     outputs = session.predict(module, items, batch_size=2)
        ...     wall, _ = session.timed(lambda: session.predict(module, items[:1]))
        >>> [o.ids for o in outputs], outputs[0].stats.rounds, wall > 0
        ([['s0', 's1'], ['s2']], 11, True)
    """

    def __init__(
        self,
        *,
        accelerator: str = "auto",
        devices: int | str = 1,
        strategy: str = "auto",
        num_nodes: int = 1,
        precision: str | None = None,
        draft_devices: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        callbacks: Sequence[Any] = (),
        verify: bool = False,
        guidance_devices: int | str = 1,
    ) -> None:
        check_guidance_devices(guidance_devices)
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be positive and finite, got {timeout_s}")
        self.flags: dict[str, Any] = {
            "accelerator": accelerator,
            "devices": devices,
            "strategy": strategy,
            "num_nodes": num_nodes,
            "precision": precision,
        }
        self.draft_devices_wanted = draft_devices
        self.timeout_s = timeout_s
        self.callbacks = list(callbacks)
        self.verify = verify
        self.guidance_devices = guidance_devices
        self._fabric: Fabric | None = None
        self._layouts: dict[int | None, ParallelLayout] = {}

    @classmethod
    def from_args(cls, args: argparse.Namespace, callbacks: Sequence[Any] = ()) -> Session:
        """A session from the flags of
        [`add_session_args`][driffusion.lightning.cli.add_session_args]."""
        flags = {f: getattr(args, f) for f in getattr(args, "fabric_flags", ())}
        return cls(
            **flags,
            draft_devices=getattr(args, "draft_devices", None),
            timeout_s=getattr(args, "timeout", DEFAULT_TIMEOUT_S),
            callbacks=callbacks,
            guidance_devices=getattr(args, "guidance_devices", 1),
        )

    # -- lifetime -----------------------------------------------------------------------------

    def launch(self) -> Session:
        """Start (or join) the processes and build the layout; idempotent.

        Raises:
            LaunchError: the ranks did not all join within ``timeout_s`` (at least
                ``LAUNCH_MIN_S``): a node not started, a rendezvous port taken or unreachable,
                a rank that never arrived; raised on every rank that waited.
        """
        if self._fabric is None:
            self._fabric = launch_fabric(self.flags, self.callbacks, launch_timeout(self.timeout_s))
            self._layouts[None] = make_layout(self.draft_devices_wanted, self.timeout_s)
        return self

    def __enter__(self) -> Session:
        return self.launch()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc is None and self._fabric is not None:
                self.barrier("end of run")  # the leader's writes are complete everywhere
        finally:
            finish()
            self._fabric = None
            self._layouts.clear()

    # -- where this process is ----------------------------------------------------------------

    @property
    def fabric(self) -> Fabric:
        """The launched Fabric."""
        if self._fabric is None:
            raise RuntimeError("the session is not launched: use `with Session(...) as s:`")
        return self._fabric

    @property
    def layout(self) -> ParallelLayout:
        """The layout of draft groups x data groups."""
        self.fabric  # noqa: B018 - raises when not launched
        return self._layouts[None]

    @property
    def device(self) -> Any:
        """This rank's device."""
        return self.fabric.device

    @property
    def global_rank(self) -> int:
        """This process's rank in the world."""
        return self.layout.global_rank

    @property
    def world_size(self) -> int:
        """Processes in the run."""
        return self.layout.world_size

    @property
    def draft_devices(self) -> int:
        """Ranks per draft group ``g``."""
        return self.layout.draft_devices

    @property
    def is_leader(self) -> bool:
        """True on global rank 0: the rank that writes run-level outputs (reports, grids)."""
        return self.global_rank == 0

    # -- work ---------------------------------------------------------------------------------

    def executor(
        self,
        network: NetworkFn,
        *,
        rows: int | None = None,
        fixed_shape: bool = False,
        guidance_devices: int | str | None = None,
    ) -> DistributedExecutor:
        """The draft group's executor for ``network``: each round's rows (and, with
        ``guidance_devices=2``, its guidance branches) split across it.

        Args:
            network: the model contract ``network(xs[K, B, ...], t[K])``.
            rows: the sampler's rows per round (for ``guidance_devices="auto"``).
            fixed_shape: every rank evaluates the same batch shape every round (a compiled
                network).
            guidance_devices: another value than the session's for this executor.
        """
        return self._executor(network, self.layout, rows, fixed_shape, guidance_devices)

    def _executor(
        self,
        network: NetworkFn,
        layout: ParallelLayout,
        rows: int | None,
        fixed_shape: bool,
        guidance_devices: int | str | None = None,
    ) -> DistributedExecutor:
        return DistributedExecutor(
            network,
            layout,
            verify=self.verify,
            guidance_devices=guidance_devices or self.guidance_devices,
            fixed_shape=fixed_shape,
            rows=rows,
        )

    def predict(
        self,
        module: DiffusionSamplerModule,
        items: Sequence[Mapping[str, Any]],
        *,
        batch_size: int = 8,
        collate_fn: Callable[[list[Mapping[str, Any]]], dict[str, Any]] | None = None,
        callbacks: Sequence[Any] = (),
        draft_devices: int | None = None,
        guidance_devices: int | str | None = None,
    ) -> list[PredictOutput]:
        """Generate every item once across the world; every rank gets all outputs, in order.

        Args:
            module: the sampler module (its own ``executor_factory``, if set, is respected).
            items: ``{"id", "seed", "cond"?}`` per sample (see
                [`run_predict`][driffusion.lightning.loop.run_predict]).
            batch_size: samples per ``predict_step``.
            collate_fn: batches items (default: stack ``cond`` tensors).
            callbacks: ``on_predict_*`` hooks for this call only (after the session's).
            draft_devices: another draft-group size for this call (``1``: every rank works
                alone on its share, e.g. for an untimed reference solve).
            guidance_devices: another value than the session's for this call.
        """
        layout = self._layout_for(draft_devices)
        rows = sampler_rows(module.sampler)

        def executor(network: NetworkFn) -> DistributedExecutor:
            return self._executor(network, layout, rows, module.fixed_shape, guidance_devices)

        return run_predict(
            self.fabric,
            layout,
            module,
            items,
            executor_factory=executor,
            batch_size=batch_size,
            collate_fn=collate_fn,
            callbacks=callbacks,
        )

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        return gather_objects(self.layout, obj)

    def barrier(self, what: str = "barrier") -> None:
        """Wait for every rank (bounded by the session's timeout)."""
        barrier(self.layout, what)

    def timed(self, work: Callable[[], T], what: str = "timed work") -> tuple[float, T]:
        """Run ``work`` on every rank from a common start; the slowest rank's seconds and the
        local result (a run's latency is its slowest rank's)."""
        self.barrier(f"start of {what}")
        start = time.perf_counter()
        result = work()
        wall = max(self.gather(time.perf_counter() - start))
        return wall, result

    def on_leader(self, work: Callable[[], T]) -> T | None:
        """Run ``work`` on global rank 0 while the others wait; its result there, else ``None``."""
        result = work() if self.is_leader else None
        self.barrier("leader's work")
        return result

    def _layout_for(self, draft_devices: int | None) -> ParallelLayout:
        if draft_devices is None or draft_devices == self.layout.draft_devices:
            return self.layout
        if draft_devices not in self._layouts:  # every rank builds it, in the same order
            self._layouts[draft_devices] = make_layout(draft_devices, self.timeout_s)
        return self._layouts[draft_devices]
