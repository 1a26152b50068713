"""The jobs-out target: pinned, or following /health, the batch's queue times and 429s."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers import wait_for

from rpq.concurrency import (
    AUTO_START,
    HEALTH_STALE,
    HOLD_AFTER_429,
    QUEUE_MAX,
    QUEUE_MIN,
    SETTLE,
    Concurrency,
    Gate,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health(*, idle: int = 0, ready: int = 0, running: int = 0, initializing: int = 0,
           in_queue: int = 0, in_progress: int = 0) -> dict[str, Any]:
    return {"workers": {"idle": idle, "ready": ready, "running": running,
                        "initializing": initializing, "throttled": 0, "unhealthy": 0},
            "jobs": {"inQueue": in_queue, "inProgress": in_progress, "completed": 0,
                     "failed": 0, "retried": 0}}


def test_pinned_never_moves() -> None:
    c = Concurrency(8, clock=Clock())
    assert not c.auto
    assert c.health(health(ready=48)) == 8
    assert c.started(0.0, 8) == 8
    assert c.throttled() == 8
    assert c.target == 8
    with pytest.raises(ValueError):
        Concurrency(0)


def test_warm_workers_get_a_job_each_plus_a_queue() -> None:
    c = Concurrency(clock=Clock())
    assert c.auto and c.target == AUTO_START
    assert c.health(health(ready=48)) == 48 + QUEUE_MAX
    assert c.health(health(idle=6)) == 6 + QUEUE_MIN  # 3 would be under the floor


class Endpoint:
    """A fixed number of workers fed by the batch alone: queue = jobs out - workers."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def health(self, out: int) -> dict[str, Any]:
        running = min(out, self.workers)
        return health(running=running, idle=self.workers - running,
                      in_queue=max(0, out - self.workers), in_progress=running)


def test_two_workers_never_see_more_than_eight_of_the_batch_queued() -> None:
    clock = Clock()
    c = Concurrency(clock=clock)
    ep = Endpoint(2)
    queued = []
    for _ in range(50):
        out = c.target  # the batch keeps exactly the target out
        queued.append(max(0, out - ep.workers))
        c.health(ep.health(out))
        c.started(3.0, out)  # queued jobs wait a while: no effect while /health is fresh
        clock.now += 1.0
    assert max(queued) <= 8
    assert c.target == 2 + QUEUE_MIN


def test_scaling_from_zero_is_given_a_queue_and_followed_up() -> None:
    clock = Clock()
    c = Concurrency(clock=clock)
    # The endpoint starts one worker per queued job (request-count scaling), up to 16.
    assert c.health(health()) == QUEUE_MAX  # never starved at zero workers
    workers = 0
    targets = []
    for _ in range(6):
        out = c.target
        workers = min(16, max(workers, out))
        c.health(health(initializing=workers, in_queue=out))
        targets.append(c.target)
        clock.now += 1.0
    assert targets == sorted(targets)
    assert workers == 16
    assert c.target == 16 + QUEUE_MAX


def test_the_batch_queueing_up_shrinks_the_target() -> None:
    clock = Clock()
    c = Concurrency(clock=clock)
    assert c.health(health(ready=40)) == 48
    # The endpoint lost 36 workers: 4 left, 44 of the batch's jobs queued.
    # Down at once: only new submissions wait; nothing out is touched.
    assert c.health(health(running=4, in_queue=44)) == 4 + QUEUE_MIN
    assert c.health(health(running=4, in_queue=4)) == 4 + QUEUE_MIN
    # Other clients' jobs fill the queue: back off further, at most by half, to the floor.
    assert c.health(health(ready=40)) == 48
    assert [c.health(health(running=40, in_queue=100)) for _ in range(5)] == [
        24, 12, 6, QUEUE_MIN, QUEUE_MIN]
    # They drain: back up to the workers plus the queue.
    assert c.health(health(running=40, in_queue=8)) == 48


