"""What sampler authors share: the [`Sampler`][driffusion.core.samplers.base.Sampler] value
base and its [`SamplerFn`][driffusion.core.samplers.base.SamplerFn] contract, argument checks,
one round of evaluations ([`evaluate`][driffusion.core.samplers.base.evaluate]), the callback
payload and the solver set-up.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import (
    DDPM,
    DRAFT_RULES,
    Solver,
    SolverState,
    check_step_noise,
    get_solver,
)

Callback = Callable[[dict[str, Any]], None]
"""``callback(payload)``, called with [`payload`][driffusion.core.samplers.base.payload] for
each new state."""


@runtime_checkable
class SamplerFn(Protocol):
    """What makes a sampler: ``sampler(model, x, schedule, *, callback=None) -> SampleResult``.

    Anything with this call signature goes through the recipes, the Lightning module, the Fabric
    loop, the benchmarks and the evaluation. A sampler over a stochastic solver also takes
    ``noise=`` (``[N, B, *shape]``, drawn per seed by the module). Its ``repr`` is its label in
    reports; a ``name`` attribute (optional) names its output folder.
    """

    def __call__(
        self, model: Model, x: Tensor, schedule: Schedule, *, callback: Callback | None = None
    ) -> SampleResult: ...


@dataclasses.dataclass(frozen=True, repr=False)
class Sampler:
    """Base of the built-in samplers: a frozen dataclass of settings, called like a function.

    A built-in subclass declares its settings as dataclass fields named like the keywords of its
    pure ``function`` (which ``__call__`` calls with them) and gets them checked on construction
    (``drafts``, ``window``, ``rounds``, ``blocks``, ``max_iters``, ``cores``, ``index``:
    integers >= 1; ``tol``: finite
    >= 0; ``solver``, ``draft_rule``, ``order``, ``pipelined``, ``adaptive_tol``: known values).
    A sampler of your own may instead override ``__call__``. The ``repr`` is the label used in
    reports and grids: the class name with
    every setting that is not ``None`` and either differs from its default or is marked
    ``metadata={"label": True}`` (the settings that define the sampler, such as ``drafts``), e.g.
    ``Aggressive(drafts=4, solver='dpmpp_2m')``. It parses back with
    [`parse_sampler`][driffusion.core.samplers.registry.parse_sampler].

    Attributes:
        name: the registry name (``"aggressive"``); also the default output folder.
        parallel: ``False`` for samplers that evaluate one state per round (one device's work).
        implied_by: settings another one fixes (``{"cores": "starts"}``): a default from the
            command line is not applied to them when the other is given.
    """

    name: ClassVar[str] = ""
    parallel: ClassVar[bool] = True
    function: ClassVar[Callable[..., SampleResult] | None] = None
    implied_by: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_setting(f.name, getattr(self, f.name))

    def __call__(
        self,
        model: Model,
        x: Tensor,
        schedule: Schedule,
        *,
        callback: Callback | None = None,
        noise: Tensor | None = None,
        check_finite: bool = True,
    ) -> SampleResult:
        function = type(self).function
        if function is None:
            raise NotImplementedError(f"{type(self).__name__} sets no function: override __call__")
        settings = self.keywords()
        if noise is not None:
            if "noise" not in inspect.signature(function).parameters:
                raise ValueError(f"{self!r} does not take per-step noise (a stochastic solver)")
            settings["noise"] = noise
        return function(
            model, x, schedule, callback=callback, check_finite=check_finite, **settings
        )

    def keywords(self) -> dict[str, Any]:
        """The keyword arguments of ``function``: the settings by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or (value == f.default and not f.metadata.get("label")):
                continue
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def replace(self, **changes: Any) -> Sampler:
        """A copy with some settings changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def _check_setting(name: str, value: object) -> None:
    """Check a built-in sampler setting by its name (``ValueError`` naming it)."""
    if value is None and name not in ("order", "pipelined", "tol"):
        return
    if name in ("drafts", "window", "rounds", "blocks", "max_iters", "cores", "index"):
        check_positive_int(value, name)
    elif name == "tol":
        check_tolerance(value)
    elif name == "solver":
        check_solver(value)
    elif name == "draft_rule" and value not in DRAFT_RULES:
        raise ValueError(f"draft_rule must be one of {DRAFT_RULES}, got {value!r}")
    elif name == "order" and value not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {value!r}")
    elif name == "pipelined" and not isinstance(value, bool):
        raise ValueError(f"pipelined must be True or False, got {value!r}")
    elif name == "adaptive_tol" and (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"adaptive_tol must be a positive number, got {value!r}")


def label_field(default: Any) -> Any:
    """A dataclass field that always appears in the sampler's label."""
    return dataclasses.field(default=default, metadata={"label": True})


def check_state(x: Tensor, schedule: Schedule) -> None:
    """Raise ``ValueError`` for a state that is not a finite ``[B, *shape]`` tensor."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a [B, *shape] tensor with B >= 1, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds non-finite values (NaN or inf)")


def check_noise(noise: Tensor | None, x: Tensor, schedule: Schedule) -> None:
    """Pre-drawn DDPM noise must be ``[N, *x.shape]``, finite, on a VP schedule."""
    if noise is None:
        return
    if schedule.kind != "vp":
        raise ValueError("DDPM noise was given, but the schedule is a flow schedule")
    check_step_noise(noise, x, schedule)


def check_positive_int(value: object, name: str, upper: int | None = None) -> int:
    """``value`` as an int in ``1..upper``, or ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{name} must be at most {upper}, got {value!r}")
    return value


def check_tolerance(tol: object) -> float:
    """``tol`` as a finite float ``>= 0``, or ``ValueError`` naming it."""
    if (
        isinstance(tol, bool)
        or not isinstance(tol, (int, float))
        or not math.isfinite(tol)
        or tol < 0
    ):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    return float(tol)


def check_solver(solver: object) -> None:
    """``solver`` must be ``None``, a [`Solver`][driffusion.core.solvers.Solver] or a known
    solver's name (``ValueError`` otherwise)."""
    if solver is not None and not isinstance(solver, Solver):
        if not isinstance(solver, str):
            raise ValueError(f"solver must be a Solver or a solver's name, got {solver!r}")
        get_solver(solver)


def max_rms(a: Tensor, b: Tensor) -> float:
    """The largest per-sample root-mean-square difference of two ``[B, ...]`` states."""
    return float((a - b).flatten(1).double().pow(2).mean(dim=1).sqrt().max())


def evaluate(
    model: CountingModel, states: Sequence[Tensor], points: Sequence[int], schedule: Schedule
) -> Tensor:
    """One round: the raw outputs ``[K, B, *shape]`` for ``K`` states at ``K`` grid points.

    The states are stacked into ``[K, B, *shape]`` and the network times of the points are
    passed as float32 on the states' device: what every model receives from every sampler.
    """
    xs = torch.stack(list(states))
    t = schedule.times(list(points)).to(device=xs.device, dtype=torch.float32)
    return model(xs, t)


def payload(
    i: int, x: Tensor, denoised: Tensor, schedule: Schedule, rounds: int, **extra: Any
) -> dict[str, Any]:
    """The one callback payload of every sampler, for a state ``x`` at grid point ``i``:

    ``{"i": i, "x": x_i, "denoised": x0_hat, "sigma": sigma_i, "rounds": r}`` (plus any
    sampler-specific keys, e.g. SRDS's ``"iteration"``), where ``x0_hat`` is the clean estimate
    of the step that produced ``x_i`` and ``r`` the serial rounds spent so far.
    """
    return {
        "i": i,
        "x": x,
        "denoised": denoised,
        "sigma": schedule.sigma(i),
        "rounds": rounds,
        **extra,
    }


def setup_solver(
    solver: Solver | str | None, x: Tensor, schedule: Schedule, noise: Tensor | None
) -> tuple[Solver, Schedule, SolverState]:
    """Check the inputs and return the solver, the grid it runs on and its initial state."""
    check_state(x, schedule)
    resolved = get_solver(solver, noise)
    if isinstance(resolved, DDPM) or (noise is not None and not resolved.stochastic):
        check_noise(noise, x, schedule)
    grid = resolved.prepare(schedule)
    return resolved, grid, resolved.init(x, grid, noise)
