"""Pieces of the resumable COCO-style evaluation (``recipes/eval_coco.py``): captions, an
atomic per-image writer, scoring of every sampler side by side, and the metrics table."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from driffusion.core.errors import UsageError
from driffusion.eval.scores import (
    ClipScorer,
    HPSv21Scorer,
    deviation_from_serial,
    fidelity_metrics,
    load_png_folder,
)
from driffusion.io import atomic_write, markdown_table, save_png, write_finished_image, write_json
from driffusion.lightning.callbacks import PredictCallback

COLUMNS = [
    "sampler",
    "setting",
    "images",
    "latency_s",
    "speedup",
    "rounds",
    "evaluations",
    "fid",
    "clip_score",
    "pickscore",
    "hpsv21",
    "psnr",
    "max_abs_dev",
]


@dataclass(frozen=True)
class ScoringConfig:
    """What [`score_samplers`][driffusion.eval.coco.score_samplers] needs to know.

    Attributes:
        out: the evaluation folder, holding one sub-folder of images per sampler.
        samplers: the sampler folders, in order; the first is the serial baseline.
        reference: a folder of real images for FID (``None`` with ``digits``: the held-out
            digits are written to ``out/reference``).
        digits: the offline digits protocol (FID with the shipped digit classifier's features).
        fid_extractor: a torch-fidelity extractor name (default Inception, or the digits one).
        fid_weights: local weights of the extractor.
        clip_model: CLIP model id or folder for the CLIP score (``None``: skipped).
        pickscore_model: PickScore model id or folder (``None``: skipped).
        pickscore_processor: its processor (default: the model's).
        hps_checkpoint: an HPSv2.1 checkpoint (``None``: skipped).
        expected: per sampler folder, the sidecar fields every image must carry (the sampler's
            label and steps of this run); an image whose sidecar disagrees is not scored with
            the others ([`MixedOutputsError`][driffusion.eval.coco.MixedOutputsError]).
    """

    out: Path
    samplers: tuple[str, ...]
    reference: Path | None = None
    digits: bool = False
    fid_extractor: str | None = None
    fid_weights: Path | None = None
    clip_model: str | None = None
    pickscore_model: str | None = None
    pickscore_processor: str | None = None
    hps_checkpoint: Path | None = None
    expected: Mapping[str, Mapping[str, Any]] | None = None


class MixedOutputsError(UsageError, ValueError):
    """A sampler folder holds images whose sidecars record other settings than this run's."""


def first_captions(path: str | Path, limit: int) -> list[tuple[str, str, dict]]:
    """``(id, caption, {})`` for the first caption of each image of a COCO captions file.

    Images are taken in increasing ``image_id`` order; a caption is "first" in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file {path} not found (captions_val2017.json)")
    data = json.loads(path.read_text())
    first: dict[int, str] = {}
    for annotation in data["annotations"]:
        first.setdefault(int(annotation["image_id"]), annotation["caption"].strip())
    return [(f"{image_id:012d}", first[image_id], {}) for image_id in sorted(first)[:limit]]


def digits_captions(limit: int) -> list[tuple[str, str, dict]]:
    """The digits protocol's captions: ``"a handwritten digit D"``, cycling 0..9."""
    return [
        (f"{k:06d}", f"a handwritten digit {k % 10}", {"cond": {"label": torch.tensor(k % 10)}})
        for k in range(limit)
    ]


class ImageWriter(PredictCallback):
    """Write each finished image atomically: ``<id>.json`` (timing) first, then ``<id>.png``.

    A PNG on disk therefore means a complete image with its sidecar; reruns skip it and never
    overwrite it. Group leaders write; the other ranks of a draft group hold the same image.
    """

    def __init__(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        self.items = items
        self.folder: Path | None = None
        self.label = ""
        self.steps = 0

    def target(self, folder: Path, sampler: object, steps: int) -> None:
        """Where (and for which sampler, labelled by its ``repr``, and step count) the next
        images go."""
        self.folder, self.label, self.steps = folder, repr(sampler), steps

    def on_predict_batch_end(self, loop: Any, output: Any, batch_idx: int) -> None:
        if not loop.layout.is_group_leader:
            return
        if self.folder is None:
            raise RuntimeError("ImageWriter.target(folder, spec, steps) was not called")
        images = output.images if output.images is not None else output.x
        for sample_id, image in zip(output.ids, images, strict=True):
            if (self.folder / f"{sample_id}.png").exists():
                continue  # finished earlier (a resumed batch): never overwritten
            item = self.items[sample_id]
            sidecar = {
                "sampler": self.label,
                "steps": self.steps,
                "wall_s": output.wall_s / len(output.ids),
                "rounds": output.stats.rounds,
                "evaluations": output.stats.evaluations,
            }
            meta = {
                "prompt": item["prompt"],
                "seed": item["seed"],
                "sampler": self.label,
                "steps": self.steps,
            }
            write_finished_image(self.folder / f"{sample_id}.png", image, meta, sidecar)


def _reference(config: ScoringConfig) -> Path:
    if config.reference is not None:
        return Path(config.reference)
    if not config.digits:
        raise ValueError("a reference folder of real images is required for FID")
    from driffusion.models.digits import digits_dataset

    folder = config.out / "reference"
    images, labels = digits_dataset("test")
    for k, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / f"{k:04d}.png"
        if not path.exists():
            save_png(path, image, {"digit": int(label), "split": "test"})
    return folder


def score_samplers(
    config: ScoringConfig, items: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row of metrics per sampler folder under ``config.out``."""
    ids = [item["id"] for item in items]
    prompts = [item["prompt"] for item in items]
    records = {}  # every folder checked before anything is scored
    for name in config.samplers:
        folder = config.out / name
        records[name] = [json.loads((folder / f"{i}.json").read_text()) for i in ids]
        _check_sidecars(folder, ids, records[name], (config.expected or {}).get(name, {}))
    reference = _reference(config)
    extractor = config.fid_extractor or ("driffusion-digits" if config.digits else None)
    scorers: dict[str, Any] = {}
    if config.clip_model:
        scorers["clip_score"] = ClipScorer(config.clip_model)
    if config.pickscore_model:
        scorers["pickscore"] = ClipScorer(
            config.pickscore_model, config.pickscore_processor, "pickscore"
        )
    if config.hps_checkpoint:
        scorers["hpsv21"] = HPSv21Scorer(config.hps_checkpoint)
    _, serial_images = load_png_folder(config.out / config.samplers[0], ids)
    rows = []
    for name in config.samplers:
        folder = config.out / name
        _, images = load_png_folder(folder, ids)
        sidecars = records[name]
        row: dict[str, Any] = {
            "sampler": name,
            "setting": sidecars[0].get("sampler", name),
            "images": len(ids),
            "latency_s": sum(s["wall_s"] for s in sidecars) / len(ids),
            "rounds": sum(s["rounds"] for s in sidecars) / len(ids),
            "evaluations": sum(s["evaluations"] for s in sidecars) / len(ids),
        }
        fid = fidelity_metrics(
            folder,
            reference,
            feature_extractor=extractor,
            feature_extractor_weights_path=config.fid_weights,
        )
        row["fid"] = fid["frechet_inception_distance"]
        for key, scorer in scorers.items():
            row[key] = float(scorer(images, prompts).mean())
        row.update(deviation_from_serial(images, serial_images))
        rows.append(row)
    serial_latency = rows[0]["latency_s"]
    for row in rows:
        row["speedup"] = serial_latency / row["latency_s"]
    return rows


def _check_sidecars(
    folder: Path, ids: Sequence[str], sidecars: Sequence[Mapping[str, Any]], expected: Mapping
) -> None:
    """Refuse to score images of other settings together (a copied or hand-edited file)."""
    wrong = [
        (sample_id, {k: sidecar.get(k) for k in expected if sidecar.get(k) != expected[k]})
        for sample_id, sidecar in zip(ids, sidecars, strict=True)
        if any(sidecar.get(k) != v for k, v in expected.items())
    ]
    if wrong:
        first, fields = wrong[0]
        raise MixedOutputsError(
            f"{len(wrong)} image(s) in {folder} were made under other settings than this run's "
            f"{dict(expected)} (e.g. {first}.json records {fields}); they are not scored with "
            "the others: delete them (PNG and JSON) and rerun to regenerate them"
        )


def write_metrics(out: Path, rows: list[dict[str, Any]], meta: Mapping[str, Any]) -> None:
    """``metrics.json`` (rows + meta, strict JSON) and ``metrics.md`` (the side-by-side table)."""
    nulls = "psnr and psnr_min are null where the images equal the serial ones (infinite PSNR)"
    write_json(out / "metrics.json", {**meta, "rows": rows, "nulls": nulls})
    columns = [c for c in COLUMNS if any(c in row for row in rows)]
    table = markdown_table(rows, columns, digits=4) + "\n"
    atomic_write(out / "metrics.md", lambda p: p.write_text(table))
