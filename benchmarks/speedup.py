"""Wall-clock speedup of the parallel samplers on all processes against serial on one.

    fabric run --accelerator cpu --devices 2 --strategy ddp benchmarks/speedup.py \
        [--json PATH] [--eval-ms MS] [--steps N]
    fabric run --accelerator cuda --devices 4 --strategy ddp benchmarks/speedup.py --eval-ms 50

With ``--model synthetic`` (default) the denoiser is a stack of 3x3 convolutions sized so that one
evaluation costs about ``--eval-ms`` on this machine (real tensor work, not a sleep); with
``--model digits`` it is the embedded digits model (one sample of each digit per batch, guided).
Serial runs on rank 0 alone with the same per-process thread count as the parallel runs
(``serial_wall_s``), and again with every core (``serial_all_cores_wall_s``, CPU only).
The parallel samplers run on a draft group of ``g`` processes (``--draft-devices``, default
every process) through a ``driffusion.lightning.Session``; a run's wall time is its slowest
process's from a common start, the median over ``--repeats``. ``speedup_ideal`` is
``N / sum_r ceil(width_r / g)``: the speedup if communication and sampler math were free;
``efficiency = speedup / ideal``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

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
from driffusion.io import markdown_table, write_json
from driffusion.lightning import Session, add_session_args, cli
from driffusion.testing.networks import ConvStackNetwork, conv_stack_depth

if not __package__:  # run as `fabric run ... benchmarks/speedup.py`: the repo root holds it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import timed

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
        "--guidance", type=cli.nonnegative_float, default=2.0, help="digits model only"
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
        cond = {"label": torch.arange(10, device=device)}
        x = initial_noise(list(range(10)), (1, 16, 16), device=device)
        return network, digits.schedule(args.steps), cond, x
    shape = tuple(args.shape)
    # one depth for every rank (calibrated on rank 0), identical weights from one seed
    depth = session.gather(conv_stack_depth(args.eval_ms, shape, device=device))[0]
    network = ConvStackNetwork(shape[0], depth=depth, seed=0).to(device).eval()
    schedule = vp_schedule(
        alphas_cumprod_from_betas(), vp_timesteps(args.steps, spacing="trailing")
    )
    return network, schedule, {}, initial_noise([0], shape, device=device)


Measurement = tuple[SamplerFn, int, float, SamplerStats]  # sampler, devices, wall, stats


def measure(args: argparse.Namespace, session: Session) -> tuple[list[dict[str, Any]], str]:
    """Every row (identical on every rank) and a line saying what was measured."""
    g, device, steps = session.draft_devices, session.device, args.steps
    cores = os.cpu_count() or 1
    threads = max(1, cores // session.world_size) if device.type == "cpu" else None
    if threads is not None:
        torch.set_num_threads(threads)
    network, schedule, cond, x = problem(args, session)

    def run(sampler: SamplerFn, model: Model) -> SampleResult:
        with torch.inference_mode():
            return sampler(model, x, schedule, check_finite=False)

    def baselines() -> tuple[list[Measurement], float]:
        """Serial and step reduction (to aggressive's latency on g devices) on this rank alone,
        with the parallel runs' threads per process; and serial again with every core."""
        local = BatchedExecutor(RowwiseModel(network, cond))
        run(Serial(), local)  # warm-up
        out: list[Measurement] = []
        for sampler in (Serial(), SerialReduced(rounds=Aggressive(drafts=g).rounds(steps))):
            wall, result = timed(lambda s=sampler: run(s, local), device, args.repeats)
            out.append((sampler, 1, wall, result.stats))
        all_cores = float("nan")
        if threads is not None and cores > threads:
            torch.set_num_threads(cores)
            all_cores, _ = timed(lambda: run(Serial(), local), device, args.repeats)
            torch.set_num_threads(threads)
        return out, all_cores

    # rank 0 times the baselines while the others wait; then every rank has them
    measured, all_cores = session.gather(session.on_leader(baselines))[0]
    distributed = session.executor(RowwiseModel(network, cond))
    samplers: list[SamplerFn] = [
        Aggressive(drafts=g),
        Conservative(drafts=g),
        SRDS(tol=args.srds_tol, pipelined=False),
        SRDS(tol=args.srds_tol),
        ParaDiGMS(window=args.window or g, tol=args.paradigms_tol),
        Chords(cores=g),
    ]
    for sampler in samplers:
        run(sampler, distributed)  # warm-up (and identical on every rank)
        # per repeat: every rank from a common start, the slowest rank's wall is the latency
        wall, result = timed(
            lambda s=sampler: run(s, distributed), device, args.repeats, session.timed
        )
        measured.append((sampler, g, wall, result.stats))

    serial_wall = measured[0][2]
    rows = [row(m, steps, serial_wall, all_cores) for m in measured]
    cost = f"--eval-ms {args.eval_ms:g}, " if args.model == "synthetic" else ""
    note = (
        f"{args.model} denoiser: speedup on {g} x {device.type} processes "
        f"({threads or torch.get_num_threads()} threads each), {steps} steps, {cost}measured "
        f"{serial_wall / steps * 1000:.1f} ms/step serial; serial on all {cores} cores: "
        f"{all_cores:.2f}s"
    )
    return rows, note


def row(measured: Measurement, steps: int, serial_wall: float, all_cores: float) -> dict:
    """One table row; ``speedup_ideal = N / sum_r ceil(rows_r / devices)``."""
    sampler, devices, wall, stats = measured
    ideal = steps / stats.latency_units(devices)
    speedup = serial_wall / wall
    return {
        "sampler": sampler_name(sampler),
        "devices": devices,
        "steps": steps,
        "rounds": stats.rounds,
        "wall_s": wall,
        "serial_wall_s": serial_wall,
        "speedup": speedup,
        "speedup_ideal": ideal,
        "efficiency": speedup / ideal,
        "serial_all_cores_wall_s": all_cores,
        "evaluations": stats.evaluations,
        "setting": repr(sampler),
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
