"""What sampler authors share: the [`Sampler`][driffusion.core.samplers.base.Sampler] value base
with its registry (its settings: [`driffusion.core.samplers.settings`][]), the
[`SamplerFn`][driffusion.core.samplers.base.SamplerFn] contract, one round of evaluations
([`evaluate`][driffusion.core.samplers.base.evaluate]), the callback payload and the solver
set-up.

A built-in sampler is one module: its pure function and its value, whose dataclass fields are
its settings, each declared once with [`setting`][driffusion.core.samplers.settings.setting] (type,
default, bound, help). Everything else derives from those declarations: the checks on
construction (and at the top of the pure function, which builds the value), the function's
defaults (``window: int = ParaDiGMS.window``), the label, parsing of labels, the command-line
flags (``driffusion.lightning.cli``) and the benchmarks' configurations
([`Sampler.configurations`][driffusion.core.samplers.base.Sampler.configurations]). Defining the
class registers it by its ``name``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor

from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import DDPM, Solver, SolverState, check_step_noise, get_solver

from .settings import flag_values, rows_name, settings_of

Callback = Callable[[dict[str, Any]], None]
"""``callback(payload)``, called with [`payload`][driffusion.core.samplers.base.payload] for
each new state."""


@runtime_checkable
class SamplerFn(Protocol):
    """What makes a sampler: ``sampler(model, x, schedule, *, callback=None) -> SampleResult``.

    Anything with this call signature goes through the recipes, the Lightning module, the Fabric
    loop, the benchmarks and the evaluation. A sampler over a stochastic solver also takes
    ``noise=`` (``[N, B, *shape]``, drawn per seed by the module). Its ``repr`` is its label in
    reports; a ``name`` attribute (optional) names its output folder, and a ``rows`` attribute
    (optional) the rows its rounds evaluate.
    """

    def __call__(
        self, model: Model, x: Tensor, schedule: Schedule, *, callback: Callback | None = None
    ) -> SampleResult: ...


# --- the value base and its registry -------------------------------------------------------------

REGISTRY: dict[str, type[Sampler]] = {}
"""The built-in samplers by ``name``, in the order their classes were defined; a subclass of
[`Sampler`][driffusion.core.samplers.base.Sampler] with a ``name`` registers itself."""

S = TypeVar("S", bound="Sampler")
F = TypeVar("F", bound=Callable[..., SampleResult])


@dataclasses.dataclass(frozen=True, repr=False)
class Sampler:
    """Base of the built-in samplers: a frozen dataclass of settings, called like a function.

    A subclass declares its settings as dataclass fields made by
    [`setting`][driffusion.core.samplers.settings.setting] (or its shorthands), named like the
    keywords of its pure ``function`` (which ``__call__`` calls with them, and which names the
    class with [`implemented_by`][driffusion.core.samplers.base.Sampler.implemented_by]). A
    sampler of your own may instead override ``__call__``. Settings are checked on construction.
    The ``repr`` is the label used in reports and grids: the class name with every setting that
    is not ``None`` and either differs from its default or is declared ``label=True`` (the
    settings that define the sampler, such as ``drafts``), e.g.
    ``Aggressive(drafts=4, solver='dpmpp_2m')``. It parses back with
    [`parse_sampler`][driffusion.core.samplers.registry.parse_sampler].

    Attributes:
        name: the registry name (``"aggressive"``); also the default output folder. A subclass
            that sets it is registered under it.
        parallel: ``False`` for samplers that evaluate one state per round (one device's work).
        title: how tables and pages name it (default: the class name).
    """

    name: ClassVar[str] = ""
    parallel: ClassVar[bool] = True
    title: ClassVar[str] = ""
    function: ClassVar[Callable[..., SampleResult] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if not name:
            return
        known = REGISTRY.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"sampler name {name!r} is taken by {known.__qualname__}")
        REGISTRY[name] = cls

    @classmethod
    def implemented_by(cls, function: F) -> F:
        """Decorate the pure function the value calls: ``@Serial.implemented_by``."""
        cls.function = function
        return function

    def __post_init__(self) -> None:
        for name, spec in settings_of(self).items():
            object.__setattr__(self, name, spec.check(name, getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Checks across settings (a subclass's; each setting alone is checked already)."""

    @classmethod
    def check(cls, **settings: Any) -> None:
        """Check settings as construction does (``ValueError`` naming the setting): the first
        line of a pure sampler function, so that calling it directly is as safe as the value."""
        cls(**settings)

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
            raise TypeError(f"{type(self).__name__} sets no function: override __call__")
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

    @property
    def rows(self) -> int | None:
        """Rows per round: the value of the setting declared ``rows=True`` (``None`` where the
        grid decides); 1 for a serial sampler."""
        name = rows_name(self)
        if name is None:
            return None if self.parallel else 1
        value = getattr(self, name)
        return value if isinstance(value, int) else None

    def fits(self, num_steps: int) -> bool:
        """Whether this configuration runs on a grid of ``num_steps`` steps."""
        return True

    @classmethod
    def default_rows(cls, devices: int, num_steps: int) -> int:
        """The rows per round a command line gives this sampler on ``devices`` devices over
        ``num_steps`` steps when none are asked for: ``devices`` (DRiffusion takes fewer where
        more drafts were measured to ruin the sample, see
        [`safe_drafts`][driffusion.core.samplers.driffusion.safe_drafts])."""
        return devices

    @classmethod
    def default_rows_reason(cls, devices: int, num_steps: int) -> str | None:
        """``None`` when [`default_rows`][driffusion.core.samplers.base.Sampler.default_rows]
        is ``devices``, else one sentence saying why fewer rows."""
        return None

    def region_warning(self, num_steps: int) -> str | None:
        """``None`` unless this sampler's rows exceed the count measured safe over
        ``num_steps`` steps; then one sentence with the measured numbers (the base: always
        ``None``)."""
        return None

    @classmethod
    def variants(cls, rows: int, num_steps: int) -> list[dict[str, Any]]:
        """The configurations worth comparing at ``rows`` rows per round on an ``N``-step grid,
        as settings beyond the rows setting (default: the sampler's defaults alone)."""
        return [{}]

    @classmethod
    def configurations(cls, rows: int, num_steps: int, **common: Any) -> list[Sampler]:
        """The values of [`variants`][driffusion.core.samplers.base.Sampler.variants] at ``rows``
        rows per round that fit the grid: what benchmarks sweep.

        Args:
            rows: rows per round (set on the rows setting, if the sampler has one).
            num_steps: the grid's steps ``N``.
            **common: command-line settings (declared ``flag=True``, e.g. ``solver``,
                ``tol``) for every configuration that has them; a variant's own settings win.
        """
        base = flag_values(cls, common)
        rows_key = rows_name(cls)
        if rows_key is not None:
            base[rows_key] = rows
        out: list[Sampler] = []
        seen: set[str] = set()
        for variant in cls.variants(rows, num_steps):
            value = cls(**{**base, **variant})
            key = repr(value.canonical())
            if value.fits(num_steps) and key not in seen:
                seen.add(key)
                out.append(value)
        return out

    def canonical(self: S) -> S:
        """The same sampler with a default solver spelled out (``None`` -> ``"ddim"``): values
        that run the same have the same canonical form."""
        solver = getattr(self, "solver", None)
        if "solver" not in settings_of(self) or isinstance(solver, Solver):
            return self
        return self.replace(solver=get_solver(solver).name)

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            spec = f.metadata.get("setting")
            label = spec is not None and spec.label
            if value is None or (value == f.default and not label):
                continue
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def replace(self: S, **changes: Any) -> S:
        """A copy with some settings changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


# --- what every sampler function shares --------------------------------------------------------


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
