"""Write ``docs/results.md`` and ``docs/comparison.md`` from the benchmark JSON committed under
``docs/results/``.

    python benchmarks/results_page.py           # rewrite both pages
    python benchmarks/results_page.py --check   # exit 1 when a page is out of date

Every number on the page comes from those files; the page only adds how each was measured (the
command, the machine). To refresh a table, rerun its command (below, and on the page), then this
script. ``tests/test_benchmark_common.py`` fails when the page and the JSON disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as `python benchmarks/results_page.py`: the repo root holds it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DRAFT_FAMILIES, families, title, variants
from driffusion.io import format_cell, markdown_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "results.md"
COMPARISON = ROOT / "docs" / "comparison.md"

MACHINE = (
    "a virtual machine with 2 AMD EPYC CPU cores, 23 GiB of memory and no GPU; torch 2.14.1 "
    "(CPU), lightning 2.6.6. Rounds, evaluations and errors do not depend on the machine; wall "
    "times do, and carry the noise of a virtual machine shared with other work."
)


@dataclass(frozen=True)
class Source:
    """One committed JSON file, the command that wrote it, what it ran on (``about``, markdown)
    and how its section is rendered."""

    file: str
    title: str
    command: str
    about: str
    render: Callable[[Any], str]


def rounds_section(rows: list[dict[str, Any]]) -> str:
    """One table per grid size."""
    columns = ["sampler", "rows", "rounds", "evaluations", "speedup_ideal"]
    columns += ["max_abs_dev", "rel_dev", "setting"]
    parts = [
        "Rounds are the latency unit: with one device per evaluation in a round, wall time is "
        "proportional to rounds (`speedup_ideal` = serial rounds / rounds). The denoiser is the "
        "exact Gaussian-mixture oracle, a batch of 4 samples of 4x8x8, on the trailing DDIM grid. "
        "Every sampler runs at its own defaults and in its configurations at 2, 3 and 4 rows a "
        "round (drafts, blocks, window or cores; for `serial_reduced`, the rounds of aggressive "
        "DRiffusion with that many drafts); `rows` is the most rows a round evaluated, "
        "`max_abs_dev` and `rel_dev` the deviation from the serial sample, `setting` the sampler "
        "value that ran (tolerances relative to sigma, except ParaDiGMS' `rule='paper'`)."
    ]
    for steps in sorted({row["steps"] for row in rows}):
        table = markdown_table([row for row in rows if row["steps"] == steps], columns)
        parts.append(f"### {steps} steps\n\n{table}")
    return "\n\n".join(parts)


def speedup_section(rows: list[dict[str, Any]]) -> str:
    """The rows and a line on the serial baseline."""
    serial = rows[0]
    devices = max(row["devices"] for row in rows)
    all_cores = serial.get("serial_all_cores_wall_s")
    also = f"; serial on every core: {format_cell(all_cores)} s" if all_cores is not None else ""
    intro = (
        f"Serial sampling ({serial['steps']} steps) took {format_cell(serial['wall_s'])} s "
        f"({format_cell(serial['wall_s'] / serial['steps'] * 1000)} ms a step) on one process "
        f"with that process's share of the cores{also}. Each parallel sampler ran on "
        f"{devices} processes; `wall_s` is the median over the repeats of the slowest process, "
        "`speedup = serial_wall_s / wall_s`, `speedup_ideal = N / sum_r ceil(rows_r / devices)` "
        "(free communication) and `efficiency = speedup / speedup_ideal`."
    )
    split = [row for row in rows if row.get("guidance_devices", 1) == 2]
    split_serial = [row for row in split if row["sampler"] == "serial"]
    for row in split_serial:  # the exact baseline a user with a guided model already has
        ratio = row["batched_cost_ratio"]
        intro += (
            f"\n\nSerial with the guidance branches split over the {row['devices']} processes "
            "(exact up to float32 rounding: max |x - x_serial| "
            f"{format_cell(row['max_abs_dev'])}) ran "
            f"{format_cell(row['speedup'])}x faster than serial on one; one guided row batched "
            f"({row['branches']}B) cost {format_cell(ratio)} x one branch (B) in the same run, so "
            f"the split reached {format_cell(row['speedup'] / ratio)} of what that ratio allows."
        )
    columns = ["sampler", "devices", "rounds", "evaluations", "wall_s", "speedup"]
    columns += ["speedup_ideal", "efficiency"]
    columns += ["guidance_devices"] if split else []
    return f"{intro}\n\n{markdown_table(rows, [*columns, 'setting'])}"


def duration(seconds: float) -> str:
    """``"8 s"`` or ``"7.6 min"``."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


