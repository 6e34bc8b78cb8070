"""The digits FID (driffusion.eval.digits_fid) tells real digits from noise."""

from __future__ import annotations

import torch

from driffusion.eval.digits_fid import digits_fid
from driffusion.models.digits import (
    digits_dataset,
)


def test_digits_fid_separates_real_from_noise() -> None:
    real_a, _ = digits_dataset("test")
    real_b, _ = digits_dataset("train")
    noise = torch.rand_like(real_a) * 2 - 1
    same = digits_fid(real_a, real_b[:360])["frechet_inception_distance"]
    different = digits_fid(noise, real_b[:360])["frechet_inception_distance"]
    assert 0 <= same < different / 10
