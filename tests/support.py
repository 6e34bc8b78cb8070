"""Plain helpers shared by several test modules (no tests here, no fixtures: those live in the
``conftest.py`` files). Test modules import from here, never from one another.

- Problem builders: schedules of every family, the exact Gaussian-mixture denoiser, noise.
- Process launching: ``fabric run`` command lines and ``run_script``, for tests marked
  ``processes``; ``processes_refused``, what the suite's hooks wrap around every other test.
"""

from __future__ import annotations

import contextlib
import multiprocessing.process
import multiprocessing.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from driffusion.core import (
    Schedule,
    alphas_cumprod_from_betas,
    flow_schedule,
    flow_sigmas,
    vp_schedule,
    vp_timesteps,
)
from driffusion.serve.client import free_port  # every `fabric run` a test starts picks one
from driffusion.testing import FlowNoiseLevels, GaussianMixtureDenoiser, VPNoiseLevels

# what Lightning and the launchers read or write: a test must leave them as it found them (the
# suite checks, conftest.py), since a leaked WORLD_SIZE=1 turns a later launch into a 1-rank one
LAUNCH_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
    "LT_CLI_USED",
    "LT_ACCELERATOR",
    "LT_STRATEGY",
    "LT_DEVICES",
    "LT_NUM_NODES",
    "LT_PRECISION",
)


def launch_environment() -> dict[str, str]:
    """The launch variables of ``os.environ`` now (``LAUNCH_ENV``)."""
    return {name: os.environ[name] for name in LAUNCH_ENV if name in os.environ}


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
FABRIC = Path(sys.executable).with_name("fabric")

# --- problems ------------------------------------------------------------------------------

ABAR = alphas_cumprod_from_betas()
SHAPE = (2, 4, 4)
FAMILIES = ["epsilon", "v_prediction", "sample", "flow"]


def make_vp(
    num_steps: int,
    prediction_type: str = "epsilon",
    spacing: str = "leading",
    final_alpha_cumprod: float = 1.0,
) -> Schedule:
    offset = 1 if spacing == "leading" else 0
    timesteps = vp_timesteps(num_steps, spacing=spacing, steps_offset=offset)  # type: ignore[arg-type]
    return vp_schedule(ABAR, timesteps, final_alpha_cumprod, prediction_type)  # type: ignore[arg-type]


def make_flow(num_steps: int, shift: float = 3.0) -> Schedule:
    return flow_schedule(flow_sigmas(num_steps, shift))


def make_family(num_steps: int, family: str) -> Schedule:
    return make_flow(num_steps) if family == "flow" else make_vp(num_steps, family)


def make_oracle(schedule: Schedule, seed: int = 0) -> GaussianMixtureDenoiser:
    levels = VPNoiseLevels(ABAR) if schedule.kind == "vp" else FlowNoiseLevels()
    return GaussianMixtureDenoiser.random(
        SHAPE, noise_levels=levels, prediction_type=schedule.prediction_type, seed=seed
    )


