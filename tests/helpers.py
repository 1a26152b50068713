"""Test helpers: wait on a condition with a timeout instead of sleeping."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "",
) -> T:
    """Poll until predicate() is truthy and return its value; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", "condition")
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        time.sleep(interval)
        last = predicate()
    return last


class Gate:
    """A handler that blocks each job until the test opens its gate (input["gate"])."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._timeout = timeout
        self.started: list[str] = []
        self._all_open = False

    def event(self, name: str) -> threading.Event:
        with self._lock:
            event = self._events.setdefault(name, threading.Event())
            if self._all_open:
                event.set()
            return event

    def __call__(self, job: dict[str, Any]) -> Any:
        name = str(job["input"].get("gate", "default"))
        with self._lock:
            self.started.append(name)
        if not self.event(name).wait(self._timeout):
            raise TimeoutError(f"gate {name} was never opened")
        return {"gate": name}

    def open(self, name: str = "default") -> None:
        self.event(name).set()

    def open_all(self) -> None:
        """Open every gate, including those of jobs that have not started yet."""
        with self._lock:
            self._all_open = True
            events = list(self._events.values())
        for event in events:
            event.set()
