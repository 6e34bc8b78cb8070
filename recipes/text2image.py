"""The text-to-image job behind ``sd21.py``, ``sdxl.py`` and ``sd3.py`` in this folder.

One CLI shape for all three: ``--model --prompt/--prompts-file --negative-prompt --steps
--guidance --height --width --seed --sampler --solver --drafts --precision --out --tiny``, plus
the session flags (launch flags of ``fabric run``, ignored under it; ``--draft-devices``,
``--timeout``). ``--sampler`` takes a built-in sampler with its settings
(``'srds(pipelined=True)'``) or an import path ``path/to/file.py:NAME``. Every rank of a draft
group holds the pipeline; the evaluations of each parallel round are split across the group;
data-parallel replicas take different prompts. Outputs (written by the leader, atomically): one
PNG per image with its prompt, negative prompt, seed, sampler, steps and guidance in PNG text
metadata, a grid, and ``report.json`` with per-image wall time, rounds and evaluations.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from driffusion.adapters.diffusers import (
    FAMILIES,
    WEIGHT_DTYPES,
    Family,
    PipelineAdapter,
    adapt_pipeline,
    load_pipeline,
    read_schedule,
)
from driffusion.core import (
    BatchedExecutor,
    Calibration,
    RowwiseModel,
    SamplerFn,
    calibrate,
    initial_noise,
    reference_solution,
)
from driffusion.io import labelled_grid, save_png, write_json
from driffusion.lightning import ProgressBar, Session, cli
from driffusion.lightning.text2image import PromptSamplerModule, collate_prompts


def parse_args(family: Family, argv: list[str] | None = None) -> argparse.Namespace:
    """The recipes' shared command line, with ``family``'s defaults."""
    parser = argparse.ArgumentParser(description=f"{family.name}: text to image with driffusion")
    parser.add_argument("--model", default=family.model, help="hub id or local folder")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", type=Path, help="one prompt per line")
    parser.add_argument("--negative-prompt", default="")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help=f"default {family.steps}")
    budget.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="a latency budget in serial rounds: calibrate steps, drafts, mode and solver "
        "on the first prompt (VP models: sd21, sdxl)",
    )
    parser.add_argument("--reference-points", type=int, default=200, help="with --rounds")
    parser.add_argument("--guidance", type=float, default=family.guidance)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="image k uses seed + k")
    parser.add_argument(
        "--precision", choices=sorted(WEIGHT_DTYPES), default="fp32", help="weights"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(f"outputs/{family.name}"))
    parser.add_argument("--tiny", action="store_true", help="random tiny model built in code")
    cli.add_sampler_args(parser, default=("aggressive",))
    cli.add_session_args(parser, precision=False)
    args = parser.parse_args(argv)
    cli.check_sampler_args(parser, args)
    if args.sampler is not None and len(args.sampler) > 1:
        parser.error("give one --sampler (this recipe writes one image per prompt)")
    prompts = list(args.prompt or [])
    if args.prompts_file:
        if not args.prompts_file.is_file():
            parser.error(f"--prompts-file {args.prompts_file} does not exist")
        prompts += [p.strip() for p in args.prompts_file.read_text().splitlines() if p.strip()]
    if not prompts:
        parser.error("give at least one --prompt or a --prompts-file")
    args.prompts = prompts
    if args.steps is None and args.rounds is None:
        args.steps = family.steps
    for name in ("steps", "rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.rounds is not None and family.name == "sd3":
        parser.error("--rounds calibrates against a VP reference solve: sd21 and sdxl only")
    if args.reference_points < 20:
        parser.error(f"--reference-points must be >= 20, got {args.reference_points}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def load_family_pipeline(family: Family, model: str, tiny: bool, precision: str) -> tuple:
    """``(pipe, default size)``: the family's pipeline from ``model`` (a hub id or folder), or a
    tiny random one built in code; a missing model fails here, before any process starts."""
    if tiny:
        from driffusion.adapters.tiny import build_tiny_pipeline

        return build_tiny_pipeline(family.name), 32
    return load_pipeline(family.name, model, WEIGHT_DTYPES[precision]), family.size


def main(family_name: str, argv: list[str] | None = None) -> list[dict]:
    """Load (or build, with ``--tiny``) the pipeline, sample every prompt, write the outputs.

    Returns the per-image report rows on the leader (an empty list elsewhere).
    """
    family = FAMILIES[family_name]
    args = parse_args(family, argv)
    pipe, size = load_family_pipeline(family, args.model, args.tiny, args.precision)
    with Session.from_args(args, callbacks=[ProgressBar(family.name)]) as session:
        return generate(args, family, pipe.to(session.device), size, session)


def generate(
    args: argparse.Namespace, family: Family, pipe: Any, size: int, session: Session
) -> list[dict]:
    """Sample every prompt of ``args`` in the session; the leader writes the outputs."""
    height, width = args.height or size, args.width or size

    def adapt(steps: int) -> PipelineAdapter:
        return adapt_pipeline(pipe, steps, height=height, width=width, guidance=args.guidance)

    calibration = None
    if args.rounds is not None:
        calibration = calibrate_prompt(args, pipe, adapt(family.steps), session.draft_devices)
        args.steps = calibration.best.steps
        sampler: SamplerFn = calibration.best.make_sampler()
    else:
        sampler = cli.samplers_from_args(args, session.draft_devices)[0]
    module = PromptSamplerModule(adapt(args.steps), sampler)
    items = [
        {
            "id": f"{k:05d}",
            "seed": args.seed + k,
            "prompt": p,
            "negative_prompt": args.negative_prompt,
        }
        for k, p in enumerate(args.prompts)
    ]
    outputs = session.predict(module, items, batch_size=args.batch_size, collate_fn=collate_prompts)
    if not session.is_leader:
        return []
    return write_outputs(args, family, sampler, items, outputs, session.draft_devices, calibration)


def calibrate_prompt(
    args: argparse.Namespace, pipe: Any, adapter: PipelineAdapter, devices: int
) -> Calibration:
    """Pick the configuration for ``--rounds`` on the first prompt (every rank alike)."""
    cond = adapter.encode([args.prompts[0]], [args.negative_prompt])
    model = BatchedExecutor(RowwiseModel(adapter.network, cond))
    x = initial_noise([args.seed], adapter.latent_shape, device=pipe.device)
    scheduler = pipe.scheduler
    with torch.inference_mode():
        x_ref = reference_solution(
            model,
            x,
            scheduler.alphas_cumprod.cpu(),
            args.reference_points,
            scheduler.config.prediction_type,
        )
        result = calibrate(
            model,
            x,
            lambda steps: read_schedule(scheduler, steps),
            x_ref,
            rounds=args.rounds,
            devices=devices,
        )
    print(
        f"--rounds {args.rounds} on {devices} device(s): chose {result.best.label()} "
        f"(err_ref {result.best.err_ref:.3g} on the first prompt); the best serial solver in "
        f"the same rounds: {result.best_serial.label()} (err_ref {result.best_serial.err_ref:.3g})"
    )
    return result


def write_outputs(
    args: argparse.Namespace,
    family: Family,
    sampler: SamplerFn,
    items: list[dict],
    outputs: list,
    devices: int,
    calibration: Calibration | None = None,
) -> list[dict]:
    """Write one PNG per image (with metadata), the grid and ``report.json``; return the rows."""
    by_id = {item["id"]: item for item in items}
    rows, images = [], []
    for output in outputs:
        assert output.images is not None
        for sample_id, image in zip(output.ids, output.images, strict=True):
            item = by_id[sample_id]
            meta = {
                "prompt": item["prompt"],
                "negative_prompt": item["negative_prompt"],
                "seed": item["seed"],
                "sampler": repr(sampler),
                "steps": args.steps,
                "guidance": args.guidance,
                "model": "tiny" if args.tiny else args.model,
            }
            save_png(args.out / f"{sample_id}.png", image, meta)
            images.append(image)
            rows.append(
                {
                    "id": sample_id,
                    **meta,
                    "devices": devices,
                    "wall_s": output.wall_s / len(output.ids),
                    "batch_wall_s": output.wall_s,
                    "rounds": output.stats.rounds,
                    "evaluations": output.stats.evaluations,
                }
            )
    grid = labelled_grid([(repr(sampler), images)], scale=1)
    save_png(args.out / "grid.png", grid, {"sampler": repr(sampler)})
    report = {
        "family": family.name,
        "command": " ".join(sys.argv),
        "images": rows,
        "calibration": calibration.to_dict() if calibration is not None else None,
    }
    write_json(args.out / "report.json", report)
    print(f"{family.name}: wrote {len(rows)} image(s), grid.png and report.json to {args.out}")
    for row in rows:
        rounds, evaluations = row["rounds"], row["evaluations"]
        print(f"  {row['id']}: {row['wall_s']:.2f}s, {rounds} rounds, {evaluations} evaluations")
    return rows


def run_recipe(family_name: str) -> None:
    """Entry point of a recipe script; a missing model exits with one clear message."""
    from driffusion.adapters.diffusers import ModelNotAvailableError

    try:
        main(family_name)
    except ModelNotAvailableError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
