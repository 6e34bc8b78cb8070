"""Launched from code on 2 CPU processes; rank 1 dies or hangs in its 3rd network call.
Rank 0 must stop with a CollectiveError naming rank 1 within the collective timeout."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common

from driffusion.lightning import DiffusionSamplerModule, LatentWriter, Session, add_session_args
from driffusion.testing import OracleNetwork

parser = add_session_args(argparse.ArgumentParser())
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--fault", choices=["die", "hang"], required=True)
parser.set_defaults(draft_devices=2)
args = parser.parse_args()

session = Session.from_args(args, callbacks=[LatentWriter(args.out)]).launch()
fabric = session.fabric


class Faulty(OracleNetwork):
    calls = 0

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None
    ) -> torch.Tensor:
        Faulty.calls += 1
        if fabric.global_rank == 1 and Faulty.calls == 3:
            if args.fault == "die":
                os._exit(17)
            time.sleep(3600)
        return super().forward(x, t, label)


module = DiffusionSamplerModule(
    Faulty(common.oracle()), common.schedule(), common.SHAPE, common.SPECS["aggressive_k2"]
)
with session:
    session.predict(module, common.items(4), batch_size=4)
print("UNEXPECTED: prediction finished", flush=True)
