"""Evaluation: torch-fidelity callbacks, scorers, and the resumable COCO-style protocol on the
embedded digits model and on a tiny SD2.1 (both offline)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch_fidelity

from driffusion.core import Aggressive, Serial
from driffusion.eval.callbacks import FidelityCallback, SerialDeviationCallback, outputs_by_id
from driffusion.eval.coco import digits_captions, first_captions
from driffusion.eval.digits_fid import register_digits_extractor
from driffusion.eval.scores import (
    ClipScorer,
    HPSv21Scorer,
    ScorerWeightsMissing,
    deviation_from_serial,
    load_png_folder,
)
from driffusion.io import save_png
from driffusion.lightning import DiffusionSamplerModule, Session
from driffusion.models.digits import digits_dataset, load_digits
from tests.support import ROOT, run_script


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """20 digits sampled through the Fabric loop with both evaluation callbacks."""
    folder = tmp_path_factory.mktemp("digits")
    reference, _ = digits_dataset("test")
    for k, image in enumerate(reference):
        save_png(folder / "reference" / f"{k:04d}.png", image, {})
    model = load_digits()
    items = [
        {"id": key, "seed": k, **extra} for k, (key, _, extra) in enumerate(digits_captions(20))
    ]
    fidelity = FidelityCallback(folder / "reference", feature_extractor="driffusion-digits")
    serial_module = DiffusionSamplerModule(
        model.denoiser(2.0), model.schedule(10), (1, 16, 16), Serial()
    )
    module = DiffusionSamplerModule(
        model.denoiser(2.0), model.schedule(10), (1, 16, 16), Aggressive(drafts=3)
    )
    with Session(accelerator="cpu") as session:
        serial = session.predict(serial_module, items, batch_size=8, callbacks=[fidelity])
        serial_by_id = outputs_by_id(serial)
        deviation = SerialDeviationCallback(serial_by_id)
        session.predict(module, items, batch_size=8, callbacks=[deviation])
    for sample_id, x in serial_by_id.items():
        save_png(folder / "generated" / f"{sample_id}.png", x, {})
    return folder, fidelity.results, deviation.results


def test_fidelity_callback_equals_torch_fidelity_on_the_folders(digits_run) -> None:  # type: ignore[no-untyped-def]
    folder, results, _ = digits_run
    direct = torch_fidelity.calculate_metrics(
        input1=str(folder / "generated"),
        input2=str(folder / "reference"),
        fid=True,
        feature_extractor=register_digits_extractor(),
        cuda=False,
        cache=False,
        verbose=False,
    )
    assert results is not None
    assert results["frechet_inception_distance"] == pytest.approx(
        float(direct["frechet_inception_distance"]), rel=1e-5
    )


def test_serial_deviation_callback(digits_run) -> None:  # type: ignore[no-untyped-def]
    _, _, deviation = digits_run
    assert deviation is not None
    assert 0 < deviation["max_abs_dev"] < 4 and 5 < deviation["psnr"] < float("inf")


def test_deviation_of_identical_images_is_infinite_psnr() -> None:
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    result = deviation_from_serial(x, x.clone())
    assert result["psnr"] == float("inf") and result["max_abs_dev"] == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        deviation_from_serial(x, x[:2])


def test_psnr_pools_the_mse_so_one_identical_image_stays_finite() -> None:
    x = torch.zeros(2, 1, 4, 4)
    y = x.clone()
    y[1] += 0.2  # image 0 identical, image 1 off by 0.2 everywhere
    result = deviation_from_serial(y, x)
    pooled_mse = 0.2**2 / 2
    assert result["psnr"] == pytest.approx(10 * math.log10(4 / pooled_mse))
    assert result["psnr_min"] == pytest.approx(10 * math.log10(4 / 0.2**2))
    assert result["max_abs_dev"] == pytest.approx(0.2)


def build_tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from driffusion.adapters.tiny import tiny_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tiny_tokenizer()),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer()).save_pretrained(
        folder
    )
    return folder


def test_clip_and_pickscore_scorers_load_local_folders(tmp_path: Path) -> None:
    folder = build_tiny_clip(tmp_path / "clip")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    clip = ClipScorer(folder)(images, ["a red cat", "a dog"])
    pick = ClipScorer(folder, kind="pickscore")(images, ["a red cat", "a dog"])
    assert clip.shape == (2,) and bool((clip >= 0).all()) and bool((clip <= 100).all())
    assert pick.shape == (2,) and bool(torch.isfinite(pick).all())


def test_scorers_without_weights_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ScorerWeightsMissing, match="pass the local folder"):
        ClipScorer(tmp_path / "no-such-model")
    with pytest.raises(ScorerWeightsMissing, match=r"HPS_v2\.1_compressed\.pt"):
        HPSv21Scorer(tmp_path / "HPS_v2.1_compressed.pt")


def test_first_captions(tmp_path: Path) -> None:
    data = {
        "annotations": [
            {"image_id": 9, "caption": "nine a"},
            {"image_id": 2, "caption": " two a "},
            {"image_id": 9, "caption": "nine b"},
            {"image_id": 5, "caption": "five"},
        ]
    }
    (tmp_path / "c.json").write_text(json.dumps(data))
    assert [c[:2] for c in first_captions(tmp_path / "c.json", 2)] == [
        ("000000000002", "two a"),
        ("000000000005", "five"),
    ]


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


def test_sd21_protocol_with_tiny_model_and_clip(tmp_path: Path) -> None:
    captions = {
        "annotations": [{"image_id": k, "caption": f"a photo number {k}"} for k in range(20)]
    }
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    reference = tmp_path / "reference"
    for k in range(20):
        save_png(reference / f"{k}.png", torch.rand(3, 32, 32) * 2 - 1, {})
    clip = build_tiny_clip(tmp_path / "clip")
    cmd = [*EVAL, "--recipe", "sd21", "--tiny", "--captions", str(tmp_path / "captions.json")]
    cmd += ["--limit", "20", "--steps", "4", "--batch-size", "5"]
    cmd += ["--sampler", "serial", "--sampler", "aggressive"]
    cmd += [
        "--reference",
        str(reference),
        "--clip-model",
        str(clip),
        "--pickscore-model",
        str(clip),
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
    broken.write_bytes(broken.read_bytes()[:40])  # truncated: does not decode
    (out / ".lock").write_text(str(os.getpid()))  # a live holder: refused, naming it
    held = run_script([*EVAL, *small, "--steps", "4"], timeout=300)
    assert held.returncode == 2 and f"pid {os.getpid()}" in held.stdout
    (out / ".lock").unlink()
    again = run_script([*EVAL, *small, "--steps", "4"], timeout=300)
    assert again.returncode == 0, again.stdout[-4000:]
    after = snapshot(out)
    changed = {k for k in before if k in after and after[k] != before[k]}
    images = {k for k in changed if k.endswith(".png") and not k.startswith("reference")}
    assert images == {"aggressive/000003.png"}  # exactly the broken one was generated again
    assert torch.equal(load_png_folder(out / "aggressive", ["000003"])[1], original)
