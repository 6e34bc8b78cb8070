"""The frontier: error to the exact solution against serial rounds (latency), for every solver's
serial curve and every registered parallel sampler (its own configurations at 2, 4 and 8 rows a
round, over DDIM and DPM-Solver++(2M)), on the exact Gaussian-mixture oracle, on the same oracle
under classifier-free guidance (``oracle-guided``: two exact branches, so guided sampling has a
reference solve too), on the embedded digits network, and on the oracle in rectified-flow form
on the grids of the flow models people run (``oracle-flux``: FLUX.1's 28-step grid with the
dynamic shift of a 1024^2 image; ``oracle-wan``: Wan's UniPC over flow sigmas, shift 5, 50
steps), where ParaStep runs beside DRiffusion at 10 and 28 steps.

    python benchmarks/frontier.py --json outputs/frontier.json --plot outputs/frontier.png
    python benchmarks/frontier.py --models oracle --quick --json f.json --plot f.png  # smoke
    python benchmarks/frontier.py --models oracle-flux oracle-wan --ref-points 2000 \
        --json outputs/frontier_flow.json --plot outputs/frontier_flow.png

**The target.** Every sampler here solves the probability-flow ODE from ``sigma_max`` (training
timestep 999) down to ``sigma_min`` (timestep 0) and returns the clean estimate there. The
reference ``x_ref`` is DPM-Solver++(3M) on ``--ref-points`` log-uniform sigmas between the two
(non-integer network times, as Karras-style schedulers use them) followed by the final denoise;
it is checked against UniPC-3 on the same grid and against DPM-Solver++(3M) on half the points,
and both differences are recorded (they must be far below the errors compared).

**The samplers** run on the trailing (``t = 999 ... T/N - 1``) grid ending at ``sigma = 0``, as
a user's scheduler does. ``err_ref = ||x - x_ref|| / ||x_ref||``; ``rel_dev`` is the distance to
the N-step serial sample of the same solver (today's deviation). Rows carry ``model, sampler,
solver, steps, rows, rounds, evaluations, err_ref, rel_dev`` and ``setting`` (the sampler's
label, which parses back, and N); the JSON also holds the reference checks and, per round
budget, the best serial and the best parallel row (the honest comparison: what would the same
latency buy serially?). The samplers come from
[`Sampler.configurations`][driffusion.core.samplers.base.Sampler.configurations], so a new
sampler joins the frontier without editing this script.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from driffusion.core import (
    Aggressive,
    BatchedExecutor,
    Model,
    ParaStep,
    RowwiseModel,
    Schedule,
    Serial,
    UniPC,
    alphas_cumprod_from_betas,
    get_solver,
    initial_noise,
    parse_sampler,
    reference_schedule,
    reference_solution,
    relative_error,
    sampler_name,
    sampler_rows,
    vp_schedule,
    vp_timesteps,
)
from driffusion.core.branches import network_branches
from driffusion.core.schedule import flow_schedule
from driffusion.io import format_cell, markdown_table, write_json
from driffusion.lightning import cli
from driffusion.testing import (
    FlowNoiseLevels,
    GaussianMixtureDenoiser,
    GuidedOracleNetwork,
    VPNoiseLevels,
)

if not __package__:  # run as `python benchmarks/frontier.py`: the repo root holds `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parallel_configurations

KEYS = [
    "model",
    "sampler",
    "solver",
    "steps",
    "rows",
    "rounds",
    "evaluations",
    "err_ref",
    "rel_dev",
]
SERIAL_SOLVERS = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "plms")
SERIAL_STEPS = (8, 10, 12, 14, 18, 20, 26, 35, 50, 100)
PARALLEL_SOLVERS = ("ddim", "dpmpp_2m")
PARALLEL_STEPS = (25, 50, 100, 200)
DRAFTS = (2, 4, 8)  # rows per round of every parallel sampler (drafts, window, blocks, cores)
BUDGETS = (8, 14, 26)
# Beyond the required grid: the other multistep solvers under aggressive drafting, and the
# configurations whose rounds equal a small budget exactly (N = 1 + (R - 1) k).
EXTRA_SOLVERS = ("unipc", "plms")


@dataclass
class Problem:
    """A model, its start states, its grids and the branches of one of its evaluations; the
    grids of its parallel rows and the solvers they run over."""

    name: str
    model: Model
    x: torch.Tensor
    alphas_cumprod: torch.Tensor | None
    branches: int = 1
    parallel_steps: tuple[int, ...] = PARALLEL_STEPS
    parallel_solvers: tuple[str, ...] = PARALLEL_SOLVERS

    def grid(self, steps: int) -> Schedule:
        """The trailing grid of ``steps`` steps, ending at ``sigma = 0``."""
        assert self.alphas_cumprod is not None
        return vp_schedule(self.alphas_cumprod, vp_timesteps(steps, spacing="trailing"))

    def reference_grid(self, points: int) -> Schedule:
        """``points`` log-uniform sigmas from ``sigma(999)`` to ``sigma(0)``, then 0."""
        assert self.alphas_cumprod is not None
        return reference_schedule(self.alphas_cumprod, points)

    def reference_solve(self, points: int) -> torch.Tensor:
        """DPM-Solver++(3M) over ``points`` reference points, then the final denoise."""
        assert self.alphas_cumprod is not None
        return reference_solution(self.model, self.x, self.alphas_cumprod, points)

    @property
    def reference_grid_text(self) -> str:
        return "log-uniform sigma, sigma(999) -> sigma(0), then the final denoise"

    check_order: int = 3
    """The order of the UniPC check of the reference on the same grid."""


@dataclass
class FlowProblem(Problem):
    """A problem on a rectified-flow grid as a pipeline's scheduler builds it: ``sigmas(N)``
    gives its ``N + 1`` sigmas (the last 0); the reference solve runs on the same map with
    many points."""

    sigmas: Callable[[int], torch.Tensor] | None = None
    grid_text: str = ""
    check_order: int = 2  # UniPC-3 cannot start at sigma = 1 (alpha = 0: lambda = -inf)

    def grid(self, steps: int) -> Schedule:
        assert self.sigmas is not None
        return flow_schedule(self.sigmas(steps))

    def reference_grid(self, points: int) -> Schedule:
        return self.grid(points)

    def reference_solve(self, points: int) -> torch.Tensor:
        return Serial(solver="dpmpp_3m")(self.model, self.x, self.reference_grid(points)).x

    @property
    def reference_grid_text(self) -> str:
        return f"{self.grid_text} with the reference's points, down to sigma = 0"


ORACLE_SAMPLES = 8
ORACLE_GUIDANCE = 3.0  # the guided oracle's scale w in u + w (c - u)


def oracle_mixture(abar: torch.Tensor) -> GaussianMixtureDenoiser:
    """The oracles' Gaussian mixture: 8 components of 4x8x8 (seed 0)."""
    return GaussianMixtureDenoiser.random(
        (4, 8, 8), components=8, noise_levels=VPNoiseLevels(abar), seed=0
    )


