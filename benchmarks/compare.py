"""DRiffusion against CHORDS and the other parallel samplers at equal devices and equal latency:
error to the exact solution (``err_ref``) and evaluations, on the oracle and the digits network.

    OMP_NUM_THREADS=1 python benchmarks/compare.py --json docs/results/compare.json
    python benchmarks/compare.py --models oracle --quick --json c.json   # smoke

**Equal devices.** Every registered parallel sampler runs its own configurations
([`Sampler.configurations`][driffusion.core.samplers.base.Sampler.configurations]) with ``D``
rows per round in {2, 4, 8}, over ``dpmpp_2m`` unless a configuration names its own solver:
drafts (aggressive and conservative DRiffusion), the Picard window, the ParaDiGMS window (the
project's rule and the authors'), the SRDS blocks (pipelined; one, two or all Parareal
iterations) and CHORDS cores (the default start lists returning the first and second core, and
evenly spaced lists whose fastest core gets two or three rectification windows, each also over
``ddim``, the paper's solver). A new sampler joins without editing this script.

**Equal latency.** A run's latency on ``D`` devices is ``sum_r ceil(width_r / D)`` network calls
(its rounds when no round is wider than ``D``). Each sampler runs on a sweep of grid sizes ``N``;
per budget of serial rounds the table keeps, for each family, the configuration closest to the
exact solution within the budget among those for at most ``D`` devices (with 8 devices one may
run 2 drafts), next to the serial solvers a user would run on one device
(``dpmpp_2m`` and ``unipc``) with as many steps as the budget allows.

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

from driffusion.core import SampleResult, Serial, parse_sampler, relative_error, sampler_name
from driffusion.io import format_cell, markdown_table, write_json

if not __package__:  # run as `python benchmarks/compare.py`: the repo root holds `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import frontier
from benchmarks.common import parallel_configurations

DEVICES = (2, 4, 8)
STEPS = (8, 10, 12, 14, 17, 20, 25, 35, 50, 70, 100)
BUDGETS = (8, 12, 17, 26)
SERIAL_SOLVERS = ("dpmpp_2m", "unipc")
SOLVER = "dpmpp_2m"  # the parallel samplers' solver (a configuration may name its own)
KEYS = ["model", "family", "devices", "steps", "rounds", "latency", "evaluations", "err_ref"]

Task = tuple[str, int, int, str]  # family, devices, steps, sampler label


def tasks(quick: bool, tol: float) -> list[Task]:
    """Every configuration: the serial solvers once (one device), then every registered
    parallel sampler's configurations at ``D`` rows a round."""
    steps = (10, 17, 25, 50) if quick else STEPS
    devices = (2, 4) if quick else DEVICES
    out: list[Task] = [
        ("serial", 1, n, repr(Serial(solver=solver))) for solver in SERIAL_SOLVERS for n in steps
    ]
    for d in devices:
        for n in steps:
            for sampler in parallel_configurations(d, n, solver=SOLVER, tol=tol):
                out.append((sampler_name(sampler), d, n, repr(sampler)))
    return out


def run_task(task: Task) -> dict[str, Any]:
    """One configuration on the worker's problem: its latency on its devices and ``err_ref``."""
    family, devices, steps, text = task
    problem, x_ref = (frontier.WORKER[key] for key in ("problem", "x_ref"))
    sampler = parse_sampler(text)
    with torch.inference_mode():
        result: SampleResult = sampler(problem.model, problem.x, problem.grid(steps))
    return {
        "model": problem.name,
        "family": family,
        "devices": devices,
        "steps": steps,
        "rounds": result.stats.rounds,
        "latency": result.stats.latency_units(devices),
        "evaluations": result.stats.evaluations,
        "rows": result.stats.rows,
        "err_ref": relative_error(result.x, x_ref),
        "setting": text,
    }


def run_model(
    name: str, quick: bool, tol: float, ref_points: int, workers: int, threads: int
) -> dict[str, Any]:
    """The reference, then every configuration (printed as it arrives)."""
    start = time.perf_counter()
    problem = frontier.PROBLEMS[name](quick)
    with torch.inference_mode():
        x_ref, checks = frontier.reference(problem, ref_points)
    rows = []
    with frontier.worker_map(name, quick, x_ref, workers, threads) as mapper:
        for row in mapper(run_task, tasks(quick, tol)):
            print(" | ".join(format_cell(row[key]) for key in KEYS), flush=True)
            rows.append(row)
    return {
        "reference": checks,
        "tol": tol,
        "rows": rows,
        "best": best_within_budgets(rows),
        "wall_s": time.perf_counter() - start,
    }


def best_within_budgets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per devices ``D``, budget and family: the row with the least ``err_ref`` whose latency is
    within the budget, among the family's configurations for at most ``D`` devices (a user with
    8 devices may run 2 drafts), or ``None``; serial rows run on one device (latency = steps)."""
    out = []
    devices = sorted({r["devices"] for r in rows if r["family"] != "serial"})
    for d in devices:
        for budget in BUDGETS:
            for family in families(rows):
                within = [
                    r
                    for r in rows
                    if r["family"] == family
                    and (r["devices"] == 1 if family == "serial" else 2 <= r["devices"] <= d)
                    and r["latency"] <= budget
                ]
                best = min(within, key=lambda r: r["err_ref"]) if within else None
                out.append({"devices": d, "budget": budget, "family": family, "best": best})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    frontier.add_problem_args(parser, "Picard / ParaDiGMS / SRDS tolerance (relative to sigma)")
    parser.add_argument("--json", type=Path, default=Path("outputs/compare.json"))
    args = parser.parse_args(argv)
    frontier.check_problem_args(parser, args)
    print(" | ".join(KEYS), flush=True)
    results = {
        name: run_model(name, args.quick, args.tol, args.ref_points, args.workers, args.threads)
        for name in args.models
    }
    for name, result in results.items():
        print(f"\n{name} ({result['wall_s']:.0f} s)")
        columns = ["devices", "budget", *families(result["rows"])]
        print(markdown_table(summary_rows(result["best"]), columns))
    write_json(args.json, results)
    print(f"wrote {args.json}")
    return results


def families(rows: list[dict[str, Any]]) -> list[str]:
    """The families in the rows, serial first, in the order they appear."""
    return list(dict.fromkeys(["serial", *(r["family"] for r in rows)]))


def summary_rows(best: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (devices, budget), one ``err_ref`` cell per family (``None``: none fits)."""
    table: dict[tuple[int, int], dict[str, Any]] = {}
    for entry in best:
        key = (entry["devices"], entry["budget"])
        row = table.setdefault(key, {"devices": key[0], "budget": key[1]})
        row[entry["family"]] = None if entry["best"] is None else entry["best"]["err_ref"]
    return list(table.values())


if __name__ == "__main__":
    main()
