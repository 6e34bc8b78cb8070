"""Write ``docs/results.md`` from the benchmark JSON committed under ``docs/results/``.

    python benchmarks/results_page.py           # rewrite docs/results.md
    python benchmarks/results_page.py --check   # exit 1 when docs/results.md is out of date

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
from driffusion.io import format_cell, markdown_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "results.md"

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
    columns = ["sampler", "k", "rounds", "evaluations", "width", "speedup_ideal"]
    columns += ["max_abs_dev", "rel_dev", "setting"]
    parts = [
        "Rounds are the latency unit: with one device per evaluation in a round, wall time is "
        "proportional to rounds (`speedup_ideal` = serial rounds / rounds). The denoiser is the "
        "exact Gaussian-mixture oracle, a batch of 4 samples of 4x8x8, on the trailing DDIM grid. "
        "`k` is the drafts (aggressive, conservative), the blocks (SRDS), the window (ParaDiGMS, "
        "Picard DRiffusion) or, for `serial_reduced`, the drafts of the aggressive sampler whose "
        "rounds it matches; `max_abs_dev` and `rel_dev` are the deviation from the serial "
        "sample; `setting` is the sampler value that ran (tolerances relative to sigma)."
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
        "`speedup = serial_wall_s / wall_s`, `speedup_ideal = N / sum_r ceil(width_r / devices)` "
        "(free communication) and `efficiency = speedup / speedup_ideal`."
    )
    columns = ["sampler", "devices", "rounds", "evaluations", "wall_s", "speedup"]
    columns += ["speedup_ideal", "efficiency", "setting"]
    return f"{intro}\n\n{markdown_table(rows, columns)}"


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
    tols = sorted({r["tol"] for r in every if r.get("tol") is not None})
    parts = [
        "Error to a reference solution of the sampling ODE (`err_ref = ||x - x_ref|| / "
        "||x_ref||`) within a budget of serial rounds (latency): the best serial configuration "
        f"({names('serial')} at {min(serial_steps)}-{max(serial_steps)} steps) against the best "
        "parallel one (aggressive and conservative DRiffusion, Picard DRiffusion and ParaDiGMS "
        f"at `tol` {', '.join(format(t, 'g') for t in tols)}, over {names('aggressive')}, with "
        "N steps and k drafts or window). `ratio` = best parallel / best serial error (below 1: "
        "parallel wins); `parallel wins` counts the parallel configurations within the budget "
        "that beat the best serial one, `worst parallel` is the one furthest from the solution. "
        "Every row is in the JSON."
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
        parts.append(
            f"### {model}\n\n"
            f"{len(rows)} configurations in {duration(result['wall_s'])}. Reference: "
            f"{checks['solver']} on {checks['points']} points ({checks['grid']}); UniPC-3 on "
            f"the same grid differs from it by {format_cell(checks['diff_unipc3_same_grid'])}, "
            f"{checks['solver']} on {checks['points'] // 2} points by "
            f"{format_cell(checks['diff_dpmpp_3m_half_points'])}."
            f"\n\n{table}"
        )
    return "\n\n".join(parts)


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
        "The denoiser is a stack of 3x3 convolutions, its depth calibrated so that one evaluation "
        "costs about 100 ms; two processes of one thread each.",
        speedup_section,
    ),
    Source(
        "speedup_digits_cpu2.json",
        "Wall-clock speedup on 2 CPU processes: the digits network",
        "fabric run --accelerator cpu --devices 2 --strategy ddp benchmarks/speedup.py "
        "--model digits --steps 50 --json docs/results/speedup_digits_cpu2.json",
        "The embedded digits network, one sample of each digit (a batch of 10), guidance 2; two "
        "processes of one thread each.",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a change")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = PAGE.read_text() if PAGE.exists() else ""
        if current != text:
            print(f"{PAGE} is out of date: run python benchmarks/results_page.py")
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
