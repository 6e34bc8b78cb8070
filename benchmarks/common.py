"""What the benchmark scripts share beyond ``driffusion.io``'s ``markdown_table`` and
``write_json``: one timer, one deviation measure, and the samplers a benchmark sweeps (every
registered sampler's own configurations, so a new sampler needs no benchmark edit).

    wall, result = timed(lambda: sampler(model, x, schedule), device, repeats=3)
    row = {"sampler": sampler_name(sampler), "wall_s": wall, **deviation(result.x, serial.x)}
    print(markdown_table([row], ["sampler", "wall_s", "max_abs_dev", "rel_dev"]))
    write_json("outputs/rows.json", [row])
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from driffusion.core import Aggressive, Conservative, Sampler, builtin_samplers, relative_error

T = TypeVar("T")
DRAFT_SAMPLERS: tuple[type[Sampler], ...] = (Aggressive, Conservative)
"""DRiffusion's draft-and-refine samplers (what the comparison calls *drafts*)."""
DRAFT_FAMILIES = tuple(cls.name for cls in DRAFT_SAMPLERS)
Timer = Callable[[Callable[[], T]], tuple[float, T]]


def _synchronize(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def wall_clock(work: Callable[[], T]) -> tuple[float, T]:
    """Seconds ``work`` takes on this process, and its result."""
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def timed(
    run: Callable[[], T],
    device: torch.device | str | None = None,
    repeats: int = 1,
    timer: Timer[T] | None = None,
) -> tuple[float, T]:
    """The median wall seconds of ``run`` over ``repeats`` runs, and the last run's result.

    Args:
        run: the work to time (called ``repeats`` times).
        device: the device ``run`` works on; a CUDA device is synchronised before and after each
            run, so that queued kernels count.
        repeats: runs to take the median of (``>= 1``).
        timer: ``timer(work) -> (seconds, result)`` for one run; default: this process's wall
            clock. Pass ``session.timed`` to time a run on every rank from a common start and
            take its slowest rank.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")

    def synced() -> T:
        _synchronize(device)
        result = run()
        _synchronize(device)
        return result

    clock: Timer[T] = timer or wall_clock
    walls = []
    for _ in range(repeats):
        wall, result = clock(synced)
        walls.append(wall)
    return statistics.median(walls), result


def deviation(x: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """The deviation of a sample from a reference sample (e.g. the serial one), as row fields:
    ``max_abs_dev`` (largest absolute difference) and ``rel_dev``
    ([`relative_error`][driffusion.core.calibration.relative_error])."""
    diff = x.double() - reference.double()
    return {"max_abs_dev": float(diff.abs().max()), "rel_dev": relative_error(x, reference)}


def parallel_configurations(rows: int, num_steps: int, **common: Any) -> list[Sampler]:
    """Every registered parallel sampler's
    [`configurations`][driffusion.core.samplers.base.Sampler.configurations] at ``rows`` rows
    per round on an ``N``-step grid, in registry order, with ``common`` command-line settings
    (``solver``, ``tol``) applied where a sampler has them."""
    return [
        sampler
        for cls in builtin_samplers()
        if cls.parallel
        for sampler in cls.configurations(rows, num_steps, **common)
    ]


def title(name: str) -> str:
    """How tables name a sampler family: its class's ``title`` (or class name), or ``name``."""
    cls = next((c for c in builtin_samplers() if c.name == name), None)
    return (cls.title or cls.__name__) if cls is not None else name


def families(rows: list[dict[str, Any]]) -> list[str]:
    """The families in comparison rows, serial first, in the order they appear."""
    return list(dict.fromkeys(["serial", *(r["family"] for r in rows)]))


def variants(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The ``(family, guidance_devices)`` pairs in comparison rows, serial first, each family's
    branches together (1) before split (2), in the order they appear."""
    pairs = {(r["family"], r.get("guidance_devices", 1)) for r in rows}
    return [(f, g) for f in families(rows) for g in (1, 2) if (f, g) in pairs]
