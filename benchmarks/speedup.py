"""Wall-clock speedup of the parallel samplers on all processes against serial on one.

    fabric run --accelerator cpu --devices 2 --strategy ddp benchmarks/speedup.py \
        [--json PATH] [--eval-ms MS] [--steps N] [--branches G]
    fabric run --accelerator cpu --devices 2 --strategy ddp benchmarks/speedup.py --model digits \
        [--batch B]
    fabric run --accelerator cuda --devices 4 --strategy ddp benchmarks/speedup.py --eval-ms 50

With ``--model synthetic`` (default) the denoiser is a stack of 3x3 convolutions sized so that one
evaluation of one row costs about ``--eval-ms`` on this machine (real tensor work, not a sleep);
with ``--branches 2`` (default) it is guided: two branches of equal cost (``--eval-ms / 2``
each, ``driffusion.testing.BranchedConvStack``) combined with
``--guidance``. With ``--model digits`` it is the embedded digits model (``--batch`` samples,
labels cycling through the ten digits, guided unless ``--guidance 1``).
Serial runs on rank 0 alone with the same per-process thread count as the parallel runs
(``serial_wall_s``, the baseline of every ``speedup``; a guided row's branches batched in one
call of ``2B``), and again with every core (``serial_all_cores_wall_s``, CPU only).
The parallel samplers, and serial with the branches split (``guidance_devices=2``: each
process evaluates one branch of ``B`` rows, one all-gather, every process combines), run on a
draft group of ``g`` processes (``--draft-devices``, default every process) through a
``driffusion.lightning.Session``; a guided network's samplers run with the branches together
(``guidance_devices=1``) and again split wherever the split needs fewer passes. A run's wall
time is its slowest process's from a common start, the median over ``--repeats``.
``speedup_ideal`` is ``N G / passes`` with ``passes = sum_r ceil(K_r G / g)`` split and
``G sum_r ceil(K_r / g)`` together (``G`` branches; ``N / sum_r ceil(K_r / g)`` unguided): the
speedup if communication and sampler math were free and a batch of ``2B`` cost two of ``B``;
``efficiency = speedup / ideal``. ``batched_cost_ratio`` is what a batch of ``2B`` does cost:
one guided row batched over one branch, measured on rank 0 with the runs' threads; the branch
split's speedup over serial is at most about that ratio, and ``auto_guidance_devices`` is what
``guidance_devices="auto"`` picks from it for the row's sampler on the group.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from driffusion.adapters.distributed import batched_cost_ratio
from driffusion.core import (
    SRDS,
    Aggressive,
    BatchedExecutor,
    Chords,
    Conservative,
    Model,
    ParaDiGMS,
    RowwiseModel,
    SampleResult,
    SamplerFn,
    SamplerStats,
    Serial,
    SerialReduced,
    alphas_cumprod_from_betas,
    initial_noise,
    sampler_name,
    vp_schedule,
    vp_timesteps,
)
from driffusion.core.branches import choose_guidance_devices, network_branches
from driffusion.io import markdown_table, write_json
from driffusion.lightning import Session, add_session_args, cli
from driffusion.testing.networks import BranchedConvStack, ConvStackNetwork, conv_stack_depth

if not __package__:  # run as `fabric run ... benchmarks/speedup.py`: the repo root holds it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import deviation, timed

DIGITS = 10  # the digits model's classes: labels cycle through them
# the digits recipe's --batch-size: a batch large enough that one branch of it costs about half
# of both batched (at 10 rows the fixed per-call cost makes the split gain only ~1.4x on CPU)
DIGITS_BATCH = 50

KEYS = [
    "sampler",
    "devices",
    "steps",
    "rounds",
    "wall_s",
    "serial_wall_s",
    "speedup",
    "speedup_ideal",
    "efficiency",
    "guidance_devices",
]


def parse_args() -> argparse.Namespace:
    parser = add_session_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.set_defaults(timeout=600.0)  # the others wait while rank 0 times serial sampling
    parser.add_argument("--json", type=Path, help="write the rows as a JSON list here")
    parser.add_argument(
        "--eval-ms", type=cli.positive_float, default=100.0, help="cost of one evaluation"
    )
    parser.add_argument("--steps", type=cli.positive_int, default=50)
    parser.add_argument(
        "--repeats", type=cli.positive_int, default=3, help="median of this many runs"
    )
    parser.add_argument(
        "--srds-tol", type=cli.nonnegative_float, default=1e-3, help="relative to sigma"
    )
    parser.add_argument(
        "--paradigms-tol", type=cli.nonnegative_float, default=1e-3, help="relative to sigma"
    )
    parser.add_argument(
        "--window", type=cli.positive_int, default=None, help="ParaDiGMS window (default: g)"
    )
    parser.add_argument("--shape", type=cli.positive_int, nargs=3, default=[4, 32, 32])
    parser.add_argument("--model", choices=["synthetic", "digits"], default="synthetic")
    parser.add_argument(
        "--guidance", type=cli.nonnegative_float, default=2.0, help="guidance scale w"
    )
    parser.add_argument(
        "--branches",
        type=int,
        choices=[1, 2],
        default=2,
        help="synthetic model: branches of one evaluation (2: guided, --eval-ms / 2 each)",
    )
    parser.add_argument(
        "--batch",
        type=cli.positive_int,
        default=DIGITS_BATCH,
        help="digits model: samples per batch (labels cycle through the digits)",
    )
    parser.add_argument(
        "--ratio-repeats",
        type=cli.positive_int,
        default=10,
        help="median of this many timings of the batched-over-branch cost ratio",
    )
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.eval_ms <= 0:
        parser.error(f"--eval-ms must be positive, got {args.eval_ms}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def problem(
    args: argparse.Namespace, session: Session
) -> tuple[torch.nn.Module, Any, dict[str, torch.Tensor], torch.Tensor]:
    """(network, schedule, conditioning, start state), identical on every rank."""
    device = session.device
    if args.model == "digits":
        from driffusion.models.digits import load_digits

        digits = load_digits()
        network = digits.denoiser(args.guidance).to(device).eval()
        cond = {"label": torch.arange(args.batch, device=device) % DIGITS}
        x = initial_noise(list(range(args.batch)), (1, 16, 16), device=device)
        return network, digits.schedule(args.steps), cond, x
    shape = tuple(args.shape)
    # one depth for every rank (calibrated on rank 0), identical weights from one seed; each
    # branch of a guided evaluation costs its share of --eval-ms
    branch_ms = args.eval_ms / args.branches
    depth = session.gather(conv_stack_depth(branch_ms, shape, device=device))[0]
    if args.branches == 1:
        network: torch.nn.Module = ConvStackNetwork(shape[0], depth=depth, seed=0)
    else:
        network = BranchedConvStack(
            shape[0], depth=depth, seed=0, guidance=args.guidance, branches=args.branches
        )
    network = network.to(device).eval()
    schedule = vp_schedule(
        alphas_cumprod_from_betas(), vp_timesteps(args.steps, spacing="trailing")
    )
    return network, schedule, {}, initial_noise([0], shape, device=device)


@dataclass(frozen=True)
class Measurement:
    """One timed configuration.

    Attributes:
        sampler: the sampler.
        devices: processes it ran on (1: rank 0 alone, batched).
        guidance_devices: 2 when the branches were split over the processes, else 1.
        wall: median wall seconds (the slowest process's, from a common start).
        stats: the run's counts (rounds, rows per round).
        max_abs_dev: ``max |x - x_serial|`` against the 1-process serial sample.
        bytes_per_round: bytes one process received per round in the all-gathers.
    """

    sampler: SamplerFn
    devices: int
    guidance_devices: int
    wall: float
    stats: SamplerStats
    max_abs_dev: float
    bytes_per_round: float = 0.0


@dataclass(frozen=True)
class Baselines:
    """What rank 0 measures alone: serial (first) and step reduction, serial on every core,
    the batched-over-branch cost ratio, and the serial sample (on the CPU)."""

    measured: list[Measurement]
    all_cores_wall: float
    cost_ratio: float
    serial_x: torch.Tensor


def measure(args: argparse.Namespace, session: Session) -> tuple[list[dict[str, Any]], str]:
    """Every row (identical on every rank) and a line saying what was measured."""
    g, device, steps = session.draft_devices, session.device, args.steps
    cores = os.cpu_count() or 1
    threads = max(1, cores // session.world_size) if device.type == "cpu" else None
    if threads is not None:
        torch.set_num_threads(threads)
    network, schedule, cond, x = problem(args, session)
    branches = network_branches(network)
    model = RowwiseModel(network, cond)

    def run(sampler: SamplerFn, executor: Model) -> SampleResult:
        with torch.inference_mode():
            return sampler(executor, x, schedule, check_finite=False)

    def cost_ratio() -> float:
        """Seconds of one guided row batched (``G B`` rows) over one branch (``B``), with the
        runs' threads; 1 for a network without branches (its row is its one branch)."""
        if branches == 1:
            return 1.0
        t = schedule.timesteps[:1].to(device=device, dtype=x.dtype)
        return batched_cost_ratio(model, x[None], t, repeats=args.ratio_repeats)

    def baselines() -> Baselines:
        """Serial and step reduction (to aggressive's latency on g devices) on this rank alone,
        with the parallel runs' threads per process; serial again with every core; the cost
        ratio."""
        local = BatchedExecutor(model)
        serial_x = run(Serial(), local).x  # warm-up, and the reference sample
        out: list[Measurement] = []
        for sampler in (Serial(), SerialReduced(rounds=Aggressive(drafts=g).rounds(steps))):
            wall, result = timed(lambda s=sampler: run(s, local), device, args.repeats)
            dev = deviation(result.x, serial_x)["max_abs_dev"]
            out.append(Measurement(sampler, 1, 1, wall, result.stats, dev))
        ratio = cost_ratio()
        all_cores = float("nan")
        if threads is not None and cores > threads:
            torch.set_num_threads(cores)
            all_cores, _ = timed(lambda: run(Serial(), local), device, args.repeats)
            torch.set_num_threads(threads)
        return Baselines(out, all_cores, ratio, serial_x.cpu())

    # rank 0 times the baselines while the others wait; then every rank has them
    base = session.gather(session.on_leader(baselines))[0]
    assert base is not None  # rank 0's
    serial_x = base.serial_x.to(device)

    def distributed(sampler: SamplerFn, guidance_devices: int) -> Measurement:
        """``sampler`` on the draft group, its branches together (1) or split (2)."""
        executor = session.executor(model, guidance_devices=guidance_devices)
        run(sampler, executor)  # warm-up (and identical on every rank)
        # per repeat: every rank from a common start, the slowest rank's wall is the latency
        wall, result = timed(lambda: run(sampler, executor), device, args.repeats, session.timed)
        dev = deviation(result.x, serial_x)["max_abs_dev"]
        return Measurement(
            sampler,
            g,
            executor.guidance_devices,
            wall,
            result.stats,
            dev,
            executor.bytes_per_round,
        )

    def split_pays(stats: SamplerStats) -> bool:
        """The branch split needs fewer passes than the branches together for these rounds."""
        passes = [stats.latency_passes(g, branches, split) for split in (True, False)]
        return passes[0] < passes[1]

    measured = list(base.measured)
    serial_stats = measured[0].stats
    if split_pays(serial_stats):
        measured.append(distributed(Serial(), 2))
    samplers: list[SamplerFn] = [
        Aggressive(drafts=g),
        Conservative(drafts=g),
        SRDS(tol=args.srds_tol, pipelined=False),
        SRDS(tol=args.srds_tol),
        ParaDiGMS(window=args.window or g, tol=args.paradigms_tol),
        Chords(cores=g),
    ]
    for sampler in samplers:
        together = distributed(sampler, 1)
        measured.append(together)
        if split_pays(together.stats):
            measured.append(distributed(sampler, 2))

    serial_wall = measured[0].wall
    ratio = base.cost_ratio
    rows = [row(m, steps, branches, g, serial_wall, base.all_cores_wall, ratio) for m in measured]
    cost = f"--eval-ms {args.eval_ms:g}, " if args.model == "synthetic" else ""
    batch = f"batch {x.shape[0]}, " if args.model == "digits" else ""
    auto = {
        name: choose_guidance_devices(branches, g, rows_per_round, ratio)
        for name, rows_per_round in (("serial", 1), ("aggressive", g))
    }
    note = (
        f"{args.model} denoiser ({branches} branch{'es' if branches > 1 else ''}): speedup on "
        f"{g} x {device.type} processes ({threads or torch.get_num_threads()} threads each), "
        f"{steps} steps, {batch}{cost}measured {serial_wall / steps * 1000:.1f} ms/step serial; "
        f"serial on all {cores} cores: {base.all_cores_wall:.2f}s\n"
        f"batched_cost_ratio: one guided row batched ({branches}B) costs {ratio:.3f} x one "
        f"branch (B) on {device.type}; guidance_devices=auto would choose "
        f"{auto['serial']} for serial and {auto['aggressive']} for aggressive on {g} processes"
    )
    split_serial = [r for r in rows[1:] if r["sampler"] == "serial"]
    for split in split_serial:
        note += (
            f"\nserial with the branches split on {g} processes: speedup {split['speedup']:.3f}"
            f" = {split['speedup'] / ratio:.3f} x the cost ratio; max |x - x_serial| "
            f"{split['max_abs_dev']:.3g}"
        )
    return rows, note


def row(
    measured: Measurement,
    steps: int,
    branches: int,
    group: int,
    serial_wall: float,
    all_cores: float,
    cost_ratio: float,
) -> dict[str, Any]:
    """One table row; ``speedup_ideal = N G / passes`` (see the module's docstring)."""
    m = measured
    split = m.guidance_devices == 2
    passes = m.stats.latency_passes(m.devices, branches, split)
    ideal = steps * branches / passes
    speedup = serial_wall / m.wall
    setting = repr(m.sampler) + (f", guidance_devices={m.guidance_devices}" if split else "")
    auto = choose_guidance_devices(branches, group, m.stats.rows, cost_ratio)
    return {
        "sampler": sampler_name(m.sampler),
        "devices": m.devices,
        "steps": steps,
        "rounds": m.stats.rounds,
        "wall_s": m.wall,
        "serial_wall_s": serial_wall,
        "speedup": speedup,
        "speedup_ideal": ideal,
        "efficiency": speedup / ideal,
        "serial_all_cores_wall_s": all_cores,
        "evaluations": m.stats.evaluations,
        "setting": setting,
        "guidance_devices": m.guidance_devices,
        "branches": branches,
        "passes": passes,
        "batched_cost_ratio": cost_ratio,
        "auto_guidance_devices": auto,
        "bytes_per_round": m.bytes_per_round,
        "max_abs_dev": m.max_abs_dev,
    }


def main() -> None:
    args = parse_args()
    with Session.from_args(args) as session:
        rows, note = measure(args, session)
        if session.is_leader:
            print(f"\n{note}\n")
            print(markdown_table(rows, [*KEYS, "setting"]))
            if args.json:
                write_json(args.json, rows)
                print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
