"""The embedded digits model: shipped weights load and reproduce their checksum, the classifier is
accurate, samples are recognisable and the parallel samplers keep the quality."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from driffusion.core import (
    SRDS,
    Aggressive,
    BatchedExecutor,
    Conservative,
    RowwiseModel,
    Serial,
    initial_noise,
)
from driffusion.models.digits import (
    NUM_CLASSES,
    MissingWeightsError,
    checksum,
    digits_dataset,
    load_digits,
    reference_sample,
)


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_digits()


@pytest.fixture(scope="module")
def samples(model):  # type: ignore[no-untyped-def]
    """10 samples of every digit at 50 steps, guidance 2, for each sampler."""
    labels = torch.arange(NUM_CLASSES).repeat(10)
    network = RowwiseModel(model.denoiser(2.0), {"label": labels})
    x = initial_noise(list(range(len(labels))), (1, 16, 16))
    schedule = model.schedule(50)
    samplers = {
        "serial": Serial(),
        "aggressive": Aggressive(drafts=2),
        "conservative": Conservative(drafts=2),
        "srds": SRDS(tol=1e-3),
    }
    with torch.inference_mode():
        return labels, {
            name: sampler(BatchedExecutor(network), x, schedule).x
            for name, sampler in samplers.items()
        }


def test_shipped_weights_reproduce_their_checksum(model) -> None:  # type: ignore[no-untyped-def]
    stored = model.training["reference_sample"]
    measured = checksum(reference_sample(model))
    for key in ("sum", "abs_sum", "max"):
        assert measured[key] == pytest.approx(stored[key], rel=1e-4, abs=1e-4), key
    assert model.prediction_type == "epsilon" and len(model.alphas_cumprod) == 1000
    assert "recipes/train_digits.py" in model.training["command"]


def test_missing_weights_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="train it with"):
        load_digits(tmp_path)


def test_classifier_is_accurate_on_held_out_digits(model) -> None:  # type: ignore[no-untyped-def]
    images, labels = digits_dataset("test")
    assert float((model.classify(images) == labels).float().mean()) >= 0.93


def test_serial_samples_are_recognisable(model, samples) -> None:  # type: ignore[no-untyped-def]
    labels, xs = samples
    accuracy = float((model.classify(xs["serial"]) == labels).float().mean())
    assert accuracy >= 0.9


@pytest.mark.parametrize("sampler", ["aggressive", "conservative", "srds"])
def test_parallel_samplers_keep_the_accuracy(model, samples, sampler: str) -> None:  # type: ignore[no-untyped-def]
    labels, xs = samples
    serial = float((model.classify(xs["serial"]) == labels).float().mean())
    parallel = float((model.classify(xs[sampler]) == labels).float().mean())
    assert parallel >= serial - 0.05, (sampler, parallel, serial)
    assert not torch.equal(xs[sampler], xs["serial"]) or sampler == "srds"
