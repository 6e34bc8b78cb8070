"""Plain callback classes for the predict loop, dispatched with ``fabric.call``.

A callback implements any of ``on_predict_start(loop)``, ``on_predict_batch_end(loop, output,
batch_idx)`` and ``on_predict_end(loop, outputs)``; ``loop`` is the
[`PredictLoopState`][driffusion.lightning.loop.PredictLoopState] (fabric, module, layout).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from driffusion.io import atomic_write

if TYPE_CHECKING:
    from driffusion.lightning.loop import PredictLoopState, PredictOutput


class PredictCallback:
    """Base class (optional: any object with the hook methods works)."""

    def on_predict_start(self, loop: PredictLoopState) -> None:
        """Called once on every rank before the first batch."""

    def on_predict_batch_end(
        self, loop: PredictLoopState, output: PredictOutput, batch_idx: int
    ) -> None:
        """Called on every rank after each batch."""

    def on_predict_end(self, loop: PredictLoopState, outputs: list[PredictOutput]) -> None:
        """Called on every rank with all replicas' outputs, in dataset order."""


class LatentWriter(PredictCallback):
    """Save each sample's final state as ``<out>/<id>.pt`` (group leaders only, atomically)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def on_predict_batch_end(
        self, loop: PredictLoopState, output: PredictOutput, batch_idx: int
    ) -> None:
        if not loop.layout.is_group_leader:
            return
        for sample_id, x in zip(output.ids, output.x, strict=True):
            atomic_write(self.out_dir / f"{sample_id}.pt", _tensor_saver(x))


class ProgressBar(PredictCallback):
    """A tqdm bar over the batches of replica 0, on global rank 0 only."""

    def __init__(self, desc: str = "sampling") -> None:
        self.desc = desc
        self.bar: Any = None

    def on_predict_start(self, loop: PredictLoopState) -> None:
        if loop.fabric.global_rank == 0:
            # the sampler as it runs (its drafts included): what a default chose is on screen
            desc = f"{self.desc} {getattr(loop.module, 'sampler', '')!r}"
            self.bar = tqdm(total=loop.num_batches, desc=desc, unit="batch", dynamic_ncols=True)

    def on_predict_batch_end(
        self, loop: PredictLoopState, output: PredictOutput, batch_idx: int
    ) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(rounds=output.stats.rounds, evals=output.stats.evaluations)

    def on_predict_end(self, loop: PredictLoopState, outputs: list[PredictOutput]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _tensor_saver(x: torch.Tensor) -> Callable[[Path], None]:
    def save(path: Path) -> None:
        torch.save(x.clone(), path)

    return save
