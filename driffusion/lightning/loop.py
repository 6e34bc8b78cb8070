"""The Fabric predict loop: data-parallel replicas x draft-parallel groups.

Read it top to bottom, like a Fabric example:

1. the [`Session`][driffusion.lightning.session.Session] has built the
   [`ParallelLayout`][driffusion.adapters.distributed.ParallelLayout] (``world = g x r``) and
   passes its executor;
2. move the frozen module to the device with ``fabric.to_device`` (not ``fabric.setup``: DDP
   refuses modules without trainable parameters);
3. each replica takes every ``r``-th item; all ranks of a draft group run the same batches;
4. after each batch, ``fabric.call`` runs the callbacks given to ``Fabric(callbacks=...)`` on
   every rank (writers act on group leaders only);
5. the leaders' outputs are gathered so every rank sees each item exactly once, in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.fabric import Fabric
from torch import Tensor

from driffusion.adapters.distributed import ParallelLayout, barrier, gather_objects
from driffusion.core.model import SamplerStats
from driffusion.lightning.module import DiffusionSamplerModule, ExecutorFactory


@dataclass
class PredictOutput:
    """One batch's results, on the CPU.

    ``guidance_devices`` is how the batch ran (2: its guidance branches split over the draft
    group) and ``bytes_received`` what this rank received in the batch's all-gathers.
    """

    ids: list[Any]
    seeds: list[int]
    x: Tensor
    images: Tensor | None
    stats: SamplerStats
    wall_s: float
    replica: int
    guidance_devices: int = 1
    bytes_received: int = 0


@dataclass
class PredictLoopState:
    """What callbacks see."""

    fabric: Fabric
    module: DiffusionSamplerModule
    layout: ParallelLayout
    num_batches: int
    outputs: list[PredictOutput] = field(default_factory=list)


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of items ``{"id", "seed", "cond": {name: tensor}}`` into a batch."""
    batch: dict[str, Any] = {
        "id": [item["id"] for item in items],
        "seed": [int(item["seed"]) for item in items],
    }
    cond_names = set(items[0].get("cond", {}))
    if cond_names:
        batch["cond"] = {
            name: torch.stack([torch.as_tensor(item["cond"][name]) for item in items])
            for name in sorted(cond_names)
        }
    return batch


def run_predict(
    fabric: Fabric,
    layout: ParallelLayout,
    module: DiffusionSamplerModule,
    items: Sequence[Mapping[str, Any]],
    *,
    executor_factory: ExecutorFactory,
    batch_size: int = 8,
    collate_fn: Callable[[list[Mapping[str, Any]]], dict[str, Any]] | None = None,
    callbacks: Sequence[Any] = (),
) -> list[PredictOutput]:
    """Generate every item exactly once across ``world = draft_devices x replicas`` ranks.

    Most code calls this through [`Session.predict`][driffusion.lightning.session.Session.predict],
    which owns the Fabric, the layout and the executor.

    Args:
        fabric: a launched Fabric (under ``fabric run`` or after ``fabric.launch()``).
        layout: the [`ParallelLayout`][driffusion.adapters.distributed.ParallelLayout].
        module: the sampler module; moved to the device here. Its own ``executor_factory``, when
            set, wins over ``executor_factory``.
        items: ``{"id": key, "seed": int, "cond": {name: tensor}}`` per sample; ids must be
            unique.
        executor_factory: ``network -> model`` for each batch (the draft group's executor).
        batch_size: samples per ``predict_step`` call.
        collate_fn: turns a list of items into a batch
            (default: [`collate`][driffusion.lightning.loop.collate]).
        callbacks: objects with ``on_predict_*`` hooks for this call only, run after the ones
            given to ``Fabric(callbacks=...)``.

    Returns:
        All replicas' outputs (every item once), ordered by item index, on every rank.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    ids = [item["id"] for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    fabric.to_device(module)  # in place; frozen weights need no fabric.setup
    executor = module.executor_factory or executor_factory

    def call(hook: str, *args: Any) -> None:
        fabric.call(hook, *args)
        for callback in callbacks:
            method = getattr(callback, hook, None)
            if callable(method):
                method(*args)

    mine = layout.shard(len(items))
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    state = PredictLoopState(fabric, module, layout, len(batches))
    call("on_predict_start", state)
    local: list[tuple[int, PredictOutput]] = []
    for batch_idx, indices in enumerate(batches):
        batch = (collate_fn or collate)([items[i] for i in indices])
        start = time.perf_counter()
        result = module.sample(batch, executor)
        output = PredictOutput(
            ids=result["id"],
            seeds=result["seed"],
            x=result["x"].cpu(),
            images=None if result["images"] is None else result["images"].cpu(),
            stats=SamplerStats(**result["stats"]),
            wall_s=time.perf_counter() - start,
            replica=layout.replica,
            guidance_devices=result["guidance_devices"],
            bytes_received=result["bytes_received"],
        )
        call("on_predict_batch_end", state, output, batch_idx)
        if layout.is_group_leader:
            local.append((indices[0], output))
    gathered = [pair for part in gather_objects(layout, local) for pair in part]
    outputs = [output for _, output in sorted(gathered, key=lambda pair: pair[0])]
    state.outputs = outputs
    call("on_predict_end", state, outputs)
    barrier(layout, "end of prediction")
    return outputs