FRONTIER_COLUMNS = (
    "rounds at most",
    "best serial",
    "best parallel",
    "ratio",
    "parallel wins",
    "worst parallel",
)


def frontier_section(results: dict[str, dict[str, Any]]) -> str:
    """Per model: the reference checks and, per round budget, best serial against best parallel
    and how many parallel configurations beat the best serial one."""
    every = [row for result in results.values() for row in result["rows"]]

    def names(sampler: str) -> str:
        return ", ".join(sorted({f"`{r['solver']}`" for r in every if r["sampler"] == sampler}))

    serial_steps = [r["steps"] for r in every if r["sampler"] == "serial"]
    parallel = list(dict.fromkeys(r["sampler"] for r in every if r["sampler"] != "serial"))
    families = ", ".join(f"{title(f)} (over {names(f)})" for f in parallel)
    parts = [
        "Error to a reference solution of the sampling ODE (`err_ref = ||x - x_ref|| / "
        "||x_ref||`) within a budget of serial rounds (latency): the best serial configuration "
        f"({names('serial')} at {min(serial_steps)}-{max(serial_steps)} steps) against the best "
        f"parallel one, among every configuration of {families} with N steps and 2, 4 or 8 rows "
        "a round (each sampler's own configurations: see `setting`). `ratio` = best parallel / "
        "best serial error (below 1: parallel wins); `parallel wins` counts the parallel "
        "configurations within the budget that beat the best serial one, `worst parallel` is "
        "the one furthest from the solution. Every row is in the JSON."
    ]
    for model, result in results.items():
        rows, checks = result["rows"], result["reference"]
        summary = []
        for s in result["summary"]:
            budget = s["rounds"]
            within = [r for r in rows if r["sampler"] != "serial" and r["rounds"] <= budget]
            wins = sum(r["err_ref"] < s["best_serial_err_ref"] for r in within)
            worst = max(within, key=lambda r: r["err_ref"])
            summary.append(
                {
                    "rounds at most": budget,
                    "best serial": f"{s['best_serial']}: {format_cell(s['best_serial_err_ref'])}",
                    "best parallel": (
                        f"{s['best_parallel']} ({s['best_parallel_rounds']} rounds): "
                        f"{format_cell(s['best_parallel_err_ref'])}"
                    ),
                    "ratio": s["ratio"],
                    "parallel wins": f"{wins} of {len(within)}",
                    "worst parallel": f"{worst['setting']}: {format_cell(worst['err_ref'])}",
                }
            )
        table = markdown_table(summary, FRONTIER_COLUMNS)
        check = next(key for key in checks if key.startswith("diff_unipc"))
        order = check.removeprefix("diff_unipc").split("_")[0]
        parts.append(
            f"### {model}\n\n"
            f"{len(rows)} configurations in {duration(result['wall_s'])}. Reference: "
            f"{checks['solver']} on {checks['points']} points ({checks['grid']}); UniPC-{order} "
            f"on the same grid differs from it by {format_cell(checks[check])}, "
            f"{checks['solver']} on {checks['points'] // 2} points by "
            f"{format_cell(checks['diff_dpmpp_3m_half_points'])}."
            f"\n\n{table}"
        )
    return "\n\n".join(parts)


def drafts_verdict(model: str, result: dict[str, Any]) -> str:
    """One sentence from a model's summary: at which round budgets the best drafting
    configuration (DRiffusion, ParaStep) beats the best serial solver, and where it does not."""
    wins, losses = [], []
    for s in result["summary"]:
        within = [
            r for r in result["rows"] if r["sampler"] in DRAFTING and r["rounds"] <= s["rounds"]
        ]
        if not within:
            continue
        best = min(within, key=lambda r: r["err_ref"])
        ratio = best["err_ref"] / s["best_serial_err_ref"]
        entry = f"{s['rounds']} rounds ({format_cell(ratio)}x, {best['setting']})"
        (wins if ratio < 1 else losses).append(entry)
    text = f"On `{model}` drafts beat the best serial solver within "
    text += _listed(wins) if wins else "no budget"
    if losses:
        text += f", and do not within {_listed(losses)}"
    return text + " (the best drafting configuration's error over the best serial one's)."


