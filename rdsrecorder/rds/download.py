"""Downloads from RDS: a log file as an async generator of byte chunks.

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

  Calls per MB (``portion_lines``): a file of R bytes left needs at least ceil(R / 1 MiB) calls
  (the cap observed on RDS and emulated by the lab is 1 MiB, 1,048,576 bytes). The calls left are
  planned from the listed size, ceil(R / 1.022 MB) of them, and each asks for the lines that
  should carry R / calls left bytes (at most 1.022 MB: 2.5 % of margin, over twice
  the spread of the sum of thousands of csvlog lines, so cuts are rare; each costs a call and a
  10 % smaller retry). A file's first call is sized from other files' lines, so it aims 10 %
  lower, even when that costs the file one more call: files differ (in the limits benchmark one
  first call in eight, aimed 4 % under the plan, was cut), and a call costs its latency where a
  cut costs a whole call. The next call goes out once the previous answer is parsed, while the
  consumer takes that answer's bytes (spool, hashes, the upload): one call ahead at most, so a
  consumer that falls behind holds one chunk and one answer.
  The last call asks for a few more lines than needed so that the file's end comes in it. A file
  that outgrew its listed size (the current one) goes on with 1 MB portions. Bytes per line are
  learnt per instance from every portion: files that start before anything is known of an
  instance's lines begin with a small probing call each (2,000 lines) instead of waiting for one
  of them: a probe costs a file one call's latency, a wait costs it the probe's whole time.

Guards against the known infinite loops: the marker must advance, and a file gets at most
``max_calls_for(size)`` calls.

The listed size is a contract (what RDS says is there must arrive):

* portion: ``AdditionalDataPending=false`` while fewer bytes than listed arrived is a false end
  (aws-cli #2268, #3079): the download goes on from the returned marker as long as the marker
  moves. A page that starts before the marker it was asked with (aws-cli #10319: it repeats the
  end of the previous page) is recognised from the markers' byte offsets (``<n>:<offset>``) and
  its repeated head, which must equal the tail already received, is dropped.
* complete: a stream that ends cleanly short of the listed size is a failed attempt
  (``ShortBodyError``); after ``SHORT_BODIES_BEFORE_PORTIONS`` of them the file is read with
  portions.
* A name with ``..`` (or an empty segment) is refused on the whole-file path (``UnsafeNameError``);
  every segment of the REST path is percent-encoded.

What still ends short (the file shrank, or was replaced) is judged by the copier."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from rdsrecorder.aws import Aws
from rdsrecorder.concurrency import cancelled
from rdsrecorder.errors import (
    AwsError,
    DownloadError,
    LogFileGoneError,
    ShortBodyError,
    UnsafeNameError,
)
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import DownloadMethod, DownloadStats, LogFile
from rdsrecorder.retry import TRANSIENT_HTTP_STATUSES, TransientHttpError

log = logging.getLogger(__name__)

TRUNCATION_NOTICE = "[Your log message was truncated]"
BINARY_DATA_TEXT = "contains binary data"
MAX_LINES = 10_000
PORTION_MAX_BYTES = 1_048_576  # what one call carries at most (AWS says "1 MB"; observed: 1 MiB)
PORTION_PLAN_BYTES = 1_022_000  # the most a planned portion aims at: 2.5 % under the cap
PORTION_TARGET_BYTES = 1_000_000  # past the listed size (a file still being written)
FIRST_PORTION_LINES = 2_000  # the probe, when nothing is known of an instance's lines yet
PORTION_SMALL_BYTES = 256 * 1024  # portions under this are gathered before they are passed on
FIRST_CALL_FACTOR = 0.9  # a file's first call, sized from other files' lines: 10 % of margin
CUT_RETRY_FACTOR = 0.9  # first retry after a cut: most cuts overshoot the cap by a few %
COMPLETE_PATH = "v19/downloadCompleteLogFile"
COMPLETE_OPERATION = "DownloadCompleteLogFile"
STREAM_READ_BYTES = 256 * 1024
SHORT_BODIES_BEFORE_PORTIONS = 2  # whole-file streams that ended short before portions are used
OVERLAP_TAIL_BYTES = 256 * 1024  # the end of the previous page kept to recognise a repeated head
_NOTICE_BYTES = TRUNCATION_NOTICE.encode()


def marker_offset(marker: str) -> int | None:
    """The byte offset a portion marker points at (``"0"`` or ``"<n>:<offset>"``), if readable."""
    if marker == "0":
        return 0
    head, sep, tail = marker.rpartition(":")
    if not sep or not head or not tail.isdigit():
        return None
    return int(tail)


def complete_path(instance: str, name: str) -> str:
    """The REST path of a file: every segment percent-encoded; ``..``, ``.`` and empty segments
    refused (a name is data from the API, never a path to walk)."""
    segments = name.split("/")
    if any(seg in ("", ".", "..") for seg in segments):
        raise UnsafeNameError(
            f"{instance}: log file name {name!r} has an empty, '.' or '..' path segment: "
            "not fetched"
        )
    encoded = "/".join(quote(seg, safe="") for seg in segments)
    return f"{COMPLETE_PATH}/{quote(instance, safe='')}/{encoded}"


def portion_lines(bytes_per_line: float, remaining: int, *, first: bool = False) -> int:
    """NumberOfLines for the next DownloadDBLogFilePortion call of a file with ``remaining`` bytes
    left by its listed size (see the module doc). ``first``: the file's first call, sized from
    lines of other files, so with a wider margin."""
    if remaining <= 0:
        target = float(PORTION_TARGET_BYTES)
    else:
        calls_left = -(-remaining // PORTION_PLAN_BYTES)
        target = remaining / calls_left
        if first and calls_left > 1:
            # Lower, even if the file then needs one more call: a cut costs a whole call.
            target *= FIRST_CALL_FACTOR
        elif calls_left == 1:
            # The last call: enough lines to reach the end even if they run long, never more
            # than could still fit in one call.
            target = min(remaining * 1.25 + 10 * bytes_per_line, PORTION_MAX_BYTES * 0.995)
    return max(1, min(MAX_LINES, int(target / bytes_per_line)))


def max_calls_for(size_bytes: int) -> int:
    """Cap on portion calls for one file: generous (a call may return as little as ~4 KiB when
    lines are long and cuts force tiny requests) but finite, so a stuck API cannot loop forever."""
    return size_bytes // 4096 + 100


def _tail(tail: bytes, data: bytes) -> bytes:
    """The last OVERLAP_TAIL_BYTES of what arrived, after ``data``."""
    kept = data[-OVERLAP_TAIL_BYTES:]
    return kept if len(kept) == OVERLAP_TAIL_BYTES else (tail + kept)[-OVERLAP_TAIL_BYTES:]


def _false_end(f: LogFile, stats: DownloadStats, marker: str, next_marker: str) -> bool:
    """``AdditionalDataPending=false`` with fewer bytes than listed and a marker that moved: a
    false end (aws-cli #2268, #3079), so the caller asks again from it (bounded by max_calls)."""
    if stats.bytes >= f.size or not next_marker or next_marker == marker:
        return False
    stats.false_ends += 1
    log.info(
        "%s %s: DownloadDBLogFilePortion said no more data after %d of the %d bytes listed; "
        "going on from marker %s",
        f.instance,
        f.name,
        stats.bytes,
        f.size,
        next_marker,
    )
    return True


def _goes_on(
    f: LogFile, stats: DownloadStats, pending: bool, marker: str, next_marker: str
) -> bool:
    """Whether the file has more to read after a portion (a stuck marker is an error)."""
    if pending and (not next_marker or next_marker == marker):
        raise DownloadError(
            f"{f.name}: DownloadDBLogFilePortion marker stuck at {marker!r} "
            f"after {stats.bytes} bytes"
        )
    return pending or _false_end(f, stats, marker, next_marker)


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


class RdsDownloader:
    def __init__(
        self,
        aws: Aws,
        hooks: Hooks,
        method: DownloadMethod = DownloadMethod.AUTO,
        chunk_target_bytes: int = STREAM_READ_BYTES,
        max_connections: int = 32,
    ) -> None:
        self._aws = aws
        self._hooks = hooks
        self._method = DownloadMethod(method)
        self._chunk_target_bytes = chunk_target_bytes
        self._max_connections = max_connections
        self._portion_only: set[str] = set()  # instances where the complete endpoint is denied
        self._short_bodies: dict[tuple[str, str], int] = {}  # whole-file streams that ended short
        # Bytes per line seen on each instance: a file's first portion is sized from it, so only
        # the files that start before an instance's first answer pay for a small probing call.
        self._bytes_per_line: dict[str, float] = {}
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RdsDownloader:
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

    # -- downloads ---------------------------------------------------------------------------------
    async def download(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]:
        use_complete = self._method is DownloadMethod.COMPLETE or (
            self._method is DownloadMethod.AUTO and f.instance not in self._portion_only
        )
        shorts = self._short_bodies.get((f.instance, f.name), 0)
        if use_complete and self._method is DownloadMethod.AUTO:
            if shorts >= SHORT_BODIES_BEFORE_PORTIONS:
                log.warning(
                    "%s %s: the whole-file stream ended short %d times; reading it with "
                    "DownloadDBLogFilePortion",
                    f.instance,
                    f.name,
                    shorts,
                )
                use_complete = False
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
        url = f"{base}/{complete_path(f.instance, f.name)}"

        async def once() -> aiohttp.ClientResponse:
            resp = await self._session().get(url, headers=await self._signed_headers(url))
            if resp.status == 200:
                return resp
            body = (await resp.text(errors="replace"))[:500]
            resp.release()
            throttled = resp.status == 429 or (resp.status == 400 and "Throttl" in body)
            if throttled or resp.status in TRANSIENT_HTTP_STATUSES:
                raise TransientHttpError(resp.status, throttled, COMPLETE_OPERATION)
            if resp.status == 404 and "DBLogFileNotFound" in body:
                raise LogFileGoneError(
                    f"{f.instance} {f.name} is gone (expired or rotated away)",
                    code="DBLogFileNotFoundFault",
                    operation=COMPLETE_OPERATION,
                )
            if resp.status in (401, 403, 404, 405, 501):
                self._hooks.aws_call("rds", COMPLETE_OPERATION, "error")
                raise _CompleteUnavailable(f"HTTP {resp.status}")
            raise DownloadError(f"downloadCompleteLogFile {f.name}: HTTP {resp.status}")

        return await self._aws.run("rds", COMPLETE_OPERATION, once)

    async def _download_complete(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]:
        resp = await self._open_complete(f)
        stats.method = "complete"
        stats.api_calls += 1
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
        if stats.bytes < f.size:
            # A clean end (chunked or gzip) says nothing about missing data: a proxy or the server
            # may close early. Not passed on: the attempt fails, the next one starts over.
            ident = (f.instance, f.name)
            self._short_bodies[ident] = self._short_bodies.get(ident, 0) + 1
            raise ShortBodyError(
                f"whole-file stream of {f.name} ended after {stats.bytes} of the {f.size} bytes "
                "listed"
            )
        rest = coalescer.take()
        if rest is not None:
            yield rest

    def _first_portion_lines(self, instance: str, remaining: int) -> int:
        """Lines for a file's first call: planned from the instance's lines, or a probe."""
        known = self._bytes_per_line.get(instance)
        if known:
            return portion_lines(known, remaining, first=True)
        return FIRST_PORTION_LINES

    async def _download_portions(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]:
        stats.method = "portion"
        lines = self._first_portion_lines(f.instance, f.size)
        async for chunk in self._portions(f, stats, "0", lines):
            yield chunk

    async def _portions(
        self, f: LogFile, stats: DownloadStats, marker: str, lines: int
    ) -> AsyncIterator[bytes]:
        recovering = False
        tail = b""  # the end of what arrived, to recognise a page that repeats it
        max_calls = max_calls_for(max(f.size, 1))
        # A portion is already a big chunk (~1 MB): passed on as it is, without a join; only
        # small ones (cuts, the probe, a file's end) are gathered.
        coalescer = _Coalescer(min(self._chunk_target_bytes, PORTION_SMALL_BYTES))
        ahead: asyncio.Task[dict[str, Any]] | None = None
        try:
            while True:
                if ahead is None:
                    ahead = self._send(f, stats, marker, lines, max_calls)
                resp, ahead = await ahead, None
                raw: bytes = resp.get("LogFileData") or b""
                next_marker = str(resp.get("Marker") or "")
                pending = bool(resp.get("AdditionalDataPending"))
                del resp
                if _NOTICE_BYTES in raw:
                    fewer = self._after_cut(f, stats, marker, lines, recovering)
                    if fewer is not None:
                        lines, recovering = fewer, True
                        continue  # ask again from the same marker, for fewer lines
                elif recovering:
                    stats.recovered_truncations += 1
                    recovering = False
                data, tail, lines = self._page(f, stats, raw, marker, next_marker, tail, lines)
                del raw
                chunk = coalescer.add(data) if data else None
                del data
                more = _goes_on(f, stats, pending, marker, next_marker)
                marker = next_marker
                if more:
                    # One call ahead: the next portion is on its way while the consumer takes
                    # this one (spool, hashes, the upload).
                    ahead = self._send(f, stats, marker, lines, max_calls)
                if chunk is not None:
                    yield chunk
                    del chunk
                if not more:
                    break
        finally:  # the consumer stopped, or a call failed: the call ahead is not wanted
            if ahead is not None:
                await cancelled(ahead)
        rest = coalescer.take()
        if rest is not None:
            yield rest

    def _page(
        self,
        f: LogFile,
        stats: DownloadStats,
        data: bytes,
        marker: str,
        next_marker: str,
        tail: bytes,
        lines: int,
    ) -> tuple[bytes, bytes, int]:
        """A portion's bytes (a repeated head dropped), counted: (bytes, the new tail, lines for
        the next call)."""
        if data and _NOTICE_BYTES not in data:
            data = self._drop_overlap(f, stats, data, marker, next_marker, tail)
            tail = _tail(tail, data)
        if data:
            size, newlines = len(data), data.count(b"\n")
            stats.bytes += size
            self._hooks.bytes_downloaded(f.instance, size)
            lines = self._next_lines(size, newlines, lines, f.size - stats.bytes)
            self._learn(f.instance, size, newlines)
        return data, tail, lines

    def _after_cut(
        self, f: LogFile, stats: DownloadStats, marker: str, lines: int, recovering: bool
    ) -> int | None:
        """A portion came back cut at the 1 MB cap: how many lines to ask again for, or None
        when a single line is longer than the cap (its tail is lost on this API: said)."""
        if lines > 1:
            # A first cut usually overshot by a little: 10 % fewer. Cut again: a long line is
            # in the way, shrink fast towards it.
            shrunk = int(lines * CUT_RETRY_FACTOR) if not recovering else lines // 4
            fewer = max(1, min(lines - 1, shrunk))
            log.debug(
                "%s %s: portion of %d lines cut at marker %s (%d of %d bytes read); asking "
                "again for %d",
                f.instance,
                f.name,
                lines,
                marker,
                stats.bytes,
                f.size,
                fewer,
            )
            return fewer
        stats.truncated_lines += 1
        self._hooks.truncated_lines(f.instance, 1)
        log.warning(
            "%s %s: a line longer than 1 MB was cut by DownloadDBLogFilePortion at marker %s; "
            "its tail is lost on this API",
            f.instance,
            f.name,
            marker,
        )
        return None

    def _send(
        self, f: LogFile, stats: DownloadStats, marker: str, lines: int, max_calls: int
    ) -> asyncio.Task[dict[str, Any]]:
        return asyncio.ensure_future(self._counted_portion(f, stats, marker, lines, max_calls))

    async def _counted_portion(
        self,
        f: LogFile,
        stats: DownloadStats,
        marker: str,
        lines: int,
        max_calls: int,
    ) -> dict[str, Any]:
        if stats.api_calls >= max_calls:
            raise DownloadError(
                f"{f.name}: gave up after {stats.api_calls} DownloadDBLogFilePortion calls "
                f"({stats.bytes} bytes); the API is not making progress"
            )
        stats.api_calls += 1
        resp = await self._portion(f, marker, lines)
        # As bytes at once: botocore's str takes up to 4 bytes a character, and an answer may
        # wait here while the consumer writes the one before it.
        text = resp.get("LogFileData")
        resp["LogFileData"] = text.encode("utf-8") if text else b""
        return resp

    @staticmethod
    def _drop_overlap(
        f: LogFile, stats: DownloadStats, data: bytes, marker: str, next_marker: str, tail: bytes
    ) -> bytes:
        """A page longer than the span between its two markers started before the marker it was
        asked with: its head repeats the end of the previous page. Dropped only when it does
        (never on a guess)."""
        start, end = marker_offset(marker), marker_offset(next_marker)
        if start is None or end is None or end < start:
            return data
        extra = len(data) - (end - start)
        if extra <= 0:
            return data
        if extra <= len(tail) and data[:extra] == tail[-extra:]:
            stats.overlap_bytes += extra
            log.debug(
                "%s %s: the page at marker %s repeated %d bytes of the previous one; dropped",
                f.instance,
                f.name,
                marker,
                extra,
            )
            return data[extra:]
        stats.warnings.append(
            f"the page at marker {marker} is {extra} bytes longer than its markers say and does "
            "not repeat the previous page; kept as it came"
        )
        return data

    def _learn(self, instance: str, size: int, newlines: int) -> None:
        if newlines >= 100:
            self._bytes_per_line[instance] = size / newlines

    @staticmethod
    def _next_lines(size: int, newlines: int, lines: int, remaining: int) -> int:
        if newlines == 0:
            return min(MAX_LINES, max(1, lines * 2))
        # Grow back gradually after a cut.
        return min(portion_lines(max(1.0, size / newlines), remaining), lines * 4)

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
