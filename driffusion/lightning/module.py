"""``DiffusionSamplerModule``: sampling as a LightningModule ``predict_step``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from driffusion.core.branches import GuidedNetwork
from driffusion.core.model import BatchedExecutor, Model, NetworkFn, RowwiseModel
from driffusion.core.noise import ddpm_noise, initial_noise
from driffusion.core.samplers.base import Callback, SamplerFn
from driffusion.core.schedule import Schedule
from driffusion.core.solvers import Solver, get_solver

ExecutorFactory = Callable[[NetworkFn], Model]


class DiffusionSamplerModule(L.LightningModule):
    """Run a core sampler on a batch of conditions and seeds.

    A batch is a mapping with ``"seed"`` (ints, one per sample), ``"id"`` (any per-sample key)
    and optionally ``"cond"``: a mapping of ``[B, ...]`` tensors passed to the network as keyword
    arguments (class labels, text embeddings, ...). ``predict_step`` draws each sample's initial
    noise from its own CPU generator, so outputs do not depend on the batch or the world size.

    Args:
        network: ``network(x[M, ...], t[M], **cond) -> out`` in the schedule's parameterisation.
            Its weights are frozen here (sampling never trains).
        schedule: the sampling grid.
        sample_shape: shape of one sample's state, e.g. ``(4, 64, 64)``.
        sampler: any sampler ([`SamplerFn`][driffusion.core.samplers.base.SamplerFn]): a
            built-in value such as ``Aggressive(drafts=4)`` or your own. If it has a stochastic
            ``solver``, per-seed step noise is drawn and passed as ``noise=``.
        decode: optional ``decode(x) -> images`` applied to the final states.
        executor_factory: wraps the per-round network into the model the sampler calls. When
            set, it is used everywhere, the Fabric loop included; when ``None``,
            ``predict_step`` batches every round on this device and the loop
            ([`Session.predict`][driffusion.lightning.session.Session.predict]) passes its
            distributed executor to
            [`sample`][driffusion.lightning.module.DiffusionSamplerModule.sample].
        compile: ``torch.compile`` the network
            ([`compile_network`][driffusion.lightning.module.compile_network]) and evaluate a
            fixed batch shape every round (``fixed_shape``), so that it compiles once per
            distinct per-device shape.
    """

    def __init__(
        self,
        network: nn.Module,
        schedule: Schedule,
        sample_shape: Sequence[int],
        sampler: SamplerFn,
        *,
        decode: Callable[[Tensor], Tensor] | None = None,
        executor_factory: ExecutorFactory | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        if compile:
            compile_network(self.network)
        self.fixed_shape = compile
        self.schedule = schedule
        self.sample_shape = tuple(sample_shape)
        self.sampler = sampler
        self.decode = decode
        self.executor_factory: ExecutorFactory | None = executor_factory
        self.step_callback: Callback | None = None

    def conditioning(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The network's keyword conditioning for this batch, on this module's device."""
        cond = batch.get("cond") or {}
        return {name: torch.as_tensor(value).to(self.device) for name, value in cond.items()}

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int = 0) -> dict[str, Any]:
        """Sample the batch with this module's executor (batched on this device by default)."""
        return self.sample(batch, self.executor_factory or self._batched)

    def _batched(self, network: NetworkFn) -> Model:
        return BatchedExecutor(network, fixed_shape=self.fixed_shape)

    def sample(self, batch: Mapping[str, Any], executor: ExecutorFactory) -> dict[str, Any]:
        """Sample the batch, evaluating each round through ``executor(network)``; return ids,
        seeds, final states, images (if decoding) and stats.

        ``stats`` is [`SamplerStats`][driffusion.core.model.SamplerStats] as a dict;
        ``guidance_devices`` and ``bytes_received`` say how the executor ran it (1 and 0 for
        one that does not say).
        """
        seeds = [int(seed) for seed in batch["seed"]]
        x = initial_noise(seeds, self.sample_shape, device=self.device)
        extra: dict[str, Any] = {}
        solver = getattr(self.sampler, "solver", None)
        if isinstance(solver, (str, Solver)) and get_solver(solver).stochastic:
            # per-seed step noise, drawn after the initial state's
            steps = get_solver(solver).prepare(self.schedule).num_steps
            extra["noise"] = ddpm_noise(seeds, steps, self.sample_shape, device=self.device)
        model = executor(RowwiseModel(self.network, self.conditioning(batch)))
        with torch.inference_mode():
            result = self.sampler(model, x, self.schedule, callback=self.step_callback, **extra)
            images = self.decode(result.x) if self.decode is not None else None
        return {
            "id": list(batch["id"]),
            "seed": seeds,
            "x": result.x,
            "images": images,
            # a plain dict: Lightning's collection utilities refuse frozen dataclasses
            "stats": dataclasses.asdict(result.stats),
            "guidance_devices": getattr(model, "guidance_devices", 1),
            "bytes_received": getattr(model, "bytes_received", 0),
        }


def compile_network(network: nn.Module, backend: Any = "inductor") -> nn.Module:
    """``torch.compile`` a per-row network in place, one graph per input shape.

    For a [`GuidedNetwork`][driffusion.core.branches.GuidedNetwork] the modules it calls (the
    UNet, the transformer) are compiled, since its branches call them directly; any other
    network is compiled whole. ``dynamic=False``: a new batch shape compiles a new graph, which
    is why the executors keep the per-device shape fixed (``fixed_shape``).

    Args:
        network: the network; returned, compiled in place.
        backend: a ``torch.compile`` backend (``"inductor"``; tests pass a counting one).
    """
    if getattr(network, "_driffusion_compiled", False):
        return network
    targets = list(network.children()) if isinstance(network, GuidedNetwork) else []
    targets = targets or [network]
    for module in targets:
        module.compile(backend=backend, dynamic=False)
    network._driffusion_compiled = True  # type: ignore[assignment]
    return network