DRAFTING = ("aggressive", "conservative", "parastep")
"""The samplers that draft states (DRiffusion's modes and ParaStep), for the flow verdicts."""


def flow_frontier_section(results: dict[str, dict[str, Any]]) -> str:
    """The frontier on the flow grids, the sentence of where drafts win on each, and ParaStep
    beside aggressive DRiffusion at equal devices on FLUX's grid (10 and 28 steps)."""
    verdicts = [drafts_verdict(model, result) for model, result in results.items()]
    rows = results.get("oracle-flux", {}).get("rows", [])
    beside = sorted(
        (
            r
            for r in rows
            if r["sampler"] in ("aggressive", "parastep")
            and r["solver"] == "ddim"
            and r["rows"] in (2, 4)
        ),
        key=lambda r: (r["steps"], r["rows"], r["sampler"], r["rounds"]),
    )
    table = markdown_table(beside, ("setting", "rows", "rounds", "err_ref", "rel_dev"))
    return (
        frontier_section(results)
        + "\n\n### Where drafts win on flow models\n\n"
        + "\n\n".join(verdicts)
        + "\n\n### ParaStep beside DRiffusion on FLUX's grid\n\n"
        "Over FLUX's own solver (flow Euler: `ddim` on a flow grid), at 2 and 4 devices "
        "(`rows`), with DRiffusion's serial warm-up (`warmup`) on the 10-step grid; `rel_dev` "
        "is the distance to the serial sample on the same grid.\n\n" + table
    )


def serve_section(result: dict[str, Any]) -> str:
    """The load table, one-group and replica rows side by side, and what it says."""
    rows = result["rows"]
    columns = ["layout", "concurrency", "requests", "errors", "exact", "throughput_rps"]
    columns += ["p50_s", "p95_s", "rounds", "sampler"]
    layouts = list(dict.fromkeys(row["layout"] for row in rows))
    lowest = min(row["concurrency"] for row in rows)
    highest = max(row["concurrency"] for row in rows)

    def at(layout: str, concurrency: int) -> dict[str, Any]:
        return next(r for r in rows if r["layout"] == layout and r["concurrency"] == concurrency)

    lines = []
    if len(layouts) == 2:
        group, replicas = layouts
        first, second = at(group, lowest), at(replicas, lowest)
        busy, busier = at(group, highest), at(replicas, highest)
        lines.append(
            f"At concurrency {lowest}, {group} answers in {format_cell(first['p50_s'])} s "
            f"(p50, {format_cell(first['rounds'])} rounds) against "
            f"{format_cell(second['p50_s'])} s for {replicas} "
            f"({format_cell(second['rounds'])} rounds); at concurrency {highest}, {replicas} "
            f"serve {format_cell(busier['throughput_rps'])} requests/s against "
            f"{format_cell(busy['throughput_rps'])}."
        )
    answered = sum(r["exact"] for r in rows)
    asked = sum(r["requests"] for r in rows)
    lines.append(
        f"{answered} of {asked} requests were answered once with the image their seed determines."
    )
    return " ".join(lines) + "\n\n" + markdown_table(rows, columns)


