"""Videos on disk: MP4s with their settings in the container's metadata, and contact sheets.

The MP4 is H.264 (``yuv420p``, what every player opens) written with the FFmpeg binary that
``imageio-ffmpeg`` ships (no system FFmpeg needed); the settings go
as JSON into the container's ``comment`` tag, read back by
[`mp4_metadata`][driffusion.io.video.mp4_metadata] (``ffprobe``-free: FFmpeg's ``ffmetadata``
muxer).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from driffusion.io.images import atomic_write, labelled_grid


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def save_mp4(path: str | Path, frames: Tensor, fps: int, metadata: Mapping[str, object]) -> None:
    """Save ``frames[F, 3, H, W]`` in ``[0, 1]`` as an MP4 at ``fps``, atomically, with
    ``metadata`` as JSON in its ``comment`` tag.

    Raises:
        ValueError: frames of another shape, or a size H.264 cannot take (odd sides).
    """
    import imageio_ffmpeg

    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [F, 3, H, W], got {tuple(frames.shape)}")
    if frames.shape[-1] % 2 or frames.shape[-2] % 2:
        raise ValueError(f"H.264 needs even sides, got {tuple(frames.shape[-2:])}")
    pixels = (frames.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    comment = json.dumps(dict(metadata), sort_keys=True, default=str)
    height, width = frames.shape[-2:]

    def write(tmp: Path) -> None:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (int(width), int(height)),
            fps=fps,
            codec="libx264",
            quality=8,
            pix_fmt_out="yuv420p",
            macro_block_size=1,  # the size as made (even sides checked above)
            ffmpeg_log_level="error",
            output_params=["-metadata", f"comment={comment}", "-f", "mp4"],
        )
        writer.send(None)  # start the encoder
        try:
            for frame in pixels.permute(0, 2, 3, 1).contiguous().numpy():
                writer.send(frame)
        finally:
            writer.close()

    atomic_write(Path(path), write)


def mp4_metadata(path: str | Path) -> dict[str, Any] | None:
    """The settings saved in an MP4 by [`save_mp4`][driffusion.io.video.save_mp4] (``None``:
    not a readable MP4, or none saved)."""
    probe = subprocess.run(
        [_ffmpeg(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return None
    for line in probe.stdout.splitlines():
        if line.startswith("comment="):  # ffmetadata escapes = ; # \\ with a backslash
            text = re.sub(r"\\(.)", r"\1", line.removeprefix("comment="))
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


def mp4_frames(path: str | Path) -> Tensor:
    """An MP4's frames as ``[F, 3, H, W]`` in ``[0, 1]`` (one FFmpeg decode: its first item is
    the stream's metadata, then one RGB frame each)."""
    import imageio_ffmpeg
    import numpy as np

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        width, height = next(reader)["size"]
        frames = [np.frombuffer(frame, dtype=np.uint8) for frame in reader]
    finally:
        reader.close()
    pixels = np.stack(frames).reshape(-1, height, width, 3)
    return torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).float() / 255


def contact_sheet(frames: Tensor, columns: int = 8, scale: int = 1) -> Any:
    """The frames ``[F, 3, H, W]`` in ``[0, 1]`` as one PIL image, ``columns`` a row, each
    labelled with its first frame's index."""
    if frames.ndim != 4 or not len(frames):
        raise ValueError(f"frames must be [F, 3, H, W] with F >= 1, got {tuple(frames.shape)}")
    images = list(frames.float() * 2 - 1)
    rows = [(f"frame {k}", images[k : k + columns]) for k in range(0, len(images), columns)]
    return labelled_grid(rows, scale=scale, label_width=80)
