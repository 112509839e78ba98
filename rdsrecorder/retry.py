"""The one retry policy, and the one table that says what an AWS error means.

``decide(exc)`` reads the error code first and the HTTP status only when there is no code it
knows (the table, ``CODES``, and docs/errors.md say the same):

* ``THROTTLED``: attempted again, after the process's RDS rate went down (``rdsrecorder.budget``);
* ``TRANSIENT``: attempted again (5xx, timeouts, connection resets);
* ``REFRESH``: the credentials expired or were rotated: they are read again from their source
  and the call is attempted again (``rdsrecorder.credentials``);
* ``DENIED``: final; on the whole-file endpoint it means "use portions for this DB" (re-probed);
* ``FINAL``: final (the caller translates it once into ``rdsrecorder.errors``).

Every AWS call (``Aws.run``: SDK calls and the whole-file REST download alike) is attempted up to
``max_attempts`` times with exponential backoff and full jitter (tenacity's
``wait_random_exponential``), sleeping on the injectable clock. Nothing retries around it: a file
whose download broke after bytes were handed on is restarted by the copier with the same policy
(``file_attempts``), and only for that kind of error (``RestartableError``), never for a call that
already used its attempts."""

from __future__ import annotations

import asyncio
import enum
import re
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


class Decision(enum.Enum):
    THROTTLED = "throttled"
    TRANSIENT = "transient"
    REFRESH = "refresh"
    DENIED = "denied"
    FINAL = "final"


def _all(decision: Decision, *codes: str) -> dict[str, Decision]:
    return dict.fromkeys(codes, decision)


# The table. A code not in it is decided by its HTTP status (``decide``).
CODES: dict[str, Decision] = {
    **_all(
        Decision.THROTTLED,
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "RequestThrottled",
        "RequestThrottledException",
        "ProvisionedThroughputExceededException",
    ),
    **_all(
        Decision.TRANSIENT,
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
    ),
    # Long-lived processes see these when temporary credentials expire or keys are rotated:
    # the source (env, files, instance or pod role, an assumed role) has newer ones.
    **_all(
        Decision.REFRESH,
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "RequestExpired",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidToken",
        "UnrecognizedClientException",
        "AuthFailure",
    ),
    **_all(Decision.DENIED, "AccessDenied", "AccessDeniedException", "UnauthorizedOperation"),
    # Final, named here for the docs; any code not in the table with a 4xx status is final too.
    **_all(
        Decision.FINAL,
        "DBLogFileNotFoundFault",
        "DBLogFileNotFound",
        "DBInstanceNotFound",
        "DBInstanceNotFoundFault",
        "DBClusterNotFoundFault",
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "NoSuchBucket",
        "NoSuchKey",
        "PreconditionFailed",
        "RequestTimeTooSkewed",
    ),
}
THROTTLING_CODES = frozenset(c for c, d in CODES.items() if d is Decision.THROTTLED)
REFRESH_CODES = frozenset(c for c, d in CODES.items() if d is Decision.REFRESH)
DENIED_CODES = frozenset(c for c, d in CODES.items() if d is Decision.DENIED)
THROTTLED_HTTP_STATUSES = frozenset({429})
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)
_CODE_XML = re.compile(r"<Code>\s*([A-Za-z0-9_.:-]{1,100})\s*</Code>")


class HttpAnswerError(Exception):
    """A non-2xx answer of a raw HTTP request (the whole-file endpoint, which no SDK wraps):
    its status and the AWS error code of its body ("" when the body has none)."""

    def __init__(self, status: int, code: str, operation: str) -> None:
        super().__init__(f"HTTP {status}" + (f" {code}" if code else ""))
        self.status = status
        self.code = code
        self.operation = operation


def answer_code(body: str) -> str:
    """The AWS error code of an XML error body ("" when there is none)."""
    found = _CODE_XML.search(body)
    return found.group(1) if found else ""


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "ClientError")
    if isinstance(exc, HttpAnswerError):
        return exc.code or str(exc.status)
    return type(exc).__name__


def _status(exc: BaseException) -> int:
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if isinstance(exc, HttpAnswerError):
        return exc.status
    return 0


def decide(exc: BaseException) -> Decision:
    """What an error of an AWS call means (see the module doc)."""
    if isinstance(exc, ClientError | HttpAnswerError):
        known = CODES.get(error_code(exc))
        if known is not None:
            return known
        status = _status(exc)
        if status in THROTTLED_HTTP_STATUSES:
            return Decision.THROTTLED
        if status >= 500:
            return Decision.TRANSIENT
        return Decision.FINAL
    if isinstance(exc, NETWORK_ERRORS):
        return Decision.TRANSIENT
    return Decision.FINAL


def decide_code(code: str) -> Decision:
    """What an error code alone means (an ``AwsError``'s, once translated)."""
    return CODES.get(code, Decision.FINAL)


def is_throttling(exc: BaseException) -> bool:
    return decide(exc) is Decision.THROTTLED


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt of the same call, as it is."""
    return decide(exc) in (Decision.THROTTLED, Decision.TRANSIENT)


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
