"""The Session owns a run: launch (or join `fabric run`), layout, executor, leader writes,
gather, barrier and teardown; recipes, benchmarks and evaluation never call a collective."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from driffusion.core import BatchedExecutor
from driffusion.lightning import (
    DiffusionSamplerModule,
    Session,
)
from driffusion.lightning.loop import collate
from tests.scripts import common
from tests.support import FABRIC, ROOT, SCRIPTS, fabric_run, free_port


def one_process_outputs() -> dict[str, torch.Tensor]:
    module = DiffusionSamplerModule(
        common.network(), common.schedule(), common.SHAPE, common.SPECS["aggressive_k2"]
    )
    result = module.sample(collate(common.items()), BatchedExecutor)
    return dict(zip(result["id"], result["x"], strict=True))


def test_a_session_runs_tears_down_and_refuses_use_outside() -> None:
    session = Session(accelerator="cpu")
    with pytest.raises(RuntimeError, match="not launched"):
        session.layout  # noqa: B018
    with session:
        module = DiffusionSamplerModule(
            common.network(), common.schedule(), common.SHAPE, common.SPECS["aggressive_k2"]
        )
        outputs = session.predict(module, common.items(), batch_size=3)
        assert session.gather(5) == [5] and session.is_leader
        assert session.on_leader(lambda: "done") == "done"
        wall, value = session.timed(lambda: 7)
        assert value == 7 and wall >= 0
    assert not (dist.is_available() and dist.is_initialized())
    expected = one_process_outputs()
    for output in outputs:
        for sample_id, x in zip(output.ids, output.x, strict=True):
            assert torch.equal(x, expected[sample_id])
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        Session(timeout_s=0)


@pytest.mark.processes
def test_two_nodes_simulated_on_one_machine(tmp_path: Path) -> None:
    """`fabric run --num-nodes 2 --node-rank r` (one process each) gives the 1-process samples."""
    port = str(free_port())
    procs = []
    for node_rank in (0, 1):
        cmd = [str(FABRIC), "run", "--accelerator", "cpu", "--devices", "1", "--strategy", "ddp"]
        cmd += ["--num-nodes", "2", "--node-rank", str(node_rank)]
        cmd += ["--main-address", "127.0.0.1", "--main-port", port]
        cmd += [str(SCRIPTS / "session_check.py"), "--out", str(tmp_path)]
        env = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, **env},
            )
        )
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=240)[0])
        finally:
            proc.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, report in enumerate(reports):
        assert report["world_size"] == 2 and report["global_rank"] == rank
        assert report["draft_devices"] == 2  # both nodes in one draft group
        assert report["every_rank_saw_the_same"] and report["marker_exists_everywhere"]
    assert [r["leader_wrote"] for r in reports] == [True, False]
    saved = torch.load(tmp_path / "x.pt")
    expected = one_process_outputs()
    assert saved.keys() == expected.keys()
    for sample_id, x in expected.items():
        assert torch.equal(saved[sample_id], x), sample_id


def test_no_script_calls_a_collective_itself() -> None:
    """Only the Session (and the distributed adapter under it) touches torch.distributed."""
    forbidden = re.compile(
        r"\b(barrier|all_gather\w*|gather_objects|destroy_process_group|make_layout|finish)\s*\("
    )
    offenders = []
    folders = [ROOT / "recipes", ROOT / "benchmarks", ROOT / "driffusion" / "eval"]
    for path in sorted(p for folder in folders for p in folder.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if forbidden.search(line) and "session." not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.processes
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_ranks_die_with_their_launcher(tmp_path: Path) -> None:
    """`kill -9` of `fabric run` alone (not its group): within 10 s no rank is alive and no new
    file appears."""
    out = tmp_path / "out"
    cmd = [*fabric_run(2), str(ROOT / "recipes" / "digits.py"), "--steps", "200"]
    cmd += ["--n-per-class", "20", "--no-fid", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(ranks) < 2:  # wait until both ranks run the script
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
            ranks = _children(proc.pid)
        time.sleep(8)  # let them get into sampling
        before = sorted(p for p in tmp_path.rglob("*"))
        os.kill(proc.pid, signal.SIGKILL)  # the launcher only
        proc.wait()
        gone = time.monotonic() + 10
        while any(_alive(pid) for pid in ranks) and time.monotonic() < gone:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in ranks), "a rank outlived its launcher"
        time.sleep(1)
        assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing new written
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in ranks:  # the ranks run in sessions of their own: never leak one
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.processes
def test_two_runs_started_together_both_succeed(tmp_path: Path) -> None:
    """Each launch takes its own free rendezvous port, so two jobs on one machine coexist."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for name in ("a", "b"):  # before the launches: session_check.py writes into it at once
        (tmp_path / name).mkdir()
    procs = [
        subprocess.Popen(
            [*fabric_run(2), str(SCRIPTS / "session_check.py"), "--out", str(tmp_path / name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for name in ("a", "b")
    ]
    logs = [proc.communicate(timeout=240)[0] for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    for name in ("a", "b"):
        assert torch.load(tmp_path / name / "x.pt").keys() == one_process_outputs().keys()
