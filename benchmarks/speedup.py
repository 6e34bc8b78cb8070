"""Wall-clock speedup of the parallel samplers on all processes against serial on one.

    fabric run --accelerator cpu --devices 2 --strategy ddp benchmarks/speedup.py \
        [--json PATH] [--eval-ms MS] [--steps N]
    fabric run --accelerator cuda --devices 4 --strategy ddp benchmarks/speedup.py --eval-ms 50

With ``--model synthetic`` (default) the denoiser is a stack of 3x3 convolutions sized so that one
evaluation costs about ``--eval-ms`` on this machine (real tensor work, not a sleep); with
``--model digits`` it is the embedded digits model (one sample of each digit per batch, guided).
Serial runs on rank 0 alone with the same per-process thread count as the parallel runs
(``serial_wall_s``), and again with every core (``serial_all_cores_wall_s``, CPU only).
``speedup_ideal`` is ``N / sum_r ceil(width_r / g)``: the speedup if communication and sampler
math were free; ``efficiency = speedup / ideal``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from driffusion.adapters.distributed import (
    DistributedExecutor,
    ParallelLayout,
    barrier,
    gather_objects,
    make_layout,
)
from driffusion.core import (
    BatchedExecutor,
    Model,
    RowwiseModel,
    SampleResult,
    SamplerSpec,
    aggressive_rounds,
    alphas_cumprod_from_betas,
    default_blocks,
    initial_noise,
    run_sampler,
    vp_schedule,
    vp_timesteps,
)
from driffusion.lightning import add_fabric_args, build_fabric, finish
from driffusion.testing.networks import ConvStackNetwork, conv_stack_depth

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


def timed(run: Callable[[], SampleResult], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``run`` over ``repeats`` runs, and its last result."""
    walls, result = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls), result


