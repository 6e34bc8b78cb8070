"""Sampler settings, each declared once: a [`Setting`][driffusion.core.samplers.settings.Setting]
(type, default, bound, help) on a dataclass field of the sampler value, made by
[`setting`][driffusion.core.samplers.settings.setting] or its shorthands. Construction checks,
the pure functions' defaults, labels, parsing, command-line flags and the benchmarks'
configurations all read these declarations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from driffusion.core.solvers import Solver, get_solver

KINDS = ("int", "float", "bool", "choice", "solver", "points")


@dataclasses.dataclass(frozen=True)
class Setting:
    """The declaration of one sampler setting: what every consumer of it derives from.

    Attributes:
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"choice"`` (one of ``choices``), ``"solver"``
            (a [`Solver`][driffusion.core.solvers.Solver] or a solver's name) or ``"points"`` (a
            tuple of grid points).
        help: one line, shown on command lines.
        minimum: the smallest allowed number (``int`` and ``float``).
        exclusive: ``minimum`` itself is not allowed.
        choices: the allowed values of a ``"choice"``.
        optional: ``None`` is allowed (the sampler or the grid decides).
        label: always shown in the sampler's label, even at its default.
        flag: offered on command lines as ``--name`` (for every sampler that declares it).
        rows: this setting is the sampler's rows per round (at most one per sampler): command
            lines default it to the draft-group size.
        implied_by: another setting that, when given, fixes this one (a command-line default
            is then not applied to it).
    """

    kind: str
    help: str
    minimum: float | None = None
    exclusive: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False
    label: bool = False
    flag: bool = False
    rows: bool = False
    implied_by: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"setting kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "choice" and not self.choices:
            raise ValueError("a choice setting needs its choices")

    def check(self, name: str, value: Any) -> Any:
        """``value`` if it is allowed (a list of points becomes a tuple), else ``ValueError``
        naming the setting."""
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{name} must be set, got None")
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer{self._bound()}, got {value!r}")
            self._check_bound(name, value, "an integer")
        elif self.kind == "float":
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ValueError(f"{name} must be a finite number{self._bound()}, got {value!r}")
            self._check_bound(name, value, "a finite number")
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        elif self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{name} must be one of {self.choices}, got {value!r}")
        elif self.kind == "solver":
            if not isinstance(value, (Solver, str)):
                raise ValueError(f"{name} must be a Solver or a solver's name, got {value!r}")
            get_solver(value)
        else:  # points
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise ValueError(f"{name} must be a sequence of grid points, got {value!r}")
            if not value or any(isinstance(p, bool) or not isinstance(p, int) for p in value):
                raise ValueError(f"{name} must be a non-empty sequence of integers, got {value!r}")
            return tuple(value)
        return value

    def parse(self, text: str) -> Any:
        """A command-line value: the text as this setting's kind, checked."""
        if self.kind == "int":
            value: Any = int(text)
        elif self.kind == "float":
            value = float(text)
        elif self.kind == "bool":
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"expected true or false, got {text!r}")
            value = lowered in ("true", "1", "yes")
        elif self.kind == "points":
            value = tuple(int(p) for p in text.replace(",", " ").split())
        elif self.kind == "choice":
            by_text = {str(c): c for c in self.choices}
            if text not in by_text:
                raise ValueError(f"expected one of {', '.join(by_text)}, got {text!r}")
            value = by_text[text]
        else:
            value = text
        return self.check("value", value)

    def _bound(self) -> str:
        if self.minimum is None:
            return ""
        return f" {'>' if self.exclusive else '>='} {self.minimum:g}"

    def _check_bound(self, name: str, value: float, noun: str) -> None:
        low = self.minimum
        if low is not None and (value < low or (self.exclusive and value == low)):
            raise ValueError(f"{name} must be {noun}{self._bound()}, got {value!r}")


def setting(default: Any, kind: str, help: str, **declaration: Any) -> Any:
    """A sampler setting: a dataclass field with its default and its
    [`Setting`][driffusion.core.samplers.settings.Setting] declaration (keywords as its attributes).

    Examples:
        >>> from dataclasses import dataclass
        >>> from driffusion.core.samplers.base import Sampler
        >>> @dataclass(frozen=True, repr=False)
        ... class Halves(Sampler):   # a sampler of your own; a ``name`` would register it
        ...     steps: int = setting(2, "int", "how many halvings", minimum=1)
        >>> Halves(steps=3)
        Halves(steps=3)
    """
    spec = Setting(kind, help, **declaration)
    if default is not None or not spec.optional:
        spec.check("default", default)
    return dataclasses.field(default=default, metadata={"setting": spec})


def rows_setting(default: int | None, help: str, *, optional: bool = False, **more: Any) -> Any:
    """The setting that fixes a sampler's rows per round (drafts, window, cores, blocks): an
    integer >= 1, always in the label, a command-line flag defaulting to the draft-group size."""
    return setting(
        default, "int", help, minimum=1, optional=optional, label=True, flag=True, rows=True, **more
    )


def solver_setting(help: str = "the solver (default: DDIM / flow Euler)") -> Any:
    """The ``solver`` setting every built-in sampler has: a solver or its name, ``None`` for the
    default (DDIM / flow Euler, or DDPM with noise)."""
    return setting(None, "solver", help, optional=True, flag=True)


def tolerance_setting(default: float, help: str, **more: Any) -> Any:
    """A ``tol``: a finite number >= 0 (``0``: run until exact), a command-line flag."""
    return setting(default, "float", help, minimum=0.0, flag=True, **more)


def settings_of(sampler: type | object) -> dict[str, Setting]:
    """The declared settings of a sampler class or value, by name, in field order (fields
    without a declaration are left out)."""
    cls = sampler if isinstance(sampler, type) else type(sampler)
    if not dataclasses.is_dataclass(cls):
        return {}
    return {
        f.name: f.metadata["setting"] for f in dataclasses.fields(cls) if "setting" in f.metadata
    }


def flag_values(sampler: type | object, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are command-line settings (``flag=True``) of the sampler:
    what a command line or a benchmark's common settings (``solver``, ``tol``) apply to it."""
    flags = {name for name, spec in settings_of(sampler).items() if spec.flag}
    return {k: v for k, v in values.items() if k in flags}


def rows_name(sampler: type | object) -> str | None:
    """The name of the setting that fixes a sampler's rows per round (``drafts``, ``window``,
    ``cores``, ``blocks``), or ``None``."""
    return next((name for name, s in settings_of(sampler).items() if s.rows), None)


def sampler_rows(sampler: object) -> int | None:
    """The rows per round a sampler asks for: its ``rows`` (``None`` where the grid decides, or
    for a sampler that does not say)."""
    rows = getattr(sampler, "rows", None)
    return rows if isinstance(rows, int) and not isinstance(rows, bool) else None
