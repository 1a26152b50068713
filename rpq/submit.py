"""Submitting jobs, and the one retry policy every API call shares (tenacity)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity

from rpq.api import RunPodClient, is_transient
from rpq.errors import APIError
from rpq.limiter import Limiters, Sleep

if TYPE_CHECKING:
    from rpq.template import RequestBody

log = logging.getLogger("rpq")

T = TypeVar("T")

#: Longest pause rpq accepts from a Retry-After header before trying again.
MAX_RETRY_AFTER = 60.0


class _WaitRetryAfterOrBackoff(tenacity.wait.wait_base):
    """Honour Retry-After when the server sent one; otherwise exponential backoff with jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._backoff = tenacity.wait_exponential(
            multiplier=initial, max=maximum
        ) + tenacity.wait_random(0, initial)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, APIError) and exc.retry_after is not None:
            return min(exc.retry_after, MAX_RETRY_AFTER)
        return float(self._backoff(retry_state))


def retrying(
    attempts: int,
    *,
    sleep: Sleep = time.sleep,
    initial: float = 0.5,
    maximum: float = 30.0,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> tenacity.Retrying:
    """Retry transient failures (connection errors, 408, 429, 5xx), never other 4xx."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.info("retrying in %.1fs after: %s", delay, exc)
        if on_retry is not None and exc is not None:
            on_retry(exc, delay)

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, attempts)),
        wait=_WaitRetryAfterOrBackoff(initial, maximum),
        retry=tenacity.retry_if_exception(is_transient),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


class Caller:
    """Makes paced, retried API calls: the limiter first, then the call, retried if transient."""

    def __init__(
        self,
        client: RunPodClient,
        limiters: Limiters,
        *,
        max_retries: int = 3,
        sleep: Sleep = time.sleep,
        on_retry: Callable[[str, BaseException, float], None] | None = None,
    ) -> None:
        self.client = client
        self.limiters = limiters
        self.max_retries = max_retries
        self._sleep = sleep
        self._on_retry = on_retry

    def call(self, op: str, fn: Callable[[], T], *, attempts: int | None = None) -> T:
        def notify(exc: BaseException, delay: float) -> None:
            if isinstance(exc, APIError) and exc.status == 429:
                self.limiters.pause(op, delay)
            if self._on_retry is not None:
                self._on_retry(op, exc, delay)

        retryer = retrying(
            attempts if attempts is not None else self.max_retries + 1,
            sleep=self._sleep,
            on_retry=notify,
        )

        def paced() -> T:
            self.limiters.acquire(op)
            return fn()

        return retryer(paced)

    def submit(self, body: bytes | RequestBody) -> dict[str, Any]:
        """POST /run with retries; returns {"id", "status"}."""
        return self.call("run", lambda: self.client.run(body))

    def status(self, job_id: str, *, wait_ms: int | None = None,
               attempts: int | None = None) -> dict[str, Any]:
        """GET /status (or, with `wait_ms`, a long poll held that long) with retries."""
        op = "status" if wait_ms is None else "status-sync"
        return self.call(op, lambda: self.client.status(job_id, wait_ms), attempts=attempts)

    def health(self, *, attempts: int | None = None) -> dict[str, Any]:
        """GET /health with retries."""
        return self.call("health", self.client.health, attempts=attempts)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """POST /cancel with retries; returns the server's answer."""
        return self.call("cancel", lambda: self.client.cancel(job_id))
