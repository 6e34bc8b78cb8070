"""Outputs on disk: PNGs with their settings in text metadata, labelled grids, atomic writes."""

from driffusion.io.images import atomic_write, labelled_grid, save_png, to_pil

__all__ = ["atomic_write", "labelled_grid", "save_png", "to_pil"]