SOURCES = (
    Source(
        "rounds.json",
        "Rounds on the exact oracle",
        "python benchmarks/rounds.py --json docs/results/rounds.json",
        "No devices: rounds and deviations do not depend on the machine.",
        rounds_section,
    ),
    Source(
        "speedup_cpu2.json",
        "Wall-clock speedup on 2 CPU processes: synthetic denoiser",
        "fabric run --accelerator cpu --devices 2 --strategy ddp benchmarks/speedup.py "
        "--eval-ms 100 --steps 50 --json docs/results/speedup_cpu2.json",
        "The denoiser is a stack of 3x3 convolutions with two guidance branches of equal cost, "
        "its depth calibrated so that one guided evaluation costs about 100 ms; two processes "
        "of one thread each.",
        speedup_section,
    ),
    Source(
        "speedup_digits_cpu2.json",
        "Wall-clock speedup on 2 CPU processes: the digits network",
        "fabric run --accelerator cpu --devices 2 --strategy ddp benchmarks/speedup.py "
        "--model digits --steps 20 --json docs/results/speedup_digits_cpu2.json",
        "The embedded digits network, a batch of 50 (the digits recipe's), labels cycling "
        "through the digits, guidance 2; two processes of one thread each.",
        speedup_section,
    ),
    Source(
        "frontier.json",
        "The frontier against the exact solution",
        "OMP_NUM_THREADS=1 python benchmarks/frontier.py --json docs/results/frontier.json "
        "--plot docs/img/frontier.png",
        "Two worker processes of one thread each; the plot is the figure below.\n\n"
        "![The frontier, measured on a 2-core CPU](img/frontier.png)",
        frontier_section,
    ),
    Source(
        "frontier_flow.json",
        "The frontier on flow models' grids",
        "OMP_NUM_THREADS=1 python benchmarks/frontier.py --models oracle-flux oracle-wan "
        "--ref-points 2000 --json docs/results/frontier_flow.json "
        "--plot docs/img/frontier_flow.png",
        "The oracle's mixture in rectified-flow form (velocity outputs), the same start states, on "
        "FLUX.1's grid (`linspace(1, 1/N, N)` shifted with the `mu` of a 1024^2 image, as its "
        "pipeline passes them) and on Wan's (UniPC over flow sigmas, shift 5); the parallel rows "
        "at FLUX's 10 and 28 steps and Wan's 50, over `ddim` (FLUX's flow Euler) and `dpmpp_2m`, "
        "plus DRiffusion and ParaStep over Wan's UniPC. Two worker processes of one thread "
        "each.\n\n![The frontier on flow grids](img/frontier_flow.png)",
        flow_frontier_section,
    ),
    Source(
        "serve_load.json",
        "The server under load",
        "python benchmarks/serve_load.py --json docs/results/serve_load.json",
        "The digits model served on 2 CPU processes of one thread each, as one draft group of 2 "
        "(every request 2 drafts a round) and as 2 replicas (one draft each), 60 requests per "
        "row from 1, 2 and 4 clients on loopback, 20 steps; latency from send to answer. See "
        "[Serving](serve.md).",
        serve_section,
    ),
)


def render(results: Path = RESULTS) -> str:
    """The page, from the JSON files in ``results``."""
    parts = [
        "# Results",
        "<!-- Generated by `python benchmarks/results_page.py` from docs/results/*.json: "
        "do not edit by hand. -->",
        "Measured results of the [benchmarks](benchmarks.md). Every table below is generated "
        "from JSON committed in `docs/results/` (a test fails when they disagree); each section "
        f"says the command that wrote its file. All were measured on {MACHINE}",
    ]
    for source in SOURCES:
        data = json.loads((results / source.file).read_text())
        parts.append(
            f"## {source.title}\n\n"
            f"[`docs/results/{source.file}`](results/{source.file}), written by\n\n"
            f"```bash\n{source.command}\n```\n\n"
            f"{source.about}\n\n{source.render(data)}"
        )
    return "\n\n".join(parts) + "\n"


COMPARISON_COMMAND = (
    "OMP_NUM_THREADS=1 python benchmarks/compare.py --json docs/results/compare.json"
)
SERIAL_TITLE = "serial, 1 device (best of dpmpp_2m, unipc)"
SPLIT_SERIAL_TITLE = "serial, branches split over 2 devices (exact; best of dpmpp_2m, unipc)"
Cells = dict[tuple[int, int, str, int], dict[str, Any] | None]


def guided(result: dict[str, Any]) -> bool:
    """Whether the model's evaluations have branches to split (``branches >= 2``)."""
    return result.get("branches", 1) > 1


