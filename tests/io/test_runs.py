"""Run folders (driffusion.io.runs): unusable folders fail before anything loads, locks are
released or taken over, a new --out picks the first folder of the same settings, a manifest that
is not settings is refused naming the file, an extendable list may only grow, and a finished
image is a PNG that decodes with its record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch


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


@pytest.mark.parametrize(
    ("text", "message"),
    [('{"steps": 4', "is not readable JSON"), ("[4]", "is not a JSON object of settings")],
)
def test_a_manifest_that_is_not_settings_is_refused_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    from driffusion.io import OutputFolderError, RunFolder

    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(text)
    expected = f"{out / 'manifest.json'} {message}.*delete it to start the folder afresh"
    with pytest.raises(OutputFolderError, match=expected), RunFolder(out, {"steps": 4}):
        pass
    with pytest.raises(OutputFolderError, match=expected):
        RunFolder.matching(out, {"steps": 4})
    assert (out / "manifest.json").read_text() == text and not (out / ".lock").exists()


def test_an_extendable_list_may_grow_on_a_resume_but_not_shrink_or_change(tmp_path: Path) -> None:
    from driffusion.io import OutputFolderError, RunFolder

    out, grows = tmp_path / "out", ("prompts",)
    with RunFolder(out, {"prompts": ["a", "b"], "steps": 4}, grows):
        pass
    longer = {"prompts": ["a", "b", "c"], "steps": 4}
    assert RunFolder.matching(out, longer, grows).path == out
    with RunFolder(out, longer, grows):
        pass
    assert json.loads((out / "manifest.json").read_text())["prompts"] == ["a", "b", "c"]
    refused = {
        "prompts: folder has 3 entries, this run 2; a resume may append": ["a", "b"],
        r"prompts\[1\]: folder has 'b', this run 'x' \(folder has 3 entries, this run 3\)": [
            "a",
            "x",
            "c",
        ],
    }
    for message, prompts in refused.items():
        with (
            pytest.raises(OutputFolderError, match=message),
            RunFolder(out, {"prompts": prompts, "steps": 4}, grows),
        ):
            pass
        assert RunFolder.matching(out, {"prompts": prompts, "steps": 4}, grows).path != out
    with pytest.raises(OutputFolderError, match=r"\(prompts: folder has 3 entries, this run 4\)"):
        RunFolder(out, {"prompts": ["a", "b", "c", "d"], "steps": 4}).__enter__()  # not extendable
    assert json.loads((out / "manifest.json").read_text())["prompts"] == ["a", "b", "c"]


def test_a_finished_image_is_a_png_that_decodes_with_its_record(tmp_path: Path) -> None:
    from driffusion.io import finished_record, write_finished_image

    for name in ("good", "truncated", "alone", "bad_record"):
        write_finished_image(tmp_path / f"{name}.png", torch.zeros(3, 8, 8), {}, {"id": name})
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    (tmp_path / "alone.json").unlink()
    (tmp_path / "bad_record.json").write_text("{")
    assert finished_record(tmp_path / "good.png") == {"id": "good"}
    for name in ("truncated", "alone", "bad_record", "missing"):
        assert finished_record(tmp_path / f"{name}.png") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.json", "good.png"]  # redone later
