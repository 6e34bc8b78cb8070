"""The one model contract every sampler uses, and the executors that fulfil it.

A *model* is any callable ``model(xs, t) -> out`` where ``xs`` stacks ``K`` states
``[K, B, *shape]`` and ``t`` holds their ``K`` network times (``Schedule.times``). It returns the
raw network outputs ``[K, B, *shape]`` in the schedule's parameterisation. A sampler asks for all
the evaluations of one *round* in one call and never knows where they run; an executor decides:

- [`BatchedExecutor`][driffusion.core.model.BatchedExecutor]: one call of the network on all ``K``
  rows (one device).
- [`ChunkedExecutor`][driffusion.core.model.ChunkedExecutor]: at most ``max_states`` rows per
  network call, to cap memory.
- a distributed executor (``driffusion.adapters.distributed.DistributedExecutor``) splits the
  rows across the ranks of a draft group.

[`CountingModel`][driffusion.core.model.CountingModel] wraps any model and measures *rounds*
(calls: serial latency units) and
*evaluations* (rows: total work); samplers report their stats through it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from einops import rearrange, repeat
from torch import Tensor

from driffusion.core.branches import network_branches, round_passes


class Model(Protocol):
    """``model(xs[K, B, *shape], t[K]) -> out[K, B, *shape]``."""

    def __call__(self, xs: Tensor, t: Tensor) -> Tensor: ...


NetworkFn = Callable[[Tensor, Tensor], Tensor]


class BatchedExecutor:
    """All ``K`` evaluations of a round in one call of ``network`` (same contract as the model).

    Exists so that a plain network function and a distributed executor are interchangeable; it
    adds the shape check that every executor owes the samplers.

    Args:
        network: ``network(xs[K, B, ...], t[K]) -> out``.
        fixed_shape: pad every round to the most rows any earlier round of this executor had
            (copies of the last row, their outputs dropped), so that a compiled network sees as
            few shapes as there are distinct widths growing over the run (e.g. ``1`` and ``k``
            for aggressive DRiffusion, whose last round is shorter).
    """

    def __init__(self, network: NetworkFn, fixed_shape: bool = False) -> None:
        self.network = network
        self.fixed_shape = fixed_shape
        self.width = 0

    def __call__(self, xs: Tensor, t: Tensor) -> Tensor:
        k = xs.shape[0]
        if not self.fixed_shape:
            return check_output(self.network(xs, t), xs)
        self.width = max(self.width, k)
        padded_xs, padded_t = pad_rows(self.width, xs, t)
        return check_output(self.network(padded_xs, padded_t)[:k], xs)


def pad_rows(width: int, *tensors: Tensor) -> list[Tensor]:
    """Each tensor's leading dimension padded to ``width`` with copies of its last row: valid
    inputs whose outputs the caller drops (a fixed shape for a compiled network)."""
    out = []
    for tensor in tensors:
        missing = width - tensor.shape[0]
        if missing < 0 or tensor.shape[0] == 0:
            raise ValueError(f"cannot pad {tensor.shape[0]} rows to {width}")
        out.append(torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])]))
    return out


class ChunkedExecutor:
    """Evaluate the ``K`` rows of a round in chunks of at most ``max_states`` rows.

    The chunks run one after another on one device, so a round costs ``ceil(K / max_states)``
    network calls of latency; use it to cap memory, not to go faster.
    """

    def __init__(self, network: NetworkFn, max_states: int) -> None:
        if isinstance(max_states, bool) or not isinstance(max_states, int) or max_states < 1:
            raise ValueError(f"max_states must be an integer >= 1, got {max_states!r}")
        self.network = network
        self.max_states = max_states
        self.network_calls = 0

    def __call__(self, xs: Tensor, t: Tensor) -> Tensor:
        outs = []
        for start in range(0, xs.shape[0], self.max_states):
            stop = start + self.max_states
            outs.append(self.network(xs[start:stop], t[start:stop]))
            self.network_calls += 1
        return check_output(torch.cat(outs, dim=0), xs)


def check_output(out: Tensor, xs: Tensor) -> Tensor:
    """Raise ``ValueError`` unless a model's output has the shape of its input states."""
    if not isinstance(out, Tensor) or out.shape != xs.shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"model returned shape {shape} for states of shape {tuple(xs.shape)}")
    return out


