"""The text-to-image job behind the recipes ``sd21.py``, ``sdxl.py`` and ``sd3.py``.

It is what a diffusers user writes, plus the files: load the pipeline (``--tiny`` builds a small
random one), optionally swap its scheduler (``--scheduler``), ``parallelize`` it with the
sampler, call it like the pipeline (one seeded generator per image), save PNGs. See
``generate`` below, top to bottom.

One CLI shape for all three: ``--model --prompt/--prompts-file --negative-prompt --steps
--guidance --height --width --seed --sampler --solver --drafts --precision --scheduler --no-t5
--out --tiny``, plus
the session flags (launch flags of ``fabric run``, ignored under it; ``--draft-devices``,
``--timeout``). ``--sampler`` takes a built-in sampler with its settings
(``'srds(pipelined=True)'``) or an import path ``path/to/file.py:NAME``. Every rank of a draft
group holds the pipeline; the evaluations of each parallel round are split across the group;
data-parallel replicas take different prompts. Outputs (written by the leader, atomically): one
PNG per image with its prompt, negative prompt, seed, sampler, drafts, devices, scheduler, steps
and guidance in PNG text metadata, a grid, and ``report.json`` with per-image wall time, rounds,
evaluations and memory. The image depends on the sampler and its drafts (``--drafts``, default
the draft-group size), never on the devices: give ``--drafts`` to get the same image anywhere.

"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from driffusion.adapters.diffusers import (
    FAMILIES,
    WEIGHT_DTYPES,
    Family,
    PipelineAdapter,
    adapt_pipeline,
    image_size,
    load_pipeline,
)
from driffusion.adapters.schedulers import SUPPORTED_SCHEDULERS, schedule_from_scheduler
from driffusion.core import (
    BatchedExecutor,
    Calibration,
    RowwiseModel,
    SamplerFn,
    calibrate,
    initial_noise,
    reference_solution,
)
from driffusion.io import RunFolder, labelled_grid, save_png, write_json
from driffusion.lightning import Session, cli
from driffusion.lightning.launch import owns_output_folder, under_fabric_cli
from driffusion.lightning.pipeline import parallelize


def parse_args(family: Family, argv: list[str] | None = None) -> argparse.Namespace:
    """The recipes' shared command line, with ``family``'s defaults."""
    parser = argparse.ArgumentParser(description=f"{family.name}: text to image with driffusion")
    parser.add_argument("--model", default=family.model, help="hub id or local folder")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", type=Path, help="one prompt per line")
    parser.add_argument(
        "--negative-prompt", default=None, help="default: the pipeline's own (zeros for SDXL)"
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps", type=cli.positive_int, default=None, help=f"default {family.steps}"
    )
    budget.add_argument(
        "--rounds",
        type=cli.positive_int,
        default=None,
        help="a latency budget in serial rounds: calibrate steps, drafts, mode and solver "
        "on the first prompt (VP models: sd21, sdxl)",
    )
    parser.add_argument("--reference-points", type=int, default=200, help="with --rounds")
    parser.add_argument("--guidance", type=cli.nonnegative_float, default=family.guidance)
    parser.add_argument("--height", type=cli.positive_int, default=None)
    parser.add_argument("--width", type=cli.positive_int, default=None)
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0, help="image k uses seed + k")
    parser.add_argument(
        "--precision", choices=sorted(WEIGHT_DTYPES), default="fp32", help="weights"
    )
    parser.add_argument("--batch-size", type=cli.positive_int, default=1)
    parser.add_argument("--out", type=Path, default=Path(f"outputs/{family.name}"))
    parser.add_argument("--tiny", action="store_true", help="random tiny model built in code")
    parser.add_argument(
        "--scheduler",
        default=None,
        help="a diffusers scheduler class to swap in, e.g. DPMSolverMultistepScheduler "
        f"(supported: {', '.join(SUPPORTED_SCHEDULERS)})",
    )
    parser.add_argument("--no-t5", action="store_true", help="SD3 without its T5 encoder")
    cli.add_sampler_args(parser, default=("aggressive",))
    cli.add_session_args(parser, precision=False)
    args = parser.parse_args(argv)
    cli.check_sampler_args(parser, args)
    if args.sampler is not None and len(args.sampler) > 1:
        parser.error("give one --sampler (this recipe writes one image per prompt)")
    prompts = list(args.prompt or [])
    if args.prompts_file:
        if args.prompts_file.is_dir():
            parser.error(f"--prompts-file {args.prompts_file} is a folder, not a file")
        if not args.prompts_file.is_file():
            parser.error(f"--prompts-file {args.prompts_file} does not exist")
        try:
            text = args.prompts_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            parser.error(f"--prompts-file {args.prompts_file} is not UTF-8 text ({error.reason})")
        from_file = [p.strip() for p in text.splitlines() if p.strip()]
        if not from_file:
            parser.error(f"--prompts-file {args.prompts_file} holds no prompt (empty lines only)")
        prompts += from_file
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


def load_family_pipeline(
    family: Family,
    model: str,
    tiny: bool,
    precision: str,
    scheduler: str | None = None,
    no_t5: bool = False,
    device: torch.device | None = None,
) -> tuple:
    """``(pipe, default size)``: the family's pipeline from ``model`` (a hub id or folder), or a
    tiny random one built in code; a missing model fails here, before any process starts.
    ``scheduler`` names a diffusers scheduler class to swap in (from the pipeline's config)."""
    if tiny:
        from driffusion.adapters.tiny import build_tiny_pipeline

        pipe, size = build_tiny_pipeline(family.name), 32
        if no_t5:
            pipe.text_encoder_3, pipe.tokenizer_3 = None, None
    else:
        dtype = WEIGHT_DTYPES[precision]
        pipe, size = load_pipeline(family.name, model, dtype, no_t5=no_t5, device=device), None
    if scheduler is not None:
        import diffusers

        cls = getattr(diffusers, scheduler, None)
        if cls is None or not scheduler.endswith("Scheduler"):
            raise ValueError(f"--scheduler {scheduler!r} is not a diffusers scheduler class")
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    return pipe, size


def main(family_name: str, argv: list[str] | None = None) -> list[dict]:
    """Load (or build, with ``--tiny``) the pipeline, sample every prompt, write the outputs.

    Returns the per-image report rows on the leader (an empty list elsewhere).
    """
    family = FAMILIES[family_name]
    args = parse_args(family, argv)
    fabric_precision = os.environ.get("LT_PRECISION") if under_fabric_cli() else None
    if fabric_precision not in (None, "", "32", "32-true"):
        raise SystemExit(
            f"error: `fabric run --precision {fabric_precision}` is not applied to a diffusers "
            "pipeline; choose the weight dtype with the recipe's --precision fp16|bf16|fp32"
        )
    # an unusable --out fails now, before any model is loaded; one run at a time writes into it
    folder = RunFolder(args.out) if owns_output_folder() else contextlib.nullcontext()
    with folder, Session.from_args(args) as session:  # each rank loads to its own device
        pipe, size = load_family_pipeline(
            family,
            args.model,
            args.tiny,
            args.precision,
            args.scheduler,
            args.no_t5,
            session.device,
        )
        return generate(args, family, pipe.to(session.device), size, session)


def generate(
    args: argparse.Namespace, family: Family, pipe: Any, size: int | None, session: Session
) -> list[dict]:
    """Sample every prompt of ``args`` in the session; the leader writes the outputs.

    Each draft group holds the pipeline and splits every round's evaluations; data-parallel
    groups take every ``r``-th batch of prompts. An image depends on its prompt, seed, sampler
    (drafts included) and steps, never on the devices.
    """
    try:  # a size the model cannot take is an argument error, before any sampling
        height, width = image_size(pipe, args.height or size, args.width or size)
    except ValueError as error:
        raise SystemExit(f"error: --height/--width: {error}") from None
    calibration = None
    if args.rounds is not None:
        adapter = adapt_pipeline(
            pipe, family.steps, height=height, width=width, guidance=args.guidance
        )
        calibration = calibrate_prompt(args, pipe, adapter, session.draft_devices)
        args.steps = calibration.best.steps
        sampler: SamplerFn = calibration.best.make_sampler()
    else:
        sampler = cli.samplers_from_args(args, session.draft_devices)[0]
    ppipe = parallelize(pipe, sampler, session=session)
    items = [
        {
            "id": f"{k:05d}",
            "seed": args.seed + k,
            "prompt": p,
            "negative_prompt": args.negative_prompt,
        }
        for k, p in enumerate(args.prompts)
    ]
    batches = [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]
    done = []
    for batch in batches[session.layout.replica :: session.layout.replicas]:
        start = time.perf_counter()
        out = ppipe(
            [item["prompt"] for item in batch],
            negative_prompt=args.negative_prompt,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            height=height,
            width=width,
            generator=[torch.Generator().manual_seed(item["seed"]) for item in batch],
            output_type="pt",
        )
        wall = time.perf_counter() - start
        if session.layout.is_group_leader:
            done += [
                (item, image, out.stats, wall)
                for item, image in zip(batch, out.images, strict=True)
            ]
    everything = [entry for part in session.gather(done) for entry in part]
    memory = session.gather(_peak_memory(session.device))
    if not session.is_leader:
        return []
    everything.sort(key=lambda entry: entry[0]["id"])
    return write_outputs(args, family, everything, memory, calibration)


def _peak_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def calibrate_prompt(
    args: argparse.Namespace, pipe: Any, adapter: PipelineAdapter, devices: int
) -> Calibration:
    """Pick the configuration for ``--rounds`` on the first prompt (every rank alike)."""
    negative = None if args.negative_prompt is None else [args.negative_prompt]
    cond = adapter.encode([args.prompts[0]], negative)
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
            lambda steps: schedule_from_scheduler(scheduler, steps),
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
    done: list[tuple[dict, torch.Tensor, dict, float]],
    memory: list[int | None],
    calibration: Calibration | None = None,
) -> list[dict]:
    """Write one PNG per image (with metadata), the grid and ``report.json``; return the rows.

    ``done`` holds ``(item, image in [0, 1], stats of its batch, batch wall seconds)``.
    """
    rows, images = [], []
    for item, image, stats, wall in done:
        meta = {
            "prompt": item["prompt"],
            "negative_prompt": item["negative_prompt"] or "",
            "seed": item["seed"],
            "sampler": stats["sampler"],
            "rows": stats["rows"],
            "devices": stats["devices"],
            "scheduler": stats["scheduler"],
            "steps": stats["steps"],
            "guidance": stats["guidance_scale"],
            "model": "tiny" if args.tiny else args.model,
        }
        save_png(args.out / f"{item['id']}.png", image * 2 - 1, meta)
        images.append(image * 2 - 1)
        rows.append(
            {
                "id": item["id"],
                **meta,
                "wall_s": wall / stats["batch"],
                "batch_wall_s": wall,
                "rounds": stats["rounds"],
                "evaluations": stats["evaluations"],
            }
        )
    sampler = rows[0]["sampler"]
    save_png(
        args.out / "grid.png", labelled_grid([(sampler, images)], scale=1), {"sampler": sampler}
    )
    stats = done[0][2]
    # the k states of a round: [k, B, C, h, w] float32 latents beyond what serial holds
    draft_bytes = stats["rows"] * stats["batch"] * math.prod(stats["latent_shape"]) * 4
    report = {
        "family": family.name,
        "command": " ".join(sys.argv),
        "images": rows,
        "memory": {
            "peak_device_bytes_per_rank": memory if any(m is not None for m in memory) else None,
            "draft_state_bytes": draft_bytes,
        },
        "depends_on": "prompt, seed, sampler (drafts included), steps, guidance, size; not devices",
        "calibration": calibration.to_dict() if calibration is not None else None,
    }
    write_json(args.out / "report.json", report)
    print(f"{family.name}: wrote {len(rows)} image(s), grid.png and report.json to {args.out}")
    for row in rows:
        rounds, evaluations = row["rounds"], row["evaluations"]
        print(f"  {row['id']}: {row['wall_s']:.2f}s, {rounds} rounds, {evaluations} evaluations")
    return rows


def run_recipe(family_name: str) -> None:
    """Entry point of a recipe script: an error the user can fix (a missing model, a used
    folder, a bad argument) is one line and exit status 2."""
    cli.exit_on_usage_error(lambda: main(family_name))
