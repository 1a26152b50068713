"""The memory budget: bytes counted, waits in order, never a deadlock on one large item."""

from __future__ import annotations

import platform
import random
import sys
import threading
from collections.abc import Callable

import pytest
from helpers import wait_for

import rpq.budget
from rpq.budget import Budget, map_large_blocks, text_bytes


class Acquirer:
    """acquire() on a thread of its own, so a test can watch it wait."""

    def __init__(self, budget: Budget, n: int, give_up: Callable[[], bool] | None = None) -> None:
        self.result: bool | None = None
        self.thread = threading.Thread(target=self._run, args=(budget, n, give_up), daemon=True)
        self.thread.start()

    def _run(self, budget: Budget, n: int, give_up: Callable[[], bool] | None) -> None:
        self.result = budget.acquire(n, give_up)

    def done(self) -> bool:
        self.thread.join(10)
        return self.result is not None


def test_acquires_up_to_the_limit_then_waits_for_a_release() -> None:
    budget = Budget(100)
    assert budget.acquire(60) and budget.acquire(40)
    assert budget.in_use == 100
    waiter = Acquirer(budget, 10)
    wait_for(lambda: budget.waiting == 1)
    assert waiter.result is None and budget.in_use == 100
    budget.release(40)
    assert waiter.done() and waiter.result is True
    assert budget.in_use == 70
    assert budget.peak == 100 and budget.waited == 1


def test_an_item_larger_than_the_budget_goes_alone() -> None:
    budget = Budget(100)
    assert budget.acquire(30)
    huge = Acquirer(budget, 500)
    wait_for(lambda: budget.waiting == 1)
    budget.release(30)
    assert huge.done() and huge.result is True
    assert budget.in_use == 500
    small = Acquirer(budget, 1)
    wait_for(lambda: budget.waiting == 1)
    budget.release(500)
    assert small.done() and budget.in_use == 1


def test_waiters_are_served_in_arrival_order() -> None:
    budget = Budget(100)
    assert budget.acquire(90)
    big = Acquirer(budget, 80)
    wait_for(lambda: budget.waiting == 1)
    small = Acquirer(budget, 5)  # would fit now, but the big one came first
    wait_for(lambda: budget.waiting == 2)
    assert small.result is None
    budget.release(90)
    assert big.done() and small.done()
    assert budget.in_use == 85


def test_one_release_lets_every_waiter_that_now_fits_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only a wake-up moves a waiter here: each one that gets its bytes wakes the next in line.
    monkeypatch.setattr(rpq.budget, "_RECHECK", 3600.0)
    budget = Budget(30)
    assert budget.acquire(30)
    waiters = []
    for expected in range(1, 4):
        waiters.append(Acquirer(budget, 10))
        wait_for(lambda expected=expected: budget.waiting == expected)  # type: ignore[misc]
    budget.release(30)
    assert all(w.done() and w.result is True for w in waiters)
    assert budget.in_use == 30 and budget.waiting == 0


def test_a_waiter_can_give_up_and_counts_nothing() -> None:
    budget = Budget(10)
    assert budget.acquire(10)
    stop = threading.Event()
    waiter = Acquirer(budget, 5, stop.is_set)
    wait_for(lambda: budget.waiting == 1)
    stop.set()
    budget.wake()
    assert waiter.done() and waiter.result is False
    assert budget.in_use == 10 and budget.waiting == 0
    # The queue is free again: the next acquire is not stuck behind the one that gave up.
    budget.release(10)
    assert budget.acquire(10)


def test_admit_counts_bytes_already_held_without_waiting() -> None:
    budget = Budget(10)
    assert budget.acquire(8)
    budget.admit(50)
    assert budget.in_use == 58 and budget.peak == 58
    waiter = Acquirer(budget, 1)
    wait_for(lambda: budget.waiting == 1)
    budget.release(50)
    assert waiter.done() and budget.in_use == 9


def test_a_hold_resizes_and_releases_once() -> None:
    budget = Budget(100)
    hold = budget.hold(70)
    assert hold is not None
    with hold:
        hold.resize(20)  # the step now keeps only its request body
        assert budget.in_use == 20
        hold.resize(30)  # estimated low: counted anyway
        assert budget.in_use == 30
    assert budget.in_use == 0
    hold.release()
    assert budget.in_use == 0


def test_a_hold_is_released_when_its_step_fails() -> None:
    budget = Budget(100)
    with pytest.raises(RuntimeError), budget.hold(60):
        raise RuntimeError("decode failed")
    assert budget.in_use == 0


def test_the_limit_holds_under_many_threads() -> None:
    budget = Budget(1000)
    lock = threading.Lock()
    held = [0]
    worst = [0]

    def job(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(200):
            n = rng.choice([1, 50, 300, 999, 1500])
            assert budget.acquire(n)
            with lock:
                held[0] += n
                # Over the limit only for one item alone that is larger than the budget.
                worst[0] = max(worst[0], held[0] if n <= budget.limit else held[0] - n)
            with lock:
                held[0] -= n
            budget.release(n)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert worst[0] <= budget.limit
    assert budget.in_use == 0 and budget.waiting == 0


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Budget(0)


def test_text_bytes_counts_the_strings_of_a_json_value() -> None:
    image = "A" * 1000
    value = {"output": {"images": [image, {"data": image}]}, "id": "x"}
    assert text_bytes(value) == 2000 + len("output" "images" "data" "id" "x")
    assert text_bytes(None) == 0
    deep: object = image
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = [deep]
    assert text_bytes(deep) == 1000


def test_a_thread_charge_replaces_the_last_and_is_released_by_that_thread() -> None:
    budget = Budget(100)
    assert budget.charge_here(30)
    assert budget.charge_here(50)  # the earlier 30 are released first
    assert budget.in_use == 50 and budget.held_here() == 50
    other: list[int] = []
    t = threading.Thread(target=lambda: other.append(budget.held_here()))
    t.start()
    t.join(10)
    assert other == [0]  # charges belong to the thread that made them
    budget.release_here()
    budget.release_here()
    assert budget.in_use == 0 and budget.held_here() == 0


def test_a_thread_never_waits_while_holding_its_own_charge() -> None:
    budget = Budget(100)
    assert budget.charge_here(80)
    # 90 would not fit next to the 80 this thread holds, but those are given back first.
    assert budget.charge_here(90)
    assert budget.in_use == 90


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc only")
def test_large_blocks_are_mapped_on_their_own_under_glibc() -> None:
    assert map_large_blocks()