def oracle_start() -> torch.Tensor:
    """The oracles' start states: 8 samples of 4x8x8 (seed 1)."""
    return torch.randn(ORACLE_SAMPLES, 4, 8, 8, generator=torch.Generator().manual_seed(1))


def oracle_problem(quick: bool) -> Problem:
    """The Gaussian-mixture oracle (exact denoiser), 8 samples of 4x8x8, SD betas."""
    abar = alphas_cumprod_from_betas()
    return Problem("oracle", oracle_mixture(abar), oracle_start(), abar)


def guided_oracle_problem(quick: bool) -> Problem:
    """The same mixture and start states under classifier-free guidance (scale
    ``ORACLE_GUIDANCE``, sample ``b`` conditioned on component ``b``): two exact branches per
    evaluation, so the guided probability-flow ODE has a reference solve."""
    abar = alphas_cumprod_from_betas()
    network = GuidedOracleNetwork(oracle_mixture(abar), ORACLE_GUIDANCE)
    model = RowwiseModel(network, {"label": torch.arange(ORACLE_SAMPLES)})
    return Problem("oracle-guided", model, oracle_start(), abar, network_branches(network))


def digits_problem(quick: bool) -> Problem:
    """The shipped digits network, guidance 2, one sample per class (10 network rows a state)."""
    from driffusion.models.digits import load_digits

    digits = load_digits()
    labels = torch.arange(10)
    network = digits.denoiser(2.0)
    model = BatchedExecutor(RowwiseModel(network, {"label": labels}))
    x = initial_noise([1000 + k for k in range(len(labels))], (1, 16, 16))
    return Problem("digits", model, x, digits.alphas_cumprod, network_branches(network))


