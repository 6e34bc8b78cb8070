"""The evaluation protocol of the DRiffusion paper, resumable: MS-COCO 2017 val captions (first
caption of each image), generated data-parallel across ranks, scored side by side.

    fabric run --accelerator cuda --devices 8 --strategy ddp recipes/eval_coco.py \
        --captions annotations/captions_val2017.json --recipe sd21 --reference val2017/ \
        --clip-model openai/clip-vit-large-patch14 --out outputs/coco-sd21
    python recipes/eval_coco.py --recipe digits --out outputs/eval-digits      # offline protocol

Every image is written atomically as ``<out>/<sampler>/<id>.png`` (with a ``<id>.json`` sidecar
holding its wall time, rounds and evaluations); a rerun skips finished images, so a crashed run
resumes where it stopped. Then every sampler is scored against ``--reference`` (FID), its
captions (CLIP score, PickScore, HPSv2.1 when their weights are given) and the serial images of
the same seeds (PSNR, max abs deviation); ``metrics.json`` and ``metrics.md`` hold the table,
including the serial baseline with fewer steps at aggressive DRiffusion's number of rounds.

``--recipe digits`` runs the same protocol offline on the embedded model: captions are
"a handwritten digit D", the reference is the 360 held-out real digits, and FID uses the shipped
digit classifier as feature extractor.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch

from driffusion.core import Aggressive, SamplerFn, SerialReduced, parse_sampler, unique_names
from driffusion.eval.coco import (
    ImageWriter,
    ScoringConfig,
    digits_captions,
    first_captions,
    score_samplers,
    write_metrics,
)
from driffusion.io import RunFolder, finished_record
from driffusion.lightning import DiffusionSamplerModule, ProgressBar, Session, cli
from driffusion.lightning.launch import launching_rank, owns_output_folder


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--captions", type=Path, help="captions_val2017.json (not for digits)")
    parser.add_argument("--recipe", choices=["sd21", "sdxl", "sd3", "digits"], default="digits")
    parser.add_argument("--model", default=None, help="hub id or local folder")
    parser.add_argument("--tiny", action="store_true", help="tiny random model (sd21/sdxl/sd3)")
    parser.add_argument("--steps", type=cli.positive_int, default=None)
    parser.add_argument("--guidance", type=cli.nonnegative_float, default=None)
    parser.add_argument("--limit", type=cli.positive_int, default=5000)
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0)
    parser.add_argument("--batch-size", type=cli.positive_int, default=4)
    parser.add_argument(
        "--size", type=cli.positive_int, default=None, help="image height and width"
    )
    parser.add_argument("--reference", type=Path, help="folder of reference images (FID)")
    parser.add_argument("--fid-extractor", default=None, help="torch-fidelity extractor name")
    parser.add_argument("--fid-weights", type=Path, default=None, help="local extractor weights")
    parser.add_argument("--clip-model", default=None)
    parser.add_argument("--pickscore-model", default=None)
    parser.add_argument("--pickscore-processor", default=None)
    parser.add_argument("--hps-checkpoint", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("outputs/eval"))
    parser.add_argument(
        "--new-out",
        action="store_true",
        help="when --out holds other settings, write to --out-2, --out-3, ... instead of stopping",
    )
    parser.add_argument(
        "--max-images", type=cli.positive_int, default=None, help="stop after this many (test aid)"
    )
    cli.add_sampler_args(parser, default=("serial", "aggressive", "conservative", "srds"))
    cli.add_session_args(parser)
    # the paper's protocol: data parallel (one device per replica), drafts batched on it
    parser.set_defaults(draft_devices=1, drafts=2, window=2)
    args = parser.parse_args()
    cli.check_sampler_args(parser, args)
    if args.recipe != "digits" and args.captions is None:
        parser.error("--captions is required for the Stable Diffusion recipes")
    if args.limit < 1 or args.batch_size < 1:
        parser.error("--limit and --batch-size must be >= 1")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.steps is None:
        from driffusion.adapters.families import FAMILIES

        args.steps = 50 if args.recipe == "digits" else FAMILIES[args.recipe].steps
    return args


def plan(args: argparse.Namespace, devices: int, steps: int) -> list[SamplerFn]:
    """The samplers: serial first (the baseline), and the step-reduced serial baseline at the
    rounds of the first aggressive DRiffusion."""
    samplers = cli.samplers_from_args(args, devices, num_steps=steps)
    if not any(getattr(s, "name", None) == "serial" for s in samplers):
        samplers.insert(
            0, parse_sampler("serial", cli.sampler_defaults(args, devices, num_steps=steps))
        )
    aggressive = next((s for s in samplers if isinstance(s, Aggressive)), None)
    if aggressive is not None and not any(isinstance(s, SerialReduced) for s in samplers):
        samplers.append(SerialReduced(rounds=aggressive.rounds(steps), solver=args.solver))
    return samplers


def build_generator(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any, int]:
    """(make_module(sampler), collate_fn or None, steps) for the chosen recipe."""
    if args.recipe == "digits":
        from driffusion.models.digits import load_digits

        model = load_digits(args.model)
        steps = args.steps or 50
        schedule = model.schedule(steps)
        denoiser = model.denoiser(args.guidance if args.guidance is not None else 2.0).to(device)

        def make_digits(sampler: SamplerFn) -> DiffusionSamplerModule:
            return DiffusionSamplerModule(denoiser, schedule, (1, 16, 16), sampler)

        return make_digits, None, steps
    from driffusion.adapters.diffusers import adapt_pipeline
    from driffusion.adapters.families import FAMILIES
    from driffusion.lightning.text2image import PromptSamplerModule, collate_prompts
    from driffusion.recipes.text2image import load_family_pipeline

    family = FAMILIES[args.recipe]
    pipe, size = load_family_pipeline(family, args.model or family.model, args.tiny, "fp32")
    steps = args.steps or family.steps
    guidance = args.guidance if args.guidance is not None else family.guidance
    adapter = adapt_pipeline(
        pipe.to(device), steps, height=args.size or size, width=args.size or size, guidance=guidance
    )

    def make_sd(sampler: SamplerFn) -> DiffusionSamplerModule:
        return PromptSamplerModule(adapter, sampler)

    return make_sd, collate_prompts, steps


def main() -> None:
    args = parse_args()
    if args.recipe == "digits":
        captions = digits_captions(args.limit)
    else:
        captions = first_captions(args.captions, args.limit)
    items = [
        {"id": key, "seed": args.seed + k, "prompt": caption, "negative_prompt": "", **extra}
        for k, (key, caption, extra) in enumerate(captions)
    ]
    writer = ImageWriter({item["id"]: item for item in items})
    # checked before any model is loaded: one run per folder, under one set of settings
    if args.new_out:  # every rank picks the same folder: they read the same manifests
        args.out = RunFolder.matching(args.out, settings(args)).path
    folder = (
        RunFolder(args.out, settings(args)) if owns_output_folder() else contextlib.nullcontext()
    )
    with folder:
        if launching_rank():
            drop_unreadable_images(args.out)
        with Session.from_args(args, callbacks=[ProgressBar("eval"), writer]) as session:
            evaluate(args, items, writer, session)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What determines the images of this folder (``--limit`` may grow on a resume)."""
    samplers = cli.samplers_from_args(args, args.draft_devices or 1, num_steps=args.steps)
    return {
        "recipe": args.recipe,
        "model": args.model,
        "tiny": args.tiny,
        "captions": str(args.captions) if args.captions else None,
        "samplers": [repr(s) for s in samplers],
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "size": args.size,
        "batch_size": args.batch_size,
    }


