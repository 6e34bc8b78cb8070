"""Tables and JSON (driffusion.io.tables): markdown tables, strict JSON written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from driffusion.io import markdown_table, strict, write_json


def test_markdown_table_and_strict_json(tmp_path: Path) -> None:
    rows = [{"name": "x", "value": 1.23456, "n": 3}, {"name": "y", "value": math.inf}]
    assert markdown_table(rows, ["name", "value", "n"]).splitlines() == [
        "| name | value | n |",
        "|---|---|---|",
        "| x | 1.23 | 3 |",
        "| y | inf |  |",
    ]
    value = {"a": [1.0, math.nan, {"b": -math.inf}], "c": "ok"}
    assert strict(value) == {"a": [1.0, None, {"b": None}], "c": "ok"}
    write_json(tmp_path / "r.json", value)
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict {c}")) == strict(
        value
    )
    assert not list(tmp_path.glob(".*"))
