"""The command-line flags every script shares, with one set of defaults: launch (as ``fabric
run``), the session (draft groups, collective timeout) and the samplers.

    parser = argparse.ArgumentParser()
    add_session_args(parser)
    add_sampler_args(parser, default=("serial", "aggressive"))
    args = parser.parse_args()
    with Session.from_args(args) as session:
        samplers = samplers_from_args(args, session.draft_devices)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

from driffusion.adapters.distributed import DEFAULT_TIMEOUT_S
from driffusion.core.samplers.base import SamplerFn
from driffusion.core.samplers.registry import SAMPLER_NAMES, parse_sampler
from driffusion.core.solvers import SOLVER_NAMES
from driffusion.lightning.launch import FABRIC_FLAGS

DEFAULT_TOL = 1e-3
"""The samplers' default ``tol``: RMS change relative to the step's noise level."""


def add_fabric_args(
    parser: argparse.ArgumentParser, precision: bool = True
) -> argparse.ArgumentParser:
    """Add ``--accelerator --devices --strategy --num-nodes [--precision]`` (as ``fabric run``).

    ``precision=False`` leaves ``--precision`` to the script (e.g. a weight dtype).
    """
    group = parser.add_argument_group("launch (ignored under `fabric run`, which sets them)")
    group.add_argument("--accelerator", default="auto", help="cpu, cuda, mps, auto")
    group.add_argument("--devices", default="1", help="devices per node (int, list or 'auto')")
    group.add_argument("--strategy", default="auto", help="ddp, auto, ...")
    group.add_argument("--num-nodes", type=int, default=1, dest="num_nodes")
    if precision:
        group.add_argument("--precision", default=None, help="32-true, bf16-mixed, 16-mixed, ...")
    # remember which flags are Fabric's: Session.from_args passes exactly these
    parser.set_defaults(fabric_flags=[f for f in FABRIC_FLAGS if precision or f != "precision"])
    return parser


def add_session_args(
    parser: argparse.ArgumentParser, precision: bool = True
) -> argparse.ArgumentParser:
    """The launch flags plus ``--draft-devices`` and ``--timeout``, read by
    [`Session.from_args`][driffusion.lightning.session.Session.from_args]."""
    add_fabric_args(parser, precision=precision)
    group = parser.add_argument_group("session")
    group.add_argument(
        "--draft-devices",
        type=positive_int,
        default=None,
        help="ranks per draft group (default: all ranks in one group)",
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT_S,
        help=f"collective timeout in seconds (default {DEFAULT_TIMEOUT_S:g})",
    )
    return parser


def add_sampler_args(
    parser: argparse.ArgumentParser,
    default: Sequence[str] = ("aggressive",),
    solver: str | None = None,
) -> argparse.ArgumentParser:
    """Add ``--sampler`` (repeatable) and the settings built-in samplers take by default.

    Args:
        parser: the parser.
        default: the samplers when no ``--sampler`` is given.
        solver: the default ``--solver`` (``None``: each sampler's own, DDIM / flow Euler).
    """
    group = parser.add_argument_group("samplers")
    group.add_argument(
        "--sampler",
        action="append",
        dest="sampler",
        metavar="SAMPLER",
        help=(
            f"repeatable; a built-in name ({', '.join(SAMPLER_NAMES)}) with optional settings, "
            "e.g. 'aggressive(drafts=4)', or an import path package.module:NAME or "
            f"path/to/file.py:NAME (default: {' '.join(default)})"
        ),
    )
    group.add_argument(
        "--solver",
        choices=SOLVER_NAMES,
        default=solver,
        help=f"the built-in samplers' solver (default: {solver or 'DDIM / flow Euler'})",
    )
    group.add_argument(
        "--drafts", type=positive_int, default=None, help="DRiffusion drafts (default: g)"
    )
    group.add_argument(
        "--window",
        type=positive_int,
        default=None,
        help="ParaDiGMS / Picard-DRiffusion window (default: g)",
    )
    group.add_argument("--cores", type=positive_int, default=None, help="CHORDS cores (default: g)")
    group.add_argument(
        "--blocks", type=positive_int, default=None, help="SRDS blocks (default: sqrt(N))"
    )
    group.add_argument(
        "--tol",
        type=nonnegative_float,
        default=DEFAULT_TOL,
        help="SRDS / ParaDiGMS / Picard tolerance: RMS change relative to sigma "
        f"(default {DEFAULT_TOL:g})",
    )
    parser.set_defaults(sampler_default=list(default))
    return parser


def samplers_from_args(args: argparse.Namespace, devices: int) -> list[SamplerFn]:
    """The samplers of ``--sampler``, with ``--drafts`` / ``--window`` / ``--cores`` defaulting to
    ``devices``
    (the draft-group size) and ``--solver``, ``--blocks``, ``--tol`` applied to built-in
    samplers that do not set them.

    Raises:
        ValueError: a sampler that cannot be read or built.
    """
    texts = args.sampler or args.sampler_default
    return [parse_sampler(text, sampler_defaults(args, devices)) for text in texts]


def sampler_defaults(args: argparse.Namespace, devices: int) -> dict[str, Any]:
    """The settings built-in samplers take from the command line."""
    return {
        "drafts": args.drafts or devices,
        "window": args.window or devices,
        "cores": args.cores or devices,
        "blocks": args.blocks,
        "tol": args.tol,
        "solver": args.solver,
    }


def check_sampler_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fail at parse time (``parser.error``) on a sampler that cannot be built."""
    try:
        samplers_from_args(args, devices=1)
    except (ValueError, TypeError) as error:
        parser.error(f"--sampler: {error}")


def _number(kind: type, minimum: float, inclusive: bool) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` above ``minimum`` (or equal to it if ``inclusive``)."""
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
    noun = "an integer" if kind is int else "a finite number"

    def parse(text: str) -> Any:
        value = kind(text)
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {noun} {bound}, got {text}")
        return value

    parse.__doc__ = f"argparse type: {noun} {bound}."
    return parse


positive_int = _number(int, 1, inclusive=True)
"""argparse type: an integer >= 1."""
nonnegative_int = _number(int, 0, inclusive=True)
"""argparse type: an integer >= 0 (seeds)."""
positive_float = _number(float, 0, inclusive=False)
"""argparse type: a finite number > 0."""
nonnegative_float = _number(float, 0, inclusive=True)
"""argparse type: a finite number >= 0 (guidance scales, tolerances)."""