def drop_unreadable_images(out: Path) -> None:
    """Delete every PNG that does not decode or lacks a readable record, so it is generated
    again ([`finished_record`][driffusion.io.runs.finished_record])."""
    for png in sorted(out.glob("*/*.png")):
        if png.parent.name != "reference" and finished_record(png) is None:
            print(f"regenerating {png} (unreadable or without its record)", file=sys.stderr)


def evaluate(
    args: argparse.Namespace, items: list[dict], writer: ImageWriter, session: Session
) -> None:
    """Generate what is missing for every sampler, then (on the leader) score them all."""
    make_module, collate_fn, steps = build_generator(args, session.device)
    samplers = plan(args, session.draft_devices, steps)
    names = unique_names(samplers)
    written = 0
    for name, sampler in zip(names, samplers, strict=True):
        folder = args.out / name
        # Resume whole batches of the original run, so that every image is computed in the
        # batch (and batch shape) it would have had uninterrupted: CPU kernels can differ in the
        # last bit between batch shapes. The writer never overwrites a finished image.
        batches = [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]
        todo = [
            item
            for batch in batches
            if any(not (folder / f"{i['id']}.png").exists() for i in batch)
            for item in batch
        ]
        if args.max_images is not None:
            todo = todo[: max(0, args.max_images - written)]
        writer.target(folder, sampler, steps)
        if todo:
            session.predict(
                make_module(sampler), todo, batch_size=args.batch_size, collate_fn=collate_fn
            )
        written += len(todo)
    if args.max_images is not None and written >= args.max_images:
        return
    if session.is_leader:
        start = time.perf_counter()
        config = ScoringConfig(
            out=args.out,
            samplers=tuple(names),
            reference=args.reference,
            digits=args.recipe == "digits",
            fid_extractor=args.fid_extractor,
            fid_weights=args.fid_weights,
            clip_model=args.clip_model,
            pickscore_model=args.pickscore_model,
            pickscore_processor=args.pickscore_processor,
            hps_checkpoint=args.hps_checkpoint,
            expected={
                name: {"sampler": repr(sampler), "steps": steps}
                for name, sampler in zip(names, samplers, strict=True)
            },
        )
        rows = score_samplers(config, items)
        write_metrics(args.out, rows, {"recipe": args.recipe, "steps": steps, "images": len(items)})
        print(f"scored in {time.perf_counter() - start:.1f}s; wrote {args.out / 'metrics.json'}")
        print((args.out / "metrics.md").read_text())


if __name__ == "__main__":
    cli.exit_on_usage_error(main)
