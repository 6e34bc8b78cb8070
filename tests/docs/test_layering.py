"""What the docs say about the repository is true.

- The layering table of ``docs/index.md`` (the single source: this test reads it) holds: every
  module of a package imports in a fresh interpreter with every package the table does not name
  for it blocked, its imports (module level and inside functions) are the ones the table names,
  and every name the table gives is used.
- The README's Layout section names every package and every script it claims to list.
- No page, docstring or comment points outside the repository.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "driffusion"
INDEX = ROOT / "docs" / "index.md"
HEADER = "| package | what | imports | imports on use |"
# third-party packages driffusion may import: absent (as if not installed) unless a row names
# them or something it names requires them
OPTIONAL = (
    "einops",
    "PIL",
    "torchvision",
    "tqdm",
    "lightning",
    "diffusers",
    "transformers",
    "safetensors",
    "accelerate",
    "torch_fidelity",
    "torchmetrics",
    "sklearn",
    "matplotlib",
    "open_clip",
    "fastapi",
    "uvicorn",
    "pydantic",
)
# torch imports these itself, so they cannot be absent: driffusion code may not import them
GUARDED = ("torch.distributed", "numpy")


@dataclass(frozen=True)
class Row:
    names: tuple[str, ...]  # dotted driffusion packages or modules
    imports: frozenset[str]  # `core` -> driffusion.core; others: modules of other packages
    on_use: frozenset[str]


def parse_cell(cell: str) -> frozenset[str]:
    names = set()
    for item in filter(None, (part.strip() for part in cell.split(","))):
        short = re.fullmatch(r"`([\w.]+)`", item)
        if short:
            names.add(f"driffusion.{short[1]}")
        else:
            assert re.fullmatch(r"[A-Za-z_][\w.]*", item), f"not a module name: {item!r}"
            names.add(item)
    return frozenset(names)


@functools.cache
def layering() -> tuple[Row, ...]:
    lines = INDEX.read_text().splitlines()
    start = lines.index(HEADER) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        package, _, imports, on_use = (c.strip() for c in line.strip().strip("|").split("|"))
        names = tuple(re.findall(r"`(driffusion(?:\.\w+)*)`", package))
        if names:  # recipes/ and the like are not packages
            rows.append(Row(names, parse_cell(imports), parse_cell(on_use)))
    assert len(rows) >= 8
    return tuple(rows)


def modules() -> dict[str, Path]:
    """Every driffusion module by dotted name (a package by its own name), from the files."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def within(name: str, prefixes: object) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)  # type: ignore[attr-defined]


def owner(module: str) -> Row:
    """The row with the longest name that holds the module (a module row overrides its package)."""
    best = max(
        ((len(n), row) for row in layering() for n in row.names if within(module, [n])),
        key=lambda pair: pair[0],
        default=None,
    )
    assert best is not None, f"{module} has no row in docs/index.md"
    return best[1]


def owned(row: Row) -> list[str]:
    return [m for m in modules() if owner(m) == row]


def closure(row: Row) -> set[Row]:
    """The row, the rows it imports (their imports in turn) and the rows of its parent packages
    (importing ``driffusion.io`` runs ``driffusion/__init__.py`` first)."""
    seen: set[Row] = set()
    todo = [row]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for module in owned(current):
            parts = module.split(".")
            todo += [owner(".".join(parts[:k])) for k in range(1, len(parts))]
        todo += [owner(n) for n in current.imports if n.startswith("driffusion")]
    return seen


@functools.cache
def distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


@functools.cache
def requirements(top: str) -> frozenset[str]:
    """Import names that the distributions providing ``top`` require, recursively (no extras)."""
    providers = distributions()
    by_dist: dict[str, set[str]] = {}
    for name, dists in providers.items():
        for dist in dists:
            by_dist.setdefault(canonical(dist), set()).add(name)
    found: set[str] = set()
    todo = [canonical(d) for d in providers.get(top, [])]
    done: set[str] = set()
    while todo:
        dist = todo.pop()
        if dist in done:
            continue
        done.add(dist)
        found |= by_dist.get(dist, set())
        try:
            required = importlib.metadata.requires(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in required:
            if "extra ==" not in requirement:
                todo.append(canonical(re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0]))
    return frozenset(found)


