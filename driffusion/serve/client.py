"""A client of the server, for scripts, tests and the load benchmark: start it, wait until it is
ready, send requests, stop it.

    with RunningServer(out, devices=2, flags=["--draft-devices", "1"]) as server:
        status, body = request("POST", f"{server.url}/v1/images/generations", {"prompt": "3"})
        assert server.terminate() == 0      # SIGTERM to rank 0: drains, exits 0
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SERVER = Path(__file__).resolve().with_name("server.py")
"""The script both launchers run (what ``recipes/serve.py`` calls)."""


def request(
    method: str, url: str, body: bytes | dict | None = None, timeout: float = 120
) -> tuple[int, Any]:
    """``(status, parsed JSON or text)`` of one HTTP request; an error status is returned, not
    raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    call = urllib.request.Request(url, data=data, method=method)
    call.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def free_port() -> int:
    """A port free now on loopback (for ``fabric run --main-port``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    """``recipes/serve.py --port 0 --out out`` on ``devices`` CPU processes (``fabric run`` for
    more than one), in a new session; ready (``/health`` 200) when the constructor returns.

    Args:
        out: the server's folder (``server.json`` tells the address).
        devices: processes.
        flags: more flags of ``recipes/serve.py``.
        cwd: the working folder (default: this one).
        log: where its output goes (default: ``<out>.log``).
        ready_s: the longest wait for ``/health``.

    Raises:
        RuntimeError: the server exited or was not ready in time (its output's tail).
    """

    def __init__(
        self,
        out: Path,
        devices: int = 1,
        flags: Sequence[str] = (),
        cwd: Path | None = None,
        log: Path | None = None,
        ready_s: float = 180,
    ) -> None:
        self.out = Path(out)
        self.log_path = log or self.out.with_name(self.out.name + ".log")
        self.log = open(self.log_path, "w+")  # noqa: SIM115 - closed by kill()
        if devices > 1:
            launcher = [str(Path(sys.executable).with_name("fabric")), "run"]
            launcher += ["--accelerator", "cpu", "--devices", str(devices), "--strategy", "ddp"]
            launcher += ["--main-port", str(free_port())]
        else:
            launcher = [sys.executable]
        cmd = [*launcher, str(SERVER), "--port", "0", "--out", str(self.out)]
        if devices == 1:
            cmd += ["--accelerator", "cpu"]
        threads = max(1, (os.cpu_count() or 1) // devices)  # each process its share
        self.proc = subprocess.Popen(
            [*cmd, *flags],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)},
            start_new_session=True,
            cwd=cwd,
        )
        deadline = time.monotonic() + ready_s
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the server did not become ready:\n{self.output()[-4000:]}")
            server_json = self.out / "server.json"
            if server_json.is_file():
                self.info: dict[str, Any] = json.loads(server_json.read_text())
                self.url: str = self.info["url"]
                with contextlib.suppress(OSError):
                    if request("GET", f"{self.url}/health", timeout=5)[0] == 200:
                        return
            time.sleep(0.2)

    def output(self) -> str:
        """Everything the processes printed so far."""
        with open(self.log_path) as log:
            return log.read()

    def wait(self, timeout: float) -> int | None:
        """The launcher's exit status, or ``None`` if it still runs after ``timeout``."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self, timeout: float = 60) -> int | None:
        """SIGTERM to rank 0 (it answers the accepted requests, then every rank exits); the
        exit status, or ``None`` if it still runs after ``timeout``."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.info["pid"], signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """Kill whatever is left of the process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