def test_without_health_fast_starts_grow_and_slow_starts_shrink() -> None:
    clock = Clock()
    c = Concurrency(clock=clock)
    for _ in range(AUTO_START):
        c.started(0.1, c.target)
    assert c.target == 2 * AUTO_START  # one more per job that started at once
    c.started(0.1, 3)  # the target was not in use (few images left): no growth
    assert c.target == 2 * AUTO_START
    assert c.started(6.0, 16) == 12
    assert c.started(6.0, 16) == 12  # one shrink shows before the next
    clock.now += SETTLE
    assert c.started(6.0, 12) == 9
    clock.now += SETTLE
    for _ in range(10):
        c.started(30.0, 9)
        clock.now += SETTLE
    assert c.target == QUEUE_MIN


def test_fresh_health_outranks_the_delays_and_stale_health_gives_way() -> None:
    clock = Clock()
    c = Concurrency(clock=clock)
    c.health(health(ready=2))
    assert c.target == 2 + QUEUE_MIN
    assert c.started(0.0, c.target) == 2 + QUEUE_MIN
    clock.now += HEALTH_STALE + 1
    assert c.started(0.0, c.target) == 2 + QUEUE_MIN + 1


def test_a_429_halves_the_target_and_holds_it() -> None:
    clock = Clock()
    c = Concurrency(clock=clock)
    c.health(health(ready=60))
    assert c.target == 68
    assert c.throttled() == 34
    assert c.throttled() == 34  # one halving per hold
    assert c.health(health(ready=60)) == 34  # no growth while held
    clock.now += HOLD_AFTER_429
    assert c.health(health(ready=60)) == 68
    for _ in range(10):
        c.throttled()
        clock.now += HOLD_AFTER_429
    assert c.target == QUEUE_MIN


def test_the_ceiling_bounds_every_path() -> None:
    clock = Clock()
    c = Concurrency(ceiling=20, clock=clock)
    assert c.health(health(ready=500)) == 20
    clock.now += HEALTH_STALE + 1
    for _ in range(50):
        c.started(0.0, c.target)
    assert c.target == 20


class Entrant:
    """Gate.enter() on a thread of its own, so a test can watch it wait."""

    def __init__(self, gate: Gate, give_up: threading.Event | None = None) -> None:
        self.result: bool | None = None
        check = give_up.is_set if give_up is not None else None
        self.thread = threading.Thread(target=lambda: setattr(self, "result", gate.enter(check)),
                                       daemon=True)
        self.thread.start()

    def done(self) -> bool:
        self.thread.join(10)
        return self.result is not None


def test_the_gate_follows_the_target_up_and_down() -> None:
    c = Concurrency(clock=Clock())
    c.health(health(ready=2))  # target 2 + QUEUE_MIN
    gate = Gate(c)
    for _ in range(c.target):
        assert gate.enter()
    waiting = Entrant(gate)
    wait_for(lambda: gate.waiting == 1)  # full: it waits
    c.health(health(ready=3))  # one more worker: room for one more job
    gate.poke()
    assert waiting.done() and waiting.result is True
    assert gate.out == 3 + QUEUE_MIN
    c.health(health(ready=1))  # fewer workers: no new job until enough have ended
    blocked = Entrant(gate)
    wait_for(lambda: gate.waiting == 1)
    for _ in range(2):
        gate.leave()
    assert blocked.result is None and gate.out == 1 + QUEUE_MIN
    gate.leave()
    assert blocked.done() and gate.out == 1 + QUEUE_MIN


def test_a_gate_wait_can_give_up() -> None:
    gate = Gate(Concurrency(1))
    assert gate.enter()
    stop = threading.Event()
    waiting = Entrant(gate, stop)
    wait_for(lambda: gate.waiting == 1)
    stop.set()
    gate.poke()
    assert waiting.done() and waiting.result is False
    assert gate.out == 1