def canonical(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def allowed(row: Row) -> set[str]:
    """What importing the row's modules may load: the closure's imports, what those require."""
    names = {"torch"}
    for current in closure(row):
        names |= {n for n in current.imports if not n.startswith("driffusion")}
    for name in list(names):
        names |= requirements(name.split(".")[0])
    return names


ROW_IDS = [", ".join(row.names) for row in layering()]

CHILD = r"""
import builtins, importlib, json, sys
from importlib.machinery import PathFinder

spec = json.loads(sys.argv[1])
absent, blocked, guarded = spec["absent"], set(spec["blocked"]), spec["guarded"]
absent_dists = set(spec["absent_dists"])
def within(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)
early = sorted(m for m in sys.modules if within(m, absent + guarded + sorted(blocked)))
assert not early, f"loaded before the test could block them: {early}"

class Absent(PathFinder):
    # the path finder, blind to the absent packages: `import X` fails as for a package that is
    # not installed and importlib.util.find_spec("X") is None, as libraries probing for X expect
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if within(name, absent) else super().find_spec(name, path, target)

    # and their metadata: importlib.metadata.version("X") fails too, as libraries checking for
    # X by its distribution (lightning_utilities' RequirementCache) expect
    @classmethod
    def find_distributions(cls, *args, **kwargs):
        for dist in super().find_distributions(*args, **kwargs):
            name = (dist.metadata["Name"] or "").lower().replace("_", "-").replace(".", "-")
            if name not in absent_dists:
                yield dist

class Outside:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name in blocked:
            raise ModuleNotFoundError(f"{name} is not among the imports docs/index.md claims")
        return None

sys.meta_path[:] = [Outside] + [Absent if f is PathFinder else f for f in sys.meta_path]
real_import = builtins.__import__

def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__") or ""
    if level == 0 and within(importer, ["driffusion"]):
        for wanted in [name, *(f"{name}.{f}" for f in fromlist or ())]:
            if within(wanted, guarded):
                raise ImportError(f"{importer} imports {wanted}: not in docs/index.md")
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = guarded_import
import driffusion
assert driffusion.__file__.startswith(spec["root"]), driffusion.__file__
for module in spec["modules"]:
    importlib.import_module(module)
"""


@pytest.mark.processes
@pytest.mark.parametrize("row", layering(), ids=ROW_IDS)
def test_each_package_imports_with_the_others_blocked(row: Row) -> None:
    may = allowed(row)
    inside = driffusion_modules(closure(row))
    absent = sorted(n for n in OPTIONAL if not within(n, may))
    spec = {
        "root": str(ROOT),
        "modules": owned(row),
        "absent": absent,
        "absent_dists": sorted({canonical(d) for n in absent for d in distributions().get(n, [])}),
        "guarded": sorted(n for n in GUARDED if n not in may),  # torch allows no torch.distributed
        "blocked": sorted(set(modules()) - inside),
    }
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{spec['absent']=}\n{spec['guarded']=}\n{result.stderr[-3000:]}"


def imports_of(path: Path, module: str) -> tuple[set[str], set[str]]:
    """(module-level, inside-function) absolute imports of one file, stdlib and torch left out
    (torch.distributed kept), relative imports resolved; ``torch.distributed.x`` attribute use
    counts as an import of torch.distributed."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top: set[str] = set()
    lazy: set[str] = set()

    def keep(name: str) -> bool:
        first = name.split(".")[0]
        if first in sys.stdlib_module_names or first == "__future__":
            return False
        return first != "torch" or within(name, ["torch.distributed"])

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base_name = ".".join(base + ([child.module] if child.module else []))
                else:
                    base_name = child.module or ""
                names = [base_name] + [f"{base_name}.{alias.name}" for alias in child.names]
            elif isinstance(child, ast.Attribute) and ast.unparse(child) == "torch.distributed":
                names = ["torch.distributed"]
            (lazy if nested else top).update(n for n in names if keep(n))
            visit(child, nested)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return top, lazy


def covered(name: str, others: set[str], inside: set[str]) -> bool:
    """``name`` is a module of another package in ``others`` or a driffusion module in
    ``inside`` (``from driffusion.x import f`` names ``driffusion.x.f``: its module counts)."""
    if name.startswith("driffusion"):
        return name in inside or name.rpartition(".")[0] in inside
    guarded = [g for g in GUARDED if within(name, [g])]  # torch does not imply torch.distributed
    if guarded:
        return guarded[0] in others
    return within(name, others) or name.split(".")[0] in others


def driffusion_modules(rows: set[Row]) -> set[str]:
    return {m for r in rows for m in owned(r)}


def test_every_module_imports_only_what_its_row_names() -> None:
    wrong = []
    for row in layering():
        rows = closure(row)
        at_import, inside = allowed(row), driffusion_modules(rows)
        on_use, inside_on_use = set(at_import), set(inside)
        for name in {n for r in rows for n in r.on_use}:
            if name.startswith("driffusion"):
                used = closure(owner(name))
                inside_on_use |= driffusion_modules(used)
                on_use |= {n for r in used for n in r.on_use} | allowed(owner(name))
            else:
                on_use.add(name)
        for module in owned(row):
            top, lazy = imports_of(modules()[module], module)
            wrong += [
                f"{module} imports {n}" for n in sorted(top) if not covered(n, at_import, inside)
            ]
            wrong += [
                f"{module} imports {n} on use"
                for n in sorted(lazy)
                if not covered(n, on_use, inside_on_use)
            ]
    assert wrong == []


def test_every_name_in_the_table_is_used() -> None:
    """No stale claim: a row's *imports* are imported at module level by its modules, its
    *imports on use* inside their functions."""
    stale = []
    for row in layering():
        top: set[str] = set()
        lazy: set[str] = set()
        for module in owned(row):
            t, z = imports_of(modules()[module], module)
            top |= t
            lazy |= z
        for column, names, used in (("imports", row.imports, top), ("on use", row.on_use, lazy)):
            for name in sorted(names):
                if name == "torch":
                    continue
                if not any(within(u, [name]) for u in used):
                    stale.append(f"{row.names}: {column} {name}")
    assert stale == []


def test_every_package_has_a_row() -> None:
    packages = {f"driffusion.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    rows = {name for row in layering() for name in row.names}
    assert len(packages) >= 7 and sorted(packages - rows) == []
    assert sorted(n for n in rows if n not in modules()) == []


def test_core_imports_only_torch_and_einops() -> None:
    """The claim the README repeats, read from the table rather than restated here."""
    (core,) = [row for row in layering() if row.names == ("driffusion.core",)]
    assert core.imports == {"torch", "einops"} and not core.on_use


# --- the README's Layout section


def readme_layout() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_readme_layout_names_every_package_and_script() -> None:
    layout = readme_layout()
    named = set(re.findall(r"[\w.]+\.(?:py|sh)\b", layout))
    folders = re.findall(r"^(\S+/)\s", layout, flags=re.M)
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert [p for p in packages if f"driffusion/{p}/" not in folders] == []
    assert [f for f in folders if not (ROOT / f).is_dir()] == []
    scripts = sorted(
        p.name for folder in ("benchmarks", "recipes") for p in (ROOT / folder).glob("*.py")
    )
    scripts += [p.name for p in (ROOT / "benchmarks").glob("*.sh")]
    assert [s for s in scripts if s != "__init__.py" and s not in named] == []
    assert sorted(n for n in named if not [*ROOT.glob(f"*/{n}"), *ROOT.glob(f"*/*/{n}")]) == []


# --- nothing points outside the repository

TEXT_SUFFIXES = {".md", ".py", ".sh", ".yml", ".yaml", ".toml", ".css", ".js"}
RELATIVE_PATH = re.compile(r"(?<![\w/.])(?:\.\./)+[\w./-]*")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def repository_texts() -> list[Path]:
    paths = [ROOT / "README.md", ROOT / "mkdocs.yml"]
    for folder in ("docs", "driffusion", "recipes", "benchmarks"):
        paths += [
            p
            for p in sorted((ROOT / folder).rglob("*"))
            if p.suffix in TEXT_SUFFIXES and p.is_file() and "results" not in p.parts
        ]
    return paths


def outside_pointers(path: Path, text: str) -> list[str]:
    """Relative paths and markdown links in ``text`` that leave the repository or lead nowhere."""
    found = []
    targets = RELATIVE_PATH.findall(text)
    if path.suffix == ".md":
        targets += [t for t in MARKDOWN_LINK.findall(text) if not re.match(r"[a-z]+:", t)]
    for target in targets:
        resolved = (path.parent / target).resolve()
        if "shared" in Path(target).parts or not (
            resolved.is_relative_to(ROOT) and resolved.exists()
        ):
            found.append(f"{path.relative_to(ROOT)}: {target}")
    return found


def test_no_page_or_docstring_points_outside_the_repository() -> None:
    found = [hit for p in repository_texts() for hit in outside_pointers(p, p.read_text())]
    assert found == []


def test_the_pointer_check_sees_a_pointer_outside(tmp_path: Path) -> None:
    page = ROOT / "docs" / "concepts.md"
    assert outside_pointers(page, "see ``../shared/CHORDS.md``") == [
        "docs/concepts.md: ../shared/CHORDS.md"
    ]
    assert outside_pointers(page, "[spec](../../outside.md) [ok](index.md) [web](https://x.org)")
    assert outside_pointers(page, "[ok](index.md#papers) and [api](api/core.md)") == []


def test_the_installation_page_lists_every_extra_as_pyproject_does() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    page = (ROOT / "docs" / "installation.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", page, flags=re.M))
    assert sorted(rows) == sorted(e for e in extras if e != "all")
    missing = [
        f"{extra}: {requirement}"
        for extra, text in rows.items()
        for requirement in extras[extra]
        if canonical(re.split(r"[<>=\[ ]", requirement)[0]) not in canonical(text.replace(" ", "-"))
    ]
    assert missing == []
