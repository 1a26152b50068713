"""The vocabularies every stage shares: job statuses, how a wait ends, error kinds, columns."""

from __future__ import annotations

from enum import Enum
from typing import Final


class Status:
    """A job's status as RunPod reports it (the wire vocabulary)."""

    IN_QUEUE: Final = "IN_QUEUE"
    IN_PROGRESS: Final = "IN_PROGRESS"
    RUNNING: Final = "RUNNING"  # older workers and some proxies say RUNNING for IN_PROGRESS
    COMPLETED: Final = "COMPLETED"
    FAILED: Final = "FAILED"
    CANCELLED: Final = "CANCELLED"
    TIMED_OUT: Final = "TIMED_OUT"


#: A job in one of these will not change again.
TERMINAL: Final = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT})
#: A worker has picked the job up.
STARTED: Final = frozenset({Status.IN_PROGRESS, Status.RUNNING})
KNOWN: Final = TERMINAL | STARTED | {Status.IN_QUEUE}
#: What /cancel answers for a job that ended (with a result to collect) before it was cancelled.
ENDED: Final = TERMINAL - {Status.CANCELLED}
#: The statuses a job record can end with, in the order reports list them.
RECORD_STATUSES: Final = (Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT)


class Outcome(str, Enum):
    """How waiting for a job ended (equal to its plain name: Outcome.TERMINAL == "terminal")."""

    TERMINAL = "terminal"  # the endpoint reported a terminal status
    STALLED = "stalled"  # stuck in the queue (see StallDetector)
    MAX_WAIT = "max_wait"  # no result within --max-wait
    EXPIRED = "expired"  # the endpoint no longer knows the job (404)
    ERROR = "error"  # a poll failed in a way asking again cannot fix
    INTERRUPTED = "interrupted"  # rpq stopped waiting: Ctrl-C twice, or the job is moving

    def __str__(self) -> str:
        return self.value


#: Outcomes that leave the job on the endpoint: rpq cancels it before recording it.
ABANDONED: Final = frozenset({Outcome.STALLED, Outcome.MAX_WAIT, Outcome.INTERRUPTED})


class Kind:
    """Why a job did not complete: a record's `error_kind`."""

    WORKER_ERROR: Final = "worker_error"
    TIMED_OUT: Final = "timed_out"
    STALLED: Final = "stalled"
    EXPIRED: Final = "expired"
    HTTP_ERROR: Final = "http_error"
    BAD_INPUT: Final = "bad_input"
    CANCELLED: Final = "cancelled"
    NO_OUTPUT: Final = "no_output"


ERROR_KINDS: Final = (Kind.WORKER_ERROR, Kind.TIMED_OUT, Kind.STALLED, Kind.EXPIRED,
                      Kind.HTTP_ERROR, Kind.BAD_INPUT, Kind.CANCELLED, Kind.NO_OUTPUT)


class Column:
    """The progress table's columns: where the tracker counts a job."""

    PENDING: Final = "pending"
    QUEUED: Final = "queued"
    RUNNING: Final = "running"
    DONE: Final = "done"
    FAILED: Final = "failed"
    CANCELLED: Final = "cancelled"
    RETRIED: Final = "retried"
    SKIPPED: Final = "skipped"


COLUMNS: Final = (Column.PENDING, Column.QUEUED, Column.RUNNING, Column.DONE, Column.FAILED,
                  Column.CANCELLED, Column.RETRIED, Column.SKIPPED)


class Stage:
    """Where the journal last saw an image (an Entry's `state`)."""

    NEW: Final = "new"
    INTENT: Final = "intent"  # /run about to be sent; no answer seen
    SUBMITTED: Final = "submitted"  # the endpoint accepted it: it has a job id
    CANCELLED: Final = "cancelled"  # gone from the endpoint: a rerun sends it again
    DONE: Final = "done"
    FAILED: Final = "failed"


def column_of(status: str) -> str:
    """The column a finished job's record counts in."""
    if status == Status.COMPLETED:
        return Column.DONE
    return Column.CANCELLED if status == Status.CANCELLED else Column.FAILED
