"""Start Fabric either under ``fabric run`` or from code, with the same flags (used by the
[`Session`][driffusion.lightning.session.Session]).

Under ``fabric run`` (which sets ``LT_CLI_USED=1``) the CLI owns accelerator, devices, strategy,
nodes and precision: the script passes none of them and must not call ``launch()``. Launched as
``python script.py --devices 2 ...`` the same flags go to ``Fabric(...)`` and ``launch()``.

Either way the first process group (Fabric's ``init_process_group``) waits at most the session's
timeout for every rank: a node that was never started, a rendezvous port that is taken or a rank
that never arrives becomes a [`LaunchError`][driffusion.lightning.launch.LaunchError] instead of
torch's default 30-minute wait.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from lightning.fabric import Fabric
from lightning.fabric.strategies import STRATEGY_REGISTRY, DDPStrategy, Strategy

from driffusion.adapters.distributed import DEFAULT_TIMEOUT_S
from driffusion.core.errors import UsageError

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


LAUNCH_MIN_S = 30.0
"""The least a launch waits for every rank to join, whatever the session's timeout: a rank
needs seconds to start (python, torch and the script's imports; 10 s and more on a busy
machine), so a short collective timeout (say ``--timeout 5``, to catch a hung rank quickly)
would otherwise fail launches that are healthy."""


def launch_timeout(timeout_s: float) -> float:
    """How long a launch waits for every rank: the session's timeout, at least
    [`LAUNCH_MIN_S`][driffusion.lightning.launch.LAUNCH_MIN_S]."""
    return max(timeout_s, LAUNCH_MIN_S)


class LaunchError(UsageError, RuntimeError):
    """The ranks of a run did not all meet within the session's timeout: a node that was never
    started, a rendezvous address or port that is taken or unreachable, or a rank that never
    arrived. Raised on every rank that waited, with one line that says what it waited for."""


def launch_fabric(
    flags: Mapping[str, Any],
    callbacks: Sequence[Any] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Fabric:
    """A launched Fabric: joined from ``fabric run``'s environment, or built from ``flags``
    (``accelerator``, ``devices``, ``strategy``, ``num_nodes``, ``precision``) and launched.

    Args:
        flags: the Fabric flags (ignored under ``fabric run``, which sets them).
        callbacks: plain objects with ``on_predict_*`` hooks, dispatched with ``fabric.call``.
        timeout_s: the bound on the first process group: how long each rank waits for the
            others to join (the [`Session`][driffusion.lightning.session.Session] passes
            [`launch_timeout`][driffusion.lightning.launch.launch_timeout] of its timeout).

    Raises:
        LaunchError: the ranks did not all join within ``timeout_s`` (children of a launch from
            code are reaped at exit).
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
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
        # The CLI's strategy arrives as LT_STRATEGY and Fabric(...) initialises the process
        # group in its constructor, with the strategy's timeout (30 min by default). Lightning
        # refuses a script's strategy that differs from LT_STRATEGY, so the script passes the
        # same strategy, built from the same registry entry with the timeout added, while
        # LT_STRATEGY is hidden from the connector (the CLI's choice still decides it).
        world = _int_env("WORLD_SIZE", 1)
        strategy = bounded_strategy(os.environ.get("LT_STRATEGY", "auto"), timeout_s, world > 1)
        nodes = _int_env("LT_NUM_NODES", 1)
        with _launch_errors(timeout_s, nodes, cli=True), _env_hidden("LT_STRATEGY"):
            fabric = Fabric(strategy=strategy, callbacks=list(callbacks))
        return _share_cpu_cores(fabric)
    devices = values.get("devices")
    if isinstance(devices, str) and devices.isdigit():
        values["devices"] = int(devices)
    if values.get("precision") is None:
        values.pop("precision", None)
    nodes = int(values.get("num_nodes") or 1)
    values["strategy"] = bounded_strategy(
        values.get("strategy", "auto"), timeout_s, planned_processes(values) > 1
    )
    fabric = Fabric(**values, callbacks=list(callbacks))
    try:
        with _launch_errors(timeout_s, nodes, cli=False):
            fabric.launch()
    finally:
        _reap_children_at_exit(fabric)
    return _share_cpu_cores(fabric)


def bounded_strategy(strategy: Any, timeout_s: float, multiprocess: bool) -> Any:
    """``strategy`` with its first process group bounded by ``timeout_s``, where it has one.

    A name of the DDP family (``ddp``, ``ddp_spawn``, ``ddp_fork``, ...) becomes the strategy the
    registry would build for it, with ``timeout`` added; ``"auto"`` is ``ddp`` (what Lightning
    picks) when the run has more than one process (``multiprocess``) on CPU or CUDA. Anything
    else (single device, dp, fsdp, deepspeed, a Strategy instance) is returned as it is: those
    keep Lightning's own choice and timeout.

    Args:
        strategy: the strategy flag (a registered name or a Strategy).
        timeout_s: the first process group's timeout.
        multiprocess: whether the run starts more than one process (decides ``"auto"``).
    """
    if isinstance(strategy, Strategy) or not isinstance(strategy, str):
        return strategy
    name = strategy.lower()
    if name == "auto":
        if not (multiprocess and _auto_would_pick_ddp()):
            return strategy
        name = "ddp"
    if name not in STRATEGY_REGISTRY:
        return strategy  # an unknown name: Lightning reports it
    entry = STRATEGY_REGISTRY[name]
    cls, params = entry["strategy"], dict(entry["init_params"])
    if not (isinstance(cls, type) and issubclass(cls, DDPStrategy)):
        return strategy
    if params.get("start_method") == "fork" and not _can_fork():
        return strategy  # Lightning refuses the name with a clear message: keep it
    return cls(**params, timeout=timedelta(seconds=timeout_s))


