"""Serial rounds, evaluations, ideal speedup and deviation from serial, on the exact oracle.

Rounds are the latency unit of a parallel sampler: with one device per evaluation in a round,
wall time is proportional to rounds. This table needs no devices and no weights: it runs every
sampler on the exact Gaussian-mixture denoiser (a perfectly trained network).

    python benchmarks/rounds.py [--json outputs/rounds.json] [--steps 25 50 100] [--rows 2 3 4]

Its rows are every registered sampler at its defaults and its configurations at each ``--rows``
([`Sampler.configurations`][driffusion.core.samplers.base.Sampler.configurations]): a new
sampler appears here without editing this script.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

from driffusion.core import (
    SamplerFn,
    Schedule,
    Serial,
    alphas_cumprod_from_betas,
    builtin_samplers,
    flag_values,
    sampler_name,
    vp_schedule,
    vp_timesteps,
)
from driffusion.io import markdown_table, write_json
from driffusion.lightning import cli
from driffusion.testing import GaussianMixtureDenoiser, VPNoiseLevels

if not __package__:  # run as `python benchmarks/rounds.py`: the repo root holds `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import deviation

KEYS = [
    "sampler",
    "steps",
    "rows",
    "rounds",
    "evaluations",
    "speedup_ideal",
    "max_abs_dev",
    "rel_dev",
]


def samplers(steps: int, rows: list[int], tol: float | None) -> list[SamplerFn]:
    """Every row of a ``steps``-step grid: serial, each registered sampler at its own defaults,
    then each one's [`configurations`][driffusion.core.samplers.base.Sampler.configurations] at
    every ``rows`` (``tol``, when given, for the samplers that take one)."""
    common = {} if tol is None else {"tol": tol}
    out: list[SamplerFn] = [Serial()]
    parallel = [cls for cls in builtin_samplers() if cls.parallel]
    candidates = [cls(**flag_values(cls, common)) for cls in parallel]
    for r in rows:
        for cls in builtin_samplers():
            candidates += cls.configurations(r, steps, **common)
    seen = {repr(Serial())}
    for sampler in candidates:
        if repr(sampler) not in seen and sampler.fits(steps):
            seen.add(repr(sampler))
            out.append(sampler)
    return out


def run(steps: list[int], rows: list[int], tol: float | None, batch: int, seed: int) -> list[dict]:
    abar = alphas_cumprod_from_betas()
    oracle = GaussianMixtureDenoiser.random(
        (4, 8, 8), components=8, noise_levels=VPNoiseLevels(abar), seed=seed
    )
    x = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    out: list[dict[str, Any]] = []
    for n in steps:
        schedule = vp_schedule(abar, vp_timesteps(n, spacing="trailing"))
        out.extend(rows_for_schedule(oracle, x, schedule, samplers(n, rows, tol)))
    return out


def rows_for_schedule(
    model: GaussianMixtureDenoiser, x: torch.Tensor, schedule: Schedule, settings: list[SamplerFn]
) -> list[dict[str, Any]]:
    """One row per sampler, against the serial sample on the same grid; ``rows`` is the most
    rows a round evaluated."""
    serial = Serial()(model, x, schedule)
    rows = []
    for sampler in settings:
        result = serial if isinstance(sampler, Serial) else sampler(model, x, schedule)
        rows.append(
            {
                "sampler": sampler_name(sampler),
                "steps": schedule.num_steps,
                "rows": result.stats.rows,
                "rounds": result.stats.rounds,
                "evaluations": result.stats.evaluations,
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
        "--rows",
        type=cli.positive_int,
        nargs="+",
        default=[2, 3, 4],
        help="rows per round of the configurations (drafts, blocks, windows, cores)",
    )
    parser.add_argument(
        "--tol",
        type=cli.nonnegative_float,
        default=None,
        help="the tolerance of the samplers that take one (default: each one's own)",
    )
    parser.add_argument("--batch", type=cli.positive_int, default=4)
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0)
    args = parser.parse_args(argv)
    rows = run(args.steps, args.rows, args.tol, args.batch, args.seed)
    tol = "each sampler's default" if args.tol is None else f"{args.tol:g}"
    print(
        "Rounds on the exact Gaussian-mixture oracle (DDIM, trailing spacing; tolerances: "
        f"{tol}; `rows` = the most rows a round evaluated)\n"
    )
    print(markdown_table(rows, [*KEYS, "setting"]))
    if args.json:
        write_json(args.json, rows)
        print(f"\nwrote {args.json}")
    assert all(math.isfinite(r["max_abs_dev"]) for r in rows)
    return rows


if __name__ == "__main__":
    main()
