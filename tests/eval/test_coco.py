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
