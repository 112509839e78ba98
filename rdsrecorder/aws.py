"""AWS clients for one run: one aiobotocore session, the rds / s3 / sts clients, retries, the
shared RDS rate limiter and error translation.

Every request goes through ``Aws.run`` (SDK calls through ``Aws.call``): rate-limited (RDS only:
the account's RDS API budget is shared with other tools), retried by the one policy of
``rdsrecorder.retry`` (botocore's own retries are off so that each retry is seen and counted), and
translated once into ``rdsrecorder.errors``. Endpoint overrides (``AWS_ENDPOINT_URL_RDS`` ...) are
honoured by botocore itself.

The RDS rate limiter (``rdsrecorder.budget``) is a token bucket like the account's own, whose
rate halves on a ``Throttling`` answer and climbs back slowly, so every task of the process
yields to the other tools of the account, not only the call that was refused (which also backs
off, by the retry policy). The number of throttled calls is logged when the clients close.

Clients come from aioboto3 sessions (one per set of credentials: the process's own, and an
assumed role's when ``--assume-role`` / ``--s3-assume-role`` ask for one), whose credentials are
loaded again when AWS says they expired (``rdsrecorder.credentials``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, TypeVar

import aioboto3
from aiobotocore.config import AioConfig
from aiobotocore.credentials import AioRefreshableCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.parsers import ResponseParserError
from tenacity import RetryCallState

from rdsrecorder.budget import AdaptiveRateLimiter
from rdsrecorder.clock import AwsClock, Clock
from rdsrecorder.config import AwsSettings, RoleSettings
from rdsrecorder.credentials import (
    RefreshingCredentials,
    credentials_of,
    default_chain,
    refreshing_session,
)
from rdsrecorder.errors import (
    AwsError,
    CredentialsError,
    LogFileGoneError,
    StoppedError,
    ThrottledError,
    one_line,
)
from rdsrecorder.hooks import Hooks
from rdsrecorder.retry import (
    DENIED_CODES,
    NETWORK_ERRORS,
    REFRESH_CODES,
    THROTTLING_CODES,
    Decision,
    HttpAnswerError,
    decide,
    error_code,
    is_throttling,
    retrying,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_REFRESHES = 2  # per call: credentials loaded anew that fail again are not worth a third
ROLE_DURATION_S = 3600  # AssumeRole's default; botocore renews 15 minutes before the end
GONE_CODES = frozenset({"DBLogFileNotFoundFault", "DBLogFileNotFound"})


MAX_AWS_MESSAGE_CHARS = 200


def _aws_text(text: str) -> str:
    """An AWS error message as it may be shown: never a response body. botocore puts the raw body
    of an answer it cannot parse into the message (a 63 KB XML answer carries log lines), so a
    message that looks like markup or bytes is replaced by its size."""
    text = str(text)
    stripped = text.lstrip()
    if stripped.startswith(("<", "b'<", 'b"<', "{")) or len(text) > 4 * MAX_AWS_MESSAGE_CHARS:
        return f"(an unreadable answer of {len(text)} characters)"
    return one_line(text, MAX_AWS_MESSAGE_CHARS)


def _message(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        message = _aws_text(err.get("Message", "")) if err.get("Message") else ""
        return f"{err.get('Code', 'Error')}: {message}".strip().rstrip(":")
    if isinstance(exc, ResponseParserError):
        return "ResponseParserError: the answer could not be parsed"
    return f"{type(exc).__name__}: {_aws_text(str(exc))}"


def _date_of(answer: dict[str, Any]) -> str | None:
    """The ``Date`` header of an SDK answer (or of a ``ClientError``'s)."""
    headers = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    date = headers.get("date")
    return date if isinstance(date, str) else None


def translate(exc: BaseException, service: str, operation: str) -> AwsError:
    code = error_code(exc)
    text = one_line(f"{service} {operation} failed: {_message(exc)}")
    if code in GONE_CODES:
        return LogFileGoneError(text, code=code, operation=operation)
    if code in THROTTLING_CODES:
        return ThrottledError(
            f"{text} (still throttled after retries)", code=code, operation=operation
        )
    return AwsError(text, code=code, operation=operation)


class _Attempts:
    """What the attempts of one call share: when the last one went out (for the rate limiter),
    and the credential refreshes it asked for."""

    def __init__(self, aws: Aws, service: str) -> None:
        self._aws = aws
        self._service = service
        self.sent_at: float | None = None
        self._refreshes = 0
        self._refreshed = False

    def retry_on(self, exc: BaseException) -> bool:
        decision = decide(exc)
        if decision is Decision.REFRESH:
            return self._refreshed  # with other credentials than the attempt that failed
        return decision in (Decision.THROTTLED, Decision.TRANSIENT)

    async def attempt(self, once: Callable[[], Awaitable[T]]) -> T:
        if self._service == "rds":
            self.sent_at = await self._aws.rate_limiter.acquire()
        creds = self._aws.credentials(self._service)
        seen = creds.generation if creds is not None else 0
        self._refreshed = False
        try:
            return await once()
        except Exception as exc:
            if (
                creds is not None
                and self._refreshes < MAX_REFRESHES
                and decide(exc) is Decision.REFRESH
            ):
                self._refreshes += 1
                self._refreshed = await creds.refresh(seen)
            raise


class Aws:
    """Owns the aiobotocore session and the clients of one run (rds, s3, sts)."""

    def __init__(
        self,
        settings: AwsSettings,
        hooks: Hooks,
        max_pool_connections: int = 10,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.hooks = hooks
        self.clock = clock or Clock()
        self.time = AwsClock(self.clock, hooks)  # AWS's time, learnt from its answers
        self.session = refreshing_session(default_chain, "the process's credentials")
        configured_region = settings.region or self.session.region_name
        self.region = configured_region or "us-east-1"
        if not configured_region:
            log.warning("no AWS region configured (--region / AWS_REGION): using us-east-1")
        self._config = AioConfig(
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=max_pool_connections,
            connect_timeout=10,
            read_timeout=60,
            # Every write carries its own checksum header (ChecksumSHA256), so
            # the body is not hashed a second time for the signature: what botocore does on its
            # own over HTTPS, kept over plain HTTP (local S3 servers) too.
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            # Local S3 servers differ in their support of the newer default checksums.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.rate_limiter = AdaptiveRateLimiter(
            settings.max_api_rps, burst=settings.max_api_burst, on_rate=hooks.api_rate
        )
        hooks.api_budget(settings.fleet_max_api_rps, settings.max_api_rps)
        self._credentials: dict[str, RefreshingCredentials | None] = {}
        self.throttled_calls = 0  # answers that said Throttling (each then retried or failed)
        self._deadline: float | None = None  # the loop's time by which every call ends (a stop)
        self._scopes: set[asyncio.Timeout] = set()
        self._stop_watch: asyncio.Future[None] | None = None
        self._stack: Any = None
        self.rds_session = self.session
        self.rds: Any = None
        self.s3: Any = None
        self.sts: Any = None

    async def __aenter__(self) -> Aws:
        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        try:
            self.sts = await self._client_of(self.session, "sts")
            # Each side assumes its role, if it has one: RDS calls (the whole-file download
            # included, through ``frozen_credentials``) and S3 calls may be different accounts.
            self.rds_session = await self._session_for(self.settings.assume_role)
            self.rds = await self._client_of(self.rds_session, "rds")
            s3_session = await self._session_for(self.settings.s3_assume_role)
            self.s3 = await self._client_of(s3_session, "s3")
            for service, session in (
                ("sts", self.session),
                ("rds", self.rds_session),
                ("s3", s3_session),
            ):
                self._credentials[service] = await credentials_of(session)
        except BaseException:
            await self._stack.__aexit__(None, None, None)
            raise
        return self

    async def _client_of(self, session: aioboto3.Session, name: str) -> Any:
        assert self._stack is not None
        return await self._stack.enter_async_context(
            session.client(name, region_name=self.region, config=self._config)
        )

    async def _session_for(self, role: RoleSettings | None) -> aioboto3.Session:
        """The process's session, or one whose credentials come from STS AssumeRole: renewed by
        botocore before they expire (15 minutes ahead), assumed again when AWS says expired."""
        if role is None:
            return self.session

        async def metadata() -> dict[str, str]:
            params: dict[str, Any] = {
                "RoleArn": role.arn,
                "RoleSessionName": role.session_name,
                "DurationSeconds": ROLE_DURATION_S,
            }
            if role.external_id:
                params["ExternalId"] = role.external_id
            try:
                resp = await self.call("sts", "assume_role", **params)
            except AwsError as exc:
                raise CredentialsError(f"cannot assume role {role.arn}: {exc}") from exc
            creds = resp["Credentials"]
            log.info("assumed role %s until %s", role.arn, creds["Expiration"])
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": creds["Expiration"].isoformat(),
            }

        async def assume() -> Any:
            return AioRefreshableCredentials.create_from_metadata(
                metadata=await metadata(), refresh_using=metadata, method="assume-role"
            )

        return refreshing_session(assume, f"role {role.arn}")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stop_watch is not None:
            self._stop_watch.cancel()
        if self._stack is not None:
            await self._stack.__aexit__(exc_type, exc, tb)
            self._stack = None
        if self.throttled_calls:
            log.warning(
                "AWS throttled %d call(s); other tools share the account's RDS API "
                "budget: lower --fleet-max-api-rps if this keeps happening (docs/api-budget.md)",
                self.throttled_calls,
            )

    def _throttled(self, service: str, sent_at: float | None) -> None:
        self.throttled_calls += 1
        if service == "rds":
            self.rate_limiter.throttled(sent_at)

    def credentials(self, service: str) -> RefreshingCredentials | None:
        """The credentials the ``service`` client signs with (None: none were found)."""
        return self._credentials.get(service)

    def _client(self, service: str) -> Any:
        client = getattr(self, service, None)
        if client is None:
            raise RuntimeError(f"Aws is not open (no {service} client)")
        return client

    @staticmethod
    def operation_name(client: Any, method: str) -> str:
        mapping: dict[str, str] = getattr(client.meta, "method_to_api_mapping", {})
        return mapping.get(method, method)

    # -- the shutdown deadline ---------------------------------------------------------------------
    def end_by(self, deadline: float) -> None:
        """From now on every call, those in flight included, ends by ``deadline`` (the event
        loop's time) with ``StoppedError``: after a stop, an AWS that does not answer (a network
        gone, an endpoint that accepts and never replies) must not hold the process for the
        clients' minute-long timeouts and their retries."""
        self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
        for scope in self._scopes:
            scope.reschedule(self._deadline)

    def end_after(self, stop: asyncio.Event, grace_s: float) -> None:
        """Once ``stop`` is set, every call ends within ``grace_s`` (``end_by``)."""

        async def watch() -> None:
            await stop.wait()
            self.end_by(asyncio.get_running_loop().time() + grace_s)

        self._stop_watch = asyncio.ensure_future(watch())

    @contextlib.asynccontextmanager
    async def bounded(self, what: str) -> AsyncIterator[None]:
        """What runs inside ends at the shutdown deadline (``end_by``), with ``StoppedError``."""
        try:
            async with asyncio.timeout_at(self._deadline) as scope:
                self._scopes.add(scope)
                try:
                    yield
                finally:
                    self._scopes.discard(scope)
        except TimeoutError as exc:
            if self._deadline is None or not scope.expired():
                raise
            raise StoppedError(
                f"{what}: no answer before the shutdown deadline (--shutdown-grace)",
                code="ShutdownDeadline",
                operation=what,
            ) from exc

    async def call(self, service: str, method: str, **params: Any) -> dict[str, Any]:
        """``client.<method>(**params)`` through ``run``."""
        client = self._client(service)

        async def once() -> dict[str, Any]:
            sent_s = self.clock.now()
            try:
                result: dict[str, Any] = await getattr(client, method)(**params)
            except ClientError as exc:
                self.time.observe(service, _date_of(exc.response), sent_s, self.clock.now())
                raise
            self.time.observe(service, _date_of(result), sent_s, self.clock.now())
            return result

        return await self.run(service, self.operation_name(client, method), once)

    async def run(
        self,
        service: str,
        operation: str,
        once: Callable[[], Awaitable[T]],
    ) -> T:
        """One AWS request under the retry policy (``rdsrecorder.retry``): rate-limited (RDS
        only: the account's RDS API budget is shared with other tools), attempted again on
        transient errors (``--max-attempts`` times in all; a request that sends a body reopens it
        in each attempt), attempted again with credentials loaded anew
        when AWS says they expired (``MAX_REFRESHES`` times at most, within those attempts),
        counted through the hooks, and translated once into ``rdsrecorder.errors``. ``once`` may
        raise ``RdsRecorderError`` itself: it passes as is."""
        call = _Attempts(self, service)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if exc is None:
                return
            reason = error_code(exc)
            throttled = is_throttling(exc)
            if throttled:
                self._throttled(service, call.sent_at)
            self.hooks.aws_call(service, operation, "throttled" if throttled else "retry")
            self.hooks.retry(service, operation, reason)
            log.debug(
                "%s %s: %s; retry %d in %.2f s",
                service,
                operation,
                reason,
                state.attempt_number,
                state.next_action.sleep if state.next_action else 0.0,
            )

        async with self.bounded(f"{service} {operation}"):
            return await self._attempts(call, service, operation, once, before_sleep)

    async def _attempts(
        self,
        call: _Attempts,
        service: str,
        operation: str,
        once: Callable[[], Awaitable[T]],
        before_sleep: Callable[[RetryCallState], None],
    ) -> T:
        try:
            async for attempt in retrying(
                max_attempts=self.settings.max_attempts,
                sleep=self.clock.sleep,
                before_sleep=before_sleep,
                retry_on=call.retry_on,
            ):
                with attempt:
                    result = await call.attempt(once)
        except (NoCredentialsError, PartialCredentialsError) as exc:
            self.hooks.aws_call(service, operation, "error")
            raise CredentialsError(
                "no AWS credentials found (env AWS_ACCESS_KEY_ID / AWS_PROFILE / instance role)"
            ) from exc
        except (ClientError, BotoCoreError, HttpAnswerError, *NETWORK_ERRORS) as exc:
            if is_throttling(exc):
                self._throttled(service, call.sent_at)
            self.hooks.aws_call(service, operation, "throttled" if is_throttling(exc) else "error")
            raise translate(exc, service, operation) from exc
        except AwsError:
            self.hooks.aws_call(service, operation, "error")
            raise
        self.hooks.aws_call(service, operation, "ok")
        return result

    async def frozen_credentials(self) -> Any:
        """The RDS side's credentials now (refreshed first when they come from a role)."""
        creds = await self.rds_session.get_credentials()
        if creds is None:
            raise CredentialsError(
                "no AWS credentials found (env AWS_ACCESS_KEY_ID / AWS_PROFILE / instance role)"
            )
        return await creds.get_frozen_credentials()

    async def check_credentials(self) -> str:
        try:
            identity = await self.call("sts", "get_caller_identity")
        except AwsError as exc:
            if exc.code in REFRESH_CODES or exc.code in DENIED_CODES:
                raise CredentialsError(f"AWS credentials rejected: {exc.code}") from exc
            raise
        return str(identity.get("Arn", ""))
