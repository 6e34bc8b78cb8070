"""Pick a sampler for a latency budget: given the devices and a number of serial rounds, try
every configuration that fits (serial solvers, aggressive and conservative DRiffusion over each
solver, with the longest grid the rounds allow) on a few samples of the user's own model, and
keep the one closest to a reference solution.

A user thinks in latency, not step counts: on ``D`` devices aggressive DRiffusion with ``k <= D``
drafts covers ``N = 1 + (R - 1) k`` steps in ``R`` rounds, conservative ``N`` with
``2 (N // (k+1)) + min(N % (k+1), 2) <= R``, a serial solver ``R`` steps (``R - 1`` for
``plms``, whose warm start costs one more evaluation). Which of them is most accurate depends on
the model (measured: on the exact oracle multistep drafting wins everywhere; on the digits
network long draft spans lose at 8 rounds), so it is measured, not assumed.

Pure: a model, start states, a grid factory and a reference in; a
[`Calibration`][driffusion.core.calibration.Calibration] out.
Caching the result per model and settings is the caller's business (the recipes keep a JSON
file next to their outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

from driffusion.core.model import Model
from driffusion.core.parameterization import PredictionType
from driffusion.core.samplers.base import Sampler, check_positive_int
from driffusion.core.samplers.driffusion import Aggressive, Conservative, conservative_rounds
from driffusion.core.samplers.serial import Serial, sample_serial
from driffusion.core.schedule import Schedule, reference_schedule
from driffusion.core.solvers import DPMSolverPP, get_solver

CALIBRATION_SOLVERS: tuple[str, ...] = ("ddim", "dpmpp_2m", "unipc", "plms")
MAX_STEPS = 500
"""The longest grid a calibration tries."""


def relative_error(x: Tensor, reference: Tensor) -> float:
    """``||x - x_ref|| / ||x_ref||`` (Frobenius over the whole batch, in float64): the error to a
    reference solution that the frontier, the calibration and the recipes report as ``err_ref``."""
    if x.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(reference.shape)}")
    reference = reference.double()
    return float((x.double() - reference).norm() / reference.norm())


@dataclass(frozen=True)
class Candidate:
    """One configuration and, once measured, its error to the reference.

    Attributes:
        sampler: ``"serial"``, ``"aggressive"`` or ``"conservative"``.
        solver: the solver's name.
        steps: grid steps ``N``.
        drafts: drafts per round ``k`` (1 for serial).
        rounds: serial rounds it takes.
        err_ref: ``||x - x_ref|| / ||x_ref||`` on the calibration samples (``None`` before).
    """

    sampler: str
    solver: str
    steps: int
    drafts: int
    rounds: int
    err_ref: float | None = None

    def make_sampler(self) -> Sampler:
        """The sampler value that runs it (run it on a grid of ``steps`` steps)."""
        if self.sampler == "serial":
            return Serial(solver=self.solver)
        cls = Aggressive if self.sampler == "aggressive" else Conservative
        return cls(drafts=self.drafts, solver=self.solver)

    def label(self) -> str:
        """E.g. ``aggressive over dpmpp_2m, N=29, k=4 (8 rounds)``."""
        if self.sampler == "serial":
            return f"serial {self.solver}, {self.steps} steps ({self.rounds} rounds)"
        return (
            f"{self.sampler} over {self.solver}, N={self.steps}, k={self.drafts} "
            f"({self.rounds} rounds)"
        )


@dataclass(frozen=True)
class Calibration:
    """The measured candidates of a round budget.

    Attributes:
        rounds: the budget.
        devices: the draft-group size it was measured for.
        best: the most accurate candidate (parallel or serial).
        best_serial: the most accurate serial candidate: what the same latency buys on one device.
        candidates: every candidate, measured.
    """

    rounds: int
    devices: int
    best: Candidate
    best_serial: Candidate
    candidates: tuple[Candidate, ...] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for a JSON cache or a report)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """The inverse of [`to_dict`][driffusion.core.calibration.Calibration.to_dict]."""
        return cls(
            int(data["rounds"]),
            int(data["devices"]),
            Candidate(**data["best"]),
            Candidate(**data["best_serial"]),
            tuple(Candidate(**c) for c in data["candidates"]),
        )


def reference_solution(
    model: Model,
    x: Tensor,
    alphas_cumprod: Tensor,
    points: int,
    prediction_type: PredictionType = "epsilon",
) -> Tensor:
    """The reference solution from ``x``: DPM-Solver++(3M) on ``points`` log-uniform sigmas
    ([`reference_schedule`][driffusion.core.schedule.reference_schedule]), then the final
    denoise."""
    grid = reference_schedule(alphas_cumprod, points, prediction_type)
    return sample_serial(model, x, grid, solver=DPMSolverPP(order=3)).x


def candidates(
    rounds: int, devices: int, solvers: Sequence[str] = CALIBRATION_SOLVERS
) -> list[Candidate]:
    """Every configuration that takes at most ``rounds`` rounds on ``devices`` devices.

    For each solver: serial with the most steps that fit; aggressive and conservative with
    ``k = 2..devices`` drafts and the longest grid that fits
    (at most [`MAX_STEPS`][driffusion.core.calibration.MAX_STEPS]).
    """
    check_positive_int(rounds, "rounds")
    check_positive_int(devices, "devices")
    out: list[Candidate] = []
    for name in solvers:
        solver = get_solver(name)
        if solver.stochastic:
            raise ValueError(f"calibration compares ODE solutions: {name!r} is stochastic")
        extra = 1 if name == "plms" else 0  # PLMS evaluates its first step twice
        if rounds - extra >= 1:
            out.append(Candidate("serial", name, rounds - extra, 1, rounds))
        for k in range(2, devices + 1):
            n = min(1 + (rounds - 1) * k - extra, MAX_STEPS)
            if n >= 2:
                out.append(Candidate("aggressive", name, n, k, rounds))
            n = max(
                (m for m in range(1, MAX_STEPS + 1) if conservative_rounds(m + extra, k) <= rounds),
                default=0,
            )
            if n >= 2:
                out.append(Candidate("conservative", name, n, k, conservative_rounds(n + extra, k)))
    return out


def calibrate(
    model: Model,
    x: Tensor,
    make_schedule: Callable[[int], Schedule],
    reference: Tensor,
    *,
    rounds: int,
    devices: int,
    solvers: Sequence[str] = CALIBRATION_SOLVERS,
) -> Calibration:
    """Measure every candidate of the budget on ``x`` and return them with the best.

    Args:
        model: ``model(xs[K, B, ...], t[K]) -> out`` (the user's network, guided as it will run).
        x: a few start states ``[B, *shape]`` (a handful of samples is enough to rank).
        make_schedule: ``N -> Schedule``, the grid the user's scheduler makes for ``N`` steps.
        reference: the reference solution from ``x`` (e.g. DPM-Solver++(3M) on
            [`reference_schedule`][driffusion.core.schedule.reference_schedule]).
        rounds: the latency budget in serial rounds.
        devices: devices in a draft group (the most drafts a round can evaluate at once).
        solvers: the deterministic solvers to consider.

    Returns:
        The calibration; ``best`` ties go to the configuration listed first (serial first).
    """
    if reference.shape != x.shape:
        raise ValueError(
            f"reference shape {tuple(reference.shape)} differs from x {tuple(x.shape)}"
        )
    measured = []
    for candidate in candidates(rounds, devices, solvers):
        try:
            schedule = make_schedule(candidate.steps)
        except ValueError:  # a step count the user's grid cannot make (e.g. trailing, N=201)
            continue
        result = candidate.make_sampler()(model, x, schedule)
        if result.stats.rounds > rounds:
            raise AssertionError(f"{candidate.label()} took {result.stats.rounds} rounds")
        error = relative_error(result.x, reference)
        measured.append(
            Candidate(
                candidate.sampler,
                candidate.solver,
                candidate.steps,
                candidate.drafts,
                result.stats.rounds,
                error,
            )
        )
    serial = [c for c in measured if c.sampler == "serial"]
    if not serial:
        raise ValueError(f"no serial configuration fits {rounds} round(s)")
    best = min(measured, key=lambda c: c.err_ref if c.err_ref is not None else float("inf"))
    best_serial = min(serial, key=lambda c: c.err_ref if c.err_ref is not None else float("inf"))
    return Calibration(rounds, devices, best, best_serial, tuple(measured))
