"""Real processes (gloo on CPU): 2 ranks give exactly the 1-process results, every prompt is
generated once, and a dead or hung rank stops its peers with a clear error instead of a hang."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

from driffusion.core import BatchedExecutor
from driffusion.lightning import DiffusionSamplerModule
from driffusion.lightning.loop import collate
from tests.scripts import common
from tests.support import ROOT, SCRIPTS, fabric_run, run_script


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("parallel")
    cmd = fabric_run(2)
    result = run_script([*cmd, str(SCRIPTS / "parallel_check.py"), "--out", str(out)], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    return out


def test_ranks_hold_identical_results(two_process_run: Path) -> None:
    report = json.loads((two_process_run / "report.json").read_text())
    assert report["world_size"] == 2
    assert report["ranks_agree"] == dict.fromkeys(common.SPECS, True)


@pytest.mark.parametrize("name", list(common.SPECS))
def test_two_processes_equal_one_process_batched(two_process_run: Path, name: str) -> None:
    saved = torch.load(two_process_run / "results.pt")["samplers"][name]
    reference = common.SPECS[name](
        BatchedExecutor(common.oracle()), common.start(), common.schedule()
    )
    assert torch.equal(saved["x"], reference.x)
    assert saved["rounds"] == reference.stats.rounds
    assert saved["evaluations"] == reference.stats.evaluations


@pytest.mark.parametrize("mode", ["dp", "draft"])
def test_predict_loop_generates_every_item_once(two_process_run: Path, mode: str) -> None:
    outputs = torch.load(two_process_run / "results.pt")["predict"][mode]
    ids = [i for o in outputs for i in o["ids"]]
    expected = [item["id"] for item in common.items()]
    assert sorted(ids) == expected and len(ids) == len(set(ids))
    written = sorted(p.stem for p in (two_process_run / mode).iterdir())
    assert written == expected  # one file per item, no temporaries left
    replicas = {o["replica"] for o in outputs}
    assert replicas == ({0, 1} if mode == "dp" else {0})
    # each image equals the 1-process module's output for the same (condition, seed)
    module = DiffusionSamplerModule(
        common.network(), common.schedule(), common.SHAPE, common.SPECS["aggressive_k2"]
    )
    by_id = {item["id"]: item for item in common.items()}
    for output in outputs:
        batch = collate([by_id[i] for i in output["ids"]])
        assert torch.equal(output["x"], module.predict_step(batch)["x"])
        for sample_id, x in zip(output["ids"], output["x"], strict=True):
            assert torch.equal(torch.load(two_process_run / mode / f"{sample_id}.pt"), x)


@pytest.mark.parametrize("fault", ["die", "hang"])
def test_a_dead_or_hung_rank_stops_the_others_with_a_clear_error(
    tmp_path: Path, fault: str
) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPTS / "fault_check.py"), "--accelerator", "cpu"]
    cmd += ["--devices", "2", "--strategy", "ddp", "--fault", fault, "--timeout", "5"]
    start = time.monotonic()
    leftovers: list[bool] = []
    result = run_script([*cmd, "--out", str(out)], timeout=120, leftovers=leftovers)
    assert time.monotonic() - start < 90
    assert leftovers == [False]  # the hung or dead rank does not outlive the launcher
    assert result.returncode != 0
    assert "UNEXPECTED" not in result.stdout
    assert "CollectiveError: rank 0" in result.stdout
    assert "peer rank(s) [1]" in result.stdout
    assert not out.exists() or list(out.iterdir()) == []  # no partial outputs


def test_batch_composition_and_seed_determinism() -> None:
    """An item's output depends on its (condition, seed) only, not on its batch-mates."""
    module = DiffusionSamplerModule(
        common.network(), common.schedule(), common.SHAPE, common.SPECS["conservative_k2"]
    )
    items = common.items(5)
    together = module.predict_step(collate(items))["x"]
    for i, item in enumerate(items):
        alone = module.predict_step(collate([item]))["x"][0]
        assert torch.equal(alone, together[i])
    shuffled = module.predict_step(collate(items[::-1]))["x"]
    assert torch.equal(shuffled, together.flip(0))
    # the condition matters: same seed, different label, different sample
    relabelled = {**items[0], "cond": {"label": torch.tensor(3)}}
    assert not torch.allclose(module.predict_step(collate([relabelled]))["x"][0], together[0])


def test_module_runs_in_trainer_predict(tmp_path: Path) -> None:
    import lightning as L

    module = DiffusionSamplerModule(
        common.network(), common.schedule(), common.SHAPE, common.SPECS["aggressive_k3"]
    )
    items = common.items(4)
    loader = torch.utils.data.DataLoader(items, batch_size=2, collate_fn=collate)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    predictions = trainer.predict(module, loader)
    assert predictions is not None
    xs = torch.cat([p["x"] for p in predictions])  # type: ignore[index]
    assert torch.equal(xs, module.predict_step(collate(items))["x"])


def test_speedup_benchmark_runs_under_fabric(tmp_path: Path) -> None:
    out = tmp_path / "speedup.json"
    cmd = fabric_run(2)
    script = str(ROOT / "benchmarks" / "speedup.py")
    args = ["--eval-ms", "2", "--steps", "6", "--repeats", "1", "--json", str(out)]
    result = run_script([*cmd, script, *args], timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    rows = json.loads(out.read_text())
    keys = {"sampler", "devices", "steps", "rounds", "wall_s", "serial_wall_s", "speedup"}
    keys |= {"speedup_ideal", "efficiency"}
    assert [r["sampler"] for r in rows] == [
        "serial",
        "serial_reduced",
        "aggressive",
        "conservative",
        "srds",
        "srds_pipelined",
        "paradigms",
        "chords",
    ]
    for row in rows:
        assert keys <= row.keys()
        assert row["wall_s"] > 0 and row["speedup"] == pytest.approx(
            row["serial_wall_s"] / row["wall_s"]
        )
    assert rows[1]["rounds"] == 4  # step reduction to aggressive's latency: 1 + ceil(5 / 2)
    aggressive = rows[2]
    assert (aggressive["devices"], aggressive["rounds"]) == (2, 1 + 3)  # 1 + ceil(5 / 2)
    assert aggressive["speedup_ideal"] == pytest.approx(6 / 4)
    chords = rows[-1]  # 2 cores starting at 0 and 3: 6 - 3 + 1 rounds, 4 + 3 evaluations
    assert (chords["setting"], chords["rounds"], chords["evaluations"]) == ("Chords(cores=2)", 4, 7)
