"""Requests to draft groups: one queue on rank 0, one worker loop per draft group.

``world = draft_devices x replicas``. Rank 0 holds the
[`Scheduler`][driffusion.serve.dispatch.Scheduler] (the queue the HTTP handlers feed). The
leader of every draft group takes the next request from it (replica 0's leader is rank 0
itself; the other leaders over a ``multiprocessing.connection`` link to rank 0), hands it to
its ranks with one broadcast in the group, and every rank runs the sampler: each round's
evaluations are split over the group as in the recipes. After each round the leader reports
progress and shares one flag, *cancelled*, so that every rank stops after the same round. An
idle leader broadcasts a heartbeat every ``HEARTBEAT_S``, so an idle group never reaches the
collective timeout, and a dead or hung peer is found by the next collective, within that
timeout ([`CollectiveError`][driffusion.adapters.distributed.CollectiveError]): the request
in flight is answered 5xx and the server stops, exiting non-zero.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

import torch.distributed as dist

from driffusion.adapters.distributed import CollectiveError, ParallelLayout, collective
from driffusion.serve.api import ApiError, Generation
from driffusion.serve.models import Generated

HEARTBEAT_S = 1.0
"""An idle leader's broadcast interval (and how often an idle link polls the queue)."""
STOP = "stop"
"""Sent in place of a request: the loop ends (drained, or the server failed)."""
KEEP_FINISHED = 256
"""Finished requests kept for ``GET /v1/requests/{id}``."""


class Cancelled(Exception):
    """A request cancelled by its client: raised on every rank of the group after the same
    round."""

    def __init__(self, rounds: int) -> None:
        super().__init__(f"cancelled after round {rounds}")
        self.rounds = rounds


@dataclass
class Ticket:
    """Rank 0's record of one request, from queued to answered.

    ``status``: ``queued``, ``running``, ``done``, ``failed`` or ``cancelled``. ``events`` are
    the progress events so far (one per round); ``future`` resolves when it is answered.
    """

    generation: Generation
    status: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    replica: int | None = None
    step: int = 0
    rounds: int = 0
    result: Generated | None = None
    error: ApiError | None = None
    cancel: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    @property
    def id(self) -> str:
        """The request's id."""
        return self.generation.id

    def view(self) -> dict[str, Any]:
        """The status: where the request is, its progress and any error."""
        return {
            "id": self.id,
            "status": self.status,
            "replica": self.replica,
            "step": self.step,
            "steps": self.generation.steps,
            "rounds": self.rounds,
            "error": None if self.error is None else self.error.body()["error"],
        }


