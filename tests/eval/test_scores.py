"""Scorers (driffusion.eval.scores): deviation and PSNR from serial, CLIP and PickScore on local
folders, and clear errors without weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from driffusion.eval.scores import (
    ClipScorer,
    HPSv21Scorer,
    ScorerWeightsMissing,
    deviation_from_serial,
)


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


def test_clip_and_pickscore_scorers_load_local_folders(tiny_clip: Path) -> None:
    folder = tiny_clip
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
