"""DiffusionSamplerModule: an item's output depends on its (condition, seed) only, it runs in
Lightning's Trainer.predict, and it keeps the executor it was given."""

from __future__ import annotations

from pathlib import Path

import torch

from driffusion.core import BatchedExecutor, Serial
from driffusion.lightning import (
    DiffusionSamplerModule,
    Session,
)
from driffusion.lightning.loop import collate
from tests.scripts import common


def test_batch_composition_and_seed_determinism() -> None:
    """An item's output depends on its (condition, seed) only, not on its batch-mates."""
    module = DiffusionSamplerModule(
        common.network(), common.schedule(), common.SHAPE, common.SPECS["conservative_k2"]
    )
    items = common.items(5)
    together = module.predict_step(collate(items))["x"]
    for i, item in enumerate(items):
        alone = module.predict_step(collate([item]))["x"][0]
        assert torch.equal(alone, together[i])
    shuffled = module.predict_step(collate(items[::-1]))["x"]
    assert torch.equal(shuffled, together.flip(0))
    # the condition matters: same seed, different label, different sample
    relabelled = {**items[0], "cond": {"label": torch.tensor(3)}}
    assert not torch.allclose(module.predict_step(collate([relabelled]))["x"][0], together[0])


def test_module_runs_in_trainer_predict(tmp_path: Path) -> None:
    import lightning as L

    module = DiffusionSamplerModule(
        common.network(), common.schedule(), common.SHAPE, common.SPECS["aggressive_k3"]
    )
    items = common.items(4)
    loader = torch.utils.data.DataLoader(items, batch_size=2, collate_fn=collate)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    predictions = trainer.predict(module, loader)
    assert predictions is not None
    xs = torch.cat([p["x"] for p in predictions])  # type: ignore[index]
    assert torch.equal(xs, module.predict_step(collate(items))["x"])


def test_the_module_keeps_the_executor_it_was_given() -> None:
    """A module built with its own executor keeps it inside the loop (not overwritten)."""
    calls: list[int] = []

    def counting(network):  # type: ignore[no-untyped-def]
        executor = BatchedExecutor(network)

        def run(xs, t):  # type: ignore[no-untyped-def]
            calls.append(xs.shape[0])
            return executor(xs, t)

        return run

    module = DiffusionSamplerModule(
        common.network(), common.schedule(), common.SHAPE, Serial(), executor_factory=counting
    )
    with Session(accelerator="cpu") as session:
        session.predict(module, common.items(2), batch_size=2)
    assert len(calls) == common.schedule().num_steps