@dataclass(frozen=True)
class SamplerStats:
    """What a sampler spent.

    Attributes:
        evaluations: network evaluations (states evaluated, summed over rounds), per sample.
        rounds: serial rounds: model calls that must run one after another. On ``K`` devices
            with one row each, latency is proportional to rounds.
        rows: the most rows (states evaluated) in one round: the devices that can be kept busy.
        round_rows: the rows of each round, in order.
        parareal_iterations: SRDS: the Parareal iterations run.
        picard_sweeps: ParaDiGMS and Picard-DRiffusion: the most Picard sweeps (refinements)
            any grid point received before it was accepted.
        finish_order: CHORDS: the returned core's place in the finishing order (1: the fastest).
    """

    evaluations: int
    rounds: int
    rows: int = 1
    round_rows: tuple[int, ...] = field(default=(), repr=False, compare=False)
    parareal_iterations: int | None = None
    picard_sweeps: int | None = None
    finish_order: int | None = None

    def latency_units(self, devices: int) -> int:
        """Serial network calls on ``devices`` devices: ``sum_r ceil(rows_r / devices)``.

        Equals ``rounds`` when every round fits on the devices; the ideal speedup over the serial
        sampler on ``devices`` devices is ``N / latency_units(devices)``.
        """
        if devices < 1:
            raise ValueError(f"devices must be >= 1, got {devices}")
        return sum(math.ceil(r / devices) for r in self.round_rows)

    def latency_passes(self, devices: int, branches: int = 1, split: bool = False) -> int:
        """Latency in passes (one branch of one row) on ``devices`` devices when every
        evaluation has ``branches`` branches, split over the devices or kept together
        ([`round_passes`][driffusion.core.branches.round_passes])."""
        if devices < 1:
            raise ValueError(f"devices must be >= 1, got {devices}")
        return round_passes(self.round_rows, branches, devices, split)

    def as_dict(self) -> dict[str, int]:
        """The counts that apply, for reports: ``evaluations``, ``rounds``, ``rows`` and the
        sampler-specific ones that are set."""
        out = {"evaluations": self.evaluations, "rounds": self.rounds, "rows": self.rows}
        for name in ("parareal_iterations", "picard_sweeps", "finish_order"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True)
class SampleResult:
    """A sampler's final state ``x`` (``[B, *shape]``) and its
    [`SamplerStats`][driffusion.core.model.SamplerStats]."""

    x: Tensor
    stats: SamplerStats

    def __post_init__(self) -> None:
        # the end of every sampler: a finite network can still drive the state to inf
        if self.x.is_floating_point() and not bool(torch.isfinite(self.x).all()):
            raise NonFiniteStateError(
                "the final state holds NaN or inf (the network's outputs were finite but the "
                "state overflowed: check the model's scale and the schedule)"
            )


class NonFiniteStateError(ValueError):
    """A sampler's state holds NaN or inf (checked at every round's inputs and at the end)."""


