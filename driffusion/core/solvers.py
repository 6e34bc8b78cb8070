r"""Solvers: the update a sampler applies from one grid point to the next, as pure functions
of the state, the network output and an explicit solver state.

Every solver has the same contract:

    state = solver.init(x, schedule, noise=None)
    x_next, state = solver.step(x, out, schedule, i, state)          # i -> i + 1
    x_j = solver.step(x, out, schedule, i, state, target=j)[0]        # i -> j: the solver's
                                                                      # own extrapolation

``state`` is an immutable [`SolverState`][driffusion.core.solvers.SolverState]: what a multistep
method remembers (earlier clean
estimates or raw outputs with their grid points, UniPC's uncorrected previous state) and the
pre-drawn noise of the stochastic ones. A step never mutates it; it returns a new one, so a
parallel sampler can keep the state of every point of a window or a block and replay a step.

The output ``out`` of a step is always converted at the state ``x`` the step is applied to
([`predict_x0_eps`][driffusion.core.transitions.predict_x0_eps]): when DRiffusion refines, the
output was computed at a draft but enters the solver exactly as a serial run's own evaluation
would.

Written with ``lambda = log(alpha / sigma)`` and ``h = lambda_j - lambda_i``, the solvers are

| name | method | diffusers scheduler |
|---|---|---|
| ``ddim`` | ``alpha_j x0 + sigma_j eps`` | ``DDIMScheduler`` |
| ``euler`` | the same step (flow: ``x + (s_j - s_i) v``) | ``EulerDiscrete``, ``FlowMatchEuler`` |
| ``ddpm`` | the DDPM posterior draw | ``DDPMScheduler`` |
| ``euler_ancestral`` | ancestral Euler (``eta = 1``) | ``EulerAncestralDiscrete`` |
| ``dpmpp_2m``, ``dpmpp_3m`` | DPM-Solver++ multistep | ``DPMSolverMultistep`` |
| ``dpmpp_2m_sde`` | its SDE variant | ``DPMSolverMultistep`` (``sde-dpmsolver++``) |
| ``unipc`` | UniP predictor + UniC corrector (``bh2``) | ``UniPCMultistep`` |
| ``plms`` | pseudo linear multistep, Heun start | ``PNDMScheduler`` (``skip_prk_steps``) |

``plms`` evaluates the network twice at its first step (as diffusers does), so it runs on the
grid [`PLMS.prepare`][driffusion.core.solvers.PLMS.prepare] makes: ``N + 1`` stages whose second
point is repeated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from driffusion.core.schedule import Schedule
from driffusion.core.transitions import (
    ddpm_transition_from_x0,
    predict_x0_eps,
    skip_transition,
)


@dataclass(frozen=True, eq=False)
class SolverState:
    """What a solver carries from one step to the next (immutable; steps return a new one).

    Attributes:
        history: ``(point, tensor)`` pairs, oldest first: clean estimates (DPM-Solver++, UniPC)
            or raw outputs (PLMS) of the most recent steps.
        noise: pre-drawn noise ``[N, B, *shape]`` of a stochastic solver (``noise[i]`` is used by
            the step ``i -> i + 1``), else ``None``.
        previous: UniPC: the corrected state the last predictor started from; PLMS: the state of
            the first point during its Heun warm start.
        last_order: UniPC: the order of the last predictor (its corrector uses the same).
        steps: steps taken so far (multistep warm-up).
    """

    history: tuple[tuple[int, Tensor], ...] = ()
    noise: Tensor | None = None
    previous: Tensor | None = None
    last_order: int = 0
    steps: int = 0


def log_snr(schedule: Schedule, i: int) -> float:
    """``lambda_i = log(alpha_i / sigma_i)``: ``-inf`` where ``alpha = 0``, ``+inf`` where
    ``sigma = 0``."""
    alpha, sigma = schedule.alpha(i), schedule.sigma(i)
    if alpha == 0:
        return -math.inf
    if sigma == 0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


def transfer(x: Tensor, x0: Tensor, schedule: Schedule, i: int, j: int) -> Tensor:
    """The first-order (DDIM) move of state ``x`` at point ``i`` to point ``j`` with a fixed
    clean estimate: ``alpha_j x0 + sigma_j (x - alpha_i x0) / sigma_i``."""
    if i == j:
        return x
    ratio = schedule.sigma(j) / schedule.sigma(i)
    return ratio * x + (schedule.alpha(j) - ratio * schedule.alpha(i)) * x0


def ancestral_transition_from_x0(
    x: Tensor, x0: Tensor, schedule: Schedule, i: int, j: int, noise: Tensor
) -> Tensor:
    r"""The ancestral (Euler, ``eta = 1``) draw from point ``i`` to ``j`` with clean estimate
    ``x0``:

    $$x_j = \alpha_j \hat x_0 + \sigma_j\big(\rho\, \hat\varepsilon + \sqrt{1 - \rho^2}\, z\big),
      \qquad \rho = e^{-(\lambda_j - \lambda_i)} = \frac{\sigma_j \alpha_i}{\alpha_j \sigma_i}.$$

    It equals diffusers' ``EulerAncestralDiscreteScheduler.step`` (``sigma_up``, ``sigma_down``
    in VE coordinates) and the first-order SDE DPM-Solver++ step.
    """
    alpha_i, sigma_i = schedule.alpha(i), schedule.sigma(i)
    alpha_j, sigma_j = schedule.alpha(j), schedule.sigma(j)
    if sigma_j == 0:
        return alpha_j * x0
    rho = sigma_j * alpha_i / (alpha_j * sigma_i)
    eps = (x - alpha_i * x0) / sigma_i
    return alpha_j * x0 + sigma_j * (rho * eps + math.sqrt(max(1.0 - rho * rho, 0.0)) * noise)


def check_step_noise(noise: Tensor, x: Tensor, schedule: Schedule) -> None:
    """Pre-drawn step noise must be a finite ``[N, *x.shape]`` tensor, or ``ValueError``."""
    expected = (schedule.num_steps, *x.shape)
    if tuple(noise.shape) != expected:
        raise ValueError(
            f"noise must have shape {expected} ([N, *x.shape]), got {tuple(noise.shape)}"
        )
    if not bool(torch.isfinite(noise).all()):
        raise ValueError("noise holds non-finite values (NaN or inf)")


def _check_noise_for(solver: Solver, noise: Tensor | None, x: Tensor, schedule: Schedule) -> None:
    if not solver.stochastic:
        if noise is not None:
            raise ValueError(f"solver {solver.name!r} is deterministic: do not pass noise")
        return
    if noise is None:
        raise ValueError(
            f"solver {solver.name!r} is stochastic: pass its pre-drawn noise [N, B, *shape] "
            "(driffusion.core.ddpm_noise(seeds, N, shape) draws it per seed)"
        )
    check_step_noise(noise, x, schedule)


@dataclass(frozen=True)
class Solver:
    """Base class: a first-order deterministic solver (the DDIM / Euler step).

    Subclasses override [`step`][driffusion.core.solvers.Solver.step]; everything else (state
    set-up, the first-order move drafts use) is shared. Drafting and refining along the grid
    live in [`driffusion.core.drafting`][driffusion.core.drafting].
    """

    name: ClassVar[str] = "ddim"
    stochastic: ClassVar[bool] = False
    multistep: ClassVar[bool] = False

    def prepare(self, schedule: Schedule) -> Schedule:
        """The grid this solver runs on
        (the same grid, except for [`PLMS`][driffusion.core.solvers.PLMS])."""
        return schedule

    def init(self, x: Tensor, schedule: Schedule, noise: Tensor | None = None) -> SolverState:
        """The state before the first step (checks that stochastic solvers get their noise)."""
        _check_noise_for(self, noise, x, schedule)
        return SolverState(noise=noise)

    def step(
        self,
        x: Tensor,
        out: Tensor,
        schedule: Schedule,
        i: int,
        state: SolverState,
        target: int | None = None,
    ) -> tuple[Tensor, SolverState]:
        """Advance ``x`` (point ``i``, raw output ``out``) to ``target`` (default ``i + 1``).

        Returns the new state and the solver state after the step ``i -> i + 1`` (independent
        of ``target``: a longer target is the solver's own extrapolation, used for drafts).
        """
        j = i + 1 if target is None else target
        return skip_transition(x, out, schedule, i, j), replace(state, steps=state.steps + 1)

    def first_order(
        self, x: Tensor, x0: Tensor, schedule: Schedule, i: int, j: int, state: SolverState
    ) -> Tensor:
        """Move ``x`` from ``i`` to ``j`` with a *fixed* clean estimate (the skip draft rule):
        deterministic solvers transfer in one move; stochastic ones chain their one-step draws
        with ``noise[i..j-1]``, so drafts share the refined trajectory's noise."""
        return transfer(x, x0, schedule, i, j)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({fields})"


# --- first-order solvers ---------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class DDIM(Solver):
    """The deterministic first-order step ``x_{i+1} = alpha_{i+1} x0 + sigma_{i+1} eps``
    (DDIM with ``eta = 0``; for rectified flow the Euler step ``x + (s_{i+1} - s_i) v``)."""

    name: ClassVar[str] = "ddim"


@dataclass(frozen=True, repr=False)
class Euler(Solver):
    """Euler's method on the probability-flow ODE: in VE coordinates ``X = x / alpha`` with
    ``s = sigma / alpha`` it is ``X + (s_{i+1} - s_i) (X - x0) / s_i``, which is the DDIM step
    in VP coordinates; for rectified flow ``x + (s_{i+1} - s_i) v``."""

    name: ClassVar[str] = "euler"


def _chain(
    transition: Callable[[Tensor, Tensor, Schedule, int, int, Tensor], Tensor],
    x: Tensor,
    x0: Tensor,
    schedule: Schedule,
    i: int,
    j: int,
    state: SolverState,
) -> Tensor:
    """One-step stochastic transitions ``i -> i+1 -> ... -> j`` with a fixed clean estimate and
    the noises ``noise[i..j-1]``: a draw over the span that shares the refined run's noise."""
    assert state.noise is not None
    for m in range(i, j):
        x = transition(x, x0, schedule, m, m + 1, state.noise[m])
    return x


@dataclass(frozen=True, repr=False)
class _StochasticFirstOrder(Solver):
    """A first-order stochastic solver: the clean estimate at ``x_i``, then its transition."""

    stochastic: ClassVar[bool] = True

    def step(
        self,
        x: Tensor,
        out: Tensor,
        schedule: Schedule,
        i: int,
        state: SolverState,
        target: int | None = None,
    ) -> tuple[Tensor, SolverState]:
        j = i + 1 if target is None else target
        x0 = predict_x0_eps(x, out, schedule, i)[0]
        return self.first_order(x, x0, schedule, i, j, state), replace(state, steps=state.steps + 1)


@dataclass(frozen=True, repr=False)
class DDPM(_StochasticFirstOrder):
    """The DDPM ancestral step: a draw from the posterior ``q(x_{i+1} | x_i, x0_hat)`` with
    ``noise[i]`` (diffusers' ``DDPMScheduler``, ``fixed_small`` variance)."""

    name: ClassVar[str] = "ddpm"

    def first_order(
        self, x: Tensor, x0: Tensor, schedule: Schedule, i: int, j: int, state: SolverState
    ) -> Tensor:
        return _chain(ddpm_transition_from_x0, x, x0, schedule, i, j, state)


@dataclass(frozen=True, repr=False)
class EulerAncestral(_StochasticFirstOrder):
    """Euler ancestral sampling (``eta = 1``): see
    [`ancestral_transition_from_x0`][driffusion.core.solvers.ancestral_transition_from_x0]."""

    name: ClassVar[str] = "euler_ancestral"

    def first_order(
        self, x: Tensor, x0: Tensor, schedule: Schedule, i: int, j: int, state: SolverState
    ) -> Tensor:
        return _chain(ancestral_transition_from_x0, x, x0, schedule, i, j, state)


# --- DPM-Solver++ ----------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class DPMSolverPP(Solver):
    r"""DPM-Solver++ multistep in the data prediction (Lu et al., 2022), as diffusers'
    ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"`` (``solver_type``
    ``midpoint``) or ``"sde-dpmsolver++"`` (``sde=True``).

    With ``m_0 = x0_i``, ``m_1 = x0_{i-1}``, ``h = lambda_{i+1} - lambda_i``,
    ``r_0 = (lambda_i - lambda_{i-1}) / h`` and ``D = m_0 + (m_0 - m_1) / (2 r_0)``, the
    second-order ODE step is

    $$x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i - \alpha_{i+1}(e^{-h} - 1)\, D ,$$

    and the SDE step
    ``x_{i+1} = (sigma_{i+1}/sigma_i) e^{-h} x_i + alpha_{i+1}(1 - e^{-2h}) D
    + sigma_{i+1} sqrt(1 - e^{-2h}) noise[i]``. Third order adds the second difference.

    Attributes:
        order: 1, 2 or 3 (``solver_order``).
        lower_order_final: first order at the last step and second order at the one before
            when the grid has fewer than 15 steps (diffusers' stabilisation). Into ``sigma = 0``
            (``final_sigmas_type="zero"``) the last step is always first order.
        euler_at_final: always first order at the last step.
        sde: the stochastic variant (needs pre-drawn noise).
    """

    order: int = 2
    lower_order_final: bool = True
    euler_at_final: bool = False
    sde: bool = False
    multistep: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3):
            raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {self.order!r}")

    @property
    def name(self) -> str:  # type: ignore[override]
        """``dpmpp_2m``, ``dpmpp_3m``, ``dpmpp_2m_sde``, ..."""
        return f"dpmpp_{self.order}m" + ("_sde" if self.sde else "")

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        """The SDE variant draws noise."""
        return self.sde

    def _order_at(self, schedule: Schedule, i: int, j: int, available: int) -> int:
        n = schedule.num_steps
        few = self.lower_order_final and n < 15
        if schedule.sigma(j) == 0:
            return 1  # a multistep extrapolation in lambda cannot reach lambda = inf
        final = j == n and (self.euler_at_final or few)
        second = j == n - 1 and few
        if self.order == 1 or available < 1 or final:
            return 1
        if self.order == 2 or available < 2 or second:
            return 2
        return 3

    def step(
        self,
        x: Tensor,
        out: Tensor,
        schedule: Schedule,
        i: int,
        state: SolverState,
        target: int | None = None,
    ) -> tuple[Tensor, SolverState]:
        j = i + 1 if target is None else target
        x0 = predict_x0_eps(x, out, schedule, i)[0]
        history = state.history
        order = self._order_at(schedule, i, j, min(len(history), self.order - 1))
        lam_s, lam_t = log_snr(schedule, i), log_snr(schedule, j)
        alpha_t, sigma_t = schedule.alpha(j), schedule.sigma(j)
        h = lam_t - lam_s
        data = x0  # the data term: D0 (+ D1/2 ...) in diffusers' notation
        if order >= 2:
            (p1, m1) = history[-1]
            r0 = (lam_s - log_snr(schedule, p1)) / h
            d1_0 = (x0 - m1) / r0
            if order == 2:
                data = x0 + 0.5 * d1_0
        if order == 3:
            (p2, m2), (p1, m1) = history[-2], history[-1]
            r1 = (log_snr(schedule, p1) - log_snr(schedule, p2)) / h
            d1_1 = (m1 - m2) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
        ratio = sigma_t / schedule.sigma(i)
        if not self.sde:
            em = math.expm1(-h)  # e^{-h} - 1
            if order == 3:
                x_next = (
                    ratio * x
                    - (alpha_t * em) * x0
                    + (alpha_t * (em / h + 1.0)) * d1
                    - (alpha_t * ((em + h) / h**2 - 0.5)) * d2
                )
            else:
                x_next = ratio * x - (alpha_t * em) * data
        else:
            if j != i + 1:
                raise ValueError("the SDE solver steps one point at a time (draft by 'skip')")
            assert state.noise is not None
            decay = math.exp(-h)
            one_minus = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
            noise_term = (sigma_t * math.sqrt(max(one_minus, 0.0))) * state.noise[i]
            if order == 3:
                x_next = (
                    (ratio * decay) * x
                    + (alpha_t * one_minus) * x0
                    + (alpha_t * (one_minus / (-2.0 * h) + 1.0)) * d1
                    + (alpha_t * ((one_minus - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * d2
                    + noise_term
                )
            else:
                x_next = (ratio * decay) * x + (alpha_t * one_minus) * data + noise_term
        keep = (*history, (i, x0))[-(self.order - 1) :] if self.order > 1 else ()
        return x_next, replace(state, history=keep, steps=state.steps + 1)

    def first_order(
        self, x: Tensor, x0: Tensor, schedule: Schedule, i: int, j: int, state: SolverState
    ) -> Tensor:
        if not self.sde:
            return transfer(x, x0, schedule, i, j)
        return _chain(ancestral_transition_from_x0, x, x0, schedule, i, j, state)

    def __repr__(self) -> str:
        return (
            f"DPMSolverPP(order={self.order}, lower_order_final={self.lower_order_final}, "
            f"euler_at_final={self.euler_at_final}, sde={self.sde})"
        )


# --- UniPC -----------------------------------------------------------------------------------


def _unipc_coefficients(h: float, rks: list[float], order: int) -> tuple[list[float], float]:
    """UniPC's B(h) = e^{-h} - 1 (bh2, data prediction) coefficients: ``(b, B_h)``, with the
    ``R`` matrix rows ``rks^(k-1)`` left to the caller."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = math.expm1(hh)
    factorial = 1
    b = []
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return b, b_h


def _solve(rks: list[float], b: list[float], size: int) -> list[float]:
    matrix = torch.tensor(
        [[r ** (k - 1) for r in rks[:size]] for k in range(1, size + 1)], dtype=torch.float64
    )
    return torch.linalg.solve(matrix, torch.tensor(b[:size], dtype=torch.float64)).tolist()


@dataclass(frozen=True, repr=False)
class UniPC(Solver):
    r"""UniPC (Zhao et al., 2023): the UniP predictor and the UniC corrector in the data
    prediction with ``B(h) = e^{h} - 1`` (``bh2``), as diffusers' ``UniPCMultistepScheduler``
    with its defaults.

    At point ``i`` the output (converted at the predicted state ``x_i``) first *corrects* that
    state, using the previous corrected state and the history (no extra evaluation); the
    predictor then steps from the corrected state. The last state is not corrected.

    Attributes:
        order: ``solver_order`` (predictor order; 2 by default).
        lower_order_final: lower the order over the last steps
            (``min(order, N - i)``), as diffusers does by default.
        disable_corrector: step indices whose *following* correction is skipped (diffusers'
            ``disable_corrector``).
    """

    order: int = 2
    lower_order_final: bool = True
    disable_corrector: tuple[int, ...] = ()
    name: ClassVar[str] = "unipc"
    multistep: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3):
            raise ValueError(f"UniPC order must be 1, 2 or 3, got {self.order!r}")

    def init(self, x: Tensor, schedule: Schedule, noise: Tensor | None = None) -> SolverState:
        """The state before the first step; order 3 refuses a grid that starts at ``alpha = 0``
        (``sigma = 1`` on a flow grid, FLUX's first point): its third-order weights are solved
        with ``lambda = -inf`` in the history and would turn the state to NaN."""
        if self.order == 3 and schedule.alpha(0) == 0 and schedule.num_steps > 2:
            raise ValueError(
                "UniPC of order 3 cannot start at alpha = 0 (sigma = 1, lambda = -inf: FLUX's "
                "first grid point); use order 2 or a grid that starts below sigma = 1"
            )
        return super().init(x, schedule, noise)

    def _this_order(self, schedule: Schedule, i: int, steps: int) -> int:
        order = min(self.order, schedule.num_steps - i) if self.lower_order_final else self.order
        return min(order, steps + 1)

    def step(
        self,
        x: Tensor,
        out: Tensor,
        schedule: Schedule,
        i: int,
        state: SolverState,
        target: int | None = None,
    ) -> tuple[Tensor, SolverState]:
        j = i + 1 if target is None else target
        x0 = predict_x0_eps(x, out, schedule, i)[0]
        history = state.history
        use_corrector = (
            i > 0 and (i - 1) not in self.disable_corrector and state.previous is not None
        )
        if use_corrector:
            assert state.previous is not None
            x = self._correct(x0, state.previous, history, schedule, i, state.last_order)
        history = (*history, (i, x0))[-self.order :]
        order = self._this_order(schedule, i, state.steps)
        if schedule.sigma(j) == 0:
            order = 1  # the multistep extrapolation cannot reach lambda = inf
        x_next = self._predict(x, history, schedule, i, j, order)
        new_state = replace(
            state,
            history=history,
            previous=x,
            last_order=self._this_order(schedule, i, state.steps),
            steps=min(state.steps + 1, self.order),
        )
        return x_next, new_state

    @staticmethod
    def _predict(
        x: Tensor,
        history: tuple[tuple[int, Tensor], ...],
        schedule: Schedule,
        i: int,
        j: int,
        order: int,
    ) -> Tensor:
        lam_s, lam_t = log_snr(schedule, i), log_snr(schedule, j)
        h = lam_t - lam_s
        m0 = history[-1][1]
        rks, d1s = [], []
        for k in range(1, order):
            p, mk = history[-(k + 1)]
            rk = (log_snr(schedule, p) - lam_s) / h
            rks.append(rk)
            d1s.append((mk - m0) / rk)
        rks.append(1.0)
        b, b_h = _unipc_coefficients(h, rks, order)
        alpha_t = schedule.alpha(j)
        x_next = (schedule.sigma(j) / schedule.sigma(i)) * x - (alpha_t * math.expm1(-h)) * m0
        if d1s:
            rhos = [0.5] if order == 2 else _solve(rks, b, order - 1)
            residual = sum(rho * d for rho, d in zip(rhos, d1s, strict=True))
            x_next = x_next - (alpha_t * b_h) * residual
        return x_next

    @staticmethod
    def _correct(
        x0_now: Tensor,
        last_sample: Tensor,
        history: tuple[tuple[int, Tensor], ...],
        schedule: Schedule,
        i: int,
        order: int,
    ) -> Tensor:
        s, m0 = history[-1]  # the previous point and its clean estimate
        lam_s, lam_t = log_snr(schedule, s), log_snr(schedule, i)
        h = lam_t - lam_s
        rks, d1s = [], []
        for k in range(1, order):
            p, mk = history[-(k + 1)]
            rk = (log_snr(schedule, p) - lam_s) / h
            rks.append(rk)
            d1s.append((mk - m0) / rk)
        rks.append(1.0)
        b, b_h = _unipc_coefficients(h, rks, order)
        rhos = [0.5] if order == 1 else _solve(rks, b, order)
        alpha_t = schedule.alpha(i)
        x = (schedule.sigma(i) / schedule.sigma(s)) * last_sample - (alpha_t * math.expm1(-h)) * m0
        residual = rhos[-1] * (x0_now - m0)
        for rho, d in zip(rhos[:-1], d1s, strict=True):
            residual = residual + rho * d
        return x - (alpha_t * b_h) * residual


# --- PLMS ------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class PLMS(Solver):
    r"""Pseudo linear multistep (Liu et al., 2022) as diffusers' ``PNDMScheduler`` with
    ``skip_prk_steps=True`` (the SD 1.5 / SD 2.1-base default): Adams-Bashforth combinations of
    the raw outputs, applied with the DDIM transfer at the current state,

    $$o' = \tfrac{1}{24}(55 o_i - 59 o_{i-1} + 37 o_{i-2} - 9 o_{i-3}),$$

    with lower orders over the first points, and a Heun warm start: the first step is taken
    twice, the second time with the average of the outputs at both ends. That costs one more
    evaluation, so [`prepare`][driffusion.core.solvers.PLMS.prepare] repeats the second grid point:
    ``N`` steps become ``N + 1``
    stages (``N + 1`` evaluations, as in diffusers).
    """

    name: ClassVar[str] = "plms"
    multistep: ClassVar[bool] = True

    def prepare(self, schedule: Schedule) -> Schedule:
        """Repeat point 1 (the Heun warm start evaluates there twice); one step is unchanged."""
        n = schedule.num_steps
        if n < 2:
            return schedule
        index = torch.tensor([0, 1, *range(1, n + 1)])
        return Schedule(
            schedule.alphas[index],
            schedule.sigmas[index],
            schedule.timesteps[index],
            schedule.prediction_type,
            schedule.kind,
        )

    @staticmethod
    def _warm(schedule: Schedule) -> bool:
        """Whether the grid is a prepared one (stages 1 and 2 share a point)."""
        return (
            schedule.num_steps >= 3
            and schedule.alpha(1) == schedule.alpha(2)
            and schedule.sigma(1) == schedule.sigma(2)
        )

    def step(
        self,
        x: Tensor,
        out: Tensor,
        schedule: Schedule,
        i: int,
        state: SolverState,
        target: int | None = None,
    ) -> tuple[Tensor, SolverState]:
        j = i + 1 if target is None else target
        warm = self._warm(schedule)
        if warm and i == 1:  # Heun: back to the first point with the averaged output
            start, p0 = state.previous, state.history[-1][0]
            assert start is not None
            combined = (out + state.history[-1][1]) / 2
            x_next = skip_transition(start, combined, schedule, p0, j)
            return x_next, replace(state, previous=None, steps=state.steps + 1)
        history = (*state.history, (i, out))[-4:]
        outs = [o for _, o in history]
        if len(outs) == 1:
            combined = outs[-1]
        elif len(outs) == 2:
            combined = (3 * outs[-1] - outs[-2]) / 2
        elif len(outs) == 3:
            combined = (23 * outs[-1] - 16 * outs[-2] + 5 * outs[-3]) / 12
        else:
            combined = (55 * outs[-1] - 59 * outs[-2] + 37 * outs[-3] - 9 * outs[-4]) / 24
        x_next = skip_transition(x, combined, schedule, i, j)
        previous = x if (warm and i == 0) else None
        return x_next, replace(state, history=history, previous=previous, steps=state.steps + 1)


# --- names -----------------------------------------------------------------------------------

SOLVERS: dict[str, Solver] = {
    "ddim": DDIM(),
    "euler": Euler(),
    "ddpm": DDPM(),
    "euler_ancestral": EulerAncestral(),
    "dpmpp_2m": DPMSolverPP(order=2),
    "dpmpp_3m": DPMSolverPP(order=3),
    "dpmpp_2m_sde": DPMSolverPP(order=2, sde=True),
    "unipc": UniPC(),
    "plms": PLMS(),
}
SOLVER_NAMES: tuple[str, ...] = tuple(SOLVERS)
"""The solvers by name (the keys of ``SOLVERS``)."""


def get_solver(solver: Solver | str | None, noise: Tensor | None = None) -> Solver:
    """A solver from a value or a name in [`SOLVER_NAMES`][driffusion.core.solvers.SOLVER_NAMES].

    ``None`` keeps the samplers' historical default: ``ddim`` (the flow Euler step on a flow
    schedule), or ``ddpm`` when DDPM noise is passed.
    """
    if solver is None:
        return SOLVERS["ddpm"] if noise is not None else SOLVERS["ddim"]
    if isinstance(solver, Solver):
        return solver
    if isinstance(solver, str) and solver in SOLVERS:
        return SOLVERS[solver]
    raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVER_NAMES)}")
