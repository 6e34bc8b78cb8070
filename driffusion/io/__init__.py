"""Outputs on disk: PNGs with their settings in text metadata, labelled grids, atomic writes,
markdown tables, strict JSON reports, run folders that resume (lock, manifest, finished
images and videos with their records), MP4s with their settings and contact sheets
([`driffusion.io.video`][driffusion.io.video])."""

from driffusion.io.images import atomic_write, labelled_grid, png_bytes, save_png, to_pil
from driffusion.io.runs import (
    OutputFolderError,
    RunFolder,
    finished_record,
    readable_png,
    write_finished_image,
    write_finished_video,
)
from driffusion.io.tables import format_cell, markdown_table, strict, write_json

__all__ = [
    "OutputFolderError",
    "RunFolder",
    "atomic_write",
    "finished_record",
    "format_cell",
    "labelled_grid",
    "markdown_table",
    "png_bytes",
    "readable_png",
    "save_png",
    "strict",
    "to_pil",
    "write_finished_image",
    "write_finished_video",
    "write_json",
]
