"""The resumable COCO-style evaluation protocol (recipes/eval_coco.py) on the embedded digits model
and on a tiny SD2.1 (both offline): metrics, resume after SIGKILL, refusal of other settings, and
exactly the broken image regenerated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from driffusion.eval.scores import (
    load_png_folder,
)
from driffusion.io import save_png
from tests.support import ROOT, run_script

pytestmark = pytest.mark.processes  # every test runs recipes/eval_coco.py in processes of its own

EVAL = [sys.executable, str(ROOT / "recipes" / "eval_coco.py"), "--accelerator", "cpu"]
DIGITS = ["--recipe", "digits", "--limit", "20", "--steps", "10", "--batch-size", "2"]
DIGITS += ["--sampler", "serial", "--sampler", "aggressive", "--sampler", "srds"]


def read_metrics(out: Path) -> list[dict]:
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    return [{k: v for k, v in r.items() if k not in ("latency_s", "speedup")} for r in rows]


def test_digits_protocol_and_resume_after_sigkill(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    result = run_script([*EVAL, *DIGITS, "--out", str(whole)], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    rows = read_metrics(whole)
    assert [r["sampler"] for r in rows] == ["serial", "aggressive", "srds", "serial_reduced"]
    assert rows[0]["max_abs_dev"] == 0.0 and rows[1]["max_abs_dev"] > 0
    assert rows[0]["psnr"] is None  # infinite: strict JSON has no Infinity
    assert rows[3]["rounds"] == rows[1]["rounds"] == 1 + 5  # equal serial rounds
    assert all(r["fid"] >= 0 for r in rows)
    assert "| sampler | setting |" in (whole / "metrics.md").read_text()

    resumed = tmp_path / "resumed"
    # the same environment as run_script: thread settings change the last bit of a pixel
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*EVAL, *DIGITS, "--out", str(resumed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while len(list((resumed / "aggressive").glob("*.png"))) < 4:
            assert proc.poll() is None, "finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (resumed / "metrics.json").exists()
    done_before = {p.stem for p in (resumed / "aggressive").glob("*.png")}
    assert 4 <= len(done_before) < 20
    result = run_script([*EVAL, *DIGITS, "--out", str(resumed)], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    for name in ("serial", "aggressive", "srds", "serial_reduced"):
        pngs = sorted(p.stem for p in (resumed / name).glob("*.png"))
        assert pngs == [f"{k:06d}" for k in range(20)]  # every image exactly once
        assert not list((resumed / name).glob(".*"))  # no temporaries left behind
    for a, b in zip(read_metrics(resumed), rows, strict=True):
        assert a.keys() == b.keys()
        for key, value in b.items():
            exact = isinstance(value, str) or value is None  # None: PSNR of identical images
            expected = value if exact else pytest.approx(value, rel=1e-6)
            assert a[key] == expected, (b["sampler"], key)
    # finished images were not regenerated: same files, untouched
    ids, again = load_png_folder(resumed / "aggressive", sorted(done_before))
    _, first = load_png_folder(whole / "aggressive", ids)
    assert torch.equal(again, first)


def test_sd21_protocol_with_tiny_model_and_clip(tmp_path: Path, tiny_clip: Path) -> None:
    captions = {
        "annotations": [{"image_id": k, "caption": f"a photo number {k}"} for k in range(20)]
    }
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    reference = tmp_path / "reference"
    for k in range(20):
        save_png(reference / f"{k}.png", torch.rand(3, 32, 32) * 2 - 1, {})
    cmd = [*EVAL, "--recipe", "sd21", "--tiny", "--captions", str(tmp_path / "captions.json")]
    cmd += ["--limit", "20", "--steps", "4", "--batch-size", "5"]
    cmd += ["--sampler", "serial", "--sampler", "aggressive"]
    cmd += [
        "--reference",
        str(reference),
        "--clip-model",
        str(tiny_clip),
        "--pickscore-model",
        str(tiny_clip),
    ]
    cmd += ["--fid-extractor", "driffusion-digits", "--out", str(tmp_path / "out")]
    result = run_script(cmd, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    rows = read_metrics(tmp_path / "out")
    assert [r["sampler"] for r in rows] == ["serial", "aggressive", "serial_reduced"]
    for row in rows:
        assert row["images"] == 20 and 0 <= row["clip_score"] <= 100
        assert {"fid", "pickscore", "psnr", "max_abs_dev", "rounds", "evaluations"} <= row.keys()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_resume_refuses_other_settings_and_regenerates_exactly_the_broken_image(
    tmp_path: Path,
) -> None:
    out = tmp_path / "eval"
    small = ["--recipe", "digits", "--limit", "6", "--batch-size", "2", "--out", str(out)]
    small += ["--sampler", "serial", "--sampler", "aggressive"]
    first = run_script([*EVAL, *small, "--steps", "4"], timeout=300)
    assert first.returncode == 0, first.stdout[-4000:]
    before = snapshot(out)
    assert json.loads((out / "manifest.json").read_text())["steps"] == 4

    other = run_script([*EVAL, *small, "--steps", "5", "--seed", "7"], timeout=300)
    assert other.returncode == 2
    assert "steps: folder has 4, this run 5" in other.stdout and "seed" in other.stdout
    assert snapshot(out) == before  # left as it was

    broken = out / "aggressive" / "000003.png"
    original = load_png_folder(out / "aggressive", ["000003"])[1]
    original_serial = load_png_folder(out / "serial", ["000002"])[1]
    broken.write_bytes(broken.read_bytes()[:40])  # truncated: does not decode
    (out / "serial" / "000002.json").write_text('{"wall_s": ')  # a record cut short
    (out / ".lock").write_text(str(os.getpid()))  # a live holder: refused, naming it
    held = run_script([*EVAL, *small, "--steps", "4"], timeout=300)
    assert held.returncode == 2 and f"pid {os.getpid()}" in held.stdout
    (out / ".lock").unlink()
    again = run_script([*EVAL, *small, "--steps", "4"], timeout=300)
    assert again.returncode == 0, again.stdout[-4000:]
    after = snapshot(out)
    changed = {k for k in before if k in after and after[k] != before[k]}
    images = {k for k in changed if k.endswith(".png") and not k.startswith("reference")}
    # exactly the broken ones were generated again: the unreadable image, the image whose record
    # was cut short
    assert images == {"aggressive/000003.png", "serial/000002.png"}
    assert torch.equal(load_png_folder(out / "aggressive", ["000003"])[1], original)
    # the image whose record was cut short: made again, bit for bit, with a whole record
    assert json.loads((out / "serial" / "000002.json").read_text())["rounds"] == 4
    assert torch.equal(load_png_folder(out / "serial", ["000002"])[1], original_serial)
