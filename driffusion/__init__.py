"""driffusion: faster sampling of pretrained diffusion models by spending devices, not steps."""

from driffusion.core import *  # noqa: F403
from driffusion.core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = [*_core_all, "__version__"]
