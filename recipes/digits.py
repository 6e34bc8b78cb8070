"""The main job: every digit with serial and parallel samplers over the solver a user would pick,
measured against the exact solution and against what the same latency buys serially.

    fabric run --accelerator cpu --devices 2 --strategy ddp recipes/digits.py
    fabric run --accelerator cpu --devices 2 --strategy ddp recipes/digits.py --rounds 8
    python recipes/digits.py --devices 2 --strategy ddp --accelerator cpu   # same, from code

Uses the embedded model (trained here, shipped in the package) with DPM-Solver++(2M) by default
(``--solver``). All ranks form one draft group (``--draft-devices`` to change), so each parallel
round's evaluations are split across devices; serial samplers evaluate one state per round,
which rank 0 of the group computes while the others wait for the gather.

Every sample is compared with a reference solution of the sampling ODE (DPM-Solver++(3M) on
``--reference-points`` log-uniform sigmas): ``err_ref = ||x - x_ref|| / ||x_ref||``. For each
parallel sampler that takes fewer rounds than the grid has steps, the same solver also runs
serially at that round count (``serial@R``): the honest baseline. One untimed warm-up batch runs
before the timed samplers, and every sampler is timed on the same items.

``--rounds R`` replaces ``--steps``: a short calibration on ten samples (one per digit, seeds
disjoint from the job's) tries every serial and DRiffusion configuration that fits ``R`` rounds
on the draft group, against the reference, and runs the best one beside the best serial solver
at ``R`` rounds; the result is cached in ``<out>/calibration.json`` per model and settings.

Writes ``<out>/grid.png`` (one labelled row per sampler), ``<out>/<sampler>/<id>.png`` (digit,
seed, sampler, steps in PNG text metadata) and ``<out>/report.json``, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from driffusion.adapters.distributed import barrier, gather_objects, make_layout
from driffusion.core import (
    SAMPLER_NAMES,
    SOLVER_NAMES,
    BatchedExecutor,
    Calibration,
    RowwiseModel,
    SamplerSpec,
    calibrate,
    get_solver,
    initial_noise,
    reference_schedule,
    reference_solution,
)
from driffusion.io import atomic_write, labelled_grid, save_png
from driffusion.lightning import (
    DiffusionSamplerModule,
    ProgressBar,
    add_fabric_args,
    build_fabric,
    finish,
    run_predict,
)
from driffusion.models.digits import NUM_CLASSES, DigitsModel, digits_dataset, load_digits

KEYS = [
    "sampler",
    "devices",
    "steps",
    "rounds",
    "wall_s",
    "speedup",
    "err_ref",
    "max_abs_dev",
    "accuracy",
    "fid",
]
PARALLEL = (
    "aggressive",
    "conservative",
    "srds",
    "srds_pipelined",
    "paradigms",
    "picard_driffusion",
)


def parse_args() -> argparse.Namespace:
    parser = add_fabric_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="grid steps (default 50)")
    budget.add_argument(
        "--rounds", type=int, default=None, help="a latency budget: calibrate N, k, mode, solver"
    )
    parser.add_argument("--solver", choices=SOLVER_NAMES, default="dpmpp_2m")
    parser.add_argument(
        "--drafts", type=int, default=None, help="DRiffusion drafts (default: draft-group size)"
    )
    parser.add_argument(
        "--blocks", type=int, default=None, help="SRDS blocks (default: sqrt(steps))"
    )
    parser.add_argument("--srds-tol", type=float, default=1e-3)
    parser.add_argument("--samplers", default="serial,aggressive,conservative,srds,paradigms")
    parser.add_argument(
        "--window", type=int, default=None, help="ParaDiGMS window (default: drafts)"
    )
    parser.add_argument("--paradigms-tol", type=float, default=1e-3)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-per-class", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--reference-points", type=int, default=300)
    parser.add_argument("--draft-devices", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=300.0, help="collective timeout (s)")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: shipped)")
    parser.add_argument("--out", type=Path, default=Path("outputs/digits"))
    parser.add_argument("--no-fid", action="store_true", help="skip FID (faster)")
    args = parser.parse_args()
    args.samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    unknown = [s for s in args.samplers if s not in SAMPLER_NAMES]
    if unknown or not args.samplers:
        parser.error(f"unknown sampler(s) {unknown}; choose from {', '.join(SAMPLER_NAMES)}")
    if "serial" not in args.samplers:
        args.samplers.insert(0, "serial")  # the reference for speedup and deviation
    if args.steps is None and args.rounds is None:
        args.steps = 50
    for name in ("steps", "rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.n_per_class < 1 or args.batch_size < 1 or args.reference_points < 20:
        parser.error("--n-per-class and --batch-size must be >= 1, --reference-points >= 20")
    if args.drafts is not None and args.drafts < 1:
        parser.error(f"--drafts must be >= 1, got {args.drafts}")
    if get_solver(args.solver).stochastic:
        parser.error(f"--solver {args.solver} is stochastic; err_ref compares ODE solutions")
    return args


def plan(args: argparse.Namespace, drafts: int, calibration: Calibration | None) -> list[dict]:
    """The runs of the job: ``{"name", "spec", "steps"}``; the first is the speedup baseline."""
    if calibration is not None:
        best, serial = calibration.best, calibration.best_serial
        runs = [{"name": "serial", "spec": SamplerSpec("serial", solver=best.solver)}]
        runs[0]["steps"] = best.steps
        if best.sampler != "serial":
            runs.append({"name": "chosen", "spec": best.spec(), "steps": best.steps})
        runs.append({"name": "best_serial", "spec": serial.spec(), "steps": serial.steps})
        return runs
    runs = []
    for name in args.samplers:
        spec = SamplerSpec(
            name,
            drafts=drafts,
            blocks=args.blocks,
            tol=args.paradigms_tol if name == "paradigms" else args.srds_tol,
            window=args.window or drafts,
            solver=args.solver,
        )
        runs.append({"name": name, "spec": spec, "steps": args.steps})
    return runs


def calibration_for(
    args: argparse.Namespace, model: DigitsModel, devices: int
) -> Calibration | None:
    """The calibration of ``--rounds`` (from the cache when its settings match)."""
    if args.rounds is None:
        return None
    settings = {
        "model": str(model.path),
        "guidance": args.guidance,
        "rounds": args.rounds,
        "devices": devices,
        "reference_points": args.reference_points,
    }
    cache = args.out / "calibration.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("settings") == settings:
            return Calibration.from_dict(saved["calibration"])
    labels = torch.arange(NUM_CLASSES)
    net = BatchedExecutor(RowwiseModel(model.denoiser(args.guidance), {"label": labels}))
    x = initial_noise([10_000 + d for d in range(NUM_CLASSES)], (1, 16, 16))
    with torch.inference_mode():
        x_ref = reference_solution(net, x, model.alphas_cumprod, args.reference_points)
        result = calibrate(net, x, model.schedule, x_ref, rounds=args.rounds, devices=devices)
    payload = {"settings": settings, "calibration": result.to_dict()}
    atomic_write(cache, lambda p: p.write_text(json.dumps(payload, indent=2)))
    return result


def main() -> None:
    args = parse_args()
    fabric = build_fabric(args, callbacks=[ProgressBar()])
    layout = make_layout(args.draft_devices, timeout_s=args.timeout)
    model = load_digits(args.model)
    calibration = None
    if args.rounds is not None:
        # every rank calibrates the same way (deterministic); rank 0 writes the cache
        calibration = calibration_for(args, model, layout.draft_devices)
    denoiser = model.denoiser(args.guidance)
    items = [
        {
            "id": f"digit{d}_seed{args.seed + 100 * d + j}",
            "seed": args.seed + 100 * d + j,
            "cond": {"label": torch.tensor(d)},
        }
        for j in range(args.n_per_class)
        for d in range(NUM_CLASSES)
    ]
    drafts = args.drafts or layout.draft_devices
    runs = plan(args, drafts, calibration)

    def predict(spec: SamplerSpec, schedule: Any, some: list[dict], on: Any = layout) -> list:
        module = DiffusionSamplerModule(denoiser, schedule, (1, 16, 16), spec)
        return run_predict(fabric, module, some, batch_size=args.batch_size, layout=on)

    # untimed: the reference solution (serial: each rank solves its share of the items), and
    # one warm-up batch so that no timed sampler pays for start-up
    reference = predict(
        SamplerSpec("serial", solver="dpmpp_3m"),
        reference_schedule(model.alphas_cumprod, args.reference_points),
        items,
        make_layout(1, timeout_s=args.timeout) if layout.draft_devices > 1 else layout,
    )
    predict(runs[0]["spec"], model.schedule(runs[0]["steps"]), items[: args.batch_size])

    results: dict[str, dict[str, Any]] = {}
    done_rounds: set[int] = set()
    queue = list(runs)
    while queue:
        run = queue.pop(0)
        schedule = model.schedule(run["steps"])
        barrier(layout, f"start of {run['name']}")
        start = time.perf_counter()
        outputs = predict(run["spec"], schedule, items)
        wall = max(gather_objects(layout, time.perf_counter() - start))
        rounds = max(o.stats.rounds for o in outputs)
        results[run["name"]] = {
            "spec": run["spec"],
            "steps": run["steps"],
            "wall_s": wall,
            "outputs": outputs,
            "rounds": rounds,
        }
        # the honest baseline: the same solver, serially, at this sampler's round count
        parallel = run["spec"].name in PARALLEL and calibration is None
        if parallel and rounds < run["steps"] and rounds not in done_rounds:
            done_rounds.add(rounds)
            spec = SamplerSpec("serial", solver=args.solver)
            steps = rounds - (1 if args.solver == "plms" else 0)
            queue.insert(0, {"name": f"serial@{rounds}", "spec": spec, "steps": steps})

    if fabric.global_rank == 0:
        report(args, model, items, results, reference, layout.draft_devices, calibration)
    finish()


def in_item_order(outputs: list[Any], order: dict[str, int]) -> torch.Tensor:
    x = torch.cat([o.x for o in outputs])
    index = torch.tensor([order[i] for o in outputs for i in o.ids])
    ordered = torch.empty_like(x)
    ordered[index] = x
    return ordered


def report(
    args: argparse.Namespace,
    model: Any,
    items: list[dict],
    results: dict[str, dict],
    reference: list[Any],
    devices: int,
    calibration: Calibration | None,
) -> None:
    labels = torch.tensor([int(item["cond"]["label"]) for item in items])
    order = {item["id"]: k for k, item in enumerate(items)}
    x_ref = in_item_order(reference, order).double()
    baseline = results["serial"]
    baseline_x = in_item_order(baseline["outputs"], order)
    reference_images, _ = digits_dataset("test")
    rows, grid_rows = [], []
    for name, res in results.items():
        x = in_item_order(res["outputs"], order)
        diff = (x - baseline_x).abs().flatten(1)
        fid = None
        if not args.no_fid:
            from driffusion.eval.digits_fid import digits_fid

            fid = digits_fid(x, reference_images)["frechet_inception_distance"]
        spec: SamplerSpec = res["spec"]
        rows.append(
            {
                "sampler": name,
                "setting": spec.label(),
                "devices": 1 if spec.name in ("serial", "serial_reduced") else devices,
                "steps": res["steps"],
                "rounds": res["rounds"],
                "wall_s": res["wall_s"],
                "speedup": baseline["wall_s"] / res["wall_s"],
                "err_ref": float((x.double() - x_ref).norm() / x_ref.norm()),
                "max_abs_dev": float(diff.max()),
                "accuracy": float((model.classify(x) == labels).float().mean()),
                "fid": fid,
            }
        )
        for k, item in enumerate(items):
            meta = {
                "digit": int(labels[k]),
                "seed": item["seed"],
                "sampler": spec.label(),
                "steps": res["steps"],
                "guidance": args.guidance,
            }
            save_png(args.out / name / f"{item['id']}.png", x[k], meta)
        first_of_each = [x[labels.tolist().index(d)] for d in range(NUM_CLASSES)]
        grid_rows.append(
            (f"{spec.label()}\n{res['steps']} steps, {res['rounds']} rounds", first_of_each)
        )

    grid = labelled_grid(grid_rows, label_width=280)
    atomic_write(args.out / "grid.png", lambda p: grid.save(p, format="PNG"))
    spread = (
        "serial samplers evaluate one state per round: rank 0 of the draft group computes it "
        f"while the other {devices - 1} rank(s) wait for the gather (one device's work)"
    )
    payload = {
        "rows": rows,
        "model": str(model.path),
        "guidance": args.guidance,
        "n_per_class": args.n_per_class,
        "solver": args.solver,
        "reference": f"dpmpp_3m on {args.reference_points} log-uniform sigmas",
        "serial_spread": spread,
        "calibration": calibration.to_dict() if calibration is not None else None,
    }
    atomic_write(
        args.out / "report.json",
        lambda p: p.write_text(json.dumps(payload, indent=2, allow_nan=False)),
    )

    print(
        f"\ndigits: {len(items)} samples per sampler, guidance {args.guidance:g}, "
        f"{devices} device(s) per draft group; err_ref against {payload['reference']}; "
        f"{spread}\n"
    )
    if calibration is not None:
        print(
            f"--rounds {calibration.rounds} on {calibration.devices} device(s): chose "
            f"{calibration.best.label()} (calibration err_ref {calibration.best.err_ref:.3g}); "
            f"the best serial solver in the same rounds: {calibration.best_serial.label()} "
            f"(err_ref {calibration.best_serial.err_ref:.3g})\n"
        )
    print("| " + " | ".join(KEYS) + " | setting |")
    print("|" + "---|" * (len(KEYS) + 1))
    for row in rows:
        cells = [f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in KEYS]
        print("| " + " | ".join(cells) + f" | {row['setting']} |")
    print(f"\nwrote {args.out / 'grid.png'}, {args.out / 'report.json'} and one PNG per sample")


if __name__ == "__main__":
    main()
