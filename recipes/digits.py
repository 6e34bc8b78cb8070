"""The main job: every digit with serial, DRiffusion (aggressive, conservative) and SRDS.

    fabric run --accelerator cpu --devices 2 --strategy ddp recipes/digits.py
    python recipes/digits.py --devices 2 --strategy ddp --accelerator cpu   # same, from code

Uses the embedded model (trained here, shipped in the package). All ranks form one draft group
(``--draft-devices`` to change), so each parallel round's evaluations are split across devices.
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
from driffusion.core import SAMPLER_NAMES, SamplerSpec, aggressive_rounds
from driffusion.images import atomic_write, labelled_grid, save_png
from driffusion.lightning import (
    DiffusionSamplerModule,
    ProgressBar,
    add_fabric_args,
    build_fabric,
    finish,
    run_predict,
)
from driffusion.models.digits import NUM_CLASSES, digits_dataset, load_digits

KEYS = [
    "sampler",
    "devices",
    "steps",
    "rounds",
    "wall_s",
    "speedup",
    "max_abs_dev",
    "mean_abs_dev",
    "accuracy",
    "fid",
]


def parse_args() -> argparse.Namespace:
    parser = add_fabric_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--drafts", type=int, default=None, help="DRiffusion drafts (default: draft-group size)"
    )
    parser.add_argument(
        "--blocks", type=int, default=None, help="SRDS blocks (default: sqrt(steps))"
    )
    parser.add_argument("--srds-tol", type=float, default=1e-3)
    parser.add_argument(
        "--samplers", default="serial,aggressive,conservative,srds,paradigms,serial_reduced"
    )
    parser.add_argument(
        "--window", type=int, default=None, help="ParaDiGMS window (default: drafts)"
    )
    parser.add_argument("--paradigms-tol", type=float, default=1e-3)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-per-class", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=50)
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
    if args.steps < 1 or args.n_per_class < 1 or args.batch_size < 1:
        parser.error("--steps, --n-per-class and --batch-size must be >= 1")
    if args.drafts is not None and args.drafts < 1:
        parser.error(f"--drafts must be >= 1, got {args.drafts}")
    return args


def main() -> None:
    args = parse_args()
    fabric = build_fabric(args, callbacks=[ProgressBar()])
    layout = make_layout(args.draft_devices, timeout_s=args.timeout)
    model = load_digits(args.model)
    schedule = model.schedule(args.steps)
    denoiser = model.denoiser(args.guidance)
    items = [
        {
            "id": f"digit{d}_seed{args.seed + j}",
            "seed": args.seed + 100 * d + j,
            "cond": {"label": torch.tensor(d)},
        }
        for j in range(args.n_per_class)
        for d in range(NUM_CLASSES)
    ]
    drafts = args.drafts or layout.draft_devices
    results: dict[str, dict[str, Any]] = {}
    for name in args.samplers:
        spec = SamplerSpec(
            name,
            drafts=drafts,
            blocks=args.blocks,
            tol=args.paradigms_tol if name == "paradigms" else args.srds_tol,
            window=args.window or drafts,
            # step reduction to the serial rounds of aggressive DRiffusion with these drafts
            rounds=aggressive_rounds(args.steps, drafts),
        )
        module = DiffusionSamplerModule(denoiser, schedule, (1, 16, 16), spec)
        barrier(layout, f"start of {name}")
        start = time.perf_counter()
        outputs = run_predict(fabric, module, items, batch_size=args.batch_size, layout=layout)
        wall = max(gather_objects(layout, time.perf_counter() - start))
        results[name] = {
            "spec": spec,
            "wall_s": wall,
            "x": torch.cat([o.x for o in outputs]),
            "ids": [i for o in outputs for i in o.ids],
            "seeds": [s for o in outputs for s in o.seeds],
            "rounds": max(o.stats.rounds for o in outputs),
        }

    if fabric.global_rank == 0:
        report(args, model, items, results, layout.draft_devices)
    finish()


def report(
    args: argparse.Namespace, model: Any, items: list[dict], results: dict[str, dict], devices: int
) -> None:
    labels = torch.tensor([int(item["cond"]["label"]) for item in items])
    order = {item["id"]: k for k, item in enumerate(items)}
    serial = results["serial"]
    reference_images, _ = digits_dataset("test")
    rows, grid_rows = [], []
    for name, res in results.items():
        index = torch.tensor([order[i] for i in res["ids"]])
        x = torch.empty_like(res["x"])
        x[index] = res["x"]  # back to item order
        res["x"] = x
        diff = (x - serial["x"]).abs().flatten(1)
        accuracy = float((model.classify(x) == labels).float().mean())
        fid = float("nan")
        if not args.no_fid:
            from driffusion.eval.digits_fid import digits_fid

            fid = digits_fid(x, reference_images)["frechet_inception_distance"]
        rows.append(
            {
                "sampler": name,
                "devices": 1 if name in ("serial", "serial_reduced") else devices,
                "steps": args.steps,
                "rounds": res["rounds"],
                "wall_s": res["wall_s"],
                "speedup": serial["wall_s"] / res["wall_s"],
                "max_abs_dev": float(diff.max()),
                "mean_abs_dev": float(diff.mean()),
                "accuracy": accuracy,
                "fid": fid,
                "setting": res["spec"].label(),
            }
        )
        for k, item in enumerate(items):
            meta = {
                "digit": int(labels[k]),
                "seed": item["seed"],
                "sampler": res["spec"].label(),
                "steps": args.steps,
                "guidance": args.guidance,
            }
            save_png(args.out / name / f"{item['id']}.png", x[k], meta)
        first_of_each = [x[labels.tolist().index(d)] for d in range(NUM_CLASSES)]
        grid_rows.append((res["spec"].label(), first_of_each))

    grid = labelled_grid(grid_rows)
    atomic_write(args.out / "grid.png", lambda p: grid.save(p, format="PNG"))
    payload = {
        "rows": rows,
        "model": str(model.path),
        "guidance": args.guidance,
        "n_per_class": args.n_per_class,
    }
    atomic_write(args.out / "report.json", lambda p: p.write_text(json.dumps(payload, indent=2)))

    print(
        f"\ndigits: {len(items)} samples per sampler, guidance {args.guidance:g}, "
        f"{devices} device(s) per draft group\n"
    )
    print("| " + " | ".join(KEYS) + " |")
    print("|" + "---|" * len(KEYS))
    for row in rows:
        cells = [f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in KEYS]
        print("| " + " | ".join(cells) + " |")
    print(f"\nwrote {args.out / 'grid.png'}, {args.out / 'report.json'} and one PNG per sample")


if __name__ == "__main__":
    main()
