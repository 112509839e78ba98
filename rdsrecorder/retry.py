"""The one retry policy, and the one place that says which errors are transient.

Every AWS call (``Aws.run``: SDK calls and the whole-file REST download alike) is attempted up to
``max_attempts`` times with exponential backoff and full jitter (tenacity's
``wait_random_exponential``), sleeping on the injectable clock. Nothing retries around it: a file
whose download broke after bytes were handed on is restarted by the copier with the same policy
(``file_attempts``), and only for that kind of error (``RestartableError``), never for a call that
already used its attempts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

BACKOFF_MULTIPLIER_S = 0.5
BACKOFF_MAX_S = 20.0

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "RequestThrottled",
        "RequestThrottledException",
        "ProvisionedThroughputExceededException",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "InternalServerError",
    }
)
TRANSIENT_HTTP_STATUSES = frozenset({429, 500, 502, 503, 504})
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)


class TransientHttpError(Exception):
    """A raw HTTP answer (the REST endpoint, which no SDK wraps) that is worth another attempt."""

    def __init__(self, status: int, throttled: bool, operation: str) -> None:
        super().__init__(f"HTTP {status}" + (" (throttled)" if throttled else ""))
        self.status = status
        self.throttled = throttled
        self.operation = operation


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "ClientError")
    if isinstance(exc, TransientHttpError):
        return "Throttling" if exc.throttled else str(exc.status)
    return type(exc).__name__


def _status(exc: BaseException) -> int:
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


def is_throttling(exc: BaseException) -> bool:
    if isinstance(exc, TransientHttpError):
        return exc.throttled
    return isinstance(exc, ClientError) and error_code(exc) in THROTTLING_CODES


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt of the same call."""
    if isinstance(exc, TransientHttpError):
        return True
    if isinstance(exc, ClientError):
        code = error_code(exc)
        return code in THROTTLING_CODES or code in TRANSIENT_CODES or _status(exc) >= 500
    return isinstance(exc, NETWORK_ERRORS)


def retrying(
    *,
    max_attempts: int,
    sleep: Callable[[float], Awaitable[None]],
    retry_on: Callable[[BaseException], bool] = is_transient,
    before_sleep: Callable[[RetryCallState], None] | None = None,
    multiplier_s: float = BACKOFF_MULTIPLIER_S,
    max_wait_s: float = BACKOFF_MAX_S,
) -> AsyncRetrying:
    """The policy: ``async for attempt in retrying(...): with attempt: ...``."""
    kwargs: dict[str, Any] = {}
    if before_sleep is not None:
        kwargs["before_sleep"] = before_sleep
    return AsyncRetrying(
        stop=stop_after_attempt(max(1, max_attempts)),
        wait=wait_random_exponential(multiplier=multiplier_s, max=max_wait_s),
        retry=retry_if_exception(retry_on),
        sleep=sleep,
        reraise=True,
        **kwargs,
    )
