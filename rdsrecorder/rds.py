"""The RDS source: resolve an instance or Aurora cluster, list log files (paged), and download a
file as an async generator of byte chunks.

Two download paths:

* **complete** — the REST ``downloadCompleteLogFile`` endpoint (not in any SDK): one SigV4-signed
  GET (service ``rds``) streaming the whole file, gzip accepted. No 1 MB truncation. Needs the IAM
  action ``rds:DownloadCompleteDBLogFile``; on 403 (or an endpoint that does not exist) ``auto``
  falls back to portions and remembers that per instance.
* **portion** — ``DownloadDBLogFilePortion`` paging. Each call returns at most 10,000 lines and
  1 MB; when the lines asked for are longer, RDS cuts the data, appends
  ``[Your log message was truncated]`` and still moves the marker past all of them. So the number
  of lines asked for adapts to the observed line length (aiming just under 1 MB a call), and a cut
  portion is asked again from the same marker with fewer lines. A single line over 1 MB cannot be
  recovered on this API: it is kept as RDS returns it, counted and logged.

Guards against the known infinite loops: the marker must advance, and a file gets at most
``max_calls_for(size)`` calls."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from rdsrecorder.aws import Aws
from rdsrecorder.errors import (
    AwsError,
    DbNotFoundError,
    DownloadError,
    LogFileGoneError,
)
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import DownloadMethod, DownloadStats, LogFile

log = logging.getLogger(__name__)

TRUNCATION_NOTICE = "[Your log message was truncated]"
BINARY_DATA_TEXT = "contains binary data"
MAX_LINES = 10_000
PORTION_TARGET_BYTES = 970_000  # just under the 1 MB cap: fewest calls, rare cuts
FIRST_PORTION_LINES = 2_000
COMPLETE_PATH = "v19/downloadCompleteLogFile"
COMPLETE_ATTEMPTS = 5
STREAM_READ_BYTES = 256 * 1024
INSTANCE_NOT_FOUND = frozenset({"DBInstanceNotFound", "DBInstanceNotFoundFault"})
CLUSTER_NOT_FOUND = frozenset({"DBClusterNotFoundFault", "DBClusterNotFound"})


def max_calls_for(size_bytes: int) -> int:
    """Cap on portion calls for one file: generous (a call may return as little as ~4 KiB when
    lines are long and cuts force tiny requests) but finite, so a stuck API cannot loop forever."""
    return size_bytes // 4096 + 100


@dataclass(frozen=True, slots=True)
class Target:
    identifier: str
    kind: str  # "instance" or "cluster"
    instances: tuple[str, ...]
    writer: str | None
    cluster_id: str | None
    engine: str


class _Coalescer:
    """Joins small pieces into chunks of about ``target`` bytes (one join per chunk)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> bytes | None:
        self.parts.append(data)
        self.size += len(data)
        return self.take() if self.size >= self.target else None

    def take(self) -> bytes | None:
        if not self.parts:
            return None
        out = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        self.parts, self.size = [], 0
        return out


class _CompleteUnavailable(Exception):
    """The whole-file endpoint is not allowed or not there: use portions."""


