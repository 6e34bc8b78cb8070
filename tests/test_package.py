"""The package root shows the architecture: sub-packages only."""

from __future__ import annotations


def test_the_package_root_holds_only_packages() -> None:
    """The folders show the architecture: no module files beside ``__init__.py``."""
    import pkgutil

    import driffusion

    modules = list(pkgutil.iter_modules(driffusion.__path__))
    assert modules and all(m.ispkg for m in modules), [m.name for m in modules if not m.ispkg]
