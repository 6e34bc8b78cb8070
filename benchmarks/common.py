"""What the benchmark scripts share beyond ``driffusion.io``'s ``markdown_table`` and
``write_json``: one timer, one deviation measure and one name per sampler row.

    wall, result = timed(lambda: sampler(model, x, schedule), device, repeats=3)
    row = {"sampler": row_name(sampler), "wall_s": wall, **deviation(result.x, serial.x)}
    print(markdown_table([row], ["sampler", "wall_s", "max_abs_dev", "rel_dev"]))
    write_json("outputs/rows.json", [row])
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from driffusion.core import default_starts, relative_error, sampler_name

T = TypeVar("T")
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


def row_name(sampler: object) -> str:
    """A sampler's name in a table's ``sampler`` column: its registry name, and
    ``srds_pipelined`` for pipelined SRDS (a different latency from plain SRDS)."""
    name = sampler_name(sampler)
    return f"{name}_pipelined" if getattr(sampler, "pipelined", False) else name


def chords_fits(cores: int, steps: int) -> bool:
    """Whether CHORDS' default start list of ``cores`` cores exists on a ``steps``-step grid."""
    try:
        default_starts(cores, steps)
    except ValueError:
        return False
    return True
