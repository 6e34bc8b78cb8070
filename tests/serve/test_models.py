"""The models the server loads: a diffusers family served like ``parallelize(pipe)`` calls it,
video families and unknown names refused before any process starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from driffusion.core.errors import UsageError
from driffusion.io.images import to_pil
from driffusion.serve.client import request as http
from driffusion.serve.models import DigitsServed, load_served
from tests.support import decode_png, in_process_server


def test_a_tiny_family_is_served_as_parallelize_samples_it(tmp_path: Path) -> None:
    import numpy as np

    from driffusion.adapters.tiny import build_tiny_pipeline
    from driffusion.core import Aggressive
    from driffusion.lightning.pipeline import parallelize

    with in_process_server(tmp_path, "--model", "sd21", "--tiny") as (_, front):
        info = http("GET", f"{front.url}/info")[1]
        assert (info["model"], info["family"]) == ("tiny-sd21", "sd21")
        body = {"prompt": "a red cat", "negative_prompt": "blur", "steps": 4, "seed": 5, "n": 2}
        status, answer = http("POST", f"{front.url}/v1/images/generations", body)
        assert status == 200, answer
        bad = http("POST", f"{front.url}/v1/images/generations", {"prompt": "x", "size": "31x31"})
        assert (bad[0], bad[1]["error"]["param"]) == (400, "size")
    pipe = build_tiny_pipeline("sd21")
    out = parallelize(pipe, Aggressive(drafts=1), progress=False)(
        "a red cat",
        negative_prompt="blur",
        num_inference_steps=4,
        num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(seed) for seed in (5, 6)],
        output_type="pt",
    )
    for item, image in zip(answer["data"], out.images, strict=True):
        expected = torch.from_numpy(np.array(to_pil(image * 2 - 1)))
        assert torch.equal(decode_png(item["b64_json"])[0], expected)


def test_video_families_and_unknown_models_are_refused() -> None:
    with pytest.raises(UsageError, match="videos"):
        load_served("wan", tiny=True)
    with pytest.raises(UsageError, match="--tiny"):
        load_served("flux")
    with pytest.raises(UsageError, match="'digits'"):
        load_served("no-such-model")
    assert isinstance(load_served("digits"), DigitsServed)
