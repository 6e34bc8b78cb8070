"""Outputs on disk: PNGs with their settings in text metadata, labelled grids, atomic writes,
markdown tables and strict JSON reports."""

from driffusion.io.images import atomic_write, labelled_grid, save_png, to_pil
from driffusion.io.runs import OutputFolderError, RunFolder, readable_png
from driffusion.io.tables import format_cell, markdown_table, strict, write_json

__all__ = [
    "OutputFolderError",
    "RunFolder",
    "atomic_write",
    "format_cell",
    "labelled_grid",
    "markdown_table",
    "readable_png",
    "save_png",
    "strict",
    "to_pil",
    "write_json",
]
