"""Every wait of a launch is bounded by the session's ``--timeout``: the first process group
(Fabric's ``init_process_group``) gets it, both from code and under ``fabric run``, and a node
that never comes, a taken port or a rank that never arrives is a one-line ``LaunchError``."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from lightning.fabric.strategies import DataParallelStrategy, DDPStrategy, SingleDeviceStrategy

from driffusion.core.errors import UsageError
from driffusion.lightning import LaunchError, Session, add_session_args, launch
from driffusion.lightning.cli import MAX_TIMEOUT_S
from driffusion.lightning.launch import (
    LAUNCH_MIN_S,
    bounded_strategy,
    finish,
    launch_fabric,
    launch_timeout,
)
from tests.support import FABRIC, LAUNCH_ENV, ROOT, SCRIPTS, free_port, run_script

# the --timeout of a process test, the seconds its launch waits for a missing node (at least
# LAUNCH_MIN_S) and the margin allowed on top for starting (imports on 2 busy cores), reporting
# and exiting
TIMEOUT_S = 20
WAIT_S = launch_timeout(TIMEOUT_S)
MARGIN_S = 75


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    finish()
    # Lightning writes some of them itself (WORLD_SIZE, LOCAL_RANK, ...), which monkeypatch
    # does not know to undo: a leaked WORLD_SIZE=1 would make every later launch a 1-rank one
    for name in LAUNCH_ENV:
        os.environ.pop(name, None)


def _group_timeout() -> timedelta:
    """The timeout of the default process group's CPU backend (gloo)."""
    backend = dist.group.WORLD._get_backend(torch.device("cpu"))  # type: ignore[union-attr]
    return backend.options._timeout  # type: ignore[no-any-return]


# -- the strategy Fabric gets ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "start_method"), [("ddp", "popen"), ("DDP", "popen"), ("ddp_spawn", "spawn")]
)
def test_a_ddp_name_becomes_its_strategy_with_the_timeout(name: str, start_method: str) -> None:
    strategy = bounded_strategy(name, 42.0, multiprocess=True)
    assert isinstance(strategy, DDPStrategy)
    assert strategy._timeout == timedelta(seconds=42)
    assert strategy._start_method == start_method


def test_a_registered_alias_keeps_its_own_settings() -> None:
    strategy = bounded_strategy("ddp_find_unused_parameters_true", 7.0, multiprocess=True)
    assert isinstance(strategy, DDPStrategy) and strategy._timeout == timedelta(seconds=7)
    assert strategy._ddp_kwargs == {"find_unused_parameters": True}


def test_auto_is_ddp_only_for_more_than_one_process() -> None:
    many = bounded_strategy("auto", 9.0, multiprocess=True)
    assert isinstance(many, DDPStrategy) and many._timeout == timedelta(seconds=9)
    assert bounded_strategy("auto", 9.0, multiprocess=False) == "auto"


def test_other_strategies_are_left_as_they_are() -> None:
    assert bounded_strategy("dp", 9.0, multiprocess=True) == "dp"
    assert bounded_strategy("fsdp", 9.0, multiprocess=True) == "fsdp"
    assert bounded_strategy("no_such_strategy", 9.0, multiprocess=True) == "no_such_strategy"
    given = SingleDeviceStrategy(device=torch.device("cpu"))
    assert bounded_strategy(given, 9.0, multiprocess=True) is given
    assert isinstance(bounded_strategy(DataParallelStrategy(), 9.0, True), DataParallelStrategy)