FLUX_MU = 1.15
"""FLUX.1's dynamic shift at 1024^2: 4096 tokens, ``calculate_shift``'s ``max_shift``."""


def flux_sigmas(steps: int) -> torch.Tensor:
    """FLUX.1-dev's grid as its pipeline builds it: ``sigmas = linspace(1, 1/N, N)`` given to
    its FlowMatchEuler scheduler with ``mu`` (dynamic shift), then 0."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        base_shift=0.5,
        max_shift=1.15,
    )
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=FLUX_MU)
    return torch.as_tensor(scheduler.sigmas)


def wan_sigmas(steps: int) -> torch.Tensor:
    """Wan's grid as its documented scheduler builds it: UniPC over flow sigmas, shift 5 (720p),
    ending at 0."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    )
    scheduler.set_timesteps(steps)
    return torch.as_tensor(scheduler.sigmas)


def flow_oracle_problem(name: str, sigmas: Callable[[int], torch.Tensor], text: str) -> Problem:
    """The oracles' mixture in rectified-flow form (velocity outputs ``eps - x0``), the same
    start states, on a flow model's grid."""
    mixture = GaussianMixtureDenoiser.random(
        (4, 8, 8), components=8, noise_levels=FlowNoiseLevels(), prediction_type="flow", seed=0
    )
    steps = {"oracle-flux": (10, 28), "oracle-wan": (50,)}[name]
    return FlowProblem(
        name,
        mixture,
        oracle_start(),
        None,
        parallel_steps=steps,
        parallel_solvers=("ddim", "dpmpp_2m"),  # ddim on a flow grid: FLUX's FlowMatchEuler
        sigmas=sigmas,
        grid_text=text,
    )


PROBLEMS: dict[str, Callable[[bool], Problem]] = {
    "oracle": oracle_problem,
    "oracle-guided": guided_oracle_problem,
    "digits": digits_problem,
    "oracle-flux": lambda quick: flow_oracle_problem(
        "oracle-flux", flux_sigmas, f"FLUX.1's sigmas (linspace(1, 1/N, N), mu = {FLUX_MU})"
    ),
    "oracle-wan": lambda quick: flow_oracle_problem(
        "oracle-wan", wan_sigmas, "Wan's UniPC flow sigmas (shift 5)"
    ),
}
SHORT_GRID = 10
"""Flow grids up to this many steps also run DRiffusion with 1 and 2 serial warm-up steps."""
FLOW_OWN_SOLVER = {"oracle-flux": "ddim", "oracle-wan": "unipc"}
"""The solver each flow grid's pipeline steps with (FLUX: flow Euler, i.e. DDIM on a flow
grid; Wan: UniPC), whose drafting rows join the sweep where it is not a parallel solver."""


