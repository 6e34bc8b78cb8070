"""The command-line flags every script shares, with one set of defaults: launch (as ``fabric
run``), the session (draft groups, collective timeout) and the samplers.

    parser = argparse.ArgumentParser()
    add_session_args(parser)
    add_sampler_args(parser, default=("serial", "aggressive"))
    args = parser.parse_args()
    with Session.from_args(args) as session:
        samplers = samplers_from_args(args, session.draft_devices, num_steps=args.steps)
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from driffusion.adapters.distributed import DEFAULT_TIMEOUT_S
from driffusion.core.branches import check_guidance_devices
from driffusion.core.errors import UsageError
from driffusion.core.samplers.base import Sampler, SamplerFn
from driffusion.core.samplers.registry import builtin_samplers, parse_sampler, sampler_names
from driffusion.core.samplers.settings import Setting, settings_of
from driffusion.core.solvers import SOLVER_NAMES
from driffusion.lightning.launch import FABRIC_FLAGS, planned_processes

T = TypeVar("T")


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


def planned_world_size(args: argparse.Namespace) -> int:
    """The number of processes the run will have, known before any process group exists:
    [`planned_processes`][driffusion.lightning.launch.planned_processes] of the launch flags."""
    return planned_processes({f: getattr(args, f, None) for f in FABRIC_FLAGS})


def add_session_args(
    parser: argparse.ArgumentParser, precision: bool = True
) -> argparse.ArgumentParser:
    """The launch flags plus ``--draft-devices``, ``--guidance-devices`` and ``--timeout``, read
    by [`Session.from_args`][driffusion.lightning.session.Session.from_args]."""
    add_fabric_args(parser, precision=precision)
    group = parser.add_argument_group("session")
    group.add_argument(
        "--draft-devices",
        type=positive_int,
        default=None,
        help="ranks per draft group (default: all ranks in one group)",
    )
    group.add_argument(
        "--guidance-devices",
        type=guidance_devices,
        default=1,
        metavar="{1,2,auto}",
        help=(
            "1: a row's guidance branches on one device, batched; 2: split over the draft group "
            "(exact); auto: split where the measured cost of a batched row says it pays "
            "(default 1)"
        ),
    )
    group.add_argument(
        "--timeout",
        type=timeout_seconds,
        default=DEFAULT_TIMEOUT_S,
        help=(
            "seconds any rank waits for the others: the launch (every rank must join) and every "
            f"collective (default {DEFAULT_TIMEOUT_S:g}, at most {MAX_TIMEOUT_S:g} = 7 days)"
        ),
    )
    return parser


def guidance_devices(text: str) -> int | str:
    """argparse type of ``--guidance-devices``: ``1``, ``2`` or ``auto``."""
    value: int | str = int(text) if text in ("1", "2") else text
    try:
        return check_guidance_devices(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 1, 2 or auto, got {text!r}") from None


def add_compile_arg(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--compile``: ``torch.compile`` the network, one graph per per-device shape
    ([`compile_network`][driffusion.lightning.module.compile_network])."""
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network (a fixed batch shape per device every round)",
    )
    return parser


MAX_TIMEOUT_S = 7 * 24 * 3600.0
"""The largest ``--timeout``: a week (a wait longer than that is a typo, not a plan)."""


def timeout_seconds(text: str) -> float:
    """argparse type of ``--timeout``: seconds, finite, > 0 and at most
    [`MAX_TIMEOUT_S`][driffusion.lightning.cli.MAX_TIMEOUT_S] (so that it is a valid
    ``timedelta`` for torch.distributed, checked when the flags are read, not at the launch)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise argparse.ArgumentTypeError(
            f"must be seconds > 0 and at most {MAX_TIMEOUT_S:g} (7 days), got {text}"
        )
    return value


def add_sampler_args(
    parser: argparse.ArgumentParser,
    default: Sequence[str] = ("aggressive",),
    solver: str | None = None,
) -> argparse.ArgumentParser:
    """Add ``--sampler`` (repeatable) and one flag per setting the built-in samplers declare
    as a command-line setting ([`Setting`][driffusion.core.samplers.settings.Setting]
    ``flag=True``: ``--drafts``, ``--window``, ``--cores``, ``--blocks``, ``--tol``,
    ``--solver``, and those of any sampler registered when the parser is built).

    A flag applies to every sampler that has the setting and does not set it in ``--sampler``;
    a sampler's rows setting (``rows=True``) defaults to the draft-group size.

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
            f"repeatable; a built-in name ({', '.join(sampler_names())}) with optional "
            "settings, e.g. 'aggressive(drafts=4)', or an import path package.module:NAME or "
            f"path/to/file.py:NAME (default: {' '.join(default)})"
        ),
    )
    flags: list[str] = []
    for name, (spec, owners) in _flag_settings().items():
        option = "--" + name.replace("_", "-")
        if spec.kind == "solver":
            group.add_argument(
                option,
                dest=name,
                choices=SOLVER_NAMES,
                default=solver,
                help=f"the built-in samplers' solver (default: {solver or 'DDIM / flow Euler'})",
            )
        else:
            default_text = (
                "the draft-group size, DRiffusion's no more than measured safe over the steps"
                if spec.rows
                else "each sampler's own"
            )
            group.add_argument(
                option,
                dest=name,
                type=_parser_of(spec),
                default=None,
                help=f"{spec.help} ({', '.join(owners)}; default: {default_text})",
            )
        flags.append(name)
    parser.set_defaults(sampler_default=list(default), sampler_flags=flags)
    return parser


