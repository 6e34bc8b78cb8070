"""Serial rounds, evaluations, ideal speedup and deviation from serial, on the exact oracle.

Rounds are the latency unit of a parallel sampler: with one device per evaluation in a round,
wall time is proportional to rounds. This table needs no devices and no weights: it runs every
sampler on the exact Gaussian-mixture denoiser (a perfectly trained network).

    python benchmarks/rounds.py [--json outputs/rounds.json] [--steps 25 50 100] [--k 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from driffusion.core import (
    SampleResult,
    Schedule,
    aggressive_rounds,
    alphas_cumprod_from_betas,
    default_blocks,
    sample_driffusion,
    sample_paradigms,
    sample_serial,
    sample_serial_reduced,
    sample_srds,
    vp_schedule,
    vp_timesteps,
)
from driffusion.testing import GaussianMixtureDenoiser, VPNoiseLevels

KEYS = [
    "sampler",
    "steps",
    "k",
    "rounds",
    "evaluations",
    "width",
    "speedup_ideal",
    "max_abs_dev",
    "rel_dev",
]


def deviation(x: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Max abs and relative (Frobenius) deviation of a sample from the serial one."""
    diff = (x - reference).to(torch.float64)
    return float(diff.abs().max()), float(diff.norm() / reference.to(torch.float64).norm())


def run(
    steps: list[int], ks: list[int], srds_tol: float, paradigms_tol: float, batch: int, seed: int
) -> list[dict]:
    abar = alphas_cumprod_from_betas()
    oracle = GaussianMixtureDenoiser.random(
        (4, 8, 8), components=8, noise_levels=VPNoiseLevels(abar), seed=seed
    )
    x = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    rows: list[dict[str, Any]] = []
    for n in steps:
        schedule = vp_schedule(abar, vp_timesteps(n, spacing="trailing"))
        rows.extend(rows_for_schedule(oracle, x, schedule, ks, srds_tol, paradigms_tol))
    return rows


def rows_for_schedule(
    model: GaussianMixtureDenoiser,
    x: torch.Tensor,
    schedule: Schedule,
    ks: list[int],
    srds_tol: float,
    paradigms_tol: float,
) -> list[dict[str, Any]]:
    n = schedule.num_steps
    serial = sample_serial(model, x, schedule)
    samplers: dict[str, Callable[[int], SampleResult]] = {
        "serial": lambda k: serial,
        "aggressive": lambda k: sample_driffusion(model, x, schedule, drafts=k),
        "conservative": lambda k: sample_driffusion(
            model, x, schedule, drafts=k, mode="conservative"
        ),
        "srds": lambda k: sample_srds(model, x, schedule, blocks=k, tol=srds_tol),
        "srds_pipelined": lambda k: sample_srds(
            model, x, schedule, blocks=k, tol=srds_tol, pipelined=True
        ),
        "paradigms": lambda k: sample_paradigms(model, x, schedule, window=k, tol=paradigms_tol),
        # step reduction at the latency of aggressive DRiffusion with k drafts
        "serial_reduced": lambda k: sample_serial_reduced(
            model, x, schedule, rounds=aggressive_rounds(n, k)
        ),
    }
    rows = []
    for name, sample in samplers.items():
        if name == "serial":
            settings = [1]
        elif name.startswith("srds"):
            settings = sorted({*ks, default_blocks(n)})
        elif name == "paradigms":
            settings = sorted({*ks, 8, 16})
        else:
            settings = ks
        for k in settings:
            result = sample(k)
            max_abs, rel = deviation(result.x, serial.x)
            rows.append(
                {
                    "sampler": name,
                    "steps": n,
                    "k": k,
                    "rounds": result.stats.rounds,
                    "evaluations": result.stats.evaluations,
                    "width": result.stats.width,
                    "speedup_ideal": serial.stats.rounds / result.stats.rounds,
                    "max_abs_dev": max_abs,
                    "rel_dev": rel,
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    header = "| " + " | ".join(KEYS) + " |"
    lines = [header, "|" + "---|" * len(KEYS)]
    for row in rows:
        cells = []
        for key in KEYS:
            value = row[key]
            if key == "speedup_ideal":
                cells.append(f"{value:.2f}")
            elif isinstance(value, float):
                cells.append(f"{value:.2e}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the rows as a JSON list here")
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--k", type=int, nargs="+", default=[2, 3, 4], help="drafts / blocks")
    parser.add_argument("--srds-tol", type=float, default=1e-3, help="SRDS stopping tolerance")
    parser.add_argument("--paradigms-tol", type=float, default=1e-3, help="ParaDiGMS tolerance")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for value in [*args.steps, *args.k]:
        if value < 1:
            parser.error(f"--steps and --k take integers >= 1, got {value}")
    rows = run(args.steps, args.k, args.srds_tol, args.paradigms_tol, args.batch, args.seed)
    print(
        f"Rounds on the exact Gaussian-mixture oracle (DDIM, trailing spacing, "
        f"SRDS tol={args.srds_tol:g}, ParaDiGMS tol={args.paradigms_tol:g}; k = drafts, SRDS "
        "blocks, ParaDiGMS window, or for serial_reduced the drafts whose latency it matches)\n"
    )
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        tmp.replace(args.json)  # atomic: no half-written file on interruption
        print(f"\nwrote {args.json}")
    assert all(math.isfinite(r["max_abs_dev"]) for r in rows)
    return rows


if __name__ == "__main__":
    main()
