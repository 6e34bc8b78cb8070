"""Tables and reports: one markdown-table writer and one strict JSON writer for every script."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from driffusion.io.images import atomic_write


def format_cell(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` significant digits, ``None`` as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 3
) -> str:
    """A GitHub-flavoured markdown table of ``rows`` over ``columns`` (missing cells empty).

    Examples:
        >>> print(markdown_table([{"sampler": "serial", "wall_s": 1.23456}], ["sampler", "wall_s"]))
        | sampler | wall_s |
        |---|---|
        | serial | 1.23 |
    """
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(c), digits) for c in columns) + " |")
    return "\n".join(lines)


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as strict, indented JSON, atomically (non-finite floats become null)."""
    text = json.dumps(strict(value), indent=2, allow_nan=False)
    atomic_write(Path(path), lambda p: p.write_text(text + "\n"))
