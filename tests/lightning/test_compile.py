"""Compile-friendly rounds: a `torch.compile`d network (``dynamic=False``: one graph per input
shape) compiles once per distinct per-device shape, because the executors pad the shorter
rounds to the shape already compiled."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from driffusion.core import Aggressive
from driffusion.lightning import DiffusionSamplerModule
from driffusion.lightning.module import compile_network
from driffusion.models.digits import load_digits

BATCH = {"id": ["a", "b"], "seed": [0, 1], "cond": {"label": torch.tensor([3, 7])}}


class CountingBackend:
    """A ``torch.compile`` backend that records the batch of every graph it is given, then
    hands the graph to ``inner`` (eager by default)."""

    def __init__(self, inner: Any = None) -> None:
        self.batches: list[int] = []
        self.inner = inner

    def __call__(self, graph: torch.fx.GraphModule, inputs: list[Any]) -> Any:
        self.batches.append(next(i.shape[0] for i in inputs if isinstance(i, torch.Tensor)))
        return graph.forward if self.inner is None else self.inner(graph, inputs)


def sample(backend: CountingBackend | None, fixed_shape: bool) -> dict[str, Any]:
    digits = load_digits()  # a fresh UNet: compiled state is per module
    denoiser = digits.denoiser(2.0)
    if backend is not None:
        compile_network(denoiser, backend=backend)
    module = DiffusionSamplerModule(
        denoiser, digits.schedule(20), (1, 16, 16), Aggressive(drafts=4), compile=fixed_shape
    )
    return module.predict_step(BATCH)


def test_the_network_compiles_once_per_distinct_per_device_shape() -> None:
    eager = sample(None, fixed_shape=False)
    assert eager["stats"]["round_rows"] == (1, 4, 4, 4, 4, 3)  # the last round is shorter
    fixed, plain = CountingBackend(), CountingBackend()
    padded = sample(fixed, fixed_shape=True)
    sample(plain, fixed_shape=False)
    # one row or four, x 2 branches x 2 samples: two graphs; unpadded, the last round a third
    assert fixed.batches == [1 * 2 * 2, 4 * 2 * 2]
    assert plain.batches == [1 * 2 * 2, 4 * 2 * 2, 3 * 2 * 2]
    # padding only adds rows whose outputs are dropped: the sample is the eager one up to the
    # UNet's rounding of a batch of another size
    torch.testing.assert_close(padded["x"], eager["x"], rtol=0, atol=1e-4)
    assert padded["stats"] == eager["stats"]


@pytest.mark.processes  # inductor compiles its kernels in worker processes (about a minute)
def test_inductor_compiles_the_digits_unet_twice_for_aggressive_drafts() -> None:
    from torch._inductor.compile_fx import compile_fx

    eager = sample(None, fixed_shape=False)
    backend = CountingBackend(compile_fx)
    compiled = sample(backend, fixed_shape=True)
    assert backend.batches == [4, 16]
    torch.testing.assert_close(compiled["x"], eager["x"], rtol=0, atol=1e-3)
