"""The documentation cannot drift: its examples run, every public function and class in the API
reference has a docstring, and every documented module is referenced."""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import re
import runpy
from pathlib import Path

import pytest

from tests.support import ROOT

DOCS = ROOT / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))
SKIP_METHODS = {"forward"}  # nn.Module.forward is documented by its class


def documented_modules() -> list[str]:
    names = []
    for page in sorted((DOCS / "api").glob("*.md")):
        names += re.findall(r"^::: ([\w.]+)$", page.read_text(), flags=re.M)
    return names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_docs_examples_run(example: Path) -> None:
    runpy.run_path(str(example), run_name="__main__")


def test_examples_are_included_in_the_pages() -> None:
    text = "".join((DOCS / page).read_text() for page in ("composing.md", "diffusers.md"))
    assert EXAMPLES and all(f'--8<-- "docs/examples/{p.name}"' in text for p in EXAMPLES)


def public_objects(module_name: str) -> list[tuple[str, object]]:
    module = importlib.import_module(module_name)
    found = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            found.append((f"{module_name}.{name}", obj))
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or attr in SKIP_METHODS:
                        continue
                    if inspect.isfunction(member) or isinstance(member, (property, classmethod)):
                        found.append((f"{module_name}.{name}.{attr}", member))
    return found


def test_every_public_function_and_class_has_a_docstring() -> None:
    modules = documented_modules()
    assert len(modules) >= 20
    missing = []
    for module_name in modules:
        assert importlib.import_module(module_name).__doc__, f"{module_name} has no docstring"
        for qualified, obj in public_objects(module_name):
            target = obj.__func__ if isinstance(obj, classmethod) else obj
            if not (inspect.getdoc(target) or "").strip():
                missing.append(qualified)
    assert missing == []


def test_every_package_module_is_in_the_api_reference() -> None:
    root = DOCS.parent / "driffusion"
    modules = {
        ".".join(p.relative_to(root.parent).with_suffix("").parts)
        for p in root.rglob("*.py")
        if not p.name.startswith("_")
    }
    documented = set(documented_modules())
    assert sorted(modules - documented) == []


SPHINX_ROLE = re.compile(r":(func|class|mod|data|meth|attr):`")


def test_docstrings_use_mkdocstrings_references_and_raw_math() -> None:
    """Sphinx roles show literally in mkdocs; math in a non-raw docstring loses its backslashes
    (``\\frac`` became a form feed and "rac" once)."""
    for path in sorted((ROOT / "driffusion").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                continue
            doc = ast.get_docstring(node, clean=False)
            if doc is None:
                continue
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 1)}"
            assert not SPHINX_ROLE.search(doc), f"{where}: use [`name`][full.path], not a role"
            assert "\f" not in doc and "\a" not in doc, f"{where}: math needs a raw docstring"
            if "$$" in doc:
                assert "\\\\" not in doc, f"{where}: doubled backslashes in math"


def test_readme_example_runs_and_says_what_it_measures(capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    serial, fast, close = namespace["serial"], namespace["fast"], namespace["close"]
    assert (serial.stats.rounds, fast.stats.rounds, close.stats.rounds) == (50, 14, 32)
    assert float((close.x - serial.x).abs().max()) < 1e-4  # "within 2.2e-5 of serial"
    assert "rounds=32" in capsys.readouterr().out


EXAMPLE_MODULES = [
    "driffusion.core.samplers.registry",
    "driffusion.lightning.session",
    "driffusion.io.tables",
    "driffusion.core.samplers.serial",
    "driffusion.core.samplers.driffusion",
    "driffusion.core.samplers.picard_driffusion",
    "driffusion.core.samplers.paradigms",
    "driffusion.core.samplers.srds",
]


@pytest.mark.parametrize("name", EXAMPLE_MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_the_bytes_on_the_wire_table_is_the_examples_output() -> None:
    """The diffusers page's table of gather and sequence-parallel bytes is what its example
    computes from the configurations (no number typed by hand)."""
    example = runpy.run_path(str(DOCS / "examples" / "bytes_on_the_wire.py"))
    assert example["table"]() in (DOCS / "diffusers.md").read_text()


def test_the_recipes_page_lists_every_family_with_its_defaults() -> None:
    from driffusion.adapters.families import FAMILIES

    page = (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8")
    for family in FAMILIES.values():
        own = ", ".join(f"`{name}`" for name in family.call_options) or "-"
        row = (
            f"| `{family.name}` | `{family.pipeline_class}` | `{family.model}` | {family.steps} "
            f"| {family.guidance} | {own} |"
        )
        assert row in page, f"docs/recipes.md lacks the row of {family.name}: {row}"
