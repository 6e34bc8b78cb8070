"""The main job: every digit with serial and parallel samplers over the solver a user would pick,
measured against the exact solution and against what the same latency buys serially.

    fabric run --accelerator cpu --devices 2 --strategy ddp recipes/digits.py
    fabric run --accelerator cpu --devices 2 --strategy ddp recipes/digits.py --rounds 8
    python recipes/digits.py --devices 2 --strategy ddp --accelerator cpu   # same, from code

Uses the embedded model (trained here, shipped in the package) with DPM-Solver++(2M) by default
(``--solver``). All ranks form one draft group (``--draft-devices`` to change), so each parallel
round's evaluations are split across devices; serial samplers evaluate one state per round,
which rank 0 of the group computes while the others wait for the gather.

``--sampler`` (repeatable) takes a built-in sampler with its settings (``'aggressive(drafts=4)'``)
or your own by import path (``path/to/file.py:NAME``): anything called as
``sampler(model, x, schedule, *, callback=None)``. It appears in the table by its ``repr``.

Every sample is compared with a reference solution of the sampling ODE (DPM-Solver++(3M) on
``--reference-points`` log-uniform sigmas): ``err_ref = ||x - x_ref|| / ||x_ref||``. For each
parallel sampler that takes fewer rounds than the grid has steps, the same solver also runs
serially at that round count (``serial@R``): the honest baseline. One untimed warm-up batch runs
before the timed samplers, and every sampler is timed on the same items.

By default the job runs serial, DRiffusion aggressive and conservative, SRDS at its defaults and
ParaDiGMS as its authors run it (``rule='paper', tol=0.1``). After the table it says, per
parallel sampler, whether it saves rounds on these devices and whether it is closer to the
solution than ``serial@R``: on 2 devices SRDS (2 blocks) needs as many rounds as serial to
converge, and the report says so instead of showing a slowdown without comment.

``--rounds R`` replaces ``--steps``: a short calibration on ten samples (one per digit, seeds
disjoint from the job's) tries every serial and DRiffusion configuration that fits ``R`` rounds
on the draft group, against the reference, and runs the best one beside the best serial solver
at ``R`` rounds; the result is cached in ``<out>/calibration.json`` per model and settings.

Metrics come from the evaluation callbacks (``driffusion.eval.callbacks``: err_ref, deviation
from serial, classifier accuracy, FID). Writes ``<out>/grid.png`` (one labelled row per
sampler), ``<out>/<sampler>/<id>.png`` (digit, seed, sampler, steps in PNG text metadata) and
``<out>/report.json``, and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from driffusion.core import (
    BatchedExecutor,
    Calibration,
    RowwiseModel,
    SamplerFn,
    Serial,
    calibrate,
    get_solver,
    initial_noise,
    reference_schedule,
    reference_solution,
    unique_names,
)
from driffusion.eval.callbacks import (
    AccuracyCallback,
    FidelityCallback,
    ReferenceErrorCallback,
    SerialDeviationCallback,
    outputs_by_id,
)
from driffusion.io import (
    RunFolder,
    atomic_write,
    labelled_grid,
    markdown_table,
    save_png,
    write_json,
)
from driffusion.lightning import DiffusionSamplerModule, ProgressBar, Session, cli
from driffusion.lightning.launch import owns_output_folder
from driffusion.models.digits import (
    DEFAULT_GUIDANCE,
    DEFAULT_SOLVER,
    DEFAULT_STEPS,
    NUM_CLASSES,
    DigitsModel,
    digits_dataset,
    load_digits,
)

KEYS = [
    "sampler",
    "devices",
    "guidance_devices",
    "steps",
    "rounds",
    "wall_s",
    "speedup",
    "err_ref",
    "max_abs_dev",
    "accuracy",
    "fid",
    "setting",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_session_args(parser)
    cli.add_sampler_args(
        parser,
        # ParaDiGMS as its authors run it (their rule and tol): on 2 devices the configuration
        # where it saves rounds and beats serial at equal rounds; SRDS at its defaults (it
        # cannot do both on 2 devices: the report says so)
        default=(
            "serial",
            "aggressive",
            "conservative",
            "srds",
            "paradigms(rule='paper', tol=0.1)",
        ),
        solver=DEFAULT_SOLVER,
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps", type=cli.positive_int, default=None, help=f"grid steps (default {DEFAULT_STEPS})"
    )
    budget.add_argument(
        "--rounds",
        type=cli.positive_int,
        default=None,
        help="a latency budget: calibrate N, k, mode, solver",
    )
    parser.add_argument("--guidance", type=cli.nonnegative_float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0)
    parser.add_argument("--n-per-class", type=cli.positive_int, default=10)
    parser.add_argument("--batch-size", type=cli.positive_int, default=50)
    parser.add_argument("--reference-points", type=int, default=300)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: shipped)")
    parser.add_argument("--out", type=Path, default=Path("outputs/digits"))
    parser.add_argument(
        "--new-out",
        action="store_true",
        help="when --out holds a run of other settings, write to --out-2, --out-3, ... instead "
        "of stopping",
    )
    parser.add_argument("--no-fid", action="store_true", help="skip FID (faster)")
    cli.add_compile_arg(parser)
    args = parser.parse_args(argv)
    cli.check_sampler_args(parser, args)
    if args.steps is None and args.rounds is None:
        args.steps = DEFAULT_STEPS
    for name in ("steps", "rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.n_per_class < 1 or args.batch_size < 1 or args.reference_points < 20:
        parser.error("--n-per-class and --batch-size must be >= 1, --reference-points >= 20")
    cli.check_seed_range(
        parser, args.seed, args.seed + 100 * (NUM_CLASSES - 1) + args.n_per_class - 1
    )
    if args.solver is not None and get_solver(args.solver).stochastic:
        parser.error(f"--solver {args.solver} is stochastic; err_ref compares ODE solutions")
    return args


def plan(args: argparse.Namespace, devices: int, calibration: Calibration | None) -> list[dict]:
    """The runs of the job: ``{"name", "sampler", "steps", "guidance_devices"}``; the first is
    the serial baseline, its guidance branches batched on one device (what one device does);
    every other run takes ``--guidance-devices``, and with the branches split serial runs again
    as ``serial_split`` (the exact split a user already has)."""
    split = args.guidance_devices
    if calibration is not None:
        best, serial = calibration.best, calibration.best_serial
        runs = [{"name": "serial", "sampler": Serial(solver=best.solver), "steps": best.steps}]
        if best.sampler != "serial":
            runs.append({"name": "chosen", "sampler": best.make_sampler(), "steps": best.steps})
        runs.append(
            {"name": "best_serial", "sampler": serial.make_sampler(), "steps": serial.steps}
        )
        return [{**run, "guidance_devices": 1 if i == 0 else split} for i, run in enumerate(runs)]
    samplers: list[SamplerFn] = cli.samplers_from_args(args, devices, num_steps=args.steps)
    baseline = Serial(solver=args.solver)
    if baseline not in samplers:
        samplers.insert(0, baseline)  # the reference for speedup and deviation
    else:
        samplers.insert(0, samplers.pop(samplers.index(baseline)))
    names = unique_names(samplers)  # two settings of one sampler: distinct folders
    runs = [
        {"name": name, "sampler": sampler, "steps": args.steps, "guidance_devices": split}
        for name, sampler in zip(names, samplers, strict=True)
    ]
    runs[0]["guidance_devices"] = 1
    if split != 1:
        runs.insert(1, {**runs[0], "name": "serial_split", "guidance_devices": split})
    return runs


def calibration_for(
    args: argparse.Namespace, model: DigitsModel, devices: int, write: bool = True
) -> Calibration | None:
    """The calibration of ``--rounds`` (from the cache when its settings match; the cache is
    written when ``write``)."""
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
    if write:
        payload = {"settings": settings, "calibration": result.to_dict()}
        atomic_write(cache, lambda p: p.write_text(json.dumps(payload, indent=2)))
    return result


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What determines this folder's outputs, known before any process starts: a rerun under
    the same settings rewrites the same files (the job measures, so it measures again); one
    under other settings is refused (or goes to ``--new-out``), never mixed into the folder."""
    world = cli.planned_world_size(args)
    devices = args.draft_devices or world
    return {
        "model": str(args.model) if args.model else "shipped",
        "samplers": [repr(s) for s in cli.samplers_from_args(args, devices, num_steps=args.steps)],
        "solver": args.solver,
        "steps": args.steps,
        "rounds": args.rounds,
        "guidance": args.guidance,
        "seed": args.seed,
        "n_per_class": args.n_per_class,
        "batch_size": args.batch_size,
        "reference_points": args.reference_points,
        "fid": not args.no_fid,
        "world_size": world,
        "draft_devices": devices,
        "guidance_devices": args.guidance_devices,
        "compile": args.compile,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # checked before any process starts: one run per folder, under one set of settings
    if args.new_out:  # every rank picks the same folder: they read the same manifests
        args.out = RunFolder.matching(args.out, settings(args)).path
    folder = (
        RunFolder(args.out, settings(args)) if owns_output_folder() else contextlib.nullcontext()
    )
    with folder, Session.from_args(args, callbacks=[ProgressBar()]) as session:
        run_job(args, session)


def run_job(args: argparse.Namespace, session: Session) -> None:
    model = load_digits(args.model)
    devices = session.draft_devices
    # every rank calibrates the same way (deterministic); the leader writes the cache
    calibration = calibration_for(args, model, devices, write=session.is_leader)
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
    labels = {item["id"]: int(item["cond"]["label"]) for item in items}
    runs = plan(args, devices, calibration)
    if session.is_leader:  # before any sampling: a choice outside the safe region is warned of
        for line in configuration_notes({run["name"]: run for run in runs}, devices):
            print(f"note: {line}", file=sys.stderr)

    def predict(sampler: Any, schedule: Any, some: list[dict], **options: Any) -> list:
        module = DiffusionSamplerModule(
            denoiser, schedule, (1, 16, 16), sampler, compile=args.compile
        )
        return session.predict(module, some, batch_size=args.batch_size, **options)

    # untimed: the reference solution (each rank solves its share alone), and one warm-up batch
    # so that no timed sampler pays for start-up
    reference = predict(
        Serial(solver="dpmpp_3m"),
        reference_schedule(model.alphas_cumprod, args.reference_points),
        items,
        draft_devices=1,
    )
    predict(runs[0]["sampler"], model.schedule(runs[0]["steps"]), items[: args.batch_size])

    reference_images, _ = digits_dataset("test")
    serial_x: dict[Any, torch.Tensor] = {}
    results: dict[str, dict[str, Any]] = {}
    done_rounds: set[int] = set()
    queue = list(runs)
    while queue:
        run = queue.pop(0)
        metrics: list[Any] = [
            ReferenceErrorCallback(outputs_by_id(reference)),
            AccuracyCallback(model.classify, labels),
        ]
        if serial_x:  # every run after the serial baseline
            metrics.append(SerialDeviationCallback(serial_x))
        if not args.no_fid:
            metrics.append(
                FidelityCallback(reference_images, feature_extractor="driffusion-digits")
            )
        wall, outputs = session.timed(
            lambda run=run, metrics=metrics: predict(
                run["sampler"],
                model.schedule(run["steps"]),
                items,
                callbacks=metrics,
                guidance_devices=run["guidance_devices"],
            ),
            run["name"],
        )
        scores: dict[str, Any] = {} if serial_x else {"max_abs_dev": 0.0}
        serial_x = serial_x or outputs_by_id(outputs)
        for callback in metrics:
            scores.update(callback.results or {})
        rounds = max(o.stats.rounds for o in outputs)
        results[run["name"]] = {
            **run,
            "wall_s": wall,
            "outputs": outputs,
            "rounds": rounds,
            "scores": scores,
            "guidance_devices": max(o.guidance_devices for o in outputs),
            "bytes_received": sum(o.bytes_received for o in outputs),
            "batch_rounds": sum(o.stats.rounds for o in outputs),
        }
        # the honest baseline: the same solver, serially, at this sampler's round count
        parallel = getattr(run["sampler"], "parallel", True) and calibration is None
        if parallel and rounds < run["steps"] and rounds not in done_rounds:
            done_rounds.add(rounds)
            steps = rounds - (1 if args.solver == "plms" else 0)
            baseline = Serial(solver=args.solver)
            queue.insert(
                0,
                {
                    "name": f"serial@{rounds}",
                    "sampler": baseline,
                    "steps": steps,
                    "guidance_devices": run["guidance_devices"],  # the split it had, serially
                },
            )

    if session.is_leader:
        report(args, model, items, results, devices, calibration)


def verdicts(rows: list[dict[str, Any]], devices: int) -> list[str]:
    """One plain line per parallel sampler: does it save rounds on these devices, and is it as
    close to the solution as the same solver run serially for as many rounds?"""
    by_name = {row["sampler"]: row for row in rows}
    serial = rows[0]
    lines = []
    for row in rows[1:]:
        if row["sampler"].startswith("serial") or row["devices"] == 1:
            continue
        head = f"{row['sampler']} ({row['setting']}) on {devices} device(s):"
        if row["rounds"] >= serial["rounds"]:
            lines.append(
                f"{head} {row['rounds']} rounds, no fewer than serial's {serial['rounds']}: it "
                f"saves no rounds here (err_ref {row['err_ref']:.3g}, serial's "
                f"{serial['err_ref']:.3g})"
            )
            continue
        same = by_name.get(f"serial@{row['rounds']}")
        if same is None:
            continue
        better = row["err_ref"] <= same["err_ref"]
        lines.append(
            f"{head} {row['rounds']} rounds of {serial['rounds']}, err_ref {row['err_ref']:.3g} "
            f"against {same['err_ref']:.3g} for serial at {row['rounds']} rounds: "
            + (
                "it helps (closer to the solution at equal latency)"
                if better
                else "it saves rounds but is further from the solution than serial at equal latency"
            )
        )
    return lines


def configuration_notes(results: dict[str, dict], devices: int) -> list[str]:
    """Why a sampler takes fewer drafts than devices (measured safe region), or the warning for
    drafts chosen outside it, one line per sampler that has one."""
    lines = []
    for name, res in results.items():
        note, _ = cli.rows_notes(res["sampler"], devices, res["steps"])
        if note is not None:
            lines.append(f"{name}: {note}")
    return lines


def report(
    args: argparse.Namespace,
    model: Any,
    items: list[dict],
    results: dict[str, dict],
    devices: int,
    calibration: Calibration | None,
) -> None:
    """Write the PNGs, the grid and ``report.json``; print the table."""
    baseline = results["serial"]
    rows, grid_rows = [], []
    for name, res in results.items():
        label = repr(res["sampler"])
        parallel = getattr(res["sampler"], "parallel", True)
        split = res["guidance_devices"] == 2
        rows.append(
            {
                "sampler": name,
                "devices": devices if parallel else (min(devices, 2) if split else 1),
                "guidance_devices": res["guidance_devices"],
                "bytes_per_round": res["bytes_received"] / res["batch_rounds"],
                "bytes_per_image": res["bytes_received"] / len(items),
                "steps": res["steps"],
                "rounds": res["rounds"],
                "wall_s": res["wall_s"],
                "speedup": baseline["wall_s"] / res["wall_s"],
                "err_ref": res["scores"]["err_ref"],
                "max_abs_dev": res["scores"]["max_abs_dev"],
                "accuracy": res["scores"]["accuracy"],
                "fid": res["scores"].get("frechet_inception_distance"),  # null: --no-fid
                "setting": label,
            }
        )
        x = outputs_by_id(res["outputs"])
        first_of_each: dict[int, torch.Tensor] = {}
        for item in items:
            digit = int(item["cond"]["label"])
            meta = {
                "digit": digit,
                "seed": item["seed"],
                "sampler": label,
                "steps": res["steps"],
                "guidance": args.guidance,
            }
            save_png(args.out / name / f"{item['id']}.png", x[item["id"]], meta)
            first_of_each.setdefault(digit, x[item["id"]])
        row_images = [first_of_each[d] for d in range(NUM_CLASSES)]
        grid_rows.append((f"{label}\n{res['steps']} steps, {res['rounds']} rounds", row_images))

    grid = labelled_grid(grid_rows, label_width=280)
    save_png(args.out / "grid.png", grid, {"samplers": ", ".join(results)})
    spread = (
        "serial samplers evaluate one state per round: rank 0 of the draft group computes it "
        f"while the other {devices - 1} rank(s) wait for the gather (one device's work)"
    )
    if any(res["guidance_devices"] == 2 for res in results.values()):
        spread += (
            "; with the guidance branches split (guidance_devices 2) the state's two branches "
            "run on two ranks and every rank combines them after the gather (exact)"
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
        "nulls": "fid is null when skipped with --no-fid",
        "verdicts": verdicts(rows, devices),
        "configuration": configuration_notes(results, devices),
    }
    write_json(args.out / "report.json", payload)

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
    print(markdown_table(rows, KEYS))
    print("\n" + "\n".join(f"- {line}" for line in payload["verdicts"]))
    if payload["configuration"]:
        print("\n" + "\n".join(f"- {line}" for line in payload["configuration"]))
    print(f"\nwrote {args.out / 'grid.png'}, {args.out / 'report.json'} and one PNG per sample")


if __name__ == "__main__":
    cli.exit_on_usage_error(main)
