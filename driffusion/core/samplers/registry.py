"""Samplers by name, so that recipes, modules and benchmarks pick them from a string."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from driffusion.core.model import Model, SampleResult
from driffusion.core.samplers.base import Callback
from driffusion.core.samplers.driffusion import Mode, sample_driffusion
from driffusion.core.samplers.paradigms import sample_paradigms, sample_serial_reduced
from driffusion.core.samplers.picard_driffusion import sample_picard_driffusion
from driffusion.core.samplers.serial import sample_serial
from driffusion.core.samplers.srds import sample_srds
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import DRAFT_RULES, DraftRule, get_solver

SAMPLER_NAMES: tuple[str, ...] = (
    "serial",
    "aggressive",
    "conservative",
    "srds",
    "srds_pipelined",
    "paradigms",
    "serial_reduced",
    "picard_driffusion",
)


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler and its knobs, as plain data.

    Attributes:
        name: one of [`SAMPLER_NAMES`][driffusion.core.samplers.registry.SAMPLER_NAMES].
        drafts: DRiffusion drafts per round (``k``).
        blocks: SRDS blocks (``None``: ``round(sqrt(N))``).
        tol: SRDS stopping tolerance.
        max_iters: SRDS iteration cap (``None``: ``blocks``).
        window: ParaDiGMS window (points per round).
        rounds: serial rounds of the step-reduced baseline.
        order: DRiffusion draft order (1 or 2).
        adaptive_tol: DRiffusion adaptive drafting target (``None``: fixed drafts).
        solver: the solver's name (see [`SOLVER_NAMES`][driffusion.core.solvers.SOLVER_NAMES]);
            ``None``: DDIM / flow Euler, or DDPM when noise is passed.
        draft_rule: DRiffusion / Picard draft rule, ``"skip"`` or ``"solver"`` (``None``: the
            solver's default).
    """

    name: str = "serial"
    drafts: int = 2
    blocks: int | None = None
    tol: float = 1e-3
    max_iters: int | None = None
    window: int = 8
    rounds: int = 10
    order: int = 1
    adaptive_tol: float | None = None
    solver: str | None = None
    draft_rule: DraftRule | None = None

    def __post_init__(self) -> None:
        if self.name not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {self.name!r}; choose one of {SAMPLER_NAMES}")
        if self.solver is not None:
            get_solver(self.solver)
        if self.draft_rule is not None and self.draft_rule not in DRAFT_RULES:
            raise ValueError(f"draft_rule must be one of {DRAFT_RULES}, got {self.draft_rule!r}")

    def label(self) -> str:
        """A short human-readable label, e.g. ``aggressive(k=4,dpmpp_2m)``."""
        base = self._label()
        extra = [self.solver] if self.solver is not None else []
        if self.draft_rule is not None:
            extra.append(f"drafts={self.draft_rule}")
        if not extra:
            return base
        if base.endswith(")"):
            return f"{base[:-1]},{','.join(extra)})"
        return f"{base}({','.join(extra)})"

    def _label(self) -> str:
        if self.name in ("aggressive", "conservative"):
            extra = f",order={self.order}" if self.order != 1 else ""
            extra += f",adaptive={self.adaptive_tol:g}" if self.adaptive_tol is not None else ""
            return f"{self.name}(k={self.drafts}{extra})"
        if self.name == "picard_driffusion":
            return f"picard_driffusion(k={self.drafts},tol={self.tol:g})"
        if self.name.startswith("srds"):
            return f"{self.name}(B={self.blocks or 'sqrtN'},tol={self.tol:g})"
        if self.name == "paradigms":
            return f"paradigms(window={self.window},tol={self.tol:g})"
        if self.name == "serial_reduced":
            return f"serial_reduced(steps={self.rounds})"
        return self.name


def run_sampler(
    spec: SamplerSpec,
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    callback: Callback | None = None,
    noise: Tensor | None = None,
    check_finite: bool = True,
) -> SampleResult:
    """Run the sampler ``spec`` names with the shared signature."""
    common: dict[str, Any] = {
        "callback": callback,
        "check_finite": check_finite,
        "solver": spec.solver,
    }
    if spec.name == "serial":
        return sample_serial(model, x, schedule, noise=noise, **common)
    if spec.name in ("aggressive", "conservative"):
        mode: Mode = "aggressive" if spec.name == "aggressive" else "conservative"
        return sample_driffusion(
            model,
            x,
            schedule,
            drafts=spec.drafts,
            mode=mode,
            order=spec.order,
            adaptive_tol=spec.adaptive_tol,
            draft_rule=spec.draft_rule,
            noise=noise,
            **common,
        )
    if spec.name == "paradigms":
        return sample_paradigms(
            model, x, schedule, window=spec.window, tol=spec.tol, noise=noise, **common
        )
    if spec.name == "picard_driffusion":
        return sample_picard_driffusion(
            model,
            x,
            schedule,
            drafts=spec.drafts,
            tol=spec.tol,
            max_iters=spec.max_iters,
            draft_rule=spec.draft_rule,
            noise=noise,
            **common,
        )
    if spec.name == "serial_reduced":
        if noise is not None:
            raise ValueError("serial_reduced runs on a sub-grid: per-step noise is not supported")
        return sample_serial_reduced(model, x, schedule, rounds=spec.rounds, **common)
    return sample_srds(
        model,
        x,
        schedule,
        blocks=spec.blocks,
        tol=spec.tol,
        max_iters=spec.max_iters,
        pipelined=spec.name == "srds_pipelined",
        noise=noise,
        **common,
    )
