"""One run per output folder: a lock naming its holder, and a manifest of the settings that
produced the folder, so that a resume never mixes settings."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from PIL import Image

from driffusion.core.errors import UsageError
from driffusion.io.tables import strict, write_json

MANIFEST = "manifest.json"
LOCK = ".lock"


class OutputFolderError(UsageError, RuntimeError):
    """The output folder cannot be used: held by another run, written under other settings, or
    not writable."""


class RunFolder:
    """Hold ``path`` for one run: ``with RunFolder(out, settings):``.

    On entry the folder is created (or checked writable), a lock file with this process's pid is
    created exclusively (a lock whose process is gone is taken over), and the manifest is
    compared with ``settings``: a folder written under other settings is refused with an error
    naming every difference and left as it was; a new folder gets the manifest. On exit the lock
    is released, and a folder this run created is removed again if the run failed before
    writing anything into it.

    Args:
        path: the output folder.
        settings: what determines the outputs (JSON values), e.g. sampler labels, steps, seed;
            ``None`` for a run that rewrites its outputs (no resume): lock and writability only.
    """

    def __init__(self, path: str | Path, settings: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.settings = (
            None
            if settings is None
            else strict(json.loads(json.dumps(dict(settings), default=str)))
        )
        self._locked = False
        self._created = False

    @classmethod
    def matching(cls, path: str | Path, settings: Mapping[str, Any]) -> RunFolder:
        """``path``, or the first of ``path-2``, ``path-3``, ... that is new or was written under
        the same settings (``--new-out``: keep both runs instead of refusing)."""
        base = Path(path)
        candidate, number = base, 1
        while True:
            folder = cls(candidate, settings)
            manifest = candidate / MANIFEST
            if not manifest.is_file() or json.loads(manifest.read_text()) == folder.settings:
                return folder
            number += 1
            candidate = base.with_name(f"{base.name}-{number}")

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
            saved = json.loads(manifest.read_text())
            differences = {
                key: (saved.get(key), self.settings.get(key))
                for key in sorted(set(saved) | set(self.settings))
                if saved.get(key) != self.settings.get(key)
            }
            if differences:
                lines = [
                    f"  {k}: folder has {old!r}, this run {new!r}"
                    for k, (old, new) in differences.items()
                ]
                raise OutputFolderError(
                    f"{self.path} holds outputs of other settings; a resume continues only under "
                    "the same ones (choose another --out to keep both):\n" + "\n".join(lines)
                )
            return
        if any(p.suffix == ".png" for p in self.path.rglob("*.png")):
            raise OutputFolderError(
                f"{self.path} holds images but no {MANIFEST}: settings unknown, not resuming"
            )
        write_json(manifest, self.settings)


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
