"""DRiffusion against CHORDS and the other parallel samplers at equal devices and equal latency:
error to the exact solution (``err_ref``) and evaluations, on the oracle, the guided oracle and
the digits network.

    OMP_NUM_THREADS=1 python benchmarks/compare.py --json docs/results/compare.json
    python benchmarks/compare.py --models oracle-guided --quick --json c.json   # smoke

**Equal devices.** Every registered parallel sampler runs its own configurations
([`Sampler.configurations`][driffusion.core.samplers.base.Sampler.configurations]) with ``K``
rows per round in {2, 4, 8}, over ``dpmpp_2m`` unless a configuration names its own solver:
drafts (aggressive and conservative DRiffusion), the Picard window, the ParaDiGMS window (the
project's rule and the authors'), the SRDS blocks (pipelined; one, two or all Parareal
iterations) and CHORDS cores (the default start lists returning the first and second core, and
evenly spaced lists whose fastest core gets two or three rectification windows, each also over
``ddim``, the paper's solver). A new sampler joins without editing this script. Beside the
sweep, aggressive and conservative drafts also run on the grids whose rounds fit each budget
(``N = 1 + (R - 1) K``), as a user fitting drafts to a budget would.

**Equal latency, in passes.** A guided evaluation is ``G`` branches (the digits network and the
guided oracle: 2, unconditional and conditional); a *pass* is one branch of one row. A round of
``K`` rows costs ``G ceil(K / D)`` passes on ``D`` devices with a row's branches together
(``guidance_devices=1``) and ``ceil(K G / D)`` with the branches split over the devices
(``guidance_devices=2``, exact: the sample does not change)
([`round_passes`][driffusion.core.branches.round_passes]). So a configuration runs once and its
rows per round give both latencies on every ``D``: a row carries ``devices``,
``guidance_devices`` and ``passes``. Serial sampling costs ``G N`` passes on one device and
``N`` with the branches split over 2 devices (the exact baseline a user with a guided model
already has). Without branches (the oracle, ``G = 1``) passes are network calls, as before.

Per ``D`` in {2, 4, 8} and budget of passes, the table keeps, for each family and each
``guidance_devices``, the configuration closest to the exact solution within the budget among
those for at most ``D`` devices (with 8 devices one may run 2 drafts), next to the serial
solvers (``dpmpp_2m`` and ``unipc``) with as many steps as the budget allows.

The problems, the reference solution and ``err_ref`` are the frontier's
(``benchmarks/frontier.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from driffusion.core import (
    SampleResult,
    Serial,
    parse_sampler,
    relative_error,
    round_passes,
    sampler_name,
)
from driffusion.io import format_cell, markdown_table, write_json

if not __package__:  # run as `python benchmarks/compare.py`: the repo root holds `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import frontier
from benchmarks.common import DRAFT_SAMPLERS, parallel_configurations, variants

DEVICES = (2, 4, 8)
STEPS = (8, 10, 12, 14, 17, 20, 25, 35, 50, 70, 100)
QUICK_STEPS = (10, 17, 25, 50)
QUICK_DEVICES = (2, 4)
BUDGETS = (8, 12, 17, 26)  # in passes (one branch of one row)
SERIAL_SOLVERS = ("dpmpp_2m", "unipc")
SOLVER = "dpmpp_2m"  # the parallel samplers' solver (a configuration may name its own)
FITTED_DRAFTS = DRAFT_SAMPLERS  # also run on the grids whose rounds fit a budget
KEYS = [
    "model",
    "family",
    "devices",
    "guidance_devices",
    "steps",
    "rounds",
    "passes",
    "evaluations",
    "err_ref",
]

Task = tuple[str, int, int, str]  # family, rows per round K, steps, sampler label


def fitted_rounds(branches: int) -> list[int]:
    """The round counts that fill a budget of passes: ``R = budget`` (one pass a round: the
    branches split over twice the rows' devices) and ``R = budget // G`` (``G`` passes a round:
    every device busy with one row's branches)."""
    return sorted({b // g for b in BUDGETS for g in {1, branches}})


def tasks(quick: bool, tol: float, branches: int = 1) -> list[Task]:
    """Every configuration, each once: the serial solvers (one row a round; their steps include
    every budget's), every registered parallel sampler's configurations at ``K`` rows a round,
    then (unless ``quick``) the drafts on the grids whose rounds fit a budget."""
    steps = QUICK_STEPS if quick else STEPS
    rows = QUICK_DEVICES if quick else DEVICES
    rounds = fitted_rounds(branches)
    serial_steps = sorted({*steps, *rounds})
    out: list[Task] = [
        ("serial", 1, n, repr(Serial(solver=solver)))
        for solver in SERIAL_SOLVERS
        for n in serial_steps
    ]
    for k in rows:
        for n in steps:
            for sampler in parallel_configurations(k, n, solver=SOLVER, tol=tol):
                out.append((sampler_name(sampler), k, n, repr(sampler)))
    if not quick:
        for k in rows:
            for n in sorted({1 + (r - 1) * k for r in rounds} - set(steps)):
                if not frontier.trailing_grid_exists(n):
                    continue
                for cls in FITTED_DRAFTS:
                    for sampler in cls.configurations(k, n, solver=SOLVER):
                        out.append((sampler_name(sampler), k, n, repr(sampler)))
    return list(dict.fromkeys(out))  # a configuration shared by two sweeps runs once


def run_task(task: Task) -> dict[str, Any]:
    """One configuration on the worker's problem: its rounds' rows and ``err_ref``."""
    family, rows_per_round, steps, text = task
    problem, x_ref = (frontier.WORKER[key] for key in ("problem", "x_ref"))
    sampler = parse_sampler(text)
    with torch.inference_mode():
        result: SampleResult = sampler(problem.model, problem.x, problem.grid(steps))
    return {
        "model": problem.name,
        "family": family,
        "rows_per_round": rows_per_round,
        "steps": steps,
        "rounds": result.stats.rounds,
        "evaluations": result.stats.evaluations,
        "rows": result.stats.rows,
        "err_ref": relative_error(result.x, x_ref),
        "setting": text,
        "round_rows": list(result.stats.round_rows),
    }


def placements(
    run: dict[str, Any], branches: int, devices: tuple[int, ...]
) -> list[dict[str, Any]]:
    """The rows of one run: its latency in passes on each device count ``D`` (1 and
    ``devices``) at least its rows per round, with the branches together and (``G >= 2``,
    ``D >= 2``) split; a placement is left out when the same ``guidance_devices`` on fewer
    devices already takes as few passes (it adds nothing: budgets look at most ``D`` devices).
    """
    out = []
    splits = (False, True) if branches > 1 else (False,)
    fields = {key: value for key, value in run.items() if key != "round_rows"}
    for split in splits:
        fewest: int | None = None
        for d in (1, *devices):
            if d < run["rows_per_round"] or (split and d < 2):
                continue
            passes = round_passes(run["round_rows"], branches, d, split)
            if fewest is not None and passes >= fewest:
                continue
            fewest = passes
            row = {**fields, "devices": d, "guidance_devices": 2 if split else 1}
            out.append({**row, "passes": passes})
    return out


def run_model(
    name: str, quick: bool, tol: float, ref_points: int, workers: int, threads: int
) -> dict[str, Any]:
    """The reference, then every configuration once, placed on every device count (rows
    printed as they arrive)."""
    start = time.perf_counter()
    problem = frontier.PROBLEMS[name](quick)
    with torch.inference_mode():
        x_ref, checks = frontier.reference(problem, ref_points)
    devices = QUICK_DEVICES if quick else DEVICES
    rows = []
    with frontier.worker_map(name, quick, x_ref, workers, threads) as mapper:
        for run in mapper(run_task, tasks(quick, tol, problem.branches)):
            for row in placements(run, problem.branches, devices):
                print(" | ".join(format_cell(row[key]) for key in KEYS), flush=True)
                rows.append(row)
    return {
        "reference": checks,
        "tol": tol,
        "branches": problem.branches,
        "rows": rows,
        "best": best_within_budgets(rows, devices),
        "wall_s": time.perf_counter() - start,
    }


def best_within_budgets(
    rows: list[dict[str, Any]], devices: tuple[int, ...] = DEVICES
) -> list[dict[str, Any]]:
    """Per devices ``D``, budget of passes, family and ``guidance_devices``: the row with the
    least ``err_ref`` within the budget among the family's rows for at most ``D`` devices with
    that ``guidance_devices`` (a user with 8 devices may run 2 drafts), or ``None``."""
    out = []
    for d in devices:
        for budget in BUDGETS:
            for family, guidance in variants(rows):
                within = [
                    r
                    for r in rows
                    if (r["family"], r["guidance_devices"]) == (family, guidance)
                    and r["devices"] <= d
                    and r["passes"] <= budget
                ]
                best = min(within, key=lambda r: r["err_ref"]) if within else None
                out.append(
                    {
                        "devices": d,
                        "budget": budget,
                        "family": family,
                        "guidance_devices": guidance,
                        "best": best,
                    }
                )
    return out


def variant_key(family: str, guidance_devices: int) -> str:
    """A column name: the family, with ``/split`` when its branches are split."""
    return family if guidance_devices == 1 else f"{family}/split"


def summary_rows(best: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (devices, budget), one ``err_ref`` cell per family and ``guidance_devices``
    (``None``: none fits)."""
    table: dict[tuple[int, int], dict[str, Any]] = {}
    for entry in best:
        key = (entry["devices"], entry["budget"])
        row = table.setdefault(key, {"devices": key[0], "budget": key[1]})
        column = variant_key(entry["family"], entry["guidance_devices"])
        row[column] = None if entry["best"] is None else entry["best"]["err_ref"]
    return list(table.values())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    frontier.add_problem_args(parser, "Picard / ParaDiGMS / SRDS tolerance (relative to sigma)")
    parser.add_argument("--json", type=Path, default=Path("outputs/compare.json"))
    args = parser.parse_args(argv)
    frontier.check_problem_args(parser, args)
    print(" | ".join(KEYS), flush=True)
    results = {}
    for name in args.models:
        results[name] = run_model(
            name, args.quick, args.tol, args.ref_points, args.workers, args.threads
        )
        write_json(args.json, results)  # each model as it finishes
    for name, result in results.items():
        print(f"\n{name} ({result['wall_s']:.0f} s)")
        columns = ["devices", "budget"]
        columns += [variant_key(f, g) for f, g in variants(result["rows"])]
        print(markdown_table(summary_rows(result["best"]), columns))
    print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
