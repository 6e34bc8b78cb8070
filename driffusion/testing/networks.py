"""Small ``nn.Module`` networks with the per-row contract ``net(x[M, ...], t[M], **cond)``.

- [`OracleNetwork`][driffusion.testing.networks.OracleNetwork]: the exact Gaussian-mixture denoiser
  as a module (optionally class-
  conditional through a ``label`` keyword), for tests that need real sampler trajectories.
- [`GuidedOracleNetwork`][driffusion.testing.networks.GuidedOracleNetwork]: the exact
  class-conditional and unconditional denoisers of one mixture combined with a guidance scale:
  a guided network with two branches whose guided probability-flow ODE has a reference solve.
- [`ConvStackNetwork`][driffusion.testing.networks.ConvStackNetwork]: a synthetic denoiser whose
  cost per evaluation is set by its depth,
  doing real tensor work, for speed benchmarks (its outputs are meaningless).
- [`BranchedConvStack`][driffusion.testing.networks.BranchedConvStack]: one conv stack evaluated
  under two (or more) branches of equal cost and combined with a guidance scale: the synthetic
  guided network, for benchmarks of the branch split.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from driffusion.core.branches import GuidedNetwork, classifier_free_guidance
from driffusion.testing.oracle import GaussianMixtureDenoiser


class OracleNetwork(nn.Module):
    """[`GaussianMixtureDenoiser`][driffusion.testing.oracle.GaussianMixtureDenoiser] behind the
    per-row network contract."""

    def __init__(self, oracle: GaussianMixtureDenoiser) -> None:
        super().__init__()
        self.oracle = oracle
        # a buffer so that .to(device) has something to move and .device can be read
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    def forward(self, x: Tensor, t: Tensor, label: Tensor | None = None) -> Tensor:
        return self.oracle.rows(x, t, label)


class GuidedOracleNetwork(GuidedNetwork):
    r"""Classifier-free guidance over two exact denoisers of one Gaussian mixture.

    Branch 0 is the unconditional mixture's exact denoiser, branch 1 the class-conditional one
    (the data restricted to component ``label % M``); the guided output is
    $u + w (c - u)$ in the oracle's parameterisation, so the guided probability-flow ODE is the
    one every guided sampler solves and a fine reference solve of it is its exact solution.
    Every row is computed on its own, so a row's output never depends on the batch it is in
    (splitting the branches over devices is bit for bit).

    Args:
        oracle: the mixture.
        guidance: the scale ``w`` (``1``: the conditional denoiser; it still has two branches,
            so that a split has something to split).
        branches: ``2`` (guided) or ``1`` (the conditional denoiser alone).
    """

    def __init__(
        self, oracle: GaussianMixtureDenoiser, guidance: float = 2.0, branches: int = 2
    ) -> None:
        super().__init__()
        if branches not in (1, 2):
            raise ValueError(f"branches must be 1 or 2, got {branches!r}")
        self.oracle = oracle
        self.guidance = guidance
        self.branches = branches
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    def evaluate_branches(self, x: Tensor, t: Tensor, branch: Tensor, **cond: Tensor) -> Tensor:
        label = cond["label"]
        if self.branches == 1:
            return self.oracle.rows(x, t, label)
        out = torch.empty_like(x)
        for index, rows_label in ((0, None), (1, label)):
            rows = (branch == index).nonzero().flatten().to(x.device)
            if len(rows):
                picked = None if rows_label is None else rows_label[rows]
                out[rows] = self.oracle.rows(x[rows], t[rows], picked)
        return out

    def combine(self, outputs: Tensor, t: Tensor) -> Tensor:
        if self.branches == 1:
            return outputs[0]
        return classifier_free_guidance(outputs[0], outputs[1], self.guidance)


class ConvStackNetwork(nn.Module):
    """``depth`` 3x3 convolutions of ``width`` channels with a time embedding; cost ~ depth.

    Args:
        channels: input/output channels.
        width: hidden channels.
        depth: number of hidden conv layers.
        seed: weight initialisation seed (identical replicas on every rank).
    """

    def __init__(self, channels: int = 4, width: int = 64, depth: int = 4, seed: int = 0) -> None:
        super().__init__()
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.time = nn.Linear(1, width)
        self.hidden = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth))
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        torch.random.set_rng_state(gen_state)

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        return self.evaluate(x, t)

    def evaluate(self, x: Tensor, t: Tensor, shift: Tensor | None = None) -> Tensor:
        """The stack on ``x[M, C, H, W]`` at ``t[M]``, with ``shift[M, width]`` (if given) added
        to the time embedding of each row: one evaluation's cost whatever the shift."""
        embedding = self.time(t.to(x.dtype)[:, None] / 1000.0)
        if shift is not None:
            embedding = embedding + shift
        h = self.inp(x) + embedding[:, :, None, None]
        for layer in self.hidden:
            h = h + torch.tanh(layer(h))
        return 0.1 * self.out(h)