class CountingModel:
    """Wrap a model; count rounds (calls) and evaluations (rows); optionally check finiteness.

    Args:
        model: the wrapped model.
        check_finite: raise ``ValueError`` when an output or a state to evaluate holds NaN or
            inf (naming the times), instead of letting NaNs flow silently into the image.
    """

    def __init__(self, model: Model, check_finite: bool = True) -> None:
        self.model = model
        self.check_finite = check_finite
        self.rounds = 0
        self.evaluations = 0
        self.round_rows: list[int] = []

    def __call__(self, xs: Tensor, t: Tensor) -> Tensor:
        if xs.ndim < 2 or t.ndim != 1 or t.shape[0] != xs.shape[0]:
            raise ValueError(
                f"model call needs xs [K, B, ...] and t [K], got {tuple(xs.shape)} and "
                f"{tuple(t.shape)}"
            )
        if self.check_finite and not bool(torch.isfinite(xs).all()):  # anchors and drafts
            raise NonFiniteStateError(
                f"a state to evaluate holds NaN or inf at times {t.tolist()} (round "
                f"{self.rounds + 1}): the previous outputs were finite but drove it to overflow"
            )
        out = check_output(self.model(xs, t), xs)
        self.rounds += 1
        self.evaluations += xs.shape[0]
        self.round_rows.append(xs.shape[0])
        if self.check_finite and not bool(torch.isfinite(out).all()):
            raise ValueError(f"model output is not finite (NaN or inf) at times {t.tolist()}")
        return out

    def stats(self, **counts: int) -> SamplerStats:
        """The counts so far as [`SamplerStats`][driffusion.core.model.SamplerStats], with any
        sampler-specific ones (``parareal_iterations=``, ``picard_sweeps=``,
        ``finish_order=``)."""
        rows = max(self.round_rows, default=0)
        return SamplerStats(self.evaluations, self.rounds, rows, tuple(self.round_rows), **counts)


Conditioning = Mapping[str, Tensor]
RowNetwork = Callable[..., Tensor]


class RowwiseModel:
    """Adapt a per-row network ``net(x[M, ...], t[M], **cond) -> out[M, ...]`` to the contract.

    The ``K x B`` states of a round become ``M = K * B`` rows, state-major: row ``k * B + b`` is
    sample ``b`` at time ``t[k]``. Each conditioning tensor (``[B, ...]``: class labels, text
    embeddings, pooled embeddings, ...) is tiled ``K`` times to match.

    A network with branches ([`GuidedNetwork`][driffusion.core.branches.GuidedNetwork]) is
    exposed unit by unit too, for executors that split the branches over devices:
    ``evaluate_units`` and ``combine``.
    """

    def __init__(self, network: RowNetwork, cond: Conditioning | None = None) -> None:
        self.network = network
        self.cond = dict(cond or {})
        self.branches = network_branches(network)

    def __call__(self, xs: Tensor, t: Tensor) -> Tensor:
        k, b = xs.shape[:2]
        rows = rearrange(xs, "k b ... -> (k b) ...")
        out = self.network(rows, repeat(t, "k -> (k b)", b=b), **self._tiled(k))
        return rearrange(out, "(k b) ... -> k b ...", k=k)

    def evaluate_units(self, xs: Tensor, t: Tensor, branch: Tensor) -> Tensor:
        """Raw branch outputs ``[U, B, ...]`` of ``U`` units in one network call: unit ``u`` is
        the states ``xs[u]`` at time ``t[u]`` under branch ``branch[u]``."""
        u, b = xs.shape[:2]
        rows = rearrange(xs, "u b ... -> (u b) ...")
        out = self.network.evaluate_branches(  # type: ignore[attr-defined]
            rows,
            repeat(t, "u -> (u b)", b=b),
            repeat(branch.to(xs.device), "u -> (u b)", b=b),
            **self._tiled(u),
        )
        return rearrange(out, "(u b) ... -> u b ...", u=u)

    def combine(self, outputs: Tensor, t: Tensor) -> Tensor:
        """``outputs[G, K, B, ...]`` raw branch outputs of the states at times ``t[K]`` -> the
        guided ``[K, B, ...]``."""
        k, b = outputs.shape[1:3]
        rows = rearrange(outputs, "g k b ... -> g (k b) ...")
        times = repeat(t, "k -> (k b)", b=b)
        return rearrange(self.network.combine(rows, times), "(k b) ... -> k b ...", k=k)  # type: ignore[attr-defined]

    def _tiled(self, k: int) -> dict[str, Tensor]:
        return {name: repeat(v, "b ... -> (k b) ...", k=k) for name, v in self.cond.items()}