class RdsSource:
    def __init__(
        self,
        aws: Aws,
        hooks: Hooks,
        method: DownloadMethod = DownloadMethod.AUTO,
        chunk_target_bytes: int = 1 << 20,
        max_connections: int = 32,
    ) -> None:
        self._aws = aws
        self._hooks = hooks
        self._method = DownloadMethod(method)
        self._chunk_target_bytes = chunk_target_bytes
        self._max_connections = max_connections
        self._portion_only: set[str] = set()  # instances where the complete endpoint is denied
        # Bytes per line seen on each instance: a file's first portion is sized from it, so only
        # the first file of an instance pays for a small probing call.
        self._bytes_per_line: dict[str, float] = {}
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RdsSource:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- targets -----------------------------------------------------------------------------------
    async def resolve(self, identifier: str) -> Target:
        try:
            resp = await self._aws.call(
                "rds", "describe_db_instances", DBInstanceIdentifier=identifier
            )
        except AwsError as exc:
            if exc.code not in INSTANCE_NOT_FOUND:
                raise
        else:
            db = resp["DBInstances"][0]
            return Target(
                identifier=identifier,
                kind="instance",
                instances=(db["DBInstanceIdentifier"],),
                writer=None,
                cluster_id=db.get("DBClusterIdentifier"),
                engine=str(db.get("Engine", "")),
            )
        try:
            resp = await self._aws.call(
                "rds", "describe_db_clusters", DBClusterIdentifier=identifier
            )
        except AwsError as exc:
            if exc.code in CLUSTER_NOT_FOUND:
                raise DbNotFoundError(
                    f"DB instance or cluster {identifier!r} not found in region {self._aws.region}"
                ) from exc
            raise
        cluster = resp["DBClusters"][0]
        members = cluster.get("DBClusterMembers", [])
        writer = next(
            (m["DBInstanceIdentifier"] for m in members if m.get("IsClusterWriter")), None
        )
        return Target(
            identifier=identifier,
            kind="cluster",
            instances=tuple(sorted(m["DBInstanceIdentifier"] for m in members)),
            writer=writer,
            cluster_id=identifier,
            engine=str(cluster.get("Engine", "")),
        )

    # -- listing -----------------------------------------------------------------------------------
    async def list_log_files(
        self, instance: str, since_ms: int | None = None
    ) -> AsyncIterator[LogFile]:
        params: dict[str, Any] = {"DBInstanceIdentifier": instance}
        if since_ms is not None:
            params["FileLastWritten"] = int(since_ms)
        seen_markers: set[str] = set()
        while True:
            resp = await self._aws.call("rds", "describe_db_log_files", **params)
            for item in resp.get("DescribeDBLogFiles", []):
                yield LogFile(
                    instance=instance,
                    name=item["LogFileName"],
                    last_written_ms=int(item.get("LastWritten", 0)),
                    size=int(item.get("Size", 0)),
                )
            marker = resp.get("Marker")
            if not marker or marker in seen_markers:
                return
            seen_markers.add(marker)
            params["Marker"] = marker

    # -- downloads ---------------------------------------------------------------------------------
    async def download(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]:
        use_complete = self._method is DownloadMethod.COMPLETE or (
            self._method is DownloadMethod.AUTO and f.instance not in self._portion_only
        )
        if use_complete:
            try:
                async for chunk in self._download_complete(f, stats):
                    yield chunk
                return
            except _CompleteUnavailable as exc:
                if self._method is DownloadMethod.COMPLETE:
                    raise DownloadError(
                        f"downloadCompleteLogFile unavailable for {f.instance}: {exc} "
                        "(allow rds:DownloadCompleteDBLogFile or use --download-method auto)"
                    ) from exc
                self._portion_only.add(f.instance)
                log.info(
                    "%s: whole-file download not allowed (%s); using DownloadDBLogFilePortion",
                    f.instance,
                    exc,
                )
        async for chunk in self._download_portions(f, stats):
            yield chunk

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=aiohttp.ClientTimeout(total=None, connect=15, sock_read=120),
            )
        return self._http

    async def _signed_headers(self, url: str) -> dict[str, str]:
        creds = await self._aws.frozen_credentials()
        request = AWSRequest(method="GET", url=url, headers={"Accept-Encoding": "gzip"})
        SigV4Auth(creds, "rds", self._aws.region).add_auth(request)
        return dict(request.headers.items())

    async def _open_complete(self, f: LogFile) -> aiohttp.ClientResponse:
        base = str(self._aws.rds.meta.endpoint_url).rstrip("/")
        url = f"{base}/{COMPLETE_PATH}/{quote(f.instance, safe='')}/{quote(f.name, safe='/')}"
        for attempt in range(1, COMPLETE_ATTEMPTS + 1):
            await self._aws.rate_limiter.acquire()
            try:
                resp = await self._session().get(url, headers=await self._signed_headers(url))
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._hooks.aws_call("rds", "DownloadCompleteLogFile", "retry")
                if attempt == COMPLETE_ATTEMPTS:
                    raise DownloadError(f"downloadCompleteLogFile {f.name}: {exc}") from exc
                await self._backoff("DownloadCompleteLogFile", type(exc).__name__, attempt)
                continue
            if resp.status == 200:
                return resp
            body = (await resp.text(errors="replace"))[:500]
            resp.release()
            if resp.status in (429, 500, 502, 503, 504) or (
                resp.status == 400 and "Throttl" in body
            ):
                throttled = resp.status == 429 or "Throttl" in body
                self._hooks.aws_call(
                    "rds", "DownloadCompleteLogFile", "throttled" if throttled else "retry"
                )
                if attempt == COMPLETE_ATTEMPTS:
                    raise DownloadError(f"downloadCompleteLogFile {f.name}: HTTP {resp.status}")
                await self._backoff("DownloadCompleteLogFile", str(resp.status), attempt)
                continue
            self._hooks.aws_call("rds", "DownloadCompleteLogFile", "error")
            if resp.status == 404 and "DBLogFileNotFound" in body:
                raise LogFileGoneError(
                    f"{f.instance} {f.name} is gone (expired or rotated away)",
                    code="DBLogFileNotFoundFault",
                    operation="DownloadCompleteLogFile",
                )
            if resp.status in (401, 403, 404, 405, 501):
                raise _CompleteUnavailable(f"HTTP {resp.status}")
            raise DownloadError(f"downloadCompleteLogFile {f.name}: HTTP {resp.status}")
        raise DownloadError(
            f"downloadCompleteLogFile {f.name}: no attempt left"
        )  # pragma: no cover

    async def _backoff(self, operation: str, reason: str, attempt: int) -> None:
        self._hooks.retry("rds", operation, reason)
        await asyncio.sleep(random.uniform(0, min(20.0, 0.5 * 2**attempt)))

    async def _download_complete(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]:
        resp = await self._open_complete(f)
        stats.method = "complete"
        stats.api_calls += 1
        self._hooks.aws_call("rds", "DownloadCompleteLogFile", "ok")
        coalescer = _Coalescer(self._chunk_target_bytes)
        try:
            async for piece in resp.content.iter_chunked(STREAM_READ_BYTES):
                stats.bytes += len(piece)
                self._hooks.bytes_downloaded(f.instance, len(piece))
                chunk = coalescer.add(piece)
                if chunk is not None:
                    yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Bytes were already handed on: the caller restarts the whole file.
            raise DownloadError(
                f"whole-file stream of {f.name} broke after {stats.bytes} bytes: {exc}"
            ) from exc
        finally:
            resp.release()
        rest = coalescer.take()
        if rest is not None:
            yield rest

    async def _download_portions(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]:
        stats.method = "portion"
        marker = "0"
        known = self._bytes_per_line.get(f.instance)
        lines = (
            max(1, min(MAX_LINES, int(PORTION_TARGET_BYTES / known)))
            if known
            else FIRST_PORTION_LINES
        )
        recovering = False
        max_calls = max_calls_for(max(f.size, 1))
        coalescer = _Coalescer(self._chunk_target_bytes)
        while True:
            if stats.api_calls >= max_calls:
                raise DownloadError(
                    f"{f.name}: gave up after {stats.api_calls} DownloadDBLogFilePortion calls "
                    f"({stats.bytes} bytes); the API is not making progress"
                )
            stats.api_calls += 1
            resp = await self._portion(f, marker, lines)
            text: str = resp.get("LogFileData") or ""
            next_marker = str(resp.get("Marker") or "")
            pending = bool(resp.get("AdditionalDataPending"))
            if TRUNCATION_NOTICE in text:
                if lines > 1:
                    lines = max(1, lines // 4 if lines > 8 else lines // 2)
                    recovering = True
                    continue  # ask again from the same marker, for fewer lines
                stats.truncated_lines += 1
                self._hooks.truncated_lines(f.instance, 1)
                log.warning(
                    "%s %s: a line longer than 1 MB was cut by DownloadDBLogFilePortion at marker "
                    "%s; its tail is lost on this API",
                    f.instance,
                    f.name,
                    marker,
                )
            elif recovering:
                stats.recovered_truncations += 1
                recovering = False
            data = text.encode("utf-8")
            if data:
                stats.bytes += len(data)
                self._hooks.bytes_downloaded(f.instance, len(data))
                chunk = coalescer.add(data)
                if chunk is not None:
                    yield chunk
                lines = self._next_lines(text, lines)
                if not recovering and text.count("\n") >= 100:
                    self._bytes_per_line[f.instance] = len(data) / text.count("\n")
            if not pending:
                break
            if not next_marker or next_marker == marker:
                raise DownloadError(
                    f"{f.name}: DownloadDBLogFilePortion marker stuck at {marker!r} "
                    f"after {stats.bytes} bytes"
                )
            marker = next_marker
        rest = coalescer.take()
        if rest is not None:
            yield rest

    @staticmethod
    def _next_lines(text: str, lines: int) -> int:
        newlines = text.count("\n")
        if newlines == 0:
            return min(MAX_LINES, max(1, lines * 2))
        per_line = max(1.0, len(text.encode("utf-8")) / newlines)
        # Grow back gradually after a cut; never above the API maximum.
        wanted = int(PORTION_TARGET_BYTES / per_line)
        return max(1, min(MAX_LINES, wanted, lines * 4))

    async def _portion(self, f: LogFile, marker: str, lines: int) -> dict[str, Any]:
        try:
            return await self._aws.call(
                "rds",
                "download_db_log_file_portion",
                DBInstanceIdentifier=f.instance,
                LogFileName=f.name,
                Marker=marker,
                NumberOfLines=lines,
            )
        except LogFileGoneError:
            raise
        except AwsError as exc:
            if BINARY_DATA_TEXT in str(exc):
                raise DownloadError(
                    f"{f.name}: RDS says the file contains binary data; it cannot be read with "
                    "DownloadDBLogFilePortion (allow rds:DownloadCompleteDBLogFile)"
                ) from exc
            raise
