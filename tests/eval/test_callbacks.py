"""The evaluation callbacks in the Fabric loop: FidelityCallback equals torch-fidelity on the same
folders, SerialDeviationCallback measures the deviation from the serial samples."""

from __future__ import annotations

import pytest
import torch_fidelity

from driffusion.core import Aggressive, Serial
from driffusion.eval.callbacks import FidelityCallback, SerialDeviationCallback, outputs_by_id
from driffusion.eval.coco import digits_captions
from driffusion.eval.digits_fid import register_digits_extractor
from driffusion.io import save_png
from driffusion.lightning import DiffusionSamplerModule, Session
from driffusion.models.digits import digits_dataset, load_digits


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """20 digits sampled through the Fabric loop with both evaluation callbacks."""
    folder = tmp_path_factory.mktemp("digits")
    reference, _ = digits_dataset("test")
    for k, image in enumerate(reference):
        save_png(folder / "reference" / f"{k:04d}.png", image, {})
    model = load_digits()
    items = [
        {"id": key, "seed": k, **extra} for k, (key, _, extra) in enumerate(digits_captions(20))
    ]
    fidelity = FidelityCallback(folder / "reference", feature_extractor="driffusion-digits")
    serial_module = DiffusionSamplerModule(
        model.denoiser(2.0), model.schedule(10), (1, 16, 16), Serial()
    )
    module = DiffusionSamplerModule(
        model.denoiser(2.0), model.schedule(10), (1, 16, 16), Aggressive(drafts=3)
    )
    with Session(accelerator="cpu") as session:
        serial = session.predict(serial_module, items, batch_size=8, callbacks=[fidelity])
        serial_by_id = outputs_by_id(serial)
        deviation = SerialDeviationCallback(serial_by_id)
        session.predict(module, items, batch_size=8, callbacks=[deviation])
    for sample_id, x in serial_by_id.items():
        save_png(folder / "generated" / f"{sample_id}.png", x, {})
    return folder, fidelity.results, deviation.results


def test_fidelity_callback_equals_torch_fidelity_on_the_folders(digits_run) -> None:  # type: ignore[no-untyped-def]
    folder, results, _ = digits_run
    direct = torch_fidelity.calculate_metrics(
        input1=str(folder / "generated"),
        input2=str(folder / "reference"),
        fid=True,
        feature_extractor=register_digits_extractor(),
        cuda=False,
        cache=False,
        verbose=False,
        save_cpu_ram=True,  # load the folders in this process, as driffusion.eval.scores does
    )
    assert results is not None
    assert results["frechet_inception_distance"] == pytest.approx(
        float(direct["frechet_inception_distance"]), rel=1e-5
    )


def test_serial_deviation_callback(digits_run) -> None:  # type: ignore[no-untyped-def]
    _, _, deviation = digits_run
    assert deviation is not None
    assert 0 < deviation["max_abs_dev"] < 4 and 5 < deviation["psnr"] < float("inf")
