"""driffusion.core is pure torch (plus einops, tensor notation over torch): no distributed,
diffusers, lightning, tqdm or PIL imports."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.support import ROOT

CORE = ROOT / "driffusion" / "core"
FORBIDDEN = ("torch.distributed", "diffusers", "lightning", "tqdm", "PIL", "transformers", "numpy")


def imported_modules(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_core_imports_only_torch_and_stdlib() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) >= 8, "the core package should be found"
    offending = []
    for path in files:
        for name in imported_modules(path):
            top = name.split(".")[0]
            allowed = (
                top in sys.stdlib_module_names
                or top in ("torch", "einops")
                or name.startswith("driffusion.core")
            )
            if not allowed or any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                offending.append(f"{path.relative_to(CORE)}: {name}")
    assert offending == []


def test_walker_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import torch.distributed as dist\nfrom diffusers import UNet2DModel\n")
    assert imported_modules(bad) == ["torch.distributed", "diffusers", "diffusers.UNet2DModel"]
