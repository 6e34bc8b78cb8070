"""Serial rounds, evaluations, ideal speedup and deviation from serial, on the exact oracle.

Rounds are the latency unit of a parallel sampler: with one device per evaluation in a round,
wall time is proportional to rounds. This table needs no devices and no weights: it runs every
sampler on the exact Gaussian-mixture denoiser (a perfectly trained network).

    python benchmarks/rounds.py [--json outputs/rounds.json] [--steps 25 50 100] [--k 2 3 4]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

from driffusion.core import (
    SRDS,
    Aggressive,
    Chords,
    Conservative,
    ParaDiGMS,
    PicardDRiffusion,
    SamplerFn,
    Schedule,
    Serial,
    SerialReduced,
    alphas_cumprod_from_betas,
    default_blocks,
    vp_schedule,
    vp_timesteps,
)
from driffusion.io import markdown_table, write_json
from driffusion.lightning import cli
from driffusion.testing import GaussianMixtureDenoiser, VPNoiseLevels

if not __package__:  # run as `python benchmarks/rounds.py`: the repo root holds `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import chords_fits, deviation, row_name

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


def samplers(
    steps: int, ks: list[int], srds_tol: float, paradigms_tol: float
) -> list[tuple[int, SamplerFn]]:
    """``(k, sampler)`` for every row of a ``steps``-step grid: ``k`` is the drafts, the SRDS
    blocks, the ParaDiGMS / Picard window, CHORDS' cores (default start lists, the fastest and
    the second core), or for ``serial_reduced`` the drafts of the aggressive sampler whose latency
    it matches."""
    blocks = sorted({*ks, default_blocks(steps)})
    windows = sorted({*ks, 8, 16})
    out: list[tuple[int, SamplerFn]] = [(1, Serial())]
    out += [(k, Aggressive(drafts=k)) for k in ks]
    out += [(k, Conservative(drafts=k)) for k in ks]
    out += [(b, SRDS(blocks=b, tol=srds_tol)) for b in blocks]
    out += [(b, SRDS(blocks=b, tol=srds_tol, pipelined=True)) for b in blocks]
    out += [(w, ParaDiGMS(window=w, tol=paradigms_tol)) for w in windows]
    out += [(k, PicardDRiffusion(window=k, tol=paradigms_tol)) for k in ks]
    out += [(k, SerialReduced(rounds=Aggressive(drafts=k).rounds(steps))) for k in ks]
    cores = [c for c in sorted({*ks, 8}) if chords_fits(c, steps)]
    out += [(c, Chords(cores=c, index=m)) for c in cores for m in (1, 2) if m < c]
    return out


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
        settings = samplers(n, ks, srds_tol, paradigms_tol)
        rows.extend(rows_for_schedule(oracle, x, schedule, settings))
    return rows


def rows_for_schedule(
    model: GaussianMixtureDenoiser,
    x: torch.Tensor,
    schedule: Schedule,
    settings: list[tuple[int, SamplerFn]],
) -> list[dict[str, Any]]:
    """One row per ``(k, sampler)``, against the serial sample on the same grid."""
    serial = Serial()(model, x, schedule)
    rows = []
    for k, sampler in settings:
        result = serial if isinstance(sampler, Serial) else sampler(model, x, schedule)
        rows.append(
            {
                "sampler": row_name(sampler),
                "steps": schedule.num_steps,
                "k": k,
                "rounds": result.stats.rounds,
                "evaluations": result.stats.evaluations,
                "width": result.stats.width,
                "speedup_ideal": serial.stats.rounds / result.stats.rounds,
                **deviation(result.x, serial.x),
                "setting": repr(sampler),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the rows as a JSON list here")
    parser.add_argument("--steps", type=cli.positive_int, nargs="+", default=[25, 50, 100])
    parser.add_argument(
        "--k", type=int, nargs="+", default=[2, 3, 4], help="drafts / blocks / windows"
    )
    parser.add_argument(
        "--srds-tol", type=float, default=1e-3, help="SRDS tolerance (relative to sigma)"
    )
    parser.add_argument(
        "--paradigms-tol",
        type=float,
        default=1e-3,
        help="ParaDiGMS and Picard-DRiffusion tolerance (relative to sigma)",
    )
    parser.add_argument("--batch", type=cli.positive_int, default=4)
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0)
    args = parser.parse_args(argv)
    for value in [*args.steps, *args.k]:
        if value < 1:
            parser.error(f"--steps and --k take integers >= 1, got {value}")
    rows = run(args.steps, args.k, args.srds_tol, args.paradigms_tol, args.batch, args.seed)
    print(
        f"Rounds on the exact Gaussian-mixture oracle (DDIM, trailing spacing, "
        f"SRDS tol={args.srds_tol:g}, ParaDiGMS and Picard tol={args.paradigms_tol:g}; k = drafts, "
        "SRDS blocks, ParaDiGMS / Picard window, or for serial_reduced the drafts whose latency "
        "it matches)\n"
    )
    print(markdown_table(rows, KEYS))
    if args.json:
        write_json(args.json, rows)
        print(f"\nwrote {args.json}")
    assert all(math.isfinite(r["max_abs_dev"]) for r in rows)
    return rows


if __name__ == "__main__":
    main()