def test_the_first_process_group_gets_the_timeout_from_code(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("MASTER_PORT", str(free_port()))
    flags = {"accelerator": "cpu", "devices": "1", "strategy": "ddp", "num_nodes": 1}
    fabric = launch_fabric(flags, timeout_s=42.0)
    assert isinstance(fabric.strategy, DDPStrategy)
    assert fabric.strategy._timeout == timedelta(seconds=42)
    assert _group_timeout() == timedelta(seconds=42)


def test_the_first_process_group_gets_the_timeout_under_fabric_run(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """What `fabric run --accelerator cpu --devices 1 --strategy ddp` gives its one rank."""
    env = {"LT_CLI_USED": "1", "LT_STRATEGY": "ddp", "LT_ACCELERATOR": "cpu", "LT_DEVICES": "1"}
    env |= {"LT_NUM_NODES": "1", "LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "1"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    for name, value in env.items():
        clean_env.setenv(name, value)
    clean_env.setattr(launch, "die_with_parent", lambda: None)  # not the test runner's life
    fabric = launch_fabric({}, timeout_s=42.0)
    assert isinstance(fabric.strategy, DDPStrategy)
    assert fabric.strategy._timeout == timedelta(seconds=42)
    assert _group_timeout() == timedelta(seconds=42)
    assert os.environ["LT_STRATEGY"] == "ddp"  # the CLI's choice is back for whoever reads it


# -- a launch that cannot complete (in this process: one rank, no child) ----------------------


@pytest.mark.timeout(90)  # today's main waits 30 minutes here
def test_a_missing_node_is_a_launch_error_within_the_timeout(
    clean_env: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    clean_env.setenv("MASTER_PORT", str(port))
    flags = {"accelerator": "cpu", "devices": 1, "strategy": "ddp", "num_nodes": 2}
    start = time.monotonic()
    with pytest.raises(LaunchError) as caught:
        launch_fabric(flags, timeout_s=3.0)
    assert time.monotonic() - start < 3.0 + 30
    message = str(caught.value)
    assert "\n" not in message
    assert f"rank 0 did not meet all 2 ranks at 127.0.0.1:{port} within 3s" in message
    assert "1 of 2 joined" in message and "--num-nodes 2" in message
    assert "start the other node(s) with the same MASTER_ADDR/MASTER_PORT" in message
    assert "or lower --num-nodes" in message
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, RuntimeError)
    assert not dist.is_initialized()


@pytest.mark.timeout(90)
def test_a_taken_port_is_a_launch_error(clean_env: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        clean_env.setenv("MASTER_ADDR", "127.0.0.1")
        clean_env.setenv("MASTER_PORT", str(port))
        flags = {"accelerator": "cpu", "devices": 1, "strategy": "ddp", "num_nodes": 1}
        with pytest.raises(LaunchError, match=f"port 127.0.0.1:{port} is already in use"):
            launch_fabric(flags, timeout_s=5.0)


# -- the --timeout flag -----------------------------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    return add_session_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_timeout_takes_seconds_up_to_a_week() -> None:
    assert _parse("--timeout", "15").timeout == 15.0
    assert _parse("--timeout", str(MAX_TIMEOUT_S)).timeout == MAX_TIMEOUT_S == 7 * 24 * 3600
    assert Session.from_args(_parse("--timeout", "2.5")).timeout_s == 2.5


@pytest.mark.parametrize("text", ["0", "-5", "604801", "1e30", "inf", "nan", "soon"])
def test_timeout_rejects_what_cannot_be_a_wait(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        _parse("--timeout", text)
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert "--timeout" in error and text in error
    assert ("7 days" in error) != (text == "soon")  # a number out of range names the bound


def test_a_session_launches_with_its_timeout_but_never_below_the_launch_minimum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A short collective timeout (to catch a hung rank fast) must not fail a healthy launch
    whose ranks take seconds to start."""
    given: list[float] = []

    def fake_launch(flags: object, callbacks: object, timeout_s: float) -> object:
        given.append(timeout_s)
        return object()

    monkeypatch.setattr("driffusion.lightning.session.launch_fabric", fake_launch)
    monkeypatch.setattr("driffusion.lightning.session.make_layout", lambda *a: None)
    for timeout_s in (LAUNCH_MIN_S + 15, 5.0):
        Session(accelerator="cpu", timeout_s=timeout_s).launch()
    assert given == [LAUNCH_MIN_S + 15, LAUNCH_MIN_S]
    assert launch_timeout(1e5) == 1e5 and launch_timeout(0.5) == LAUNCH_MIN_S


def test_a_session_refuses_a_timeout_that_is_no_wait() -> None:
    for value in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout_s must be positive"):
            Session(timeout_s=value)


# -- the main job with a node that never comes -------------------------------------------------


def _job(out: Path) -> list[str]:
    args = [str(ROOT / "recipes" / "digits.py"), "--timeout", str(TIMEOUT_S), "--steps", "4"]
    return [*args, "--n-per-class", "1", "--no-fid", "--out", str(out)]


def _errors(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error: launch failed:")]


@pytest.mark.processes
def test_a_missing_node_stops_the_job_launched_from_code(tmp_path: Path) -> None:
    """`python recipes/digits.py --devices 2 --num-nodes 2` with no second node: exit 2 within
    the timeout plus a margin, one line per waiting rank, no process left."""
    cmd = [sys.executable, *_job(tmp_path / "out")]
    cmd[2:2] = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--num-nodes", "2"]
    leftovers: list[bool] = []
    done = run_script(cmd, timeout=WAIT_S + MARGIN_S, leftovers=leftovers)
    assert done.returncode == 2, done.stdout[-3000:]
    errors = _errors(done.stdout)
    assert errors, done.stdout[-3000:]
    leader = [e for e in errors if "rank 0 " in e]
    assert len(leader) == 1, errors
    assert re.search(rf"all 4 ranks at 127\.0\.0\.1:\d+ within {WAIT_S:g}s", leader[0])
    assert "2 of 4 joined" in leader[0]
    for error in errors:
        assert "start the other node(s) with the same MASTER_ADDR/MASTER_PORT" in error
        assert "or lower --num-nodes" in error
    assert "Traceback" not in done.stdout
    assert leftovers == [False], "a rank outlived the launch"
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.processes
def test_ranks_that_never_join_stop_the_job_under_fabric_run(tmp_path: Path) -> None:
    """`fabric run --num-nodes 2 --node-rank 0`: node 1's launcher meets node 0's (torchrun's
    own rendezvous happens before any script runs) but its ranks never create the process
    group. Node 0's ranks stop with the one-line error within the timeout plus a margin."""
    port = str(free_port())

    def node(rank: int) -> list[str]:
        cmd = [str(FABRIC), "run", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
        cmd += ["--num-nodes", "2", "--node-rank", str(rank)]
        return [*cmd, "--main-address", "127.0.0.1", "--main-port", port]

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    second = subprocess.Popen(
        [*node(1), str(SCRIPTS / "never_joins.py")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        leftovers: list[bool] = []
        done = run_script(
            [*node(0), *_job(tmp_path / "out")], timeout=WAIT_S + MARGIN_S, leftovers=leftovers
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(second.pid, signal.SIGKILL)
        second.wait()
    assert done.returncode != 0, done.stdout[-3000:]
    assert re.search(r"exitcode\s*:\s*2\b", done.stdout), done.stdout[-3000:]  # the ranks' 2
    errors = _errors(done.stdout)
    assert len(errors) == 2, done.stdout[-3000:]  # node 0's two ranks
    for error in errors:
        assert f"all 4 ranks at 127.0.0.1:{port} within {WAIT_S:g}s" in error
        assert "start the other node(s) with the same --main-address/--main-port" in error
        assert "or lower --num-nodes" in error
    assert leftovers == [False], "a rank outlived `fabric run`"
    assert not (tmp_path / "out" / "report.json").exists()
