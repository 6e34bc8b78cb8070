"""Run under `fabric run --accelerator cpu --devices 2 --strategy ddp`: every built-in sampler on
the guided oracle with the guidance branches kept together (guidance_devices=1) and split over
the two processes (2), and the digits UNet's serial sample split, for
tests/adapters/test_guidance_split.py to compare with each other and with one process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common

from driffusion.core import RowwiseModel, Serial, initial_noise
from driffusion.lightning import Session
from driffusion.models.digits import load_digits

parser = argparse.ArgumentParser()
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()

with Session(timeout_s=60, verify=True) as session:
    results: dict = {"world_size": session.world_size, "oracle": {}, "bytes": {}}
    network = common.guided_model()
    for name, sampler in common.SPECS.items():
        for devices in (1, 2):
            executor = session.executor(network, guidance_devices=devices)
            result = sampler(executor, common.start(), common.schedule())
            results["oracle"][name, devices] = result.x
            results["bytes"][name, devices] = (executor.bytes_received, executor.round)
            if name in common.FIXED_SHAPE_SPECS:  # the same per-rank shape every round
                fixed = session.executor(network, guidance_devices=devices, fixed_shape=True)
                result = sampler(fixed, common.start(), common.schedule())
                results["oracle"][name, devices, "fixed"] = result.x

    digits = load_digits()
    denoiser = RowwiseModel(digits.denoiser(2.0), {"label": torch.arange(10)})
    x = initial_noise(list(range(10)), (1, 16, 16))
    split = session.executor(denoiser, guidance_devices=2)
    with torch.inference_mode():
        results["digits_serial_split"] = Serial()(split, x, digits.schedule(20)).x
    # every sampler on the digits UNet (3 samples), the branches together and split
    results["digits"] = {}
    small = RowwiseModel(digits.denoiser(2.0), {"label": torch.tensor([0, 3, 8])})
    for name, sampler in common.SPECS.items():
        for devices in (1, 2):
            executor = session.executor(small, guidance_devices=devices)
            with torch.inference_mode():
                sample = sampler(executor, x[:3], digits.schedule(20))
            results["digits"][name, devices] = sample.x
    everyone = session.gather(results)
    results["ranks_agree"] = all(
        all(torch.equal(r["oracle"][key], results["oracle"][key]) for key in results["oracle"])
        and torch.equal(r["digits_serial_split"], results["digits_serial_split"])
        for r in everyone
    )
    if session.is_leader:
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(results, args.out / "results.pt")
