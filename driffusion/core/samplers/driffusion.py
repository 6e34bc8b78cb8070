"""DRiffusion: draft the next ``k`` states with skip transitions, evaluate them in one parallel
round, and refine them with the ordinary base step.

Both modes are compositions of two public pure functions:

- :func:`draft` ``(x_i, out_i) -> [d_1..d_k]`` with ``d_j = skip(x_i, out_i, i -> i + j)``;
- :func:`refine` ``(x_i, [o_0..o_{m-1}]) -> [x_{i+1}..x_{i+m}]`` with
  ``x_{i+j+1} = Step(x_{i+j}, o_j, i + j)``: each output (computed at a draft) is applied to the
  *refined* state, exactly as a scheduler's ``step`` would apply it.

With ``k = 1`` the single draft *is* the next serial state, so both modes reproduce the serial
sampler bit for bit.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.samplers._common import (
    Callback,
    base_step,
    check_noise,
    check_positive_int,
    check_state,
    evaluate,
)
from driffusion.core.schedule import Schedule
from driffusion.core.transitions import (
    ddpm_transition_from_x0,
    predict_x0_eps,
    skip_transition,
)

Mode = Literal["aggressive", "conservative"]


def draft(
    x: Tensor,
    out: Tensor,
    schedule: Schedule,
    i: int,
    k: int,
    *,
    noise: Tensor | None = None,
) -> Tensor:
    """Draft the states of the next ``k`` grid points from one prediction at point ``i``.

    Deterministic: ``d_j = skip(x, out, i -> i + j)`` for ``j = 1..k`` (no network call).
    With DDPM ``noise`` (``[N, B, ...]``), ``d_j`` chains the one-step posteriors with the fixed
    ``x0_hat`` of ``out`` and the noises ``noise[i..i+j-1]``: a draw from the ``j``-step
    posterior that shares its noise with the refined trajectory.

    Returns:
        ``[k, B, *shape]`` drafts; ``d_1`` equals ``Step(x, out, i)`` bit for bit.
    """
    check_positive_int(k, "k")
    if i + k > schedule.num_steps:
        raise ValueError(f"cannot draft k={k} points past point {i} of {schedule.num_steps}")
    if noise is None:
        return torch.stack([skip_transition(x, out, schedule, i, i + j) for j in range(1, k + 1)])
    x0, _ = predict_x0_eps(out, x, schedule, i)
    drafts, state = [], x
    for j in range(k):
        state = ddpm_transition_from_x0(state, x0, schedule, i + j, i + j + 1, noise[i + j])
        drafts.append(state)
    return torch.stack(drafts)


def refine(
    x: Tensor,
    outs: Tensor,
    schedule: Schedule,
    i: int,
    *,
    noise: Tensor | None = None,
) -> Tensor:
    """Apply the base step along the grid with the given outputs, starting at point ``i``.

    $$x_{i+1} = \\mathrm{Step}(x_i, o_0, i), \\quad x_{i+j+1} = \\mathrm{Step}(x_{i+j}, o_j, i+j)$$

    Args:
        x: refined state at point ``i``.
        outs: ``[m, B, *shape]`` raw outputs, ``outs[j]`` used for the step ``i + j -> i + j + 1``.
        schedule: the grid.
        i: start point.
        noise: pre-drawn DDPM noise ``[N, B, ...]``, or ``None`` for DDIM / flow Euler.

    Returns:
        ``[m, B, *shape]``: the refined states of points ``i + 1..i + m``.
    """
    if i + outs.shape[0] > schedule.num_steps:
        raise ValueError(
            f"cannot refine {outs.shape[0]} steps from point {i} of {schedule.num_steps}"
        )
    states = []
    for j in range(outs.shape[0]):
        x = base_step(x, outs[j], schedule, i + j, noise)
        states.append(x)
    return torch.stack(states)


def sample_driffusion(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    drafts: int = 2,
    mode: Mode = "aggressive",
    noise: Tensor | None = None,
    callback: Callback | None = None,
    check_finite: bool = True,
) -> SampleResult:
    """DRiffusion draft-and-refine sampling with ``drafts = k`` parallel evaluations per round.

    **Aggressive** (ideal latency ``1/k``): one serial evaluation at ``x_0``, then per block of
    ``k' = min(k, N - 1 - i)`` steps: draft ``k'`` states from the anchor prediction, evaluate
    them in one round, refine; the last draft's output becomes the next anchor's prediction.
    Rounds: ``1 + ceil((N - 1) / k)``.

    **Conservative** (ideal latency ``2/(k + 1)``): per block, first a fresh evaluation at the
    refined anchor, then ``k' = min(k, N - 1 - i)`` drafts in one round, refining ``k' + 1``
    steps. Rounds: ``2 * (N // (k+1)) + min(N % (k+1), 2)``.

    Both modes spend exactly ``N`` evaluations.

    Args:
        model: ``model(xs[K, B, ...], t[K]) -> out``.
        x: initial state ``[B, *shape]`` at point 0.
        schedule: the grid.
        drafts: ``k >= 1``, evaluations per parallel round (the draft-group size).
        mode: ``"aggressive"`` or ``"conservative"``.
        noise: pre-drawn DDPM noise ``[N, B, *shape]``, or ``None`` for DDIM / flow Euler.
        callback: ``callback({"i": i, "x": x_i, "rounds": r})`` for each refined state.
        check_finite: raise ``ValueError`` on a non-finite network output.
    """
    check_state(x, schedule)
    check_noise(noise, x, schedule)
    k = check_positive_int(drafts, "drafts")
    if mode not in ("aggressive", "conservative"):
        raise ValueError(f"mode must be 'aggressive' or 'conservative', got {mode!r}")
    counter = CountingModel(model, check_finite=check_finite)
    n = schedule.num_steps

    def emit(states: Tensor, first: int) -> None:
        if callback is not None:
            for offset, state in enumerate(states):
                callback({"i": first + offset, "x": state, "rounds": counter.rounds})

    i = 0
    anchor_out = evaluate(counter, [x], [0], schedule)[0] if mode == "aggressive" else None
    while i < n:
        if mode == "conservative":
            anchor_out = evaluate(counter, [x], [i], schedule)[0]
        assert anchor_out is not None
        k_block = min(k, n - 1 - i)
        if k_block == 0:
            x = base_step(x, anchor_out, schedule, i, noise)
            emit(x[None], i + 1)
            break
        draft_states = draft(x, anchor_out, schedule, i, k_block, noise=noise)
        draft_outs = evaluate(
            counter, list(draft_states), list(range(i + 1, i + k_block + 1)), schedule
        )
        if mode == "aggressive":
            # Refine k' steps; the last draft's output is cached as the next anchor's.
            outs = torch.cat([anchor_out[None], draft_outs[:-1]])
            anchor_out = draft_outs[-1]
        else:
            outs = torch.cat([anchor_out[None], draft_outs])
        refined = refine(x, outs, schedule, i, noise=noise)
        emit(refined, i + 1)
        x = refined[-1]
        i += refined.shape[0]
    return SampleResult(x, counter.stats())
