"""Where DRiffusion's drafts are safe: for aggressive and conservative DRiffusion over ``N`` steps
with ``k`` drafts, the error to the reference solution against serial sampling at the same
rounds, on the exact Gaussian-mixture oracle and on the embedded digits network, over DDIM and
DPM-Solver++(2M). It (re)generates the table the default drafts are chosen from
(``driffusion/core/samplers/drafts_region.py``).

    python benchmarks/drafts_region.py                    # full run: JSON + the generated table
    python benchmarks/drafts_region.py --check            # exit 1 if the generated table is stale
    python benchmarks/drafts_region.py --quick --json f.json --module m.py  # smoke (a subset)

**The measure.** ``err_ref = ||x - x_ref|| / ||x_ref||`` over the whole batch, ``x_ref`` the
frontier's reference (DPM-Solver++(3M) on ``--ref-points`` log-uniform sigmas, then the final
denoise), on the frontier's problems (``benchmarks/frontier.py``: the oracle's 8 samples, the
digits network at guidance 2 with one sample per digit, batched). Each sampler runs on the
trailing grid of ``N`` steps; *serial at the same rounds* is the same solver run serially on the
trailing grid of ``R`` steps, ``R`` the rounds the sampler took (aggressive: ``1 + ceil((N - 1) /
k)``, conservative: ``2 (N // (k+1)) + min(N % (k+1), 2)``).

**The region.** ``(mode, N, k)`` is *safe* when on every model and solver ``err_ref(sampler) <=
err_ref(serial at its rounds) * (1 + SLACK)`` (``SLACK = 1e-6``, float noise only); ``k = 1``
is serial itself. Per mode and measured ``N`` the table keeps the largest ``k`` such that every
``k' <= k`` is safe, and every measured cell (both models, both solvers) for the warnings;
[`safe_drafts`][driffusion.core.samplers.driffusion.safe_drafts] turns it into the rule.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from driffusion.core import Aggressive, Conservative, Serial, reference_solution, relative_error
from driffusion.core.samplers.driffusion import allowed_drafts
from driffusion.io import markdown_table, write_json
from driffusion.lightning import cli

if not __package__:  # run as `python benchmarks/drafts_region.py`: the repo root holds it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import frontier
from benchmarks.frontier import PROBLEMS, Problem

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "driffusion" / "core" / "samplers" / "drafts_region.py"
JSON = ROOT / "docs" / "results" / "drafts_region.json"
MODES = ("aggressive", "conservative")
MODELS = ("digits", "oracle")
SOLVERS = ("ddim", "dpmpp_2m")
STEPS = (4, 5, 6, 8, 10, 12, 16, 20, 28, 35, 50, 70, 100)
DRAFTS = (1, 2, 3, 4, 5, 6, 7, 8)
QUICK_STEPS = (4, 6, 12)
QUICK_DRAFTS = (1, 2, 3, 4)
REF_POINTS = 500
SLACK = 1e-6
"""Relative slack of the comparison with serial: float noise only."""
REPORT_STEPS = (4, 6, 8, 12, 20, 28, 50)
REPORT_DEVICES = (2, 4, 8)
KEYS = ["model", "mode", "solver", "steps", "drafts", "rounds", "err_ref", "serial_err_ref"]
CLASSES = {"aggressive": Aggressive, "conservative": Conservative}


def reference(problem: Problem, points: int) -> torch.Tensor:
    """The frontier's reference solution of ``problem`` on ``points`` log-uniform sigmas."""
    with torch.inference_mode():
        return reference_solution(problem.model, problem.x, problem.alphas_cumprod, points)


Task = tuple[str, str, int]  # mode, solver, steps


def measure(
    problem: Problem,
    x_ref: torch.Tensor,
    task: Task,
    drafts: Sequence[int] = DRAFTS,
    serial: dict[tuple[str, int], float] | None = None,
) -> list[dict[str, Any]]:
    """The cells ``k in drafts`` of one ``(mode, solver, N)`` on one problem: the sampler's
    ``err_ref`` and that of serial at the rounds it took.

    A run with ``k >= N - 1`` drafts is the run with ``k = N - 1`` (every block is cut to the
    steps left), so it is run once and its row repeated for each such ``k``; ``serial`` caches
    the serial errors by ``(solver, rounds)`` across calls.
    """
    mode, solver, n = task
    serial = {} if serial is None else serial
    done: dict[int, tuple[int, float]] = {}
    rows: list[dict[str, Any]] = []
    for k in drafts:
        effective = max(1, min(k, n - 1))
        if effective not in done:
            sampler = CLASSES[mode](drafts=effective, solver=solver)
            with torch.inference_mode():
                result = sampler(problem.model, problem.x, problem.grid(n))
            if result.stats.rounds != sampler.rounds(n):
                raise RuntimeError(f"{sampler!r} over {n} steps: rounds disagree")
            done[effective] = (result.stats.rounds, relative_error(result.x, x_ref))
        rounds, err = done[effective]
        if (solver, rounds) not in serial:
            with torch.inference_mode():
                x = Serial(solver=solver)(problem.model, problem.x, problem.grid(rounds)).x
            serial[solver, rounds] = relative_error(x, x_ref)
        rows.append(
            {
                "model": problem.name,
                "mode": mode,
                "solver": solver,
                "steps": n,
                "drafts": k,
                "rounds": rounds,
                "err_ref": err,
                "serial_err_ref": serial[solver, rounds],
            }
        )
    return rows


