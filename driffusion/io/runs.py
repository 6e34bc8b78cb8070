"""One run per output folder: a lock naming its holder, and a manifest of the settings that
produced the folder, so that a resume never mixes settings; and the one rule of a resumable
image folder: a PNG on disk means a finished image with its record (``<id>.json`` written first).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from PIL import Image
from torch import Tensor

from driffusion.core.errors import UsageError
from driffusion.io.images import save_png
from driffusion.io.tables import strict, write_json

MANIFEST = "manifest.json"
LOCK = ".lock"
_FRESH = "delete it to start the folder afresh, or choose another --out"


class OutputFolderError(UsageError, RuntimeError):
    """The output folder cannot be used: held by another run, written under other settings, or
    not writable."""


class RunFolder:
    """Hold ``path`` for one run: ``with RunFolder(out, settings):``.

    On entry the folder is created (or checked writable), a lock file with this process's pid is
    created exclusively (a lock whose process is gone is taken over), and the manifest is
    compared with ``settings``: a folder written under other settings is refused with an error
    naming every difference and left as it was; a new folder gets the manifest. A setting named
    in ``extendable`` is a list that a later run may extend (more prompts appended to a prompts
    file): the folder's list must be a prefix of this run's, and the manifest then records the
    longer one; a shorter or changed list is refused like any other difference. A manifest that
    does not parse, or is not a JSON object, is refused naming the file. On exit the lock is
    released, and a folder this run created is removed again if the run failed before writing
    anything into it.

    Args:
        path: the output folder.
        settings: what determines the outputs (JSON values), e.g. sampler labels, steps, seed;
            ``None`` for a run that rewrites its outputs (no resume): lock and writability only.
        extendable: keys of ``settings`` whose list values a resume may append to.
    """

    def __init__(
        self,
        path: str | Path,
        settings: Mapping[str, Any] | None = None,
        extendable: Collection[str] = (),
    ) -> None:
        self.path = Path(path)
        self.settings = (
            None
            if settings is None
            else strict(json.loads(json.dumps(dict(settings), default=str)))
        )
        self.extendable = frozenset(extendable)
        self._locked = False
        self._created = False

    @classmethod
    def matching(
        cls, path: str | Path, settings: Mapping[str, Any], extendable: Collection[str] = ()
    ) -> RunFolder:
        """``path``, or the first of ``path-2``, ``path-3``, ... that is new or was written under
        settings this run may continue (``--new-out``: keep both runs instead of refusing)."""
        base = Path(path)
        candidate, number = base, 1
        while True:
            folder = cls(candidate, settings, extendable)
            manifest = candidate / MANIFEST
            if not manifest.is_file() or not folder.differences(_read_manifest(manifest)):
                return folder
            number += 1
            candidate = base.with_name(f"{base.name}-{number}")

    def differences(self, saved: Mapping[str, Any]) -> list[str]:
        """One line per setting in which ``saved`` (a folder's manifest) and this run differ,
        beyond what a resume may change (an ``extendable`` list that this run extends)."""
        settings = self.settings or {}
        lines = []
        for key in sorted(set(saved) | set(settings)):
            old, new = saved.get(key), settings.get(key)
            if old == new:
                continue
            extended = isinstance(old, list) and isinstance(new, list) and new[: len(old)] == old
            if key in self.extendable and extended:
                continue
            lines.append(_difference(key, old, new, key in self.extendable))
        return lines

    def __enter__(self) -> RunFolder:
        if self.path.exists() and not self.path.is_dir():
            raise OutputFolderError(f"--out {self.path} is a file, not a folder")
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputFolderError(
                f"cannot create the output folder {self.path}: {error}"
            ) from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise OutputFolderError(f"the output folder {self.path} is not writable")
        self._lock()
        try:
            self._check_manifest()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._unlock()
        # a run that failed leaves no folder it made and wrote nothing into
        untouched = self._created and {p.name for p in self.path.iterdir()} <= {MANIFEST}
        if exc is not None and untouched:
            (self.path / MANIFEST).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def _lock(self) -> None:
        lock = self.path / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_pid(lock)
                if holder is not None and _alive(holder):
                    raise OutputFolderError(
                        f"{self.path} is in use by another run (pid {holder}); wait for it or "
                        "choose another --out"
                    ) from None
                lock.unlink(missing_ok=True)  # its holder is gone: a crashed run's lock
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            self._locked = True
            return
        raise OutputFolderError(f"could not lock {self.path}")  # pragma: no cover - a race lost

    def _unlock(self) -> None:
        if self._locked:
            (self.path / LOCK).unlink(missing_ok=True)
            self._locked = False

    def _check_manifest(self) -> None:
        if self.settings is None:
            return
        manifest = self.path / MANIFEST
        if manifest.is_file():
            saved = _read_manifest(manifest)
            lines = self.differences(saved)
            if lines:
                raise OutputFolderError(
                    f"{self.path} holds outputs of other settings ({'; '.join(lines)}); a resume "
                    "continues only under the same ones (choose another --out, or --new-out, "
                    "to keep both)"
                )
            if saved != self.settings:  # an extendable list grew: the folder now holds more
                write_json(manifest, self.settings)
            return
        if any(p.suffix == ".png" for p in self.path.rglob("*.png")):
            raise OutputFolderError(
                f"{self.path} holds images but no {MANIFEST}: settings unknown, not resuming"
            )
        write_json(manifest, self.settings)


def _read_manifest(path: Path) -> dict[str, Any]:
    """A folder's manifest; ``OutputFolderError`` naming the file when it cannot be one."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OutputFolderError(f"{path} is not readable JSON ({error}); {_FRESH}") from None
    if not isinstance(saved, dict):
        raise OutputFolderError(
            f"{path} is not a JSON object of settings (a {type(saved).__name__}); {_FRESH}"
        )
    return saved


def _difference(key: str, old: Any, new: Any, extendable: bool) -> str:
    """A line naming how ``key`` differs; lists by their first differing entry, never whole."""
    if not (isinstance(old, list) and isinstance(new, list)):
        return f"{key}: folder has {_short(old)}, this run {_short(new)}"
    sizes = f"folder has {len(old)} entries, this run {len(new)}"
    first = next((k for k, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), None)
    if first is None:  # one list is a prefix of the other
        rule = "; a resume may append entries, not drop them" if extendable else ""
        return f"{key}: {sizes}{rule}"
    was, now = _short(old[first]), _short(new[first])
    return f"{key}[{first}]: folder has {was}, this run {now} ({sizes})"


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_finished_image(
    png: Path,
    image: Tensor | Image.Image,
    metadata: Mapping[str, object],
    record: Mapping[str, Any],
) -> None:
    """Write one finished image of a resumable folder: its record ``<stem>.json`` first, then
    the PNG (with ``metadata`` as text chunks), each atomically, so that a PNG on disk always
    has its record (read back by [`finished_record`][driffusion.io.runs.finished_record])."""
    write_json(png.with_suffix(".json"), record)
    save_png(png, image, metadata)


def write_finished_video(
    png: Path,
    frames: Tensor,
    fps: int,
    metadata: Mapping[str, object],
    record: Mapping[str, Any],
) -> dict[str, Any]:
    """Write one finished video ``frames[F, 3, H, W]`` in ``[0, 1]`` of a resumable folder: its
    record ``<stem>.json`` (naming the video), the MP4 with ``metadata``, then the contact
    sheet ``png`` of its frames (with ``metadata`` as text chunks) last, each atomically: a
    contact sheet on disk always has its video and record. Returns the record as written."""
    from driffusion.io.video import contact_sheet, save_mp4

    video = png.with_suffix(".mp4")
    written = {**record, "video": video.name}
    write_json(png.with_suffix(".json"), written)
    save_mp4(video, frames, fps, metadata)
    save_png(png, contact_sheet(frames), metadata)
    return written


def finished_record(png: Path) -> dict[str, Any] | None:
    """The record of the finished image ``png``, or ``None`` when there is none to keep.

    A PNG that does not decode, or whose record ``<stem>.json`` is missing or unreadable, or
    whose record names a video (``"video"``) that does not read back, is deleted (with its
    record and video), so that a resume generates it again.
    """
    if not png.is_file():
        return None
    sidecar = png.with_suffix(".json")
    record = None
    if readable_png(png):
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            record = None
    video = (
        png.with_name(record["video"]) if isinstance(record, dict) and "video" in record else None
    )
    if video is not None:
        from driffusion.io.video import mp4_metadata

        if not video.is_file() or mp4_metadata(video) is None:
            record = None
    if not isinstance(record, dict):
        png.unlink()
        sidecar.unlink(missing_ok=True)
        png.with_suffix(".mp4").unlink(missing_ok=True)
        return None
    return record


def readable_png(path: Path) -> bool:
    """True when ``path`` is a PNG that decodes completely."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def _read_pid(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