def make_noise(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn((batch, *SHAPE), generator=torch.Generator().manual_seed(seed))


# float64 problems of the solver tests (core solvers and the diffusers scheduler adapter)
ABAR64 = alphas_cumprod_from_betas().to(torch.float64)


def oracle64(prediction_type: str, flow: bool = False) -> GaussianMixtureDenoiser:
    levels = FlowNoiseLevels() if flow else VPNoiseLevels(ABAR64)
    return GaussianMixtureDenoiser.random(
        SHAPE, noise_levels=levels, prediction_type=prediction_type, seed=0
    )


def start64() -> torch.Tensor:
    return torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def step_noise(steps: int) -> torch.Tensor:
    """Per-step noise, step k from Generator(1234 + k): what the diffusers loop draws too."""
    return torch.stack(
        [
            torch.randn(
                (3, *SHAPE), generator=torch.Generator().manual_seed(1234 + k), dtype=torch.float64
            )
            for k in range(steps)
        ]
    )


# --- processes (only in tests marked ``processes``) ----------------------------------------

PROCESSES = "processes"


class UnmarkedProcessError(RuntimeError):
    """A test not marked ``processes`` tried to start a process."""


def _refusal(nodeid: str, what: str) -> str:
    return (
        f"{nodeid} started a process ({what}) but is not marked `{PROCESSES}`: add "
        f"@pytest.mark.{PROCESSES} to the test (or pytestmark = pytest.mark.{PROCESSES} to its "
        "module) so that `make test-fast` (pytest -m 'not processes') leaves it out"
    )


@contextlib.contextmanager
def processes_refused(nodeid: str, attempts: list[str]) -> Iterator[None]:
    """While in the block, every way of starting a process raises ``UnmarkedProcessError``
    naming the test ``nodeid``; each attempt is appended to ``attempts``. (Used by the hooks in
    ``tests/conftest.py`` around each test not marked ``processes``.)"""

    def refuse(what: Callable[..., str]) -> Callable[..., Any]:
        def guard(*args: Any, **kwargs: Any) -> Any:
            message = _refusal(nodeid, what(*args, **kwargs))
            attempts.append(message)
            raise UnmarkedProcessError(message)

        return guard

    def command(args: Any) -> str:
        return f"subprocess {args if isinstance(args, str) else list(map(str, args))}"

    targets: list[tuple[Any, str, Callable[..., str]]] = [
        (subprocess.Popen, "__init__", lambda self, args, *a, **k: command(args)),
        (multiprocessing.process.BaseProcess, "start", lambda self: f"multiprocessing {self!r}"),
        (multiprocessing.util, "spawnv_passfds", lambda path, args, fds: command(args)),
        (os, "system", lambda cmd: f"os.system({cmd!r})"),
    ]
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            targets.append((os, name, lambda *a, _name=name, **k: f"os.{_name}"))
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
    try:
        for owner, name, what in targets:
            setattr(owner, name, refuse(what))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def fabric_run(devices: int = 2) -> list[str]:
    """``fabric run`` on ``devices`` CPU processes (ddp) with a free rendezvous port."""
    cmd = [str(FABRIC), "run", "--accelerator", "cpu", "--devices", str(devices)]
    return [*cmd, "--strategy", "ddp", "--main-port", str(free_port())]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def run_script(
    cmd: list[str],
    timeout: float,
    leftovers: list[bool] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run in a new session (in ``cwd``, if given); wait for the launching process (rank 0), then
    kill the whole group, since a hung rank must not leak. Output goes to a file: a hung child
    would hold a pipe open."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
            cwd=cwd,
        )
        try:
            proc.wait(timeout=timeout)
            if leftovers is not None:  # did the launching process leave any child behind?
                time.sleep(1.0)
                leftovers.append(group_alive(proc.pid))
        except subprocess.TimeoutExpired:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        timed_out = proc.returncode is None
        proc.wait()
        log.seek(0)
        out = log.read()
    if timed_out:
        pytest.fail(f"{cmd} did not finish in {timeout}s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


# -- the server -----------------------------------------------------------------------------------


@contextlib.contextmanager
def in_process_server(out: Path, *flags: str) -> Iterator[tuple[Any, Any]]:
    """``recipes/serve.py --port 0 --out out *flags`` on one device in a thread of this process
    (no process is started): yields ``(scheduler, http)`` once it is ready; drained on exit."""
    import threading

    from driffusion.lightning import Session
    from driffusion.serve.server import parse_args, serve

    args = parse_args(["--accelerator", "cpu", "--port", "0", "--out", str(out), *flags])
    started: list[Any] = []
    errors: list[BaseException] = []
    ready = threading.Event()

    def run() -> None:
        try:
            with Session.from_args(args) as session:
                serve(args, session, ready=lambda *pair: (started.extend(pair), ready.set()))
        except BaseException as error:  # shown by the fixture
            errors.append(error)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(120)
    if errors or not started:
        raise RuntimeError(f"the in-process server did not start: {errors}")
    scheduler, server = started
    try:
        yield scheduler, server
    finally:
        scheduler.drain()
        thread.join(60)
        assert not thread.is_alive(), "the drained server did not stop"
        assert not errors, errors


def decode_png(b64: str) -> tuple[torch.Tensor, dict[str, str]]:
    """A served image: its pixels (uint8) and PNG text chunks."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    return torch.from_numpy(np.array(image)), dict(image.text)
