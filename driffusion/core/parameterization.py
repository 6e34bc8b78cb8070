"""Network parameterisations and their conversion to the canonical pair ``(x0_hat, eps_hat)``.

With ``x = alpha * x0 + sigma * eps`` a network predicts one of

| prediction type | output | ``x0_hat`` | ``eps_hat`` |
|---|---|---|---|
| ``epsilon`` | ``eps`` | ``(x - sigma * out) / alpha`` | ``out`` |
| ``v_prediction`` | ``v = alpha*eps - sigma*x0`` | ``alpha*x - sigma*v`` | ``sigma*x + alpha*v`` |
| ``sample`` | ``x0`` | ``out`` | ``(x - alpha * out) / sigma`` |
| ``flow`` | ``v = eps - x0`` (``alpha = 1 - sigma``) | ``x - sigma * v`` | ``x + alpha * v`` |

The v-prediction formulas assume a VP schedule (``alpha^2 + sigma^2 = 1``).
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor

PredictionType = Literal["epsilon", "v_prediction", "sample", "flow"]
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
"""The network parameterisations: ``epsilon``, ``v_prediction``, ``sample``, ``flow``."""


def check_prediction_type(prediction_type: str) -> None:
    """Raise ``ValueError`` unless ``prediction_type`` is one of
    [`PREDICTION_TYPES`][driffusion.core.parameterization.PREDICTION_TYPES]."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )


def to_x0_eps(
    x: Tensor, out: Tensor, alpha: float, sigma: float, prediction_type: PredictionType
) -> tuple[Tensor, Tensor]:
    """Convert a raw network output at state ``x`` into ``(x0_hat, eps_hat)``: the table above.

    Samplers and solvers call it at a grid point through
    [`predict_x0_eps`][driffusion.core.transitions.predict_x0_eps]``(x, out, schedule, i)``; the
    state comes first, then the output, as in every transition and solver step.

    Args:
        x: the noisy state the output was computed at (or, when refining, the state the
            output is applied to).
        out: the network output at ``x``.
        alpha: ``alpha`` of the state's grid point.
        sigma: ``sigma`` of the state's grid point.
        prediction_type: the parameterisation of ``out``.

    Returns:
        ``(x0_hat, eps_hat)`` with ``x = alpha * x0_hat + sigma * eps_hat`` up to rounding.
    """
    if prediction_type == "epsilon":
        return (x - sigma * out) / alpha, out
    if prediction_type == "v_prediction":
        return alpha * x - sigma * out, sigma * x + alpha * out
    if prediction_type == "sample":
        return out, (x - alpha * out) / sigma
    if prediction_type == "flow":
        return x - sigma * out, x + alpha * out
    check_prediction_type(prediction_type)
    raise AssertionError("unreachable")


def from_x0_eps(
    x0: Tensor, eps: Tensor, alpha: float, sigma: float, prediction_type: PredictionType
) -> Tensor:
    """The raw network output a perfect model of the given parameterisation would return.

    The inverse of [`to_x0_eps`][driffusion.core.parameterization.to_x0_eps]: ``epsilon -> eps``,
    ``v_prediction -> alpha*eps - sigma*x0``,
    ``sample -> x0``, ``flow -> eps - x0``.
    """
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return alpha * eps - sigma * x0
    if prediction_type == "sample":
        return x0
    if prediction_type == "flow":
        return eps - x0
    check_prediction_type(prediction_type)
    raise AssertionError("unreachable")
