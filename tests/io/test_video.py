"""MP4s with their settings, contact sheets, and finished videos of a resumable folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from driffusion.io import finished_record, write_finished_video
from driffusion.io.video import contact_sheet, mp4_frames, mp4_metadata, save_mp4

pytestmark = pytest.mark.processes  # FFmpeg encodes and decodes in a process of its own


def clip(frames: int = 9, size: int = 16) -> torch.Tensor:
    """Smooth frames (H.264 keeps them within a few levels): a ramp moving over time."""
    ramp = torch.linspace(0, 1, size)
    picture = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size)])
    picture = torch.cat([picture, 1 - picture[:1]])
    return torch.stack([(picture + k / (4 * frames)).clamp(0, 1) for k in range(frames)])


def test_an_mp4_round_trips_its_frames_and_settings(tmp_path: Path) -> None:
    frames = clip()
    settings = {"prompt": "a = b; #1 \\ c", "seed": 3, "sampler": "Aggressive(drafts=2)"}
    save_mp4(tmp_path / "v.mp4", frames, 8, settings)
    back = mp4_frames(tmp_path / "v.mp4")
    assert back.shape == frames.shape
    error = float((back - frames).abs().mean())
    assert error < 10 / 255  # lossy (4:2:0 chroma on a 16 x 16 colour ramp), but this clip:
    assert error < 0.2 * float((back - frames.flip(-1)).abs().mean())  # not a mirrored one
    assert mp4_metadata(tmp_path / "v.mp4") == settings  # ffmetadata's escapes undone
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="even sides"):
        save_mp4(tmp_path / "odd.mp4", clip(size=15), 8, {})
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert mp4_metadata(tmp_path / "bad.mp4") is None


def test_the_contact_sheet_shows_every_frame() -> None:
    sheet = contact_sheet(clip(frames=9), columns=4)
    assert sheet.width > 4 * 16 and sheet.height > 3 * 16  # 3 rows of 4
    with pytest.raises(ValueError, match="frames must be"):
        contact_sheet(torch.zeros(0, 3, 16, 16))


def test_a_finished_video_is_its_sheet_record_and_a_readable_mp4(tmp_path: Path) -> None:
    png = tmp_path / "00000.png"
    write_finished_video(png, clip(), 8, {"seed": 0}, {"id": "00000"})
    record = finished_record(png)
    assert record is not None and record["video"] == "00000.mp4"
    (tmp_path / "00000.mp4").write_bytes(b"truncated")  # a video that does not read back
    assert finished_record(png) is None
    assert not png.exists() and not (tmp_path / "00000.json").exists()
    assert not (tmp_path / "00000.mp4").exists()  # all of it goes: a resume makes it again
