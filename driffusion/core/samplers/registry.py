"""Samplers from text: the built-in sampler values by name, and anyone's by import path.

A sampler is any callable ``sampler(model, x, schedule, *, callback=None) -> SampleResult``
([`SamplerFn`][driffusion.core.samplers.base.SamplerFn]); the built-in ones are frozen dataclasses
([`Sampler`][driffusion.core.samplers.base.Sampler]) whose ``repr`` is their label. On a command
line a sampler is written as

- a built-in name, optionally with settings: ``aggressive``, ``aggressive(drafts=4,
  solver='dpmpp_2m')``, or the label itself, ``Aggressive(drafts=4, solver='dpmpp_2m')``;
- an import path to a sampler value (or a class or factory, called with the settings given, or
  with none): ``my_package.samplers:FAST`` or ``path/to/file.py:FAST``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import REGISTRY, Sampler, SamplerFn
from .settings import rows_name, settings_of


def sampler_names() -> tuple[str, ...]:
    """The names of the registered built-in samplers, in the order they were defined."""
    return tuple(REGISTRY)


def builtin_samplers() -> list[type[Sampler]]:
    """The registered built-in sampler classes, in the order they were defined."""
    return list(REGISTRY.values())


def unregister(name: str) -> None:
    """Remove a registered sampler (e.g. one a test defined); unknown names are ignored."""
    REGISTRY.pop(name, None)


def parse_sampler(text: str, defaults: Mapping[str, Any] | None = None) -> SamplerFn:
    """The sampler that ``text`` names (see the module's description for the forms).

    Args:
        text: a built-in name or label with optional settings, or an import path.
        defaults: settings applied to a built-in sampler for each of its fields that ``text``
            does not set (e.g. ``{"rows": 4, "solver": "dpmpp_2m"}`` from the command line);
            ``"rows"`` sets the setting declared ``rows=True`` (``drafts``, ``window``,
            ``cores``, ``blocks``) unless that one is given by name too; with ``"num_steps"``
            (the grid's steps, an int) beside it, that default is
            [`default_rows`][driffusion.core.samplers.base.Sampler.default_rows]``(rows,
            num_steps)`` (DRiffusion: fewer drafts where more were measured to lose to serial
            at the same rounds); ``"num_steps"`` itself is not a setting. A setting the sampler
            does not have is ignored, and so is one the settings given imply (a
            [`Setting`][driffusion.core.samplers.settings.Setting]'s ``implied_by``: CHORDS'
            ``starts`` fix its ``cores``). Not applied to samplers loaded by import path: they
            are what their author wrote.

    Returns:
        The sampler.

    Raises:
        ValueError: an unknown name, a malformed setting, an unknown setting, or an import path
            that does not lead to a callable.

    Examples:
        >>> parse_sampler("aggressive(drafts=4)", {"rows": 2, "solver": "dpmpp_2m"})
        Aggressive(drafts=4, solver='dpmpp_2m')
        >>> parse_sampler("aggressive", {"rows": 2})
        Aggressive(drafts=2)
        >>> parse_sampler("aggressive", {"rows": 8, "num_steps": 3})  # too few steps to draft
        Aggressive(drafts=1)
    """
    text = text.strip()
    head, settings = _split_settings(text)
    if ":" in head:
        return _from_import_path(head, settings, text)
    cls = _builtin(head)
    declared = settings_of(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no setting(s) {unknown}; it has {sorted(names)}")
    given = dict(defaults or {})
    num_steps = given.pop("num_steps", None)
    rows_key = rows_name(cls)
    if "rows" in given:
        rows = given.pop("rows")
        if rows_key is not None:
            if num_steps is not None and isinstance(rows, int):
                rows = cls.default_rows(rows, num_steps)
            given.setdefault(rows_key, rows)
    implied = {k for k, spec in declared.items() if spec.implied_by in settings}
    merged = {
        k: v for k, v in given.items() if k in names and k not in settings and k not in implied
    }
    return cls(**merged, **settings)


def sampler_name(sampler: object) -> str:
    """A short name for folders and table rows: the sampler's ``name`` or its class name."""
    name = getattr(sampler, "name", None)
    return name if isinstance(name, str) and name else type(sampler).__name__.lower()


def unique_names(samplers: list[Any]) -> list[str]:
    """One distinct [`sampler_name`][driffusion.core.samplers.registry.sampler_name] per sampler
    (``aggressive``, ``aggressive_2``, ...): folder names for runs of several settings."""
    names: list[str] = []
    for sampler in samplers:
        base = name = sampler_name(sampler)
        count = 1
        while name in names:
            count += 1
            name = f"{base}_{count}"
        names.append(name)
    return names


def _builtin(name: str) -> type[Sampler]:
    by_class = {cls.__name__.lower(): cls for cls in REGISTRY.values()}
    cls = REGISTRY.get(name) or by_class.get(name.lower())
    if cls is None:
        raise ValueError(
            f"unknown sampler {name!r}; choose one of {', '.join(REGISTRY)}, or give an "
            "import path (package.module:NAME or path/to/file.py:NAME)"
        )
    return cls


def _split_settings(text: str) -> tuple[str, dict[str, Any]]:
    """``"name(a=1, b='x')"`` -> ``("name", {"a": 1, "b": "x"})`` (values are literals)."""
    if "(" not in text:
        return text, {}
    head, sep, _ = text.partition("(")
    if not sep or not head:
        raise ValueError(f"cannot read sampler {text!r}: expected NAME or NAME(key=value, ...)")
    try:
        call = ast.parse(f"f{text[len(head) :]}", mode="eval").body
    except SyntaxError as error:
        raise ValueError(f"cannot read the settings of sampler {text!r}: {error.msg}") from None
    assert isinstance(call, ast.Call)
    if call.args:
        raise ValueError(f"sampler settings are key=value pairs, got {text!r}")
    settings = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            raise ValueError(f"sampler settings are key=value pairs, got {text!r}")
        try:
            settings[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            raise ValueError(
                f"setting {keyword.arg} of sampler {text!r} is not a literal (a number, string, "
                "True/False/None)"
            ) from None
    return head.strip(), settings


def _from_import_path(head: str, settings: dict[str, Any], text: str) -> SamplerFn:
    location, _, attribute = head.rpartition(":")
    if not location or not attribute.isidentifier():
        raise ValueError(f"an import path is MODULE:NAME or FILE.py:NAME, got {text!r}")
    module = _load_module(location)
    try:
        obj = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"{location} has no attribute {attribute!r}") from None
    if isinstance(obj, type) or (settings and not dataclasses.is_dataclass(obj)):
        obj = obj(**settings)  # a class or a factory
    elif settings:
        obj = dataclasses.replace(obj, **settings)
    if not callable(obj):
        raise ValueError(f"{text!r} is not a sampler: {type(obj).__name__} is not callable")
    return obj


def _load_module(location: str) -> Any:
    if location.endswith(".py"):
        path = Path(location).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"sampler file {location} does not exist")
        module_name = f"driffusion_user_{path.stem}_{abs(hash(str(path)))}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import {location}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up while building
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(location)
    except ImportError as error:
        raise ValueError(f"cannot import module {location!r}: {error}") from None