class BranchedConvStack(GuidedNetwork):
    r"""A [`ConvStackNetwork`][driffusion.testing.networks.ConvStackNetwork] under ``branches``
    conditionings of equal cost, combined with a guidance scale: a synthetic guided network.

    Branch ``i`` is the stack with a fixed random shift ``e_i`` added to its time embedding
    (as a class label would be), so every branch of a row costs exactly one stack evaluation and
    ``forward`` on ``M`` rows is one call of ``G M`` rows. With two branches the guided output
    is $\hat\epsilon = \epsilon_0 + w (\epsilon_1 - \epsilon_0)$ (branch 0 plays the
    unconditional one); with ``G`` branches, $\epsilon_0 + w \sum_{i \ge 1}
    (\epsilon_i - \epsilon_0)$. The outputs are meaningless; the cost is the point.

    Args:
        channels: input/output channels.
        width: hidden channels.
        depth: number of hidden conv layers (the cost of one branch, as for the stack).
        seed: weight initialisation seed: the stack's weights are those of
            ``ConvStackNetwork(channels, width, depth, seed)``, the shifts come after them.
        guidance: the scale ``w``.
        branches: ``G >= 2``, the branches of one evaluation.
    """

    shifts: Tensor  # [G, width]: branch i's shift e_i (a buffer)

    def __init__(
        self,
        channels: int = 4,
        width: int = 64,
        depth: int = 4,
        seed: int = 0,
        guidance: float = 2.0,
        branches: int = 2,
    ) -> None:
        super().__init__()
        if isinstance(branches, bool) or not isinstance(branches, int) or branches < 2:
            raise ValueError(f"branches must be an integer >= 2, got {branches!r}")
        self.stack = ConvStackNetwork(channels, width, depth, seed)
        self.guidance = guidance
        self.branches = branches
        generator = torch.Generator().manual_seed(seed)
        shifts = torch.randn(branches, width, generator=generator)
        self.register_buffer("shifts", shifts, persistent=False)

    def evaluate_branches(self, x: Tensor, t: Tensor, branch: Tensor, **cond: Tensor) -> Tensor:
        return self.stack.evaluate(x, t, self.shifts[branch.to(self.shifts.device).long()])

    def combine(self, outputs: Tensor, t: Tensor) -> Tensor:
        base = outputs[0]
        return base + self.guidance * (outputs[1:] - base).sum(dim=0)


def time_per_row(
    network: nn.Module, shape: tuple[int, ...], repeats: int = 5, device: str | torch.device = "cpu"
) -> float:
    """Median seconds of one evaluation of one row of ``shape`` on ``device``."""
    x = torch.randn(1, *shape, device=device)
    t = torch.full((1,), 500.0, device=device)
    times = []
    with torch.inference_mode():
        network(x, t)  # warm-up
        for _ in range(repeats):
            _synchronize(device)
            start = time.perf_counter()
            network(x, t)
            _synchronize(device)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def conv_stack_depth(
    eval_ms: float,
    shape: tuple[int, int, int] = (4, 32, 32),
    width: int = 64,
    device: str | torch.device = "cpu",
) -> int:
    """The depth at which a [`ConvStackNetwork`][driffusion.testing.networks.ConvStackNetwork] row
    costs about ``eval_ms`` on ``device``."""
    if eval_ms <= 0:
        raise ValueError(f"eval_ms must be positive, got {eval_ms}")
    probe = ConvStackNetwork(shape[0], width, depth=8).to(device)
    per_layer = time_per_row(probe, shape, device=device) / 9  # hidden layers + in/out convs
    return max(1, round(eval_ms / 1000.0 / per_layer) - 1)


def calibrated_conv_stack(
    eval_ms: float, shape: tuple[int, int, int] = (4, 32, 32), width: int = 64, seed: int = 0
) -> ConvStackNetwork:
    """A [`ConvStackNetwork`][driffusion.testing.networks.ConvStackNetwork] whose one-row evaluation
    takes about ``eval_ms`` on the CPU."""
    depth = conv_stack_depth(eval_ms, shape, width)
    return ConvStackNetwork(shape[0], width, depth=depth, seed=seed)
