"""Run under `fabric run` (any number of nodes and devices): samples with a Session, leader
writes what every rank saw, for tests/lightning/test_session.py to compare with one process."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common

from driffusion.lightning import DiffusionSamplerModule, Session

parser = argparse.ArgumentParser()
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()

with Session(timeout_s=60) as session:
    module = DiffusionSamplerModule(
        common.network(), common.schedule(), common.SHAPE, common.SPECS["aggressive_k2"]
    )
    outputs = session.predict(module, common.items(), batch_size=2)
    seen = session.gather([o.ids for o in outputs])
    wall, _ = session.timed(lambda: None, "nothing")
    written = session.on_leader(lambda: (args.out / "marker").write_text("leader"))
    report = {
        "world_size": session.world_size,
        "global_rank": session.global_rank,
        "draft_devices": session.draft_devices,
        "every_rank_saw_the_same": all(s == seen[0] for s in seen),
        "leader_wrote": written is not None,
        "marker_exists_everywhere": (args.out / "marker").is_file(),
    }
    (args.out / f"rank{session.global_rank}.json").write_text(json.dumps(report))
    if session.is_leader:
        torch.save(
            {o_id: x for o in outputs for o_id, x in zip(o.ids, o.x, strict=True)},
            args.out / "x.pt",
        )