def _auto_would_pick_ddp() -> bool:
    """Whether Lightning's ``strategy="auto"`` picks ``ddp`` for a multi-process run here (not in
    an interactive session, which gets ``ddp_fork``, nor on a TPU host, which gets ``xla``)."""
    if hasattr(sys, "ps1") or sys.flags.interactive:
        return False
    from lightning.fabric.accelerators import XLAAccelerator

    return not XLAAccelerator.is_available()


def _can_fork() -> bool:
    import torch.multiprocessing

    return "fork" in torch.multiprocessing.get_all_start_methods()


def planned_processes(flags: Mapping[str, Any]) -> int:
    """The processes a run will have over all nodes, known before any process group exists:
    the launcher's ``WORLD_SIZE`` on a rank it started (``fabric run``, or a child of a launch
    from code), else ``devices x num_nodes`` of the launch ``flags`` (an int, a digit string, a
    list or a comma list of device ids; ``auto`` and ``-1``: every visible GPU when CUDA is
    available and the accelerator allows it, else one process)."""
    if "WORLD_SIZE" in os.environ:
        return _int_env("WORLD_SIZE", 1)
    devices = flags.get("devices")
    text = str(devices).strip().strip("[]()")
    if isinstance(devices, int) and not isinstance(devices, bool):
        count = devices
    elif isinstance(devices, (list, tuple)):
        count = len(devices)
    elif text.isdigit():
        count = int(text)
    elif "," in text:
        count = len([d for d in text.split(",") if d.strip()])
    else:  # "auto", "-1" or unset: what Fabric picks
        gpus = flags.get("accelerator", "auto") in ("auto", "cuda", "gpu")
        count = torch.cuda.device_count() if gpus and torch.cuda.is_available() else 1
    return max(1, count) * max(1, int(flags.get("num_nodes") or 1))


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@contextlib.contextmanager
def _env_hidden(name: str) -> Iterator[None]:
    """Remove ``name`` from the environment inside the block (restored after it)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


@contextlib.contextmanager
def _launch_errors(timeout_s: float, nodes: int, cli: bool) -> Iterator[None]:
    """Turn a failed first process group into a
    [`LaunchError`][driffusion.lightning.launch.LaunchError] that says what was waited for."""
    try:
        yield
    except RuntimeError as error:  # torch's DistError (store, network, backend) is one
        if isinstance(error, UsageError) or not _is_rendezvous_error(error):
            raise
        _stop_child_observer()
        raise LaunchError(launch_message(error, timeout_s, nodes, cli)) from error


def _is_rendezvous_error(error: BaseException) -> bool:
    """Whether ``error`` comes from creating the first process group (the store or the backend's
    connections), not from a misconfiguration Lightning reports itself."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    words = ("timed out", "timeout", "connection", "connect", "address", "socket", "peer")
    return any(word in text for word in words)


def launch_message(error: BaseException, timeout_s: float, nodes: int, cli: bool) -> str:
    """The one line of a [`LaunchError`][driffusion.lightning.launch.LaunchError]: this rank,
    the world it waited for, how many joined (where torch says), the address and port, the
    timeout, the fix and the cause."""
    world = _int_env("WORLD_SIZE", 0)
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    if not cli and "RANK" not in os.environ:  # a launch from code: node rank x local processes
        per_node = world // max(1, nodes) if world else 0
        rank = str(_int_env("NODE_RANK", 0) * per_node + _int_env("LOCAL_RANK", 0))
    address = os.environ.get("MASTER_ADDR", "?")
    port = os.environ.get("MASTER_PORT", "?")
    cause = " ".join(f"{type(error).__name__}: {error}".split())
    if len(cause) > 300:
        cause = cause[:297] + "..."
    joined = re.search(r"(\d+)/(\d+) clients joined", cause)
    seen = f", {joined.group(1)} of {joined.group(2)} joined" if joined else ""
    where = "--main-address/--main-port" if cli else "MASTER_ADDR/MASTER_PORT (and NODE_RANK)"
    if "EADDRINUSE" in cause or "address already in use" in cause.lower():
        what = f"rendezvous port {address}:{port} is already in use"
        fix = "pick a free port (--main-port under `fabric run`, MASTER_PORT from code)"
    else:
        what = (
            f"rank {rank} did not meet all {world or '?'} ranks at {address}:{port} within "
            f"{timeout_s:g}s{seen}"
        )
        fix = (
            f"start the other node(s) with the same {where}, or lower --num-nodes (or raise "
            "--timeout if they start late)"
            if nodes > 1
            else "a rank did not start or crashed before joining (see its output; or raise "
            "--timeout)"
        )
    return f"launch failed: {what} (--num-nodes {nodes}): {fix}. Cause: {cause}"


def _stop_child_observer() -> None:
    """Stop Lightning's watcher of a launch from code's children: when a child exits with the
    same LaunchError, it would SIGKILL this process before it reports (the children are
    reaped at exit instead, by ``_reap_children_at_exit``)."""
    for thread in threading.enumerate():
        if type(thread).__name__ == "_ChildProcessObserver" and hasattr(thread, "_child_processes"):
            thread._child_processes = []  # its next check finds nothing to watch and ends


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
