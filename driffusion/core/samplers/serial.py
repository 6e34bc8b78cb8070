"""The serial base sampler: one network evaluation per step, one step per round."""

from __future__ import annotations

from torch import Tensor

from driffusion.core.model import CountingModel, Model, SampleResult
from driffusion.core.samplers._common import Callback, base_step, check_noise, check_state, evaluate
from driffusion.core.schedule import Schedule


def sample_serial(
    model: Model,
    x: Tensor,
    schedule: Schedule,
    *,
    noise: Tensor | None = None,
    callback: Callback | None = None,
    check_finite: bool = True,
) -> SampleResult:
    """Run the base sampler over the whole grid, one step per round.

    $$x_{i+1} = \\mathrm{Step}(x_i, f(x_i, t_i), i), \\qquad i = 0..N-1$$

    where ``Step`` is the DDIM step (flow: the Euler step) or, with ``noise``, the DDPM step
    ``x_{i+1} = mu(x0_hat, x_i) + sqrt(Var) * noise[i]``.

    Args:
        model: ``model(xs[K, B, ...], t[K]) -> out`` (see :mod:`driffusion.core.model`).
        x: the initial state ``[B, *shape]`` at grid point 0.
        schedule: the grid.
        noise: pre-drawn DDPM noise ``[N, B, *shape]``; ``None`` for the deterministic sampler.
        callback: called as ``callback({"i": i, "x": x_i, "rounds": r})`` for each new state.
        check_finite: raise ``ValueError`` on a non-finite network output.

    Returns:
        The state at point ``N`` and stats: ``N`` evaluations in ``N`` rounds.
    """
    check_state(x, schedule)
    check_noise(noise, x, schedule)
    counter = CountingModel(model, check_finite=check_finite)
    for i in range(schedule.num_steps):
        out = evaluate(counter, [x], [i], schedule)[0]
        x = base_step(x, out, schedule, i, noise)
        if callback is not None:
            callback({"i": i + 1, "x": x, "rounds": counter.rounds})
    return SampleResult(x, counter.stats())
