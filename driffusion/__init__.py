"""driffusion: faster sampling of pretrained diffusion models by spending devices, not steps."""

from typing import Any

from driffusion.core import *  # noqa: F403
from driffusion.core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = [*_core_all, "__version__", "parallelize"]  # noqa: F405 - lazy, see __getattr__


def __getattr__(name: str) -> Any:
    # parallelize lives at the edge (diffusers, Lightning): imported on first use only, so that
    # `import driffusion` stays torch-only
    if name == "parallelize":
        from driffusion.lightning.pipeline import parallelize

        return parallelize
    raise AttributeError(f"module 'driffusion' has no attribute {name!r}")
