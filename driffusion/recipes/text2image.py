"""The text-to-image (and text-to-video) job behind the recipes ``sd21.py``, ``sdxl.py``,
``sd3.py``, ``flux.py`` and ``wan.py``.

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
data-parallel replicas take different prompts. The image depends on the sampler and its drafts
(``--drafts``, default the draft-group size, but no more drafts than were measured safe over
``--steps``: then the spare devices become replicas and the report says why), never on the
devices: give ``--drafts`` to get the same image anywhere.

Outputs, kept as the run goes, so that Ctrl-C or a crash loses at most the batches in flight:
each image is written as soon as its batch is done, by the leader of the replica that made it,
``<id>.json`` (its report row) first and then ``<id>.png`` (its settings in PNG text metadata),
each atomically; ``report.json`` (every image of the folder with ``"complete"``, per-image wall
time, rounds, evaluations, memory) is rewritten by the global leader every few seconds and at
the end; ``grid.png`` (the first 64 images) at the end. A video family (Wan) writes
``<id>.mp4`` (H.264 at ``--fps``, the settings in its metadata) before ``<id>.png``, the contact
sheet of its frames, and takes ``--frames``. ``manifest.json`` holds the settings
that determine the images (see ``settings``): a rerun under the same settings resumes, keeping
every finished image and generating the rest (whole batches, so every image is computed in the
batch it would have had uninterrupted); a rerun under other settings is refused naming the
differences, or with ``--new-out`` goes to ``<out>-2``, ``<out>-3``, ... A longer prompts list
whose first prompts are the folder's continues the folder (prompts appended to the file); any
other change to the prompts is refused. Prompt ``k`` is image ``<k:05d>`` with seed ``--seed +
k``, so an empty line in ``--prompts-file`` is an error, never a silent shift.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from driffusion.adapters.diffusers import (
    WEIGHT_DTYPES,
    PipelineAdapter,
    adapt_pipeline,
    image_size,
    load_pipeline,
)
from driffusion.adapters.families import FAMILIES, Family
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
from driffusion.core.errors import UsageError
from driffusion.io import (
    OutputFolderError,
    RunFolder,
    finished_record,
    labelled_grid,
    save_png,
    write_finished_image,
    write_finished_video,
    write_json,
)
from driffusion.lightning import Session, cli
from driffusion.lightning.launch import under_fabric_cli
from driffusion.lightning.pipeline import parallelize

GRID_IMAGES = 64
"""``grid.png`` shows the first this many images (a 10,000-prompt run gets no giant grid)."""
REPORT_EVERY_S = 5.0
"""The leader rewrites ``report.json`` at most this often while the run goes (and at most 5% of
the time: a 10,000-image report takes a while to write)."""
SHORT_FLAGS = {"num_frames": ("--frames",)}
"""Shorter flags of a family's call options (``--frames`` for ``num_frames``)."""
LIST_OPTIONS = ("skip_guidance_layers",)
"""Call options that take integers on the command line (``--skip-guidance-layers 7 8``)."""
INT_OPTIONS = ("num_frames",)
"""Call options that are integers where their default is ``None`` (CogVideoX's frames)."""
IMAGE_OPTIONS = ("image",)
"""Call options a text-to-image job does not take."""
EXTENDABLE = ("prompts",)
"""Settings a resume may extend: prompts appended to the folder's (see ``settings``)."""


