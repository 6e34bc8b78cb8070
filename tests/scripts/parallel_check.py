"""Run under `fabric run --accelerator cpu --devices 2 --strategy ddp`: writes what 2 processes
produce, for tests/adapters/test_distributed.py and tests/lightning/test_loop.py to compare
against a 1-process run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common

from driffusion.lightning import DiffusionSamplerModule, LatentWriter, Session

parser = argparse.ArgumentParser()
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()

with Session(timeout_s=60, verify=True) as session:
    report: dict = {"world_size": session.world_size, "ranks_agree": {}}

    # 1. Core samplers with the two ranks of one draft group splitting each round.
    oracle = common.oracle()
    x = common.start()
    results = {}
    for name, sampler in common.SPECS.items():
        result = sampler(session.executor(oracle), x, common.schedule())
        results[name] = {
            "x": result.x,
            "rounds": result.stats.rounds,
            "evaluations": result.stats.evaluations,
        }
    everyone = session.gather(results)
    for name in results:
        report["ranks_agree"][name] = all(
            torch.equal(r[name]["x"], results[name]["x"]) for r in everyone
        )

    # 2. The predict loop, data-parallel (2 replicas of 1 device) and draft-parallel (1 of 2).
    outputs = {}
    for mode, draft_devices in (("dp", 1), ("draft", 2)):
        module = DiffusionSamplerModule(
            common.network(), common.schedule(), common.SHAPE, common.SPECS["aggressive_k2"]
        )
        outs = session.predict(
            module,
            common.items(),
            batch_size=2,
            draft_devices=draft_devices,
            callbacks=[LatentWriter(args.out / mode)],
        )
        outputs[mode] = [
            {"ids": o.ids, "x": o.x, "replica": o.replica, "rounds": o.stats.rounds} for o in outs
        ]

    if session.is_leader:
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save({"samplers": results, "predict": outputs}, args.out / "results.pt")
        (args.out / "report.json").write_text(json.dumps(report))
