"""One discovery pass: the walk runs once, ahead of the work, and its count grows to the total."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batchkit import batch_args, endpoint_env, rpq
from imaging import make_images

from rpq.discovery import Discovered
from rpq.errors import UsageError


def test_every_item_once_in_order_and_the_exact_total() -> None:
    counts: list[tuple[int, bool]] = []
    found = Discovered(range(10_000), lambda n, done: counts.append((n, done)))
    assert list(found) == list(range(10_000))
    assert counts[-1] == (10_000, True)
    assert [n for n, _ in counts] == sorted(n for n, _ in counts)


def test_work_starts_before_the_walk_ends() -> None:
    release = threading.Event()

    def slow_walk() -> Iterator[int]:
        yield from range(300)
        assert release.wait(10)
        yield from range(300, 310)

    found = Discovered(slow_walk(), lambda n, done: None)
    items = iter(found)
    first = [next(items) for _ in range(256)]  # handed over while the walk is blocked
    assert first == list(range(256))
    release.set()
    assert list(items) == list(range(256, 310))


def test_an_error_of_the_walk_is_raised_after_what_came_before() -> None:
    def broken() -> Iterator[int]:
        yield from range(5)
        raise UsageError("cannot list /x (permission denied).")

    got: list[int] = []
    with pytest.raises(UsageError, match="cannot list"):
        for item in Discovered(broken(), lambda n, done: None):
            got.append(item)
    assert got == list(range(5))


def test_stopping_early_stops_the_walk() -> None:
    walked = itertools.count()
    found = Discovered((next(walked) for _ in itertools.count()), lambda n, done: None)
    for item in found:
        if item == 10:
            break
    found.close()
    assert not found._thread.is_alive()  # nothing pulls the walk any further


def test_a_batch_walks_its_folder_once(tmp_path: Path, make_endpoint: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import rpq.inputs as inputs

    walks: list[int] = []
    real = inputs.discover

    def counting(*args: Any, **kwargs: Any) -> Iterator[Any]:
        walks.append(0)
        for item in real(*args, **kwargs):
            walks[-1] += 1
            yield item

    monkeypatch.setattr(inputs, "discover", counting)
    ep = make_endpoint(handler="echo", workers_max=2)
    src = tmp_path / "in"
    make_images(src, 7)
    run = rpq(*batch_args(src, tmp_path / "out"), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    # One pass: no counting walk before the real one, only a look that stops at the first
    # image (an input with none is refused before the endpoint is asked anything).
    assert walks == [1, 7]
    assert "7 of 7 images done" in run.stderr