def parse_args(family: Family, argv: list[str] | None = None) -> argparse.Namespace:
    """The recipes' shared command line, with ``family``'s defaults."""
    video = family.output == "frames"
    parser = argparse.ArgumentParser(
        description=f"{family.name}: text to {'video' if video else 'image'} with driffusion"
    )
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
    parser.add_argument(
        "--new-out",
        action="store_true",
        help="when --out holds other settings, write to --out-2, --out-3, ... instead of stopping",
    )
    parser.add_argument("--tiny", action="store_true", help="random tiny model built in code")
    parser.add_argument(
        "--scheduler",
        default=None,
        choices=list(SUPPORTED_SCHEDULERS),
        metavar="SCHEDULER",
        help="a diffusers scheduler class to swap in, e.g. DPMSolverMultistepScheduler "
        f"(supported: {', '.join(SUPPORTED_SCHEDULERS)})",
    )
    parser.add_argument("--no-t5", action="store_true", help="SD3 without its T5 encoder")
    for name, default in family.call_options.items():  # the family's own keywords of a call
        if name in IMAGE_OPTIONS:
            continue  # a text-to-image job takes no image (img2img, ControlNet: parallelize)
        flags = [f"--{name.replace('_', '-')}", *SHORT_FLAGS.get(name, ())]
        help = f"the pipeline's {name} (default {default})"
        if isinstance(default, bool):
            parser.add_argument(*flags, dest=name, action="store_true", help=help)
            continue
        whole = name in INT_OPTIONS or isinstance(default, int)
        kind: Any = cli.positive_int if whole else cli.nonnegative_float
        parser.add_argument(
            *flags,
            dest=name,
            type=cli.nonnegative_int if name in LIST_OPTIONS else kind,
            nargs="+" if name in LIST_OPTIONS else None,
            default=default,
            help=help,
        )
    if video:
        parser.add_argument(
            "--fps", type=cli.positive_int, default=16, help="frames per second of the MP4s"
        )
    cli.add_sampler_args(parser, default=("aggressive",))
    cli.add_session_args(parser, precision=False)
    cli.add_compile_arg(parser)
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
        from_file = [line.strip() for line in text.splitlines()]
        if not any(from_file):
            parser.error(f"--prompts-file {args.prompts_file} holds no prompt (empty lines only)")
        if "" in from_file:  # prompt k is image k with seed + k: a skipped line would shift them
            parser.error(
                f"--prompts-file {args.prompts_file}: line {from_file.index('') + 1} is empty; "
                "every line is one prompt (its line number gives the image id and seed)"
            )
        prompts += from_file
    if not prompts:
        parser.error("give at least one --prompt or a --prompts-file")
    args.prompts = prompts
    if args.steps is None and args.rounds is None:
        args.steps = family.steps
    for name in ("steps", "rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.rounds is not None and not family.vp_grid:
        vp = " and ".join(f.name for f in FAMILIES.values() if f.vp_grid)
        parser.error(f"--rounds calibrates against a VP reference solve: {vp} only")
    if args.reference_points < 20:
        parser.error(f"--reference-points must be >= 20, got {args.reference_points}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    cli.check_seed_range(parser, args.seed, args.seed + len(prompts) - 1)  # image k: seed + k
    multiple = family.pixel_multiple  # the tiny models divide by less: checked once built
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and not args.tiny and value % multiple:
            parser.error(
                f"--{name} must be a multiple of {multiple} for {family.name}, got {value}"
            )
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
        raise UsageError(
            f"`fabric run --precision {fabric_precision}` is not applied to a diffusers "
            "pipeline; choose the weight dtype with the recipe's --precision fp16|bf16|fp32"
        )
    spare_devices_as_replicas(args)
    # the folder is checked before any model is loaded; one run at a time writes into it
    with Session.from_args(args) as session, claim_folder(args, family, session):
        pipe, size = load_family_pipeline(  # each rank loads to its own device
            family,
            args.model,
            args.tiny,
            args.precision,
            args.scheduler,
            args.no_t5,
            session.device,
        )
        return generate(args, family, pipe.to(session.device), size, session)


def settings(args: argparse.Namespace, family: Family, devices: int) -> dict[str, Any]:
    """What determines the images of ``--out`` (its ``manifest.json``), from the command line
    alone: every rank computes the same, before any model is loaded.

    ``sampler`` is the built sampler's ``repr`` at ``devices`` (the draft-group size), so that
    a resume on other devices that would change the drafts is refused; with ``--rounds`` it
    names the calibration, which picks the sampler and steps on the first prompt. ``prompts`` is
    the whole list: a resume may append prompts (the folder's must be its first ones), not
    change or drop any; ``--batch-size`` is kept, since a batch's shape can change the last bit
    of its images.
    """
    if args.rounds is not None:
        sampler = f"calibrated(rounds={args.rounds}, reference_points={args.reference_points}, "
        sampler += f"devices={devices})"
    else:
        sampler = repr(cli.samplers_from_args(args, devices, num_steps=args.steps)[0])
    return {
        "family": family.name,
        "model": None if args.tiny else args.model,
        "tiny": args.tiny,
        "no_t5": args.no_t5,
        "prompts": args.prompts,
        "negative_prompt": args.negative_prompt,
        "steps": args.steps,
        "rounds": args.rounds,
        "guidance": args.guidance,
        "height": args.height,
        "width": args.width,
        "seed": args.seed,
        "sampler": sampler,
        "scheduler": args.scheduler,
        "precision": args.precision,
        "batch_size": args.batch_size,
        **call_options(args, family),
        **({"fps": args.fps} if family.output == "frames" else {}),  # the MP4s' rate
    }


def call_options(args: argparse.Namespace, family: Family) -> dict[str, Any]:
    """The family's own keywords of a pipeline call, as given on the command line."""
    return {name: getattr(args, name) for name in family.call_options if hasattr(args, name)}


@contextlib.contextmanager
def claim_folder(args: argparse.Namespace, family: Family, session: Session) -> Iterator[None]:
    """Hold ``--out`` for this run (``RunFolder`` with the ``settings``) on the global leader,
    or the first ``--out-N`` of the same settings with ``--new-out``; every rank learns the
    outcome: the folder (set as ``args.out``) or the same ``OutputFolderError``."""
    wanted = settings(args, family, session.draft_devices)
    with contextlib.ExitStack() as stack:
        outcome: tuple[Path | None, str | None] = (None, None)
        if session.is_leader:
            try:
                folder = (
                    RunFolder.matching(args.out, wanted, EXTENDABLE)
                    if args.new_out
                    else RunFolder(args.out, wanted, EXTENDABLE)
                )
                stack.enter_context(folder)
                outcome = (folder.path, None)
            except OutputFolderError as refused:
                outcome = (None, str(refused))
        path, message = session.gather(outcome)[0]
        if path is None:
            raise OutputFolderError(message)
        args.out = path
        yield


def generate(
    args: argparse.Namespace, family: Family, pipe: Any, size: int | None, session: Session
) -> list[dict]:
    """Sample every prompt of ``args`` in the session; the leader writes the outputs.

    Each draft group holds the pipeline and splits every round's evaluations; data-parallel
    groups take every ``r``-th batch of prompts. An image depends on its prompt, seed, sampler
    (drafts included) and steps, never on the devices. Images already finished in ``--out`` are
    kept; the batches that miss one are generated (whole, in their original shape), and each
    group leader writes each new image as soon as its batch is done.
    """
    try:  # a size the model cannot take is an argument error, before any sampling
        height, width = image_size(pipe, args.height or size, args.width or size)
    except ValueError as error:
        raise UsageError(f"--height/--width: {error}") from None
    calibration = None
    if args.rounds is not None:
        adapter = adapt_pipeline(
            pipe, family.steps, height=height, width=width, guidance=args.guidance
        )
        calibration = calibrate_prompt(args, pipe, adapter, session.draft_devices)
        args.steps = calibration.best.steps
        sampler: SamplerFn = calibration.best.make_sampler()
    else:
        sampler = cli.samplers_from_args(args, session.draft_devices, num_steps=args.steps)[0]
    configuration = describe_configuration(args, sampler, session)
    if session.is_leader:
        print(f"{family.name}: {configuration['sampler']}: {configuration['why']}")
    ppipe = parallelize(pipe, sampler, session=session, compile=args.compile)
    items = [
        {
            "id": f"{k:05d}",
            "seed": args.seed + k,
            "prompt": p,
            "negative_prompt": args.negative_prompt,
        }
        for k, p in enumerate(args.prompts)
    ]
    kept = find_finished(args.out, items) if session.is_leader else {}
    kept = session.gather(kept)[0]  # every rank plans the same batches
    batches = [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]
    todo = [batch for batch in batches if any(item["id"] not in kept for item in batch)]
    report = (
        Report(args, family, items, kept, calibration, configuration) if session.is_leader else None
    )
    if report is not None:
        todo_images = len(items) - len(kept)
        print(
            f"{family.name}: {len(kept)} of {len(items)} image(s) already in {args.out}, kept; "
            f"generating {todo_images} in {len(todo)} batch(es)"
        )
        if kept:  # a resume: the report says at once what the folder holds
            report.write()
    made: list[dict] = report.made if report is not None else []  # the rows this rank wrote
    try:
        for batch in todo[session.layout.replica :: session.layout.replicas]:
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
                **call_options(args, family),
            )
            wall = time.perf_counter() - start
            if session.layout.is_group_leader:
                for item, image in zip(batch, getattr(out, family.output), strict=True):
                    if item["id"] not in kept:  # a finished image is never written again
                        made.append(write_image(args, item, image, out.stats, wall))
            if report is not None:
                report.progress(out.stats)
        everything = [row for part in session.gather(made) for row in part]
        memory = session.gather(_peak_memory(session.device))
    except BaseException:  # Ctrl-C, a crash: the report lists what is on disk (a failed
        if report is not None and (kept or made):  # first batch leaves no report)
            report.write()
        raise
    if report is None:
        return []
    mine = {row["id"] for row in made}
    made += [row for row in everything if row["id"] not in mine]  # the other replicas'
    report.memory = memory
    return report.finish()


def spare_devices_as_replicas(args: argparse.Namespace) -> None:
    """Where the default drafts are fewer than the devices (more were measured to ruin the
    sample over ``--steps``), make the draft groups that size and the other devices replicas
    that take other prompts (``--draft-devices`` unset and the world divisible); every rank
    decides alike, from the command line, before any process group exists."""
    if args.draft_devices is not None or args.rounds is not None:
        return
    world = cli.planned_world_size(args)
    asked = cli.samplers_from_args(args, world, num_steps=None)[0]
    chosen = cli.samplers_from_args(args, world, num_steps=args.steps)[0]
    rows = getattr(chosen, "rows", None)
    if isinstance(rows, int) and rows < getattr(asked, "rows", rows) and world % rows == 0:
        args.draft_devices = rows
        args.spare_note = (
            f"the other devices are replicas: {world // rows} draft group(s) of {rows} "
            "device(s), each taking other prompts"
        )


def describe_configuration(
    args: argparse.Namespace, sampler: SamplerFn, session: Session
) -> dict[str, Any]:
    """Which configuration runs and why, for the report and the log: the sampler, its rows, the
    layout, and ``why`` (the measured reason for fewer drafts than devices, or the warning of a
    choice outside the measured safe region)."""
    devices = session.draft_devices
    rows = getattr(sampler, "rows", None)
    if args.rounds is not None:
        why = f"calibrated for --rounds {args.rounds} on the first prompt"
    else:
        note, _ = cli.rows_notes(sampler, cli.planned_world_size(args), args.steps)
        if note is not None:  # parallelize warns of a choice outside the region, at the call
            why = note
            if getattr(args, "spare_note", None):
                why += f"; {args.spare_note}"
        else:
            why = f"{rows} row(s) per round on {devices} device(s) of each draft group"
    return {
        "sampler": repr(sampler),
        "rows": rows,
        "draft_devices": devices,
        "replicas": session.layout.replicas,
        "steps": args.steps,
        "why": why,
    }


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


def find_finished(out: Path, items: list[dict]) -> dict[str, dict]:
    """The report rows of the images of ``items`` already finished in ``out``, by id; an image
    that does not decode or lacks its record is deleted, so that it is generated again."""
    kept = {}
    for item in items:
        png = out / f"{item['id']}.png"
        existed = png.exists()
        row = finished_record(png)
        if row is not None:
            kept[item["id"]] = row
        elif existed:
            print(f"regenerating {png} (unreadable or without its record)", file=sys.stderr)
    return kept


def write_image(
    args: argparse.Namespace, item: dict, image: torch.Tensor, stats: dict, wall: float
) -> dict:
    """Write one finished image (``image[3, H, W]`` in ``[0, 1]``): its report row as
    ``<id>.json``, then ``<id>.png`` with its settings as text metadata; a video
    (``image[F, 3, H, W]``) as ``<id>.mp4`` with them, then its contact sheet ``<id>.png``.
    Returns the row."""
    meta = {
        "prompt": item["prompt"],
        "negative_prompt": item["negative_prompt"] or "",
        "seed": item["seed"],
        "sampler": stats["sampler"],
        "rows": stats["rows"],
        "devices": stats["devices"],
        "guidance_devices": stats["guidance_devices"],
        "scheduler": stats["scheduler"],
        "steps": stats["steps"],
        "guidance": stats["guidance_scale"],
        "model": "tiny" if args.tiny else args.model,
        **stats["options"],
    }
    row = {
        "id": item["id"],
        **meta,
        "wall_s": wall / stats["batch"],
        "batch_wall_s": wall,
        "rounds": stats["rounds"],
        "evaluations": stats["evaluations"],
        "bytes_per_image": stats["bytes_per_image"],
    }
    png = args.out / f"{item['id']}.png"
    if image.ndim == 4:
        meta["fps"] = args.fps
        row = write_finished_video(png, image, args.fps, meta, {**row, "fps": args.fps})
    else:
        write_finished_image(png, image * 2 - 1, meta, row)
    return row


class Report:
    """``report.json`` of a run, kept by the global leader from the rows it knows: those found
    on disk at the start (``reused``), its own as it writes them (``made``, appended to by
    the caller), every replica's at the end.

    Args:
        args: the parsed command line (``out`` is the folder).
        family: the model family.
        items: every image of the folder's settings, in id order.
        kept: the rows of the images finished before this run, by id.
        calibration: the ``--rounds`` calibration, if any.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        family: Family,
        items: list[dict],
        kept: dict[str, dict],
        calibration: Calibration | None,
        configuration: dict[str, Any] | None = None,
    ) -> None:
        self.args, self.family, self.items = args, family, items
        self.configuration = configuration
        self.kept = kept
        self.made: list[dict] = []
        self.calibration = calibration
        self.stats: dict[str, Any] | None = None
        self.memory: list[int | None] = []
        self.due = -math.inf  # when report.json may be rewritten next

    def progress(self, stats: dict[str, Any]) -> None:
        """A batch is done (``stats``; its rows are in ``made``): rewrite ``report.json`` if
        the last write is ``REPORT_EVERY_S`` old (or 20 times as old as it took)."""
        self.stats = stats
        if self.configuration is not None:  # as it ran: over the pipeline's scheduler
            self.configuration["sampler"] = stats["sampler"]
        if time.monotonic() >= self.due:
            self.write()

    def rows(self) -> list[dict]:
        """One row per image of the folder, in id order, each with ``complete``."""
        known = {**self.kept, **{row["id"]: row for row in self.made}}
        return [
            {**known[item["id"]], "complete": True}
            if item["id"] in known
            else {
                "id": item["id"],
                "prompt": item["prompt"],
                "seed": item["seed"],
                "complete": False,
            }
            for item in self.items
        ]

    def write(self) -> None:
        """Rewrite ``report.json`` (atomically) from what is known now."""
        rows = self.rows()
        complete = all(row["complete"] for row in rows)
        stats, memory = self.stats, self.memory
        # the k states of a round: [k, B, C, h, w] float32 latents beyond what serial holds
        draft_bytes = (
            None
            if stats is None
            else stats["rows"] * stats["batch"] * math.prod(stats["latent_shape"]) * 4
        )
        report = {
            "family": self.family.name,
            "command": " ".join(sys.argv),
            "complete": complete,
            "sampler": next((row["sampler"] for row in rows if row["complete"]), None),
            "configuration": self.configuration,
            "reused": len(self.kept),
            "generated": len(self.made),
            "images": rows,
            "grid": f"grid.png: the first {GRID_IMAGES} images" if complete else None,
            "memory": {
                "peak_device_bytes_per_rank": memory
                if any(m is not None for m in memory)
                else None,
                "draft_state_bytes": draft_bytes,
            },
            "depends_on": "prompt, seed, sampler (drafts included), steps, guidance, size; "
            "not devices",
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
        }
        start = time.monotonic()
        write_json(self.args.out / "report.json", report)
        took = time.monotonic() - start
        self.due = start + max(REPORT_EVERY_S, 20 * took)

    def finish(self) -> list[dict]:
        """The final ``report.json`` and ``grid.png``; returns the rows of every image."""
        out, name = self.args.out, self.family.name
        rows = self.rows()
        shown = [load_png(out / f"{row['id']}.png") for row in rows[:GRID_IMAGES]]
        per_row = math.ceil(math.sqrt(len(shown)))
        lines = [
            (
                f"{rows[k]['id']}-{rows[min(k + per_row, len(shown)) - 1]['id']}",
                shown[k : k + per_row],
            )
            for k in range(0, len(shown), per_row)
        ]
        sampler = rows[0]["sampler"]
        save_png(out / "grid.png", labelled_grid(lines, scale=1), {"sampler": sampler})
        self.write()
        print(
            f"{name}: {len(rows)} image(s) in {out} ({len(self.kept)} kept from before, "
            f"{len(self.made)} generated), grid.png (the first {len(shown)}) and report.json"
        )
        made = {row["id"] for row in self.made}
        for row in rows:
            if row["id"] in made:
                rounds, evaluations = row["rounds"], row["evaluations"]
                print(
                    f"  {row['id']}: {row['wall_s']:.2f}s, {rounds} rounds, "
                    f"{evaluations} evaluations"
                )
        return rows


def load_png(path: Path) -> torch.Tensor:
    """A PNG as a ``[3, H, W]`` image in ``[-1, 1]``."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1


def run_recipe(family_name: str) -> None:
    """Entry point of a recipe script: an error the user can fix (a missing model, a used
    folder, a bad argument) is one line and exit status 2."""
    cli.exit_on_usage_error(lambda: main(family_name))