def main() -> None:
    parser = add_fabric_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--json", type=Path, help="write the rows as a JSON list here")
    parser.add_argument("--eval-ms", type=float, default=100.0, help="cost of one evaluation")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument("--srds-tol", type=float, default=1e-3)
    parser.add_argument("--paradigms-tol", type=float, default=1e-3)
    parser.add_argument("--window", type=int, default=None, help="ParaDiGMS window (default: g)")
    parser.add_argument("--shape", type=int, nargs=3, default=[4, 32, 32])
    parser.add_argument("--model", choices=["synthetic", "digits"], default="synthetic")
    parser.add_argument("--guidance", type=float, default=2.0, help="digits model only")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.eval_ms <= 0:
        parser.error(f"--eval-ms must be positive, got {args.eval_ms}")

    fabric = build_fabric(args)
    layout: ParallelLayout = make_layout(draft_devices=None, timeout_s=600)
    g, rank, device = layout.world_size, fabric.global_rank, fabric.device
    cores = os.cpu_count() or 1
    threads = max(1, cores // g) if device.type == "cpu" else torch.get_num_threads()
    torch.set_num_threads(threads)
    shape = tuple(args.shape)

    if args.model == "digits":
        from driffusion.models.digits import load_digits

        digits = load_digits()
        network: torch.nn.Module = digits.denoiser(args.guidance).to(device).eval()
        schedule = digits.schedule(args.steps)
        cond = {"label": torch.arange(10, device=device)}
        x = initial_noise(list(range(10)), (1, 16, 16), device=device)
    else:
        # One depth for every rank (calibrated on rank 0), identical weights from one seed.
        depth = gather_objects(layout, conv_stack_depth(args.eval_ms, shape, device=device))[0]
        network = ConvStackNetwork(shape[0], depth=depth, seed=0).to(device).eval()
        schedule = vp_schedule(
            alphas_cumprod_from_betas(), vp_timesteps(args.steps, spacing="trailing")
        )
        cond = {}
        x = initial_noise([0], shape, device=device)

    def sample(spec: SamplerSpec, model: Model) -> Callable[[], SampleResult]:
        def run() -> SampleResult:
            with torch.inference_mode():
                return run_sampler(spec, model, x, schedule, check_finite=False)

        return run

    local = BatchedExecutor(RowwiseModel(network, cond))
    serial_spec = SamplerSpec("serial")
    # step reduction to the latency of aggressive DRiffusion on g devices, on one device
    reduced_spec = SamplerSpec("serial_reduced", rounds=aggressive_rounds(args.steps, g))
    serial_wall = serial_all_cores = reduced_wall = float("nan")
    if rank == 0:  # the others wait at the barrier below
        sample(serial_spec, local)()  # warm-up
        serial_wall, _ = timed(sample(serial_spec, local), device, args.repeats)
        reduced_wall, _ = timed(sample(reduced_spec, local), device, args.repeats)
        if device.type == "cpu" and cores > threads:
            torch.set_num_threads(cores)
            serial_all_cores, _ = timed(sample(serial_spec, local), device, args.repeats)
            torch.set_num_threads(threads)
    barrier(layout, "serial baseline")
    serial_wall, serial_all_cores, reduced_wall = gather_objects(
        layout, (serial_wall, serial_all_cores, reduced_wall)
    )[0]

    distributed = DistributedExecutor(RowwiseModel(network, cond), layout)
    specs = [
        SamplerSpec("aggressive", drafts=g),
        SamplerSpec("conservative", drafts=g),
        SamplerSpec("srds", blocks=default_blocks(args.steps), tol=args.srds_tol),
        SamplerSpec("srds_pipelined", blocks=default_blocks(args.steps), tol=args.srds_tol),
        SamplerSpec("paradigms", window=args.window or g, tol=args.paradigms_tol),
    ]
    rows: list[dict[str, Any]] = [
        {
            "sampler": "serial",
            "devices": 1,
            "steps": args.steps,
            "rounds": args.steps,
            "wall_s": serial_wall,
            "serial_wall_s": serial_wall,
            "speedup": 1.0,
            "speedup_ideal": 1.0,
            "efficiency": 1.0,
            "serial_all_cores_wall_s": serial_all_cores,
            "setting": "threads/process",
        }
    ]
    rows.append(
        {
            **rows[0],
            "sampler": "serial_reduced",
            "rounds": reduced_spec.rounds,
            "wall_s": reduced_wall,
            "speedup": serial_wall / reduced_wall,
            "speedup_ideal": args.steps / reduced_spec.rounds,
            "efficiency": serial_wall / reduced_wall / (args.steps / reduced_spec.rounds),
            "setting": reduced_spec.label(),
        }
    )
    for spec in specs:
        sample(spec, distributed)()  # warm-up (and identical on every rank)
        wall, result = timed(sample(spec, distributed), device, args.repeats)
        wall = max(gather_objects(layout, wall))  # the slowest rank sets the latency
        ideal = args.steps / result.stats.latency_units(g)
        rows.append(
            {
                "sampler": spec.name,
                "devices": g,
                "steps": args.steps,
                "rounds": result.stats.rounds,
                "wall_s": wall,
                "serial_wall_s": serial_wall,
                "speedup": serial_wall / wall,
                "speedup_ideal": ideal,
                "efficiency": serial_wall / wall / ideal,
                "serial_all_cores_wall_s": serial_all_cores,
                "setting": spec.label(),
                "evaluations": result.stats.evaluations,
            }
        )

    if rank == 0:
        per_eval = serial_wall / args.steps * 1000
        cost = f"--eval-ms {args.eval_ms:g}, " if args.model == "synthetic" else ""
        print(
            f"\n{args.model} denoiser: speedup on {g} x {device.type} processes ({threads} "
            f"threads each), {args.steps} steps, {cost}measured {per_eval:.1f} ms/step serial; "
            f"serial on all {cores} cores: {serial_all_cores:.2f}s\n"
        )
        print("| " + " | ".join([*KEYS, "setting"]) + " |")
        print("|" + "---|" * (len(KEYS) + 1))
        for row in rows:
            cells = [f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in KEYS]
            print("| " + " | ".join([*cells, row["setting"]]) + " |")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows, indent=2))
            tmp.replace(args.json)
            print(f"\nwrote {args.json}")
    finish()


if __name__ == "__main__":
    main()
