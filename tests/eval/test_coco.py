"""COCO captions (driffusion.eval.coco): the first caption of each image, in image order."""

from __future__ import annotations

import json
from pathlib import Path

from driffusion.eval.coco import first_captions


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


def test_images_whose_records_disagree_with_the_run_are_not_scored_together(
    tmp_path: Path,
) -> None:
    import pytest
    import torch

    from driffusion.eval.coco import MixedOutputsError, ScoringConfig, score_samplers
    from driffusion.io import save_png

    items = [{"id": f"{k:06d}", "prompt": "a handwritten digit 1"} for k in range(3)]
    for name, label in (("serial", "Serial()"), ("aggressive", "Aggressive(drafts=2)")):
        for item in items:
            save_png(tmp_path / name / f"{item['id']}.png", torch.zeros(1, 16, 16), {})
            record = {"sampler": label, "steps": 8, "wall_s": 1.0, "rounds": 8, "evaluations": 8}
            (tmp_path / name / f"{item['id']}.json").write_text(json.dumps(record))
    copied = {"sampler": "Aggressive(drafts=4)", "steps": 8, "wall_s": 1.0, "rounds": 3}
    (tmp_path / "aggressive" / "000001.json").write_text(json.dumps(copied))
    expected = {
        "serial": {"sampler": "Serial()", "steps": 8},
        "aggressive": {"sampler": "Aggressive(drafts=2)", "steps": 8},
    }
    config = ScoringConfig(tmp_path, ("serial", "aggressive"), digits=True, expected=expected)
    with pytest.raises(MixedOutputsError, match=r"1 image\(s\) in .*aggressive.*000001\.json"):
        score_samplers(config, items)
    assert not (tmp_path / "reference").exists()  # refused before any scoring work
