"""Image output at the edge: atomic PNG writes with text metadata, and labelled grids."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, PngImagePlugin
from torch import Tensor
from torchvision.utils import make_grid


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same folder and rename: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def to_pil(image: Tensor) -> Image.Image:
    """A ``[C, H, W]`` image in ``[-1, 1]`` (C = 1 or 3) as a PIL image."""
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if array.shape[0] == 1:
        return Image.fromarray(array[0].numpy(), mode="L")
    return Image.fromarray(array.permute(1, 2, 0).numpy(), mode="RGB")


def png_bytes(image: Tensor | Image.Image, metadata: Mapping[str, object]) -> bytes:
    """The PNG of ``image`` (a PIL image, or ``[C, H, W]`` in ``[-1, 1]``) with every
    ``metadata`` item as a text chunk."""
    pil = image if isinstance(image, Image.Image) else to_pil(image)
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(str(key), str(value))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(path: str | Path, image: Tensor | Image.Image, metadata: Mapping[str, object]) -> None:
    """Save atomically with every ``metadata`` item as a PNG text chunk."""
    data = png_bytes(image, metadata)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def labelled_grid(
    rows: Sequence[tuple[str, Sequence[Tensor]]], scale: int = 4, label_width: int = 200
) -> Image.Image:
    """One row per label: the label text, then the row's images (``[C, H, W]`` in ``[-1, 1]``,
    ``C`` = 1 or 3), each enlarged ``scale`` times (nearest neighbour); shorter rows end blank.

    The images are tiled by ``torchvision.utils.make_grid``; the labels are drawn with PIL.
    """
    if not rows or not rows[0][1]:
        raise ValueError("a grid needs at least one row with one image")
    columns = max(len(images) for _, images in rows)
    first = rows[0][1][0]
    blank = torch.ones(3, first.shape[-2], first.shape[-1])
    cells = []
    for _, images in rows:
        row = [image.detach().float().cpu().clamp(-1, 1).add(1).div(2) for image in images]
        row = [cell.expand(3, -1, -1) if cell.shape[0] == 1 else cell for cell in row]
        cells += row + [blank] * (columns - len(row))
    stacked = torch.stack(cells).repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    tiles = make_grid(stacked, nrow=columns, padding=2, pad_value=1.0)
    grid = Image.new("RGB", (label_width + tiles.shape[-1], tiles.shape[-2]), "white")
    grid.paste(to_pil(tiles * 2 - 1), (label_width, 0))
    draw = ImageDraw.Draw(grid)
    cell_h = first.shape[-2] * scale
    for r, (label, _) in enumerate(rows):
        draw.text((4, 2 + r * (cell_h + 2) + cell_h // 2 - 6), label, fill="black")
    return grid