def variant_titles(result: dict[str, Any]) -> dict[tuple[str, int], str]:
    """The ``(family, guidance_devices)`` of the comparison in the order they ran, each titled
    with its solvers (and, on a guided model, where its branches run)."""
    rows = result["rows"]
    out = {}
    for family, guidance in variants(rows):
        if family == "serial":
            out[family, guidance] = SPLIT_SERIAL_TITLE if guidance == 2 else SERIAL_TITLE
            continue
        solvers = sorted({_solver(r["setting"]) for r in rows if r["family"] == family})
        name = f"{title(family)} ({' or '.join(solvers)})"
        if guided(result):
            name += ", branches split" if guidance == 2 else ", branches together"
        out[family, guidance] = name
    return out


def short_title(family: str, guidance: int, guided_model: bool) -> str:
    """A family in a sentence: ``"the exact split alone"``, ``"DRiffusion aggressive with the
    branches split"``..."""
    if family == "serial":
        if not guided_model:
            return "serial sampling"
        return "the exact split alone" if guidance == 2 else "serial sampling on one device"
    if not guided_model:
        return title(family)
    return f"{title(family)} with the branches {'split' if guidance == 2 else 'together'}"


def _solver(setting: str) -> str:
    """The solver named in a label (``ddim`` when it names none)."""
    marker = "solver='"
    return setting.split(marker, 1)[1].split("'", 1)[0] if marker in setting else "ddim"


def _cell(best: dict[str, Any] | None) -> str:
    """``err_ref (evaluations, N)`` of a family's best row within a budget, or a dash."""
    if best is None:
        return "-"
    return f"{format_cell(best['err_ref'])} ({best['evaluations']} ev, N={best['steps']})"


