"""The latency server: every draft group a replica, one HTTP front on rank 0.

    fabric run --accelerator cpu --devices 2 --strategy ddp recipes/serve.py --port 8000
    fabric run ... --devices 4 recipes/serve.py --draft-devices 2    # 2 replicas of 2 devices
    python recipes/serve.py --model digits --port 8000               # one device

Each request is sampled by one whole draft group: its leader takes it from rank 0's queue and
hands it to its ranks, every rank runs the sampler (each round's evaluations split over the
group), the leader sends the images back. Replicas serve different requests side by side.
Weights load and every group runs a warm-up request before ``/health`` says ready.

Lifetime: SIGTERM to rank 0 (its process id is in ``server.json``; with plain ``python`` the
process started) stops taking requests, answers every accepted one, and every rank exits 0.
SIGTERM to ``fabric run`` itself also reaches every rank and the accepted requests are
answered, but the launcher then reports the signal (torchrun's ``SignalException``,
non-zero). A rank that dies or hangs fails the request in flight with a 5xx within the
collective timeout (``--timeout``); the server then stops and exits 1 with the reason.
Everything the server writes goes under ``--out``: ``server.json`` (address, process ids,
layout) once it listens, and ``images/<request id>-<i>.png`` with each image's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import torch.distributed as dist

from driffusion.adapters.distributed import CollectiveError, ParallelLayout, collective
from driffusion.core.errors import UsageError
from driffusion.core.samplers.registry import sampler_names
from driffusion.core.solvers import SOLVER_NAMES
from driffusion.io.images import atomic_write
from driffusion.lightning import Session, cli
from driffusion.models.digits import DEFAULT_SOLVER
from driffusion.serve.api import (
    MAX_PROMPT_CHARS,
    ApiError,
    Generation,
    Limits,
    ServedModel,
    read_sampler,
)
from driffusion.serve.dispatch import Link, LocalSource, RemoteSource, Scheduler, Ticket, group_loop
from driffusion.serve.models import Generated, load_served


class ServerFailed(RuntimeError):
    """The server cannot go on (a rank died or hung, a link broke): exit 1 with the reason.

    The reason is printed when the error is made: a launcher that saw a rank die may end this
    process before it unwinds."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        print(f"error: the server stopped: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The server's flags (the session's too), checked before any process starts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_session_args(parser)
    parser.add_argument(
        "--model",
        default="digits",
        help="digits (the embedded model), a digits model folder, a family name with --tiny, "
        "or a diffusers folder (save_pretrained)",
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny random pipeline of --model")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=cli.nonnegative_int, default=8000, help="0: a free port (server.json)"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/serve"))
    parser.add_argument(
        "--sampler", default="aggressive", help="a request's sampler when it names none"
    )
    parser.add_argument(
        "--solver",
        choices=SOLVER_NAMES,
        default=None,
        help=f"the built-in samplers' solver (default: {DEFAULT_SOLVER} on digits, as "
        "recipes/digits.py; the pipeline's scheduler otherwise)",
    )
    parser.add_argument("--max-n", type=cli.positive_int, default=4, help="images per request")
    parser.add_argument(
        "--max-queue", type=cli.positive_int, default=64, help="requests waiting at most (429)"
    )
    args = parser.parse_args(argv)
    if args.port > 65535:
        parser.error(f"--port must be <= 65535, got {args.port}")
    try:
        read_sampler(args.sampler, None, 10, Limits())
    except ApiError as error:
        parser.error(f"--sampler: {error.message.removeprefix('sampler: ')}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM (exit 0) or a fault (exit 1)."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with Session.from_args(args) as session:
            serve(args, session)
    except ServerFailed:  # its reason is printed already
        return 1
    return 0


def serve(
    args: argparse.Namespace,
    session: Session,
    ready: Callable[[Scheduler, HttpThread], None] | None = None,
) -> None:
    """Every rank's part: rank 0 answers HTTP and leads replica 0; other group leaders take
    requests over their link to rank 0; every rank samples its group's requests.

    Args:
        args: the flags of [`parse_args`][driffusion.serve.server.parse_args].
        session: the launched session.
        ready: called on rank 0 once replica 0 is ready, with the queue and the HTTP server
            (an in-process server stops by ``scheduler.drain()``).
    """
    layout = session.layout
    leader = layout.global_rank == 0
    pids = session.gather(os.getpid())
    scheduler = Scheduler(layout.replicas, args.max_queue, on_finish=image_writer(args.out))
    conns = connect_leaders(layout, session.layout.timeout_s)
    served = load_served(args.model, args.tiny, session)
    solver = args.solver or served.solver
    limits = Limits(args.max_n, args.sampler, solver, layout.draft_devices)
    stop = install_sigterm(scheduler if leader else None)

    def generate(generation: Generation, on_state: Any) -> Generated:
        return served.generate(generation, session, on_state)

    http = None
    try:
        if leader:
            from driffusion.serve.app import make_app

            info = server_info(served, limits, session)
            http = HttpThread(make_app(scheduler, served, limits, info), args.host, args.port)
            http.start()
            write_server_json(args.out, http, pids, info)
            links = [
                Link(scheduler, replica, replica * layout.draft_devices, conn)
                for replica, conn in conns.items()
            ]
            for link in links:
                link.start()
        generate(warmup(served, limits), lambda payload: None)
        if leader:
            scheduler.replica_ready(0)
            assert http is not None
            print(f"serving {served.name} on {http.url}", file=sys.stderr)
            if ready is not None:
                ready(scheduler, http)
            group_loop(layout, LocalSource(scheduler), generate)
            for link in links:
                link.join()
            if scheduler.failure is not None:
                raise ServerFailed(scheduler.failure)
        else:
            source = None
            if layout.is_group_leader:
                conn = conns[layout.replica]
                conn.send("ready")
                source = RemoteSource(conn, layout.timeout_s)
            group_loop(layout, source, generate)
    except CollectiveError as error:
        scheduler.fail(str(error))
        raise ServerFailed(str(error)) from error
    finally:
        stop()
        if http is not None:
            http.stop()


def warmup(served: ServedModel, limits: Limits) -> Generation:
    """A short request of the default sampler, run by every group before it is ready."""
    steps = min(served.steps, 4)
    return Generation(
        prompt=served.warmup_prompt,
        condition=served.condition(served.warmup_prompt, None),
        negative_prompt=None,
        n=1,
        width=served.width,
        height=served.height,
        steps=steps,
        guidance=served.guidance,
        seed=0,
        sampler=read_sampler(limits.sampler, None, steps, limits),
        id="warm-up",
    )


def connect_leaders(layout: ParallelLayout, timeout_s: float) -> dict[int, Connection]:
    """The links between rank 0 and the other groups' leaders (none with one replica): rank 0
    listens on a free port and broadcasts address and key; on rank 0 the result maps each
    replica to its connection, on a remote leader its own replica to its end."""
    if layout.replicas == 1:
        return {}
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    listener = None
    box: list[Any] = [None]
    if layout.global_rank == 0:
        key = secrets.token_bytes(32)
        listener = Listener((host, 0), authkey=key)
        box = [(listener.address, key)]
    collective(
        layout,
        "broadcast of the links' address",
        dist.broadcast_object_list,
        box,
        src=0,
        group=layout.world_group,
    )
    address, key = box[0]
    if listener is None:
        if not layout.is_group_leader:
            return {}
        conn = Client(address, authkey=key)
        conn.send(layout.replica)
        return {layout.replica: conn}
    conns: dict[int, Connection] = {}

    def accept() -> None:
        for _ in range(layout.replicas - 1):
            conn = listener.accept()
            conns[conn.recv()] = conn

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    thread.join(timeout_s)
    listener.close()
    if thread.is_alive() or len(conns) != layout.replicas - 1:
        raise ServerFailed(f"only {len(conns)} of {layout.replicas - 1} group leaders connected")
    return conns


def install_sigterm(scheduler: Scheduler | None) -> Any:
    """SIGTERM drains on rank 0 (stop taking requests, answer the accepted ones); the other
    ranks go on until rank 0 tells their group to stop. Returns what restores the handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # in-process servers (tests) stop by scheduler.drain()

    def on_sigterm(signum: int, frame: Any) -> None:
        if scheduler is not None:
            print("SIGTERM: answering the accepted requests, then stopping", file=sys.stderr)
            scheduler.drain()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, previous)


def image_writer(out: Path) -> Any:
    """Save each finished request's images as ``<out>/images/<id>-<i>.png``."""

    def write(ticket: Ticket, result: Generated) -> None:
        for i, png in enumerate(result.images):

            def write_png(path: Path, png: bytes = png) -> None:
                path.write_bytes(png)

            atomic_write(out / "images" / f"{ticket.id}-{i}.png", write_png)

    return write


def server_info(served: ServedModel, limits: Limits, session: Session) -> dict[str, Any]:
    """``GET /info``: the model, the devices and their layout, the samplers and defaults."""
    layout = session.layout
    return {
        "model": served.name,
        "family": served.family,
        "devices": layout.world_size,
        "layout": {
            "world": layout.world_size,
            "draft_devices": layout.draft_devices,
            "replicas": layout.replicas,
            "guidance_devices": session.guidance_devices,
        },
        "samplers": list(sampler_names()),
        "defaults": {
            "sampler": limits.sampler,
            "solver": limits.solver,
            "drafts": f"the draft-group size ({layout.draft_devices}), fewer where more were "
            "measured to lose over the steps",
            "steps": served.steps,
            "guidance": served.guidance,
            "size": f"{served.width}x{served.height}",
            "n": 1,
            "seed": 0,
        },
        "limits": {
            "max_n": limits.max_n,
            "max_steps": served.max_steps,
            "max_prompt_chars": MAX_PROMPT_CHARS,
            "size_multiple": served.multiple,
        },
    }


def write_server_json(out: Path, http: HttpThread, pids: list[int], info: dict[str, Any]) -> None:
    """``<out>/server.json``: where the server listens and its processes, once it listens."""
    payload = {"url": http.url, "port": http.port, "pid": os.getpid(), "pids": pids, **info}
    atomic_write(out / "server.json", lambda p: p.write_text(json.dumps(payload, indent=2)))


class HttpThread:
    """uvicorn serving ``app`` from a thread of rank 0 (the main thread samples).

    Raises:
        UsageError: the address cannot be bound (a port in use).
    """

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as error:
            self.sock.close()
            raise UsageError(f"--host {host} --port {port}: {error.strerror}") from None
        self.host, self.port = self.sock.getsockname()[:2]
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True, name="http"
        )

    @property
    def url(self) -> str:
        """Where it listens."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Serve from the thread; return once it listens."""
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise ServerFailed("the HTTP server did not start")

    def stop(self) -> None:
        """Finish the responses in flight (at most ``timeout_graceful_shutdown``), then close."""
        self.server.should_exit = True
        self.thread.join(10)


if __name__ == "__main__":
    sys.exit(cli.exit_on_usage_error(main))
