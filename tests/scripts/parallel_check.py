"""Run under `fabric run --accelerator cpu --devices 2 --strategy ddp`: writes what 2 processes
produce, for tests/test_distributed.py to compare against a 1-process run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common

from driffusion.adapters.distributed import DistributedExecutor, gather_objects, make_layout
from driffusion.core import run_sampler
from driffusion.lightning import (
    DiffusionSamplerModule,
    LatentWriter,
    build_fabric,
    finish,
    run_predict,
)

parser = argparse.ArgumentParser()
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()

writer_dp = LatentWriter(args.out / "dp")
writer_draft = LatentWriter(args.out / "draft")
fabric = build_fabric(callbacks=[])
report: dict = {"world_size": fabric.world_size, "ranks_agree": {}}

# 1. Core samplers with the two ranks of one draft group splitting each round.
layout = make_layout(draft_devices=None, timeout_s=60)
oracle = common.oracle()
x = common.start()
results = {}
for name, spec in common.SPECS.items():
    executor = DistributedExecutor(oracle, layout, verify=True)
    result = run_sampler(spec, executor, x, common.schedule())
    results[name] = {
        "x": result.x,
        "rounds": result.stats.rounds,
        "evaluations": result.stats.evaluations,
    }
everyone = gather_objects(layout, results)
for name in results:
    report["ranks_agree"][name] = all(
        torch.equal(r[name]["x"], results[name]["x"]) for r in everyone
    )

# 2. The Fabric predict loop, data-parallel (2 replicas of 1 device) and draft-parallel (1 of 2).
outputs = {}
for mode, draft_devices, writer in (("dp", 1, writer_dp), ("draft", 2, writer_draft)):
    fabric._callbacks = [writer]  # one writer per run
    module = DiffusionSamplerModule(
        common.network(), common.schedule(), common.SHAPE, common.SPECS["aggressive_k2"]
    )
    outs = run_predict(fabric, module, common.items(), batch_size=2, draft_devices=draft_devices)
    outputs[mode] = [
        {"ids": o.ids, "x": o.x, "replica": o.replica, "rounds": o.stats.rounds} for o in outs
    ]

if fabric.global_rank == 0:
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"samplers": results, "predict": outputs}, args.out / "results.pt")
    (args.out / "report.json").write_text(json.dumps(report))
finish()
