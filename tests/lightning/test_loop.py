"""The predict loop on 2 processes (data-parallel and draft-parallel): every item generated once,
one file per item, each equal to the 1-process module's output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from driffusion.lightning import DiffusionSamplerModule
from driffusion.lightning.loop import collate
from tests.scripts import common

# the tests read the session's `fabric run --devices 2` (the two_process_run fixture)
pytestmark = pytest.mark.processes


@pytest.mark.parametrize("mode", ["dp", "draft"])
def test_predict_loop_generates_every_item_once(two_process_run: Path, mode: str) -> None:
    outputs = torch.load(two_process_run / "results.pt")["predict"][mode]
    ids = [i for o in outputs for i in o["ids"]]
    expected = [item["id"] for item in common.items()]
    assert sorted(ids) == expected and len(ids) == len(set(ids))
    written = sorted(p.stem for p in (two_process_run / mode).iterdir())
    assert written == expected  # one file per item, no temporaries left
    replicas = {o["replica"] for o in outputs}
    assert replicas == ({0, 1} if mode == "dp" else {0})
    # each image equals the 1-process module's output for the same (condition, seed)
    module = DiffusionSamplerModule(
        common.network(), common.schedule(), common.SHAPE, common.SPECS["aggressive_k2"]
    )
    by_id = {item["id"]: item for item in common.items()}
    for output in outputs:
        batch = collate([by_id[i] for i in output["ids"]])
        assert torch.equal(output["x"], module.predict_step(batch)["x"])
        for sample_id, x in zip(output["ids"], output["x"], strict=True):
            assert torch.equal(torch.load(two_process_run / mode / f"{sample_id}.pt"), x)