class Scheduler:
    """The queue of requests and their tickets, shared by the HTTP handlers and the replica
    loops (thread-safe).

    Args:
        replicas: draft groups taking requests.
        max_queue: requests waiting at most (a full queue answers 429).
        on_finish: called with each request's ticket and images before it is answered (the
            server saves them there).
    """

    def __init__(
        self,
        replicas: int,
        max_queue: int = 64,
        on_finish: Callable[[Ticket, Generated], None] | None = None,
    ) -> None:
        self.replicas = replicas
        self.on_finish = on_finish
        self.max_queue = max_queue
        self._lock = threading.Condition()
        self._queue: collections.deque[str] = collections.deque()
        self._tickets: dict[str, Ticket] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._ready: set[int] = set()
        self.draining = False
        self.failure: str | None = None
        self.served = 0

    # -- state --------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``loading`` (weights and warm-up), ``ready``, ``draining`` or ``failed``."""
        if self.failure is not None:
            return "failed"
        if self.draining:
            return "draining"
        return "ready" if len(self._ready) == self.replicas else "loading"

    def replica_ready(self, replica: int) -> None:
        """Replica ``replica`` has loaded and warmed up."""
        with self._lock:
            self._ready.add(replica)
            self._lock.notify_all()

    def drain(self) -> None:
        """Stop taking requests; the loops end once every accepted one is answered."""
        with self._lock:
            self.draining = True
            self._lock.notify_all()

    def fail(self, message: str) -> None:
        """The server cannot go on: every waiting request is answered 503 and the loops end."""
        with self._lock:
            if self.failure is None:
                self.failure = message
            while self._queue:
                ticket = self._tickets[self._queue.popleft()]
                self._answer(ticket, "failed", error=ApiError(503, None, message, "server_error"))
            self._lock.notify_all()

    def counts(self) -> dict[str, int]:
        """Requests queued, running and answered."""
        with self._lock:
            running = sum(t.status == "running" for t in self._tickets.values())
            return {"queued": len(self._queue), "running": running, "served": self.served}

    # -- HTTP side ----------------------------------------------------------------------------

    def submit(self, generation: Generation) -> Ticket:
        """Queue a checked request.

        Raises:
            ApiError: 503 while loading, draining or failed; 429 when the queue is full.
        """
        with self._lock:
            state = self.state
            if state != "ready":
                reason = self.failure or f"the server is {state}"
                raise ApiError(503, None, reason, "server_error")
            if len(self._queue) >= self.max_queue:
                raise ApiError(429, None, f"{self.max_queue} requests are waiting already")
            ticket = Ticket(generation)
            self._tickets[ticket.id] = ticket
            self._queue.append(ticket.id)
            self._lock.notify_all()
            return ticket

    def get(self, request_id: str) -> Ticket:
        """The ticket of ``request_id`` (404 when unknown or forgotten)."""
        with self._lock:
            ticket = self._tickets.get(request_id)
        if ticket is None:
            raise ApiError(404, "id", f"no request {request_id!r}")
        return ticket

    def cancel(self, request_id: str) -> Ticket:
        """Cancel a request: a queued one is answered at once, a running one after its current
        round."""
        ticket = self.get(request_id)
        with self._lock:
            if ticket.status == "queued":
                self._queue.remove(ticket.id)
                self._answer(ticket, "cancelled")
            elif ticket.status == "running":
                ticket.cancel = True
        return ticket

    # -- replica side -------------------------------------------------------------------------

    def take(self, replica: int, timeout: float) -> Generation | str | None:
        """The next request for ``replica``: a ``Generation``, ``None`` after ``timeout`` with
        nothing queued, or ``STOP`` once drained (or failed)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if self.failure is not None or (self.draining and not self._queue):
                    return STOP
                if self._queue:
                    ticket = self._tickets[self._queue.popleft()]
                    ticket.status, ticket.replica, ticket.started = "running", replica, time.time()
                    return ticket.generation
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)

    def progress(self, request_id: str, step: int, rounds: int) -> None:
        """Round ``rounds`` reached grid step ``step``."""
        with self._lock:
            ticket = self._tickets[request_id]
            ticket.step, ticket.rounds = step, rounds
            ticket.events.append({"step": step, "steps": ticket.generation.steps, "rounds": rounds})

    def cancelled(self, request_id: str) -> bool:
        """Has the client cancelled ``request_id``?"""
        with self._lock:
            return self._tickets[request_id].cancel

    def finish(self, request_id: str, result: Generated) -> None:
        """The images of ``request_id`` (kept by ``on_finish`` before it is answered)."""
        with self._lock:
            ticket = self._tickets[request_id]
        if self.on_finish is not None:
            self.on_finish(ticket, result)
        with self._lock:
            self._answer(ticket, "done", result=result)

    def stop(self, request_id: str, error: ApiError | None = None) -> None:
        """``request_id`` ends without images: cancelled (no ``error``) or failed."""
        with self._lock:
            status = "cancelled" if error is None else "failed"
            self._answer(self._tickets[request_id], status, error=error)

    def _answer(
        self,
        ticket: Ticket,
        status: str,
        result: Generated | None = None,
        error: ApiError | None = None,
    ) -> None:
        """(Under the lock.) Record the answer, resolve the future, forget old tickets; a
        ticket is answered once (a later answer, e.g. a lost link's, is dropped)."""
        if ticket.future.done():
            return
        ticket.status, ticket.result, ticket.error = status, result, error
        ticket.finished = time.time()
        self.served += 1
        self._finished.append(ticket.id)
        while len(self._finished) > KEEP_FINISHED:
            self._tickets.pop(self._finished.popleft(), None)
        ticket.future.set_result(ticket)
        self._lock.notify_all()


class Source(Protocol):
    """Where a group leader gets requests and sends what becomes of them."""

    def next(self, timeout: float) -> Generation | str | None:
        """The next request, ``None`` (nothing within ``timeout``: a heartbeat) or ``STOP``."""
        ...

    def progress(self, generation: Generation, step: int, rounds: int) -> None:
        """Round ``rounds`` of the request reached grid step ``step``."""
        ...

    def cancelled(self, generation: Generation) -> bool:
        """Has its client cancelled the request?"""
        ...

    def finish(self, generation: Generation, result: Generated) -> None:
        """The request's images."""
        ...

    def stop(self, generation: Generation, error: ApiError | None) -> None:
        """The request ends without images: cancelled (``None``) or failed."""
        ...


class LocalSource(Source):
    """Replica ``replica``'s requests straight from the scheduler (the leader is rank 0)."""

    def __init__(self, scheduler: Scheduler, replica: int = 0) -> None:
        self.scheduler = scheduler
        self.replica = replica

    def next(self, timeout: float) -> Generation | str | None:
        return self.scheduler.take(self.replica, timeout)

    def progress(self, generation: Generation, step: int, rounds: int) -> None:
        self.scheduler.progress(generation.id, step, rounds)

    def cancelled(self, generation: Generation) -> bool:
        return self.scheduler.cancelled(generation.id)

    def finish(self, generation: Generation, result: Generated) -> None:
        self.scheduler.finish(generation.id, result)

    def stop(self, generation: Generation, error: ApiError | None) -> None:
        self.scheduler.stop(generation.id, error)


class RemoteSource(Source):
    """A remote group leader's end of its link to rank 0: requests in, progress, images and
    errors out; a cancel arrives between rounds.

    Args:
        conn: the connection to rank 0's [`Link`][driffusion.serve.dispatch.Link].
        timeout_s: the longest silence from rank 0 (it sends a heartbeat every
            ``HEARTBEAT_S``) before the leader gives up.
    """

    def __init__(self, conn: Connection, timeout_s: float) -> None:
        self.conn = conn
        self.timeout_s = timeout_s
        self._cancel: set[str] = set()

    def next(self, timeout: float) -> Generation | str | None:
        while True:
            if not self.conn.poll(self.timeout_s):
                raise CollectiveError(f"no word from rank 0 for {self.timeout_s:g}s")
            message = self._recv()
            if not (isinstance(message, tuple) and message[0] == "cancel"):
                return message  # a late cancel of a finished request is dropped

    def progress(self, generation: Generation, step: int, rounds: int) -> None:
        self._send(("progress", generation.id, step, rounds))

    def cancelled(self, generation: Generation) -> bool:
        while self.conn.poll(0):
            message = self._recv()
            if isinstance(message, tuple) and message[0] == "cancel":
                self._cancel.add(message[1])
        return generation.id in self._cancel

    def finish(self, generation: Generation, result: Generated) -> None:
        self._send(("done", generation.id, result))

    def stop(self, generation: Generation, error: ApiError | None) -> None:
        self._send(("stop", generation.id, error))

    def _recv(self) -> Any:
        try:
            return self.conn.recv()
        except (EOFError, OSError) as error:
            raise CollectiveError(f"the link to rank 0 broke: {error!r}") from error

    def _send(self, message: Any) -> None:
        try:
            self.conn.send(message)
        except OSError as error:
            raise CollectiveError(f"the link to rank 0 broke: {error!r}") from error


class Link(threading.Thread):
    """Rank 0's end of a remote leader's link: a thread that hands the replica its requests and
    records what it sends back; a broken link fails its request (503) and the server."""

    def __init__(self, scheduler: Scheduler, replica: int, leader: int, conn: Connection) -> None:
        super().__init__(name=f"driffusion-link-{replica}", daemon=True)
        self.scheduler = scheduler
        self.replica = replica
        self.leader = leader
        self.conn = conn

    def run(self) -> None:
        current: Generation | None = None
        try:
            if self.conn.recv() != "ready":  # loaded and warmed up
                raise EOFError("no ready message")
            self.scheduler.replica_ready(self.replica)
            while True:
                message = self.scheduler.take(self.replica, HEARTBEAT_S)
                self.conn.send(message)
                if message == STOP:
                    return
                if isinstance(message, Generation):
                    current = message
                    self._follow(current)
                    current = None
        except (EOFError, OSError) as error:
            why = (
                f"replica {self.replica} (leader rank {self.leader}) was lost: "
                f"{type(error).__name__}: {error}"
            )
            if current is not None:
                self.scheduler.stop(current.id, ApiError(503, None, why, "server_error"))
            self.scheduler.fail(why)

    def _follow(self, generation: Generation) -> None:
        cancel_sent = False
        while True:
            if not cancel_sent and self.scheduler.cancelled(generation.id):
                self.conn.send(("cancel", generation.id))
                cancel_sent = True
            if not self.conn.poll(0.05):
                continue
            kind, _, *rest = self.conn.recv()
            if kind == "progress":
                self.scheduler.progress(generation.id, *rest)
            elif kind == "done":
                self.scheduler.finish(generation.id, rest[0])
                return
            else:
                self.scheduler.stop(generation.id, rest[0])
                if rest[0] is not None and rest[0].status >= 500:
                    raise EOFError(rest[0].message)
                return


Generate = Callable[[Generation, Callable[[dict[str, Any]], None]], Generated]


def share(layout: ParallelLayout, value: Any, what: str) -> Any:
    """The group leader's ``value`` on every rank of the draft group (one broadcast)."""
    if layout.draft_devices == 1:
        return value
    box = [value]
    collective(
        layout,
        what,
        dist.broadcast_object_list,
        box,
        src=layout.group_ranks[0],
        group=layout.draft_group,
    )
    return box[0]


def group_loop(layout: ParallelLayout, source: Source | None, generate: Generate) -> None:
    """Serve requests on one draft group until ``STOP``; every rank of the group runs it
    (``source`` on the leader, ``None`` elsewhere).

    A request whose settings the sampler refuses (a ``ValueError``: the same on every rank) is
    answered 400 and the loop goes on; a cancelled one ends after its current round.

    Raises:
        CollectiveError: a peer died or hung, or rank 0's link broke (the request in flight is
            answered 500 first); any other error is a fault of the server, raised as is.
    """
    while True:
        message = source.next(HEARTBEAT_S) if source is not None else None
        message = share(layout, message, "hand-over of the next request")
        if message == STOP:
            return
        if not isinstance(message, Generation):
            continue  # a heartbeat
        generation = message
        last = [0]

        def on_state(
            payload: dict[str, Any], generation: Generation = generation, last: list[int] = last
        ) -> None:
            rounds = int(payload["rounds"])
            if rounds == last[0]:
                return  # the same round's next state: one event (and one shared flag) a round
            last[0] = rounds
            stop = False
            if source is not None:
                source.progress(generation, int(payload["i"]), rounds)
                stop = source.cancelled(generation)
            if share(layout, stop, "cancel flag"):
                raise Cancelled(rounds)

        try:
            result = generate(generation, on_state)
        except Cancelled:
            if source is not None:
                source.stop(generation, None)
            continue
        except CollectiveError as error:
            if source is not None:
                _answer_safely(source, generation, ApiError(500, None, str(error), "server_error"))
            raise
        except ValueError as error:  # the request's settings, refused the same on every rank
            if source is not None:
                source.stop(generation, ApiError(400, None, str(error)))
            continue
        except Exception as error:
            if source is not None:
                message_ = f"{type(error).__name__}: {error}"
                _answer_safely(source, generation, ApiError(500, None, message_, "server_error"))
            raise
        if source is not None:
            source.finish(generation, result)


def _answer_safely(source: Source, generation: Generation, error: ApiError) -> None:
    """Answer a failed request, if the link still allows it (the error that ended the loop
    is what the caller reports)."""
    with contextlib.suppress(CollectiveError):
        source.stop(generation, error)