def reference(problem: Problem, points: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The reference solution and its two independent checks."""
    x_ref = problem.reference_solve(points)
    check = UniPC(problem.check_order)
    unipc = Serial(solver=check)(problem.model, problem.x, problem.reference_grid(points)).x
    half = problem.reference_solve(points // 2)
    checks = {
        "solver": "dpmpp_3m",
        "points": points,
        "grid": problem.reference_grid_text,
        f"diff_unipc{problem.check_order}_same_grid": relative_error(unipc, x_ref),
        "diff_dpmpp_3m_half_points": relative_error(half, x_ref),
    }
    return x_ref, checks


Task = tuple[str, int]  # a sampler's label (it parses back) and the grid's steps


def configurations(quick: bool, tol: float, problem: Problem | None = None) -> list[Task]:
    """Every row beyond the serial curves: each registered parallel sampler's configurations
    (at ``k`` rows a round, over each of the problem's parallel solvers, on each of its grids),
    then the DRiffusion studies (VP: the other multistep solvers, the solver's own drafts, spans
    fitted to a budget; flow: drafting over the pipeline's own solver)."""
    parallel_steps = PARALLEL_STEPS if problem is None else problem.parallel_steps
    solvers = PARALLEL_SOLVERS if problem is None else problem.parallel_solvers
    steps = parallel_steps[:2] if quick else parallel_steps  # quick VP: 25 and 50
    drafts = (2, 4) if quick else DRAFTS
    flow = isinstance(problem, FlowProblem)
    out: list[Task] = []
    for solver in solvers:
        for n in steps:
            for k in drafts:
                for sampler in parallel_configurations(k, n, solver=solver, tol=tol):
                    if flow and getattr(sampler, "rule", None) == "paper":
                        continue  # ParaDiGMS's paper rule measures against a VP posterior
                    out.append((repr(sampler), n))
    if flow:  # DRiffusion with a serial warm-up on the short grids (the drafts' worst start)
        for n in (n for n in steps if n <= SHORT_GRID):
            out += [(repr(Aggressive(drafts=k, warmup=w)), n) for k in drafts for w in (1, 2)]
    own = FLOW_OWN_SOLVER.get(problem.name, "") if flow and problem is not None else ""
    if own and own not in solvers:  # the pipeline's own solver under the step-parallel samplers
        for n in steps:
            for k in drafts:
                out.append((repr(Aggressive(drafts=k, solver=own)), n))
                out += [(repr(s), n) for s in ParaStep.configurations(k, n, solver=own)]
    if not quick and not flow:
        for solver in EXTRA_SOLVERS:  # the other multistep solvers under aggressive drafting
            for n in (50, 100):
                out += [(repr(Aggressive(drafts=k, solver=solver)), n) for k in (4, 8)]
        for solver in ("dpmpp_2m", "unipc"):  # the solver's own multistep drafts
            for n, k in ((50, 4), (100, 8), (100, 4)):
                out.append((repr(Aggressive(drafts=k, solver=solver, draft_rule="solver")), n))
        # shorter spans at equal rounds: N = 1 + (R - 1) k for the small budgets
        for budget, ks in ((8, (2, 3, 4)), (14, (2, 3))):
            for k in ks:
                n = 1 + (budget - 1) * k
                for solver in (*PARALLEL_SOLVERS, *EXTRA_SOLVERS):
                    if trailing_grid_exists(n):
                        out.append((repr(Aggressive(drafts=k, solver=solver)), n))
    unique = list(dict.fromkeys(out))  # a configuration shared by two sweeps runs once
    return unique


def trailing_grid_exists(steps: int) -> bool:
    """numpy's ``arange(T, 0, -T / N)`` yields ``N + 1`` points for some ``N`` (e.g. 201)."""
    timesteps = vp_timesteps(steps, spacing="trailing")
    return timesteps.numel() == steps and int(timesteps.min()) >= 0


WORKER: dict[str, Any] = {}


def init_worker(name: str, quick: bool, x_ref: torch.Tensor, threads: int) -> None:
    """A worker process: its own copy of the problem, one share of the cores."""
    torch.set_num_threads(threads)
    WORKER.update(problem=PROBLEMS[name](quick), x_ref=x_ref)


def solver_of(sampler: object) -> str:
    """The name of the solver a sampler runs over (``ddim`` by default)."""
    return get_solver(getattr(sampler, "solver", None)).name


def _run_task(task: Task, serial_x: torch.Tensor | None) -> tuple[dict[str, Any], torch.Tensor]:
    """One row: run the configuration, measure it against the reference and its serial run."""
    text, steps = task
    problem, x_ref = WORKER["problem"], WORKER["x_ref"]
    sampler = parse_sampler(text)
    with torch.inference_mode():
        result = sampler(problem.model, problem.x, problem.grid(steps))
    row = {
        "model": problem.name,
        "sampler": sampler_name(sampler),
        "solver": solver_of(sampler),
        "steps": steps,
        "rows": sampler_rows(sampler) or result.stats.rows,
        "rounds": result.stats.rounds,
        "evaluations": result.stats.evaluations,
        "err_ref": relative_error(result.x, x_ref),
        "rel_dev": 0.0 if serial_x is None else relative_error(result.x, serial_x),
        "setting": f"{text}, N={steps}",
    }
    return row, result.x


@contextlib.contextmanager
def worker_map(
    name: str, quick: bool, x_ref: torch.Tensor, workers: int, threads: int
) -> Iterator[Callable[..., Iterable[Any]]]:
    """``map`` over worker processes that each hold the problem ``name`` (``workers`` processes
    sharing ``threads``), or the builtin ``map`` in this process when ``workers == 1``."""
    if workers <= 1:
        init_worker(name, quick, x_ref, threads)
        yield map
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(name, quick, x_ref, max(1, threads // workers)),
    ) as pool:
        yield pool.map


def _map(
    mapper: Callable[..., Iterable[Any]], tasks: list[Task], serial: list[torch.Tensor | None]
) -> list[Any]:
    """Run the tasks through ``mapper``; print rows as they arrive."""
    out = []
    for row, x in mapper(_run_task, tasks, serial):
        print(" | ".join(format_cell(row[key]) for key in KEYS), flush=True)
        out.append((row, x))
    return out


def run_model(
    name: str, quick: bool, tol: float, ref_points: int, workers: int, threads: int
) -> dict[str, Any]:
    """The reference, then the serial runs, then every parallel configuration (rows in order)."""
    start = time.perf_counter()
    problem = PROBLEMS[name](quick)
    with torch.inference_mode():
        x_ref, checks = reference(problem, ref_points)
    print(
        f"{name}: reference {checks['solver']} on {ref_points} points; UniPC-"
        f"{problem.check_order} differs by "
        f"{checks[f'diff_unipc{problem.check_order}_same_grid']:.1e}, half the points by "
        f"{checks['diff_dpmpp_3m_half_points']:.1e}",
        flush=True,
    )
    configs = configurations(quick, tol, problem)
    serial_steps = (8, 14, 26, 50) if quick else SERIAL_STEPS
    curves = [(repr(Serial(solver=s)), n) for s in SERIAL_SOLVERS for n in serial_steps]
    # the serial runs the parallel rows deviate from, beyond the curves' step counts
    keys = [(solver_of(parse_sampler(text)), n) for text, n in configs]
    needed = sorted(set(keys) - {(solver_of(parse_sampler(t)), n) for t, n in curves})
    baselines = [(repr(Serial(solver=s)), n) for s, n in needed]
    with worker_map(name, quick, x_ref, workers, threads) as mapper:
        first = _map(mapper, curves + baselines, [None] * (len(curves) + len(baselines)))
        serial_x = {
            (solver_of(parse_sampler(t)), n): x
            for (t, n), (_, x) in zip(curves + baselines, first, strict=True)
        }
        rows = [row for row, _ in first[: len(curves)]]
        second = _map(mapper, configs, [serial_x[key] for key in keys])
        rows += [row for row, _ in second]
    return {
        "reference": checks,
        "rows": rows,
        "summary": summarise(rows),
        "wall_s": time.perf_counter() - start,
    }


SUMMARY_COLUMNS = (
    "rounds",
    "best_serial",
    "best_serial_err_ref",
    "best_parallel",
    "best_parallel_rounds",
    "best_parallel_err_ref",
    "ratio",
)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round budget: the best serial row and the best parallel row within it."""
    out = []
    for budget in BUDGETS:
        within = [r for r in rows if r["rounds"] <= budget]
        serial = [r for r in within if r["sampler"] == "serial"]
        parallel = [r for r in within if r["sampler"] != "serial"]
        if not serial or not parallel:
            continue
        best_serial = min(serial, key=lambda r: r["err_ref"])
        best_parallel = min(parallel, key=lambda r: r["err_ref"])
        out.append(
            {
                "rounds": budget,
                "best_serial": best_serial["setting"],
                "best_serial_err_ref": best_serial["err_ref"],
                "best_parallel": best_parallel["setting"],
                "best_parallel_rounds": best_parallel["rounds"],
                "best_parallel_err_ref": best_parallel["err_ref"],
                "ratio": best_parallel["err_ref"] / best_serial["err_ref"],
            }
        )
    return out


MARKER_CYCLE = ("o", "s", "^", "v", "D", "P", "X", "h", "<", ">")


def markers(rows: list[dict[str, Any]]) -> dict[str, str]:
    """A marker per parallel sampler family in the rows, in the order they appear."""
    families = dict.fromkeys(r["sampler"] for r in rows if r["sampler"] != "serial")
    return {f: MARKER_CYCLE[i % len(MARKER_CYCLE)] for i, f in enumerate(families)}


COLORS = {
    "ddim": "tab:blue",
    "dpmpp_2m": "tab:orange",
    "dpmpp_3m": "tab:green",
    "unipc": "tab:red",
    "plms": "tab:purple",
}


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    """err_ref against serial rounds, log-log: a line per solver's serial curve, points for the
    parallel samplers (marker: sampler, colour: solver), one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    marks = markers([r for result in results.values() for r in result["rows"]])
    fig, axes = plt.subplots(1, len(models), figsize=(6.2 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = results[model]["rows"]
        for solver in SERIAL_SOLVERS:
            points = sorted(
                (r["rounds"], r["err_ref"])
                for r in rows
                if r["sampler"] == "serial" and r["solver"] == solver
            )
            if points:
                ax.plot(*zip(*points, strict=True), color=COLORS[solver], lw=2, label=solver)
        for sampler, marker in marks.items():
            for solver, color in COLORS.items():
                points = [
                    (r["rounds"], r["err_ref"])
                    for r in rows
                    if r["sampler"] == sampler and r["solver"] == solver
                ]
                if points:
                    ax.scatter(
                        *zip(*points, strict=True),
                        marker=marker,
                        facecolors="none",
                        edgecolors=color,
                        s=28,
                        alpha=0.8,
                    )
        lines = []
        for s in results[model]["summary"]:
            ax.axvline(s["rounds"], color="gray", lw=0.6, ls=":")
            best = [r for r in rows if r["setting"] in (s["best_serial"], s["best_parallel"])]
            for r in best:
                marker = "x" if r["sampler"] == "serial" else "*"
                ax.scatter([r["rounds"]], [r["err_ref"]], marker=marker, color="k", s=70, zorder=5)
            verdict = "wins" if s["ratio"] < 1 else "loses"
            lines.append(f"<= {s['rounds']} rounds: parallel {verdict}, {s['ratio']:.2f}x")
        ax.text(
            0.98,
            0.02,
            "best parallel (*) / best serial (x)\n" + "\n".join(lines),
            transform=ax.transAxes,
            fontsize=8,
            va="bottom",
            ha="right",
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("serial rounds (latency)")
        ax.set_ylabel("err_ref = ||x - x_ref|| / ||x_ref||")
        ax.set_title(f"{model}: lines serial, markers parallel")
        ax.grid(True, which="both", alpha=0.25)
    handles = [
        plt.Line2D([], [], color="k", marker=m, ls="", mfc="none", label=s)
        for s, m in marks.items()
    ]
    first = axes[0][0]
    first.legend(handles=first.get_legend_handles_labels()[0] + handles, fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def add_problem_args(parser: argparse.ArgumentParser, tol_help: str) -> None:
    """The flags of a run over the problems: ``--models --quick --tol --ref-points --threads
    --workers`` (shared with ``benchmarks/compare.py``)."""
    parser.add_argument("--models", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--quick", action="store_true", help="fewer settings (smoke run)")
    parser.add_argument("--tol", type=cli.nonnegative_float, default=1e-2, help=tol_help)
    parser.add_argument(
        "--ref-points", type=cli.positive_int, default=500, help="reference grid points (>= 20)"
    )
    parser.add_argument("--threads", type=cli.positive_int, default=2, help="torch threads in all")
    parser.add_argument(
        "--workers", type=cli.positive_int, default=2, help="processes sharing the threads"
    )


def check_problem_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a reference grid too coarse to be one; set this process's threads."""
    if args.ref_points < 20:
        parser.error("--ref-points must be >= 20")
    torch.set_num_threads(args.threads)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_problem_args(parser, "the tolerance of the samplers that take one (relative to sigma)")
    parser.add_argument("--json", type=Path, default=Path("outputs/frontier.json"))
    parser.add_argument("--plot", type=Path, default=Path("outputs/frontier.png"))
    args = parser.parse_args(argv)
    check_problem_args(parser, args)
    print(" | ".join(KEYS), flush=True)
    results = {
        name: run_model(name, args.quick, args.tol, args.ref_points, args.workers, args.threads)
        for name in args.models
    }
    for name, result in results.items():
        print(f"\n{name}: best parallel vs best serial at equal rounds ({result['wall_s']:.0f} s)")
        print(markdown_table(result["summary"], SUMMARY_COLUMNS))
    write_json(args.json, results)
    plot(results, args.plot)
    print(f"wrote {args.json} and {args.plot}")
    return results


if __name__ == "__main__":
    main()