def _flag_settings() -> dict[str, tuple[Setting, list[str]]]:
    """Every command-line setting of the registered samplers, once per name, with the samplers
    that declare it (the first declaration gives the help and the type)."""
    found: dict[str, tuple[Setting, list[str]]] = {}
    for cls in builtin_samplers():
        for name, spec in settings_of(cls).items():
            if spec.flag:
                found.setdefault(name, (spec, []))[1].append(cls.name)
    return found


def _parser_of(spec: Setting) -> Callable[[str], Any]:
    """An argparse type from a setting's declaration (an argparse error on a bad value)."""

    def parse(text: str) -> Any:
        try:
            return spec.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).replace("value ", "", 1)) from None

    return parse


def samplers_from_args(
    args: argparse.Namespace, devices: int, *, num_steps: int | None
) -> list[SamplerFn]:
    """The samplers of ``--sampler``, with each sampler's rows setting (``--drafts``,
    ``--window``, ``--cores``, ``--blocks``) defaulting to what the sampler takes on
    ``devices`` (the draft-group size) over ``num_steps`` steps
    ([`default_rows`][driffusion.core.samplers.base.Sampler.default_rows]: DRiffusion takes no
    more drafts than were measured safe; ``None`` when the steps are not known yet: ``devices``)
    and the other setting flags applied to built-in samplers that do not set them.

    Raises:
        ValueError: a sampler that cannot be read or built.
    """
    texts = args.sampler or args.sampler_default
    defaults = sampler_defaults(args, devices, num_steps=num_steps)
    return [parse_sampler(text, defaults) for text in texts]


def sampler_defaults(
    args: argparse.Namespace, devices: int, *, num_steps: int | None
) -> dict[str, Any]:
    """The settings built-in samplers take from the command line: every flag given, ``rows``
    (the draft-group size) for the rows setting of each sampler, and ``num_steps`` (when known)
    for the rows each sampler takes by default."""
    given = {
        name: getattr(args, name)
        for name in getattr(args, "sampler_flags", ())
        if getattr(args, name, None) is not None
    }
    steps = {} if num_steps is None else {"num_steps": num_steps}
    return {"rows": devices, **steps, **given}


def rows_notes(sampler: SamplerFn, devices: int, num_steps: int) -> tuple[str | None, str | None]:
    """``(note, warning)`` for a sampler about to run on ``devices`` over ``num_steps`` steps:
    ``warning`` when its rows are outside the measured safe region
    ([`region_warning`][driffusion.core.samplers.base.Sampler.region_warning]), and ``note``,
    the one sentence reports give: that warning as ``"as asked, outside the measured safe
    region: ..."``, or why it takes fewer rows than devices because more were measured to ruin
    the sample ([`default_rows_reason`][driffusion.core.samplers.base.Sampler.default_rows_reason]);
    ``None`` each otherwise, and for samplers that are not built-in."""
    if not isinstance(sampler, Sampler):
        return None, None
    warning = sampler.region_warning(num_steps)
    cls = type(sampler)
    rows = sampler.rows
    fell_back = isinstance(rows, int) and rows == cls.default_rows(devices, num_steps) < devices
    why = cls.default_rows_reason(devices, num_steps) if fell_back else None
    if warning is not None:
        return f"as asked, outside the measured safe region: {warning}", warning
    return why, None


def check_sampler_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fail at parse time (``parser.error``) on a sampler that cannot be built."""
    try:
        samplers_from_args(args, devices=1, num_steps=None)
    except (ValueError, TypeError) as error:
        parser.error(f"--sampler: {error}")


MAX_SEED = 2**64 - 1
"""The largest seed ``torch.Generator.manual_seed`` takes."""


def check_seed_range(parser: argparse.ArgumentParser, first: int, last: int) -> None:
    """Fail at parse time when a run's seeds ``first..last`` (every image's) do not all fit a
    torch generator, instead of failing at the image that overflows."""
    if last > MAX_SEED:
        parser.error(
            f"--seed {first}: the run's seeds go up to {last}, above the largest torch takes "
            f"({MAX_SEED}); choose --seed <= {MAX_SEED - (last - first)}"
        )


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


def exit_on_usage_error(main: Callable[[], T]) -> T:
    """Run a script's ``main``; a [`UsageError`][driffusion.core.errors.UsageError] (a bad
    argument, file, folder or model id) is printed as ``error: ...`` and exits with status 2,
    as ``argparse`` does, instead of a traceback. Every other error propagates: it is a bug."""
    try:
        return main()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