def _run_task(task: Task, drafts: Sequence[int]) -> list[dict[str, Any]]:
    """One task in a worker of ``frontier.worker_map`` (which holds the problem and x_ref)."""
    cache = frontier.WORKER.setdefault("serial", {})
    return measure(frontier.WORKER["problem"], frontier.WORKER["x_ref"], task, drafts, cache)


def measure_model(
    name: str,
    steps: Sequence[int] = STEPS,
    drafts: Sequence[int] = DRAFTS,
    ref_points: int = REF_POINTS,
    workers: int = 1,
    threads: int = 2,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every cell ``(mode, solver, N, k)`` on the problem ``name``, over ``workers``
    processes sharing ``threads``, and the reference's check (half the points)."""
    problem = PROBLEMS[name](False)
    x_ref = reference(problem, ref_points)
    half = reference(problem, ref_points // 2)
    check = {"points": ref_points, "diff_half_points": relative_error(half, x_ref)}
    print(
        f"{name}: reference on {ref_points} points; half the points differ by "
        f"{check['diff_half_points']:.1e}",
        flush=True,
    )
    tasks = [(m, s, n) for n in sorted(steps, reverse=True) for m in MODES for s in SOLVERS]
    rows: list[dict[str, Any]] = []
    frontier.WORKER.pop("serial", None)  # serial errors of another reference (in-process)
    with frontier.worker_map(name, False, x_ref, workers, threads) as mapper:
        for cells in mapper(_run_task, tasks, [tuple(drafts)] * len(tasks)):
            rows += cells
    return rows, check


def is_safe(row: Mapping[str, Any]) -> bool:
    """``err_ref <= serial_err_ref * (1 + SLACK)``; ``k = 1`` (serial itself) always."""
    return row["drafts"] == 1 or row["err_ref"] <= row["serial_err_ref"] * (1 + SLACK)


def largest_safe(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[int, int]]:
    """Per mode and measured ``N``: the largest ``k`` such that every measured ``k' <= k`` is
    safe on every model and solver in ``rows``."""
    safe: dict[tuple[str, int, int], bool] = {}
    for row in rows:
        key = (row["mode"], row["steps"], row["drafts"])
        safe[key] = safe.get(key, True) and is_safe(row)
    out: dict[str, dict[int, int]] = {}
    for mode, n, _ in sorted(safe):
        ks = sorted(k for m, s, k in safe if (m, s) == (mode, n))
        best = 1
        for k in ks:
            if not safe[mode, n, k]:
                break
            best = k
        out.setdefault(mode, {})[n] = best
    return out


def region_table(region: Mapping[str, Mapping[int, int]]) -> list[dict[str, Any]]:
    """The region as rows: per ``N``, each mode's largest safe ``k`` as measured and as the
    rule uses it (monotone in ``N``)."""
    steps = sorted({n for by_n in region.values() for n in by_n})
    rows = []
    for n in steps:
        row: dict[str, Any] = {"steps": n}
        for mode, by_n in region.items():
            row[f"{mode}_measured"] = by_n.get(n)
            row[f"{mode}_rule"] = allowed_drafts(by_n, n)
        rows.append(row)
    return rows


def defaults_table(
    rows: Sequence[Mapping[str, Any]],
    region: Mapping[str, Mapping[int, int]],
    steps: Sequence[int] = REPORT_STEPS,
    devices: Sequence[int] = REPORT_DEVICES,
) -> list[dict[str, Any]]:
    """What the aggressive default picks on ``D`` devices over ``N`` steps, and its digits
    ``err_ref`` beside serial at the same rounds, per solver (cells that were not measured
    are left out)."""
    cells = {
        (r["solver"], r["steps"], r["drafts"]): r
        for r in rows
        if r["model"] == "digits" and r["mode"] == "aggressive"
    }
    out = []
    for n in steps:
        for d in devices:
            k = min(d, allowed_drafts(region["aggressive"], n))
            row: dict[str, Any] = {"steps": n, "devices": d, "drafts": k}
            for solver in SOLVERS:
                cell = cells.get((solver, n, k))
                if cell is not None:
                    row["rounds"] = cell["rounds"]
                    row[f"{solver}_err_ref"] = cell["err_ref"]
                    row[f"{solver}_serial_err_ref"] = cell["serial_err_ref"]
            if "rounds" in row:
                out.append(row)
    return out


def first_unsafe(
    rows: Sequence[Mapping[str, Any]], region: Mapping[str, Mapping[int, int]]
) -> list[dict[str, Any]]:
    """The cells that end each region: per mode and ``N``, the unsafe cells at ``k = s(N) + 1``
    (none where every measured ``k`` is safe)."""
    return [
        dict(r) for r in rows if r["drafts"] == region[r["mode"]][r["steps"]] + 1 and not is_safe(r)
    ]


DEFAULT_COLUMNS = ["steps", "devices", "drafts", "rounds"] + [
    f"{s}_{what}" for s in SOLVERS for what in ("err_ref", "serial_err_ref")
]

HEADER = '''"""The measured region of safe DRiffusion drafts (data only).

GENERATED by ``python benchmarks/drafts_region.py``: do not edit by hand; rerun it (``--check``
tells whether this file is stale). Read by
[`safe_drafts`][driffusion.core.samplers.driffusion.safe_drafts].

``(mode, N, k)`` is safe when on every model in ``MODELS`` and every solver in ``SOLVERS``,
``err_ref(k drafts over N steps) <= err_ref(serial at the same rounds) * (1 + SLACK)``, with
``err_ref = ||x - x_ref|| / ||x_ref||`` to a reference solution of the probability-flow ODE
(DPM-Solver++(3M) on ``REF_POINTS`` log-uniform sigmas).
"""

from __future__ import annotations

'''


def module_source(rows: Sequence[Mapping[str, Any]], ref_points: int, steps: Sequence[int]) -> str:
    """The generated module's text: the header, the settings measured, ``LARGEST_SAFE`` (per
    mode and measured ``N``) and ``MEASURED`` (every cell, floats to 12 significant digits)."""
    region = largest_safe(rows)
    models = sorted({r["model"] for r in rows})
    solvers = sorted({r["solver"] for r in rows})
    drafts = sorted({r["drafts"] for r in rows})
    lines = [
        HEADER.rstrip("\n"),
        "",
        f"MODELS: tuple[str, ...] = {_tuple(_q(m) for m in models)}",
        f"SOLVERS: tuple[str, ...] = {_tuple(_q(s) for s in solvers)}",
        f"STEPS: tuple[int, ...] = {_tuple(str(n) for n in steps)}",
        f"DRAFTS: tuple[int, ...] = {_tuple(str(k) for k in drafts)}",
        f"REF_POINTS = {ref_points}",
        f"SLACK = {SLACK!r}",
        "",
        "LARGEST_SAFE: dict[str, dict[int, int]] = {",
    ]
    for mode, by_n in region.items():
        lines.append(f"    {_q(mode)}: {{")
        lines += [f"        {n}: {k}," for n, k in by_n.items()]
        lines.append("    },")
    lines += [
        "}",
        '"""Per mode and measured ``N``: the largest ``k`` such that every ``j <= k`` is safe."""',
        "",
        "MEASURED: tuple[tuple[str, str, str, int, int, int, float, float], ...] = (",
        "    # mode, model, solver, steps, drafts, rounds, err_ref, serial_err_ref",
    ]
    for r in sorted(rows, key=_cell_key):
        lines.append(
            f"    ({_q(r['mode'])}, {_q(r['model'])}, {_q(r['solver'])}, {r['steps']}, "
            f"{r['drafts']}, {r['rounds']}, {_float(r['err_ref'])}, "
            f"{_float(r['serial_err_ref'])}),"
        )
    lines += [")", '"""Every measured cell (both models, both solvers)."""', ""]
    return "\n".join(lines)


def _q(text: str) -> str:
    return f'"{text}"'


def _tuple(items: Iterable[str]) -> str:
    parts = list(items)
    return f"({parts[0]},)" if len(parts) == 1 else f"({', '.join(parts)})"


def _cell_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (row["mode"], row["model"], row["solver"], row["steps"], row["drafts"])


def _float(value: float) -> str:
    text = f"{value:.12g}"
    return text if any(c in text for c in ".en") else text + ".0"


def load_module(path: Path) -> ModuleType:
    """Import a generated table from its file (not as a package module)."""
    spec = importlib.util.spec_from_file_location(f"drafts_region_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stale_cells(rows: Sequence[Mapping[str, Any]], module: ModuleType) -> list[str]:
    """What differs between fresh measurements and a generated table: each cell whose rounds
    or errors disagree (beyond 1e-6 relative: float noise) or that the table lacks, and each
    ``N`` whose largest safe ``k`` differs."""
    table = {tuple(cell[:5]): cell[5:] for cell in module.MEASURED}
    out = []
    for r in rows:
        cell = table.get(_cell_key(r))
        fresh = (r["rounds"], r["err_ref"], r["serial_err_ref"])
        if cell is None or cell[0] != fresh[0] or not _close(cell[1:], fresh[1:]):
            out.append(f"{_cell_key(r)}: table {cell}, measured {fresh}")
    for mode, by_n in largest_safe(rows).items():
        for n, k in by_n.items():
            if module.LARGEST_SAFE.get(mode, {}).get(n) != k:
                out.append(f"{mode} N={n}: table {module.LARGEST_SAFE.get(mode, {}).get(n)}, k={k}")
    return out


def _close(a: Sequence[float], b: Sequence[float], rel: float = 1e-6) -> bool:
    return all(abs(x - y) <= rel * max(abs(x), abs(y)) for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--quick", action="store_true", help="a subset: N in 4 6 12, k in 1..4")
    parser.add_argument(
        "--ref-points", type=cli.positive_int, default=REF_POINTS, help="reference grid points"
    )
    parser.add_argument("--threads", type=cli.positive_int, default=2, help="torch threads in all")
    parser.add_argument(
        "--workers", type=cli.positive_int, default=2, help="processes sharing the threads"
    )
    parser.add_argument("--json", type=Path, default=None, help=f"default: {JSON}")
    parser.add_argument(
        "--module",
        type=Path,
        default=None,
        help=f"the generated table (default: {MODULE}; "
        "a --quick or partial run writes one only where this is given)",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the table is stale"
    )
    args = parser.parse_args(argv)
    if args.ref_points < 20:
        parser.error("--ref-points must be >= 20")
    torch.set_num_threads(args.threads)
    steps = QUICK_STEPS if args.quick else STEPS
    drafts = QUICK_DRAFTS if args.quick else DRAFTS
    full = not args.quick and set(args.models) == set(MODELS)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    checks: dict[str, dict[str, Any]] = {}
    for name in args.models:
        cells, checks[name] = measure_model(
            name, steps, drafts, args.ref_points, args.workers, args.threads
        )
        rows += cells
    wall = time.perf_counter() - start
    region = largest_safe(rows)
    regions = region_table(region)
    defaults = defaults_table(rows, region, [n for n in REPORT_STEPS if n in steps])
    print(f"\nlargest safe drafts per N (measured; rule: monotone in N) ({wall:.0f} s)")
    print(markdown_table(regions, list(regions[0])))
    print(
        "\nthe aggressive default on D devices over N steps, digits err_ref beside serial at "
        "the same rounds"
    )
    print(markdown_table(defaults, DEFAULT_COLUMNS))
    first = first_unsafe(rows, region)
    print(
        f"\n{sum(not is_safe(r) for r in rows)} of {len(rows)} cells unsafe; where each region "
        "ends (the first unsafe k per mode and N, its failing cells):"
    )
    print(markdown_table(first, KEYS) if first else "none")
    source = module_source(rows, args.ref_points, steps)
    result = {
        "settings": {
            "models": list(args.models),
            "solvers": list(SOLVERS),
            "steps": list(steps),
            "drafts": list(drafts),
            "ref_points": args.ref_points,
            "slack": SLACK,
            "threads": args.threads,
            "workers": args.workers,
        },
        "reference": checks,
        "region": regions,
        "defaults": defaults,
        "first_unsafe": first,
        "rows": rows,
        "wall_s": wall,
    }
    if args.check:
        stale = stale_cells(rows, load_module(args.module or MODULE))
        for line in stale[:20]:
            print(f"stale: {line}")
        print(f"{len(stale)} stale cell(s)" if stale else "the generated table is up to date")
        if stale:
            raise SystemExit(1)
        return result
    json_path = args.json or (JSON if full else Path("outputs/drafts_region.json"))
    write_json(json_path, result)
    print(f"wrote {json_path}")
    module_path = args.module or (MODULE if full else None)
    if module_path is not None:
        module_path.parent.mkdir(parents=True, exist_ok=True)
        module_path.write_text(source)
        print(f"wrote {module_path}")
    return result


if __name__ == "__main__":
    main()
