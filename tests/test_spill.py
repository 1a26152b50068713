"""SpillMap: one run's keys and output-name claims, kept on disk past a small buffer."""

from __future__ import annotations

import threading

from rpq.spill import BUFFER, SpillMap


def test_a_key_is_new_once_even_after_it_left_memory() -> None:
    seen = SpillMap()
    keys = [f"k{i}" for i in range(BUFFER * 3 + 7)]
    assert all(seen.add(k) for k in keys)
    assert not any(seen.add(k) for k in keys)
    assert all(k in seen for k in keys)
    assert "other" not in seen


def test_the_first_claim_of_a_name_wins_in_memory_and_on_disk() -> None:
    claims = SpillMap()
    for i in range(BUFFER * 2):
        assert claims.setdefault(f"out/{i}.png", f"a/{i}.jpg") == f"a/{i}.jpg"
    # Early names went to disk, the last ones are still buffered: both keep their owner.
    assert claims.setdefault("out/0.png", "b/0.jpg") == "a/0.jpg"
    assert claims.setdefault(f"out/{BUFFER * 2 - 1}.png", "b.jpg") == f"a/{BUFFER * 2 - 1}.jpg"
    assert claims.get("out/1.png") == "a/1.jpg"
    assert claims.get("never.png") is None


def test_threads_racing_for_one_key_see_it_new_exactly_once() -> None:
    seen = SpillMap()
    for i in range(BUFFER):  # fill the buffer so the race spans a flush
        seen.add(f"fill{i}")
    wins: list[bool] = []
    lock = threading.Lock()

    def race(key: str) -> None:
        won = seen.add(key)
        with lock:
            wins.append(won)

    threads = [threading.Thread(target=race, args=(f"k{i % 50}",)) for i in range(400)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert wins.count(True) == 50
