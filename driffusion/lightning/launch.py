"""Start Fabric either under ``fabric run`` or from code, with the same flags (used by the
[`Session`][driffusion.lightning.session.Session]).

Under ``fabric run`` (which sets ``LT_CLI_USED=1``) the CLI owns accelerator, devices, strategy,
nodes and precision: the script passes none of them and must not call ``launch()``. Launched as
``python script.py --devices 2 ...`` the same flags go to ``Fabric(...)`` and ``launch()``.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from lightning.fabric import Fabric

FABRIC_FLAGS = ("accelerator", "devices", "strategy", "num_nodes", "precision")


def under_fabric_cli() -> bool:
    """True when the process was started by ``fabric run``."""
    return os.environ.get("LT_CLI_USED") == "1"


def launching_rank() -> bool:
    """True on the process that will be global rank 0, before any process group exists (under
    ``fabric run`` and in the children of a launch from code the launcher sets ``RANK`` /
    ``LOCAL_RANK``): the one that owns the output folder."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def started_by_launcher() -> bool:
    """True on a rank that ``fabric run`` or a launch from code started (not the launcher)."""
    return under_fabric_cli() or os.environ.get("LOCAL_RANK", "0") != "0"


def owns_output_folder() -> bool:
    """Whether this process is the one that creates the run's output folder (the
    [`launching_rank`][driffusion.lightning.launch.launching_rank]), after tying a launched rank's
    life to its launcher ([`die_with_parent`][driffusion.lightning.launch.die_with_parent]): a
    rank whose launcher was killed while it was still starting must not create a folder first."""
    if started_by_launcher():
        die_with_parent()
    return launching_rank()


def launch_fabric(flags: Mapping[str, Any], callbacks: Sequence[Any] = ()) -> Fabric:
    """A launched Fabric: joined from ``fabric run``'s environment, or built from ``flags``
    (``accelerator``, ``devices``, ``strategy``, ``num_nodes``, ``precision``) and launched.

    ``callbacks`` are plain objects with ``on_predict_*`` hooks, dispatched with ``fabric.call``.
    """
    values = {k: v for k, v in flags.items() if k in FABRIC_FLAGS}
    if started_by_launcher():
        die_with_parent()  # a rank started by a launcher never outlives it
    if under_fabric_cli():
        ignored = [f for f, v in values.items() if v not in (None, "auto", "1", 1)]
        if ignored:
            warnings.warn(
                f"under `fabric run` the CLI sets {ignored}; the script's values are ignored",
                stacklevel=3,
            )
        return _share_cpu_cores(Fabric(callbacks=list(callbacks)))
    devices = values.get("devices")
    if isinstance(devices, str) and devices.isdigit():
        values["devices"] = int(devices)
    if values.get("precision") is None:
        values.pop("precision", None)
    fabric = Fabric(**values, callbacks=list(callbacks))
    fabric.launch()
    _reap_children_at_exit(fabric)
    return _share_cpu_cores(fabric)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    The ranks of ``fabric run`` are children of its launcher, and the ranks a launch from code
    starts are children of rank 0: whichever way the parent ends (``kill -9`` included) they go
    with it, instead of computing on and writing outputs nobody asked for any more. A no-op where
    the call does not exist.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl here
        return
    if os.getppid() == 1:  # the parent died before the call took effect
        os._exit(1)


def _reap_children_at_exit(fabric: Fabric, grace_s: float = 10.0) -> None:
    """When launched from code, the first process starts the others; if it exits (say, after a
    ``CollectiveError`` because a peer hung), a hung child would live on. At exit, wait up to
    ``grace_s`` for the children, then kill the ones still running."""
    procs = getattr(getattr(fabric.strategy, "launcher", None), "procs", None)
    if not procs:
        return

    def reap() -> None:
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    atexit.register(reap)


def _share_cpu_cores(fabric: Fabric) -> Fabric:
    """On CPU, give each local process its share of the cores: torch's default (all cores per
    process) oversubscribes them and costs multi-process runs much of their speedup."""
    local_processes = max(1, fabric.world_size // max(1, getattr(fabric.strategy, "num_nodes", 1)))
    if fabric.device.type == "cpu" and local_processes > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))
    return fabric


def finish() -> None:
    """Tear the process group down (runs that skip this sometimes abort at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
