"""The queue and the group loop, in one process: every request answered exactly once, cancel
after the current round, drain and failure end the loops."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from driffusion.adapters.distributed import CollectiveError, ParallelLayout
from driffusion.core import Serial
from driffusion.serve.api import ApiError, Generation
from driffusion.serve.dispatch import STOP, LocalSource, Scheduler, group_loop
from driffusion.serve.models import Generated

ONE = ParallelLayout(world_size=1, global_rank=0, draft_devices=1)


def generation(steps: int = 5, seed: int = 0) -> Generation:
    return Generation(
        prompt="3",
        condition=3,
        negative_prompt=None,
        n=1,
        width=16,
        height=16,
        steps=steps,
        guidance=2.0,
        seed=seed,
        sampler=Serial(),
    )


def rounds_of(generation: Generation, on_state: Any) -> Generated:
    """A stand-in sampler: one state a round."""
    for i in range(1, generation.steps + 1):
        on_state({"i": i, "rounds": i})
    return Generated([b"png"], {"rounds": generation.steps, "evaluations": generation.steps})


def ready_scheduler(**kwargs: Any) -> Scheduler:
    scheduler = Scheduler(replicas=1, **kwargs)
    scheduler.replica_ready(0)
    return scheduler


def test_requests_wait_for_ready_and_each_is_answered_once() -> None:
    scheduler = Scheduler(replicas=2)
    with pytest.raises(ApiError) as caught:
        scheduler.submit(generation())
    assert caught.value.status == 503 and scheduler.state == "loading"
    scheduler.replica_ready(0)
    scheduler.replica_ready(1)
    tickets = [scheduler.submit(generation(seed=s)) for s in range(3)]
    taken = [scheduler.take(s % 2, timeout=0.1) for s in range(3)]
    assert [g.seed for g in taken] == [0, 1, 2]  # first in, first out
    assert scheduler.take(0, timeout=0.05) is None  # nothing queued: a heartbeat
    for ticket in tickets:
        scheduler.finish(ticket.id, Generated([b"x"]))
        scheduler.stop(ticket.id, ApiError(503, None, "late"))  # a second answer is dropped
    assert [t.status for t in tickets] == ["done"] * 3
    assert [t.replica for t in tickets] == [0, 1, 0]
    assert scheduler.counts() == {"queued": 0, "running": 0, "served": 3}


def test_a_full_queue_answers_429() -> None:
    scheduler = ready_scheduler(max_queue=2)
    scheduler.submit(generation())
    scheduler.submit(generation())
    with pytest.raises(ApiError) as caught:
        scheduler.submit(generation())
    assert caught.value.status == 429


def test_drain_answers_the_accepted_requests_then_stops() -> None:
    scheduler = ready_scheduler()
    tickets = [scheduler.submit(generation(seed=s)) for s in range(3)]
    scheduler.drain()
    with pytest.raises(ApiError) as caught:
        scheduler.submit(generation())
    assert caught.value.status == 503
    group_loop(ONE, LocalSource(scheduler), rounds_of)  # returns once all are answered
    assert [t.status for t in tickets] == ["done"] * 3
    assert scheduler.take(0, timeout=0) == STOP


def test_a_cancel_stops_after_the_current_round() -> None:
    scheduler = ready_scheduler()
    ticket = scheduler.submit(generation(steps=50))
    queued = scheduler.submit(generation())

    def cancel_at_round_3(generation: Generation, on_state: Any) -> Generated:
        def hook(payload: dict[str, Any]) -> None:
            on_state(payload)
            if payload["rounds"] == 3:
                scheduler.cancel(ticket.id)

        return rounds_of(generation, hook)

    scheduler.cancel(queued.id)  # a queued request is answered at once
    assert queued.status == "cancelled" and queued.future.done()
    scheduler.drain()
    group_loop(ONE, LocalSource(scheduler), cancel_at_round_3)
    assert ticket.status == "cancelled"
    assert ticket.rounds == 4  # the round after the cancel was asked for: it ran, then stopped
    assert [e["rounds"] for e in ticket.events] == [1, 2, 3, 4]


def test_a_refused_setting_is_a_400_and_the_loop_goes_on() -> None:
    scheduler = ready_scheduler()
    bad, good = scheduler.submit(generation()), scheduler.submit(generation())

    def refuse_first(generation: Generation, on_state: Any) -> Generated:
        if generation.id == bad.id:
            raise ValueError("drafts must be <= steps")
        return rounds_of(generation, on_state)

    scheduler.drain()
    group_loop(ONE, LocalSource(scheduler), refuse_first)
    assert bad.status == "failed" and bad.error is not None and bad.error.status == 400
    assert good.status == "done"


def test_a_lost_peer_fails_the_request_500_and_ends_the_loop() -> None:
    scheduler = ready_scheduler()
    ticket = scheduler.submit(generation())
    waiting = scheduler.submit(generation())

    def peer_dies(generation: Generation, on_state: Any) -> Generated:
        raise CollectiveError("rank 0: all_gather failed: peer rank(s) [1] died")

    with pytest.raises(CollectiveError):
        group_loop(ONE, LocalSource(scheduler), peer_dies)
    assert ticket.error is not None and ticket.error.status == 500
    assert "died" in ticket.error.message
    scheduler.fail("rank 1 died")
    assert waiting.status == "failed" and waiting.error is not None
    assert waiting.error.status == 503 and scheduler.state == "failed"
    assert scheduler.take(0, timeout=0) == STOP


def test_tickets_answer_across_threads() -> None:
    scheduler = ready_scheduler()
    tickets = [scheduler.submit(generation(seed=s)) for s in range(8)]
    workers = [
        threading.Thread(target=group_loop, args=(ONE, LocalSource(scheduler, r), rounds_of))
        for r in range(2)
    ]
    scheduler.replicas = 2  # two loops take from one queue
    scheduler.replica_ready(1)
    for worker in workers:
        worker.start()
    for ticket in tickets:
        ticket.future.result(timeout=30)
    scheduler.drain()
    for worker in workers:
        worker.join(30)
    assert sorted(t.generation.seed for t in tickets if t.status == "done") == list(range(8))
    assert {t.replica for t in tickets} <= {0, 1}
