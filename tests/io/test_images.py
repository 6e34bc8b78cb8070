"""Images on disk (driffusion.io.images): grids whose cells are the enlarged images, PNG
metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from driffusion.io import labelled_grid, save_png, to_pil


def test_grid_cells_are_the_enlarged_images() -> None:
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 16, 16, generator=gen) * 2 - 1 for _ in range(3)]
    rgb = torch.rand(3, 16, 16, generator=gen) * 2 - 1
    grid = labelled_grid([("a", images), ("b", [rgb])], scale=2, label_width=50)
    assert grid.size == (50 + 2 + 3 * (32 + 2), 2 + 2 * (32 + 2))
    expected = to_pil(images[1]).convert("RGB").resize((32, 32), Image.Resampling.NEAREST)
    cell = grid.crop((50 + 2 + 34, 2, 50 + 2 + 34 + 32, 2 + 32))
    assert list(cell.getdata()) == list(expected.getdata())
    second_row = grid.crop((52, 36, 84, 68))
    assert list(second_row.getdata()) == list(to_pil(rgb).resize((32, 32), 0).getdata())
    blank = grid.crop((52 + 34, 36, 52 + 34 + 32, 68))  # the shorter row ends blank
    assert set(blank.getdata()) == {(255, 255, 255)}
    with pytest.raises(ValueError, match="at least one row"):
        labelled_grid([])


def test_png_metadata_round_trips(tmp_path: Path) -> None:
    save_png(tmp_path / "a.png", torch.zeros(3, 8, 8), {"sampler": "Aggressive(drafts=4)"})
    with Image.open(tmp_path / "a.png") as image:
        assert image.text["sampler"] == "Aggressive(drafts=4)"