def _listed(items: list[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    head = ", ".join(items[:-1])
    return f"{head + ' and ' if head else ''}{items[-1]}"


def _within(budgets: list[int], ratios: list[float] | None = None) -> str:
    """``"within 8, 12 and 17 passes"`` (with ``ratios``: ``"... (0.5x, 0.4x and 0.3x its
    error)"``), or ``"at no budget"``."""
    if not budgets:
        return "at no budget"
    text = f"within {_listed([str(b) for b in budgets])} passes"
    if ratios:
        text += f" ({_listed([f'{format_cell(r)}x' for r in ratios])} its error)"
    return text


def best_cells(result: dict[str, Any]) -> Cells:
    """``(devices, budget, family, guidance_devices) -> best row`` (``None``: none fits)."""
    return {
        (e["devices"], e["budget"], e["family"], e.get("guidance_devices", 1)): e["best"]
        for e in result["best"]
    }


def best_of(
    cells: Cells, devices: int, budget: int, families: list[str], guidance: tuple[int, ...]
) -> dict[str, Any] | None:
    """The least-error row among ``families`` x ``guidance`` at ``devices`` and ``budget``."""
    found = [
        row
        for family in families
        for g in guidance
        if (row := cells.get((devices, budget, family, g))) is not None
    ]
    return min(found, key=lambda r: r["err_ref"]) if found else None


def _grid(result: dict[str, Any]) -> tuple[list[int], list[int]]:
    """The device counts and budgets of a model's best rows."""
    best = result["best"]
    return sorted({e["devices"] for e in best}), sorted({e["budget"] for e in best})


def _parallel(result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A model's parallel families: the drafts, then the others."""
    parallel = [f for f in families(result["rows"]) if f != "serial"]
    drafts = [f for f in parallel if f in DRAFT_FAMILIES]
    return drafts, [f for f in parallel if f not in DRAFT_FAMILIES]


def split_verdicts(results: dict[str, Any]) -> list[str]:
    """One plain line per guided model and device count, against the exact branch split alone
    (serial, branches split): the budgets where drafts stacked on the split beat it, where drafts
    with the branches together beat it, where only another sampler does, and where nothing
    does."""
    lines = []
    for model, result in results.items():
        if not guided(result):
            continue
        cells = best_cells(result)
        drafts, others = _parallel(result)
        devices, budgets = _grid(result)
        for d in devices:
            stacked: dict[int, float] = {}
            alone: dict[int, float] = {}
            other: list[str] = []
            nothing: list[int] = []
            for budget in budgets:
                exact = cells.get((d, budget, "serial", 2))
                if exact is None:
                    continue
                base = exact["err_ref"]
                for found, guidance in ((stacked, (2,)), (alone, (1,))):
                    row = best_of(cells, d, budget, drafts, guidance)
                    if row is not None and row["err_ref"] < base:
                        found[budget] = row["err_ref"] / base
                if budget in stacked or budget in alone:
                    continue
                rival = best_of(cells, d, budget, others, (1, 2))
                if rival is not None and rival["err_ref"] < base:
                    name = short_title(rival["family"], rival["guidance_devices"], True)
                    ratio = format_cell(rival["err_ref"] / base)
                    other.append(f"{name} within {budget} passes ({ratio}x its error)")
                else:
                    nothing.append(budget)
            only = f"; only another sampler beats it: {'; '.join(other)}" if other else ""
            last = f"nothing beats it {_within(nothing)}" if nothing else "something beats it"
            lines.append(
                f"- **{model}, {d} devices:** drafts stacked on the branch split beat the exact "
                f"split alone {_within(list(stacked), list(stacked.values()))}; drafts with the "
                f"branches together beat it {_within(list(alone), list(alone.values()))}{only}; "
                f"{last}{'' if nothing else ' within every budget'}."
            )
    return lines


def winners_at(results: dict[str, Any], devices: int) -> list[str]:
    """One line per guided model: what has the least error at ``devices`` devices, per budget
    (budgets with the same winner together)."""
    lines = []
    for model, result in results.items():
        if not guided(result):
            continue
        cells = best_cells(result)
        winners: dict[str, list[int]] = {}
        for budget in _grid(result)[1]:
            found = [
                row
                for (d, b, _, _), row in cells.items()
                if (d, b) == (devices, budget) and row is not None
            ]
            if found:
                best = min(found, key=lambda r: r["err_ref"])
                winners.setdefault(winner_title(cells, devices, budget, best), []).append(budget)
        if winners:
            said = "; ".join(f"{name} {_within(b)}" for name, b in winners.items())
            lines.append(f"- **{model}:** {said}.")
    return lines


def winner_title(cells: Cells, devices: int, budget: int, row: dict[str, Any]) -> str:
    """How a sentence names the best row at ``devices`` and ``budget``: its family and where its
    branches run (``"together or split"`` when the split reaches the same error)."""
    name = short_title(row["family"], row["guidance_devices"], True)
    split = cells.get((devices, budget, row["family"], 2))
    if row["guidance_devices"] == 1 and split and split["err_ref"] == row["err_ref"]:
        name += " or split"
    return name


def _versus(row: dict[str, Any] | None, base: float) -> str:
    """``err_ref (ratio to the exact split; setting, N)``, or a dash."""
    if row is None:
        return "-"
    ratio = format_cell(row["err_ref"] / base)
    return f"{format_cell(row['err_ref'])} ({ratio}x; {row['setting']}, N={row['steps']})"


SPLIT_COLUMNS = (
    "model",
    "devices",
    "passes at most",
    "exact split alone",
    "drafts x split",
    "drafts, branches together",
    "best of all",
)


def split_table(results: dict[str, Any]) -> str:
    """Per guided model, device count and budget: the exact split alone against the best drafts
    with the branches split, with them together, and the best configuration of all."""
    table = []
    for model, result in results.items():
        if not guided(result):
            continue
        cells = best_cells(result)
        drafts, _ = _parallel(result)
        everything = families(result["rows"])
        devices, budgets = _grid(result)
        for d in devices:
            for budget in budgets:
                exact = cells.get((d, budget, "serial", 2))
                if exact is None:
                    continue
                base = exact["err_ref"]
                top = best_of(cells, d, budget, everything, (1, 2))
                assert top is not None  # the exact split itself is among them
                name = winner_title(cells, d, budget, top)
                table.append(
                    {
                        "model": model,
                        "devices": d,
                        "passes at most": budget,
                        "exact split alone": (
                            f"{format_cell(base)} ({exact['setting']}, N={exact['steps']})"
                        ),
                        "drafts x split": _versus(best_of(cells, d, budget, drafts, (2,)), base),
                        "drafts, branches together": _versus(
                            best_of(cells, d, budget, drafts, (1,)), base
                        ),
                        "best of all": f"{name}: {format_cell(top['err_ref'] / base)}x",
                    }
                )
    return markdown_table(table, SPLIT_COLUMNS)


def comparison_verdicts(results: dict[str, Any]) -> list[str]:
    """One plain line per model and device count: the budgets where CHORDS is the best parallel
    sampler, by how much the best one beats it elsewhere, and where it beats its own paper's
    baselines (SRDS, ParaDiGMS) and serial sampling on one device (each family at its better
    ``guidance_devices``)."""
    lines = []
    for model, result in results.items():
        cells = best_cells(result)
        parallel = [f for f in families(result["rows"]) if f != "serial"]
        devices, budgets = _grid(result)
        for d in devices:
            wins: list[int] = []
            over_baselines: list[int] = []
            over_serial: list[int] = []
            behind: list[str] = []
            for budget in budgets:
                cell = {f: best_of(cells, d, budget, [f], (1, 2)) for f in parallel}
                chords = cell.get("chords")
                rivals = {f: row for f, row in cell.items() if f != "chords" and row}
                if chords is None or not rivals:
                    continue
                leader = min(rivals, key=lambda f: rivals[f]["err_ref"])
                ratio = chords["err_ref"] / rivals[leader]["err_ref"]
                if ratio < 1:
                    wins.append(budget)
                else:
                    behind.append(f"{format_cell(ratio)}x by {title(leader)} within {budget}")
                baselines = [cell[f]["err_ref"] for f in ("srds", "paradigms") if cell.get(f)]
                if baselines and chords["err_ref"] < min(baselines):
                    over_baselines.append(budget)
                serial = cells.get((d, budget, "serial", 1))
                if serial and chords["err_ref"] < serial["err_ref"]:
                    over_serial.append(budget)
            won = (
                f"the best parallel sampler {_within(wins)}"
                if wins
                else "never the best parallel sampler"
            )
            lost = f" (beaten {'; '.join(behind)})" if behind else ""
            lines.append(
                f"- **{model}, {d} devices:** CHORDS is {won}{lost}. It beats both SRDS and "
                f"ParaDiGMS {_within(over_baselines)}, and serial sampling on one device "
                f"{_within(over_serial)}."
            )
    return lines


def comparison_section(results: dict[str, Any]) -> str:
    """Per model and device count: the best error within each budget of passes, by family and
    ``guidance_devices``, then every configuration first placed on that many devices at N = 50."""
    parts = []
    for model, result in results.items():
        checks = result["reference"]
        branches = result.get("branches", 1)
        evaluation = (
            f"each evaluation is {branches} branches (a pass is one branch of one row)"
            if branches > 1
            else "one branch an evaluation (passes are network calls)"
        )
        parts.append(
            f"## {model}\n\n{len(result['rows'])} rows in {duration(result['wall_s'])}; "
            f"{evaluation}; reference {checks['solver']} on {checks['points']} points, within "
            f"{format_cell(checks['diff_unipc3_same_grid'])} of UniPC-3 on the same grid and "
            f"{format_cell(checks['diff_dpmpp_3m_half_points'])} of {checks['solver']} on "
            f"{checks['points'] // 2}. Convergent samplers at `tol` {format(result['tol'], 'g')}."
        )
        cells = best_cells(result)
        devices, budgets = _grid(result)
        for d in devices:
            table = []
            for (family, guidance), name in variant_titles(result).items():
                row: dict[str, Any] = {"sampler": name}
                for budget in budgets:
                    row[f"<= {budget} passes"] = _cell(cells.get((d, budget, family, guidance)))
                table.append(row)
            columns = ["sampler", *(f"<= {b} passes" for b in budgets)]
            at_50 = [r for r in result["rows"] if r["devices"] == d and r["steps"] == 50]
            listed = ["setting", "rounds", "passes", "evaluations", "err_ref"]
            if branches > 1:
                listed.insert(1, "guidance_devices")
            parts.append(
                f"### {d} devices\n\nBest `err_ref` within the budget of passes (evaluations, "
                f"grid size N):\n\n{markdown_table(table, columns)}\n\n"
                f"Every configuration at N = 50 first placed on {d} devices (`passes` = the "
                f"latency on {d} devices; on fewer devices it takes more):\n\n"
                + markdown_table(at_50, listed)
            )
    return "\n\n".join(parts)


def render_comparison(results: Path = RESULTS) -> str:
    """The comparison page, from ``compare.json``."""
    data = json.loads((results / "compare.json").read_text())
    guided_models = [model for model, result in data.items() if guided(result)]
    parts = [
        "# DRiffusion, CHORDS and the other parallel samplers",
        "<!-- Generated by `python benchmarks/results_page.py` from docs/results/compare.json: "
        "do not edit by hand. -->",
        "What a user with `D` devices and a latency budget gets from each parallel sampler: at "
        "equal devices (`D` = 2, 4, 8) and within an equal budget of *passes* (one branch of one "
        "row: the latency unit), the error to a reference solve of the sampling ODE (`err_ref`, "
        "the [frontier](results.md#the-frontier-against-the-exact-solution)'s measure) and the "
        "evaluations spent. A guided model evaluates 2 branches (unconditional and conditional) "
        "per row: a round of `K` rows takes `2 ceil(K / D)` passes with a row's branches on one "
        "device (`guidance_devices=1`) and `ceil(2K / D)` with the branches split over the "
        "devices (`guidance_devices=2`, exact: the sample does not change), so each "
        "configuration ran once and is counted both ways. Serial sampling takes `2N` passes on "
        "one device and `N` with the branches split over 2 devices: the exact split users "
        "already have, the baseline to beat. Each sampler runs on a sweep of grid sizes N with "
        "2, 4 or 8 rows a round; on `D` devices a budget keeps each family's configuration "
        "closest to the solution, among those for at most `D` devices (with 8 devices one may "
        "run 2 drafts), whose passes fit, for each `guidance_devices`. Every sampler runs over "
        "`dpmpp_2m` in its own configurations ([`Sampler.configurations`]"
        "(api/core.md#driffusion.core.samplers.base.Sampler.configurations)): DRiffusion "
        "and Picard-DRiffusion with `K` drafts or window; ParaDiGMS with a window of `K` under "
        "the project's rule and under the authors' (`rule='paper'`, at their `tol` 0.1); SRDS "
        "with `K` blocks, pipelined, with one, two or all Parareal iterations; CHORDS with the "
        "default start lists ([`default_starts`]"
        "(api/core.md#driffusion.core.samplers.chords.default_starts): `0-25`, `0-12-24-36` "
        "and the official `0-2-4-8-16-24-32-40` at N = 50) returning the first or second "
        "core, and evenly spaced lists whose fastest core gets two or three rectification "
        "windows (`0-10-20-30`, `0-8-16-24` at N = 50), also over `ddim`. DRiffusion's drafts "
        "also run on the grids whose rounds fill a budget (`N = 1 + (R - 1) K`).",
        f"[`docs/results/compare.json`](results/compare.json), written by\n\n"
        f"```bash\n{COMPARISON_COMMAND}\n```\n\non {MACHINE}",
    ]
    if guided_models:
        parts += [
            "## Drafts and the exact branch split",
            f"On the guided models ({_listed(guided_models)}), against serial sampling with "
            "the branches split (the exact split alone), at the same passes; *drafts* are "
            "DRiffusion aggressive or conservative, whichever is closer:",
            "\n".join(split_verdicts(data)),
            "At 2 devices, the least error within each budget:",
            "\n".join(winners_at(data, 2)),
            "The best error within each budget, and its ratio to the exact split alone's:",
            split_table(data),
        ]
    parts += [
        "## Where CHORDS wins",
        "\n".join(comparison_verdicts(data)),
        comparison_section(data),
    ]
    return "\n\n".join(parts) + "\n"


PAGES: dict[Path, Callable[[], str]] = {PAGE: render, COMPARISON: render_comparison}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a change")
    args = parser.parse_args(argv)
    stale = 0
    for page, make in PAGES.items():
        text = make()
        if args.check:
            current = page.read_text() if page.exists() else ""
            if current != text:
                print(f"{page} is out of date: run python benchmarks/results_page.py")
                stale = 1
            continue
        page.write_text(text)
        print(f"wrote {page}")
    return stale


if __name__ == "__main__":
    sys.exit(main())
