"""Errors rpq reports to users.

    RpqError                  every error rpq reports; message says what to do next
    ├── UsageError            bad option, template, workflow or config file      (exit 2)
    ├── EndpointError         endpoint unreachable, unknown, or key refused      (exit 3)
    │   ├── AuthError         401 from the endpoint
    │   ├── EndpointNotFound  404 on the endpoint itself
    │   ├── NotRunPodAPI      (rpq.api) an answer that is not RunPod's JSON: wrong base URL
    │   └── BucketError       (rpq.storage) s3:// bucket missing, key refused, unreachable
    ├── APIError              an unexpected HTTP answer for one request          (exit 1)
    └── InputError            one input image cannot be sent; the batch goes on  (exit 1)

Only the CLI entry point catches these and turns them into `error: ...` and an exit code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    FAILED = 1
    USAGE = 2
    ENDPOINT = 3
    INTERRUPTED = 130


class RpqError(Exception):
    """Base of every error rpq reports; `str()` is the whole user-facing message."""

    exit_code: ExitCode = ExitCode.FAILED


class UsageError(RpqError):
    exit_code = ExitCode.USAGE


class EndpointError(RpqError):
    exit_code = ExitCode.ENDPOINT


class AuthError(EndpointError):
    pass


class EndpointNotFound(EndpointError):
    pass


class APIError(RpqError):
    """An HTTP answer rpq did not expect; carries the status and the parsed body."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        body: object = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after = retry_after


class InputError(RpqError):
    """One input cannot be sent; names the file and what to do."""
