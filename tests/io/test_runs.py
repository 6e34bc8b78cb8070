"""Run folders (driffusion.io.runs): unusable folders fail before anything loads, locks are
released or taken over, and a new --out picks the first folder of the same settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_unusable_output_folders_fail_before_anything_loads(tmp_path: Path) -> None:
    from driffusion.io import OutputFolderError, RunFolder

    (tmp_path / "file").write_text("")
    with pytest.raises(OutputFolderError, match="is a file"), RunFolder(tmp_path / "file"):
        pass
    held = pytest.raises(OutputFolderError, match=f"pid {os.getpid()}")
    with RunFolder(tmp_path / "out", {"steps": 4}), held:
        RunFolder(tmp_path / "out", {"steps": 4}).__enter__()
    assert not (tmp_path / "out" / ".lock").exists()  # released
    (tmp_path / "out" / ".lock").write_text("999999999")  # a crashed run's lock: taken over
    with RunFolder(tmp_path / "out", {"steps": 4}):
        pass


def test_new_out_picks_the_first_folder_of_the_same_settings(tmp_path: Path) -> None:
    from driffusion.io import RunFolder

    with RunFolder(tmp_path / "out", {"steps": 4}):
        pass
    assert RunFolder.matching(tmp_path / "out", {"steps": 4}).path == tmp_path / "out"
    other = RunFolder.matching(tmp_path / "out", {"steps": 5})
    assert other.path == tmp_path / "out-2"
    with other:
        pass
    assert RunFolder.matching(tmp_path / "out", {"steps": 5}).path == tmp_path / "out-2"
    assert RunFolder.matching(tmp_path / "out", {"steps": 6}).path == tmp_path / "out-3"
