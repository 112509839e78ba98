"""Downloads from RDS: a log file as an async generator of byte chunks.

Two download paths:

* **complete** — the REST ``downloadCompleteLogFile`` endpoint (not in any SDK): one SigV4-signed
  GET (service ``rds``) streaming the whole file, gzip accepted. No 1 MB truncation. Needs the IAM
  action ``rds:DownloadCompleteDBLogFile``. ``auto`` falls back to portions for an instance only
  when the answer's error code says "denied" (``AccessDenied``; or the path is not served at all:
  404/405/501 without an AWS error code), and tries the endpoint again ``COMPLETE_REPROBE_S``
  later, since IAM changes. Every other error is decided by the one table
  (``rdsrecorder.retry``): expired credentials are loaded anew and the request sent again.
* **portion** — ``DownloadDBLogFilePortion`` paging (``rds.portions`` holds the logic, the design
  is in docs/design-portions.md). Each call returns at most 10,000 lines and the API's cap of
  bytes, learnt from the answers; the lines asked for are sized from the file's earlier portions
  so that a file costs about ceil(size / cap) calls. A cut answer (the notice at the cut, and a
  marker that skipped bytes) is asked again for the lines it carried whole. A line longer than
  the cap is a known loss on this API: kept as RDS returns it, counted, and the file ends
  ``truncated``. One call ahead: the next call goes out once an answer is parsed.

Guards against the known infinite loops: the marker must advance, and a file gets at most
``max_calls_for(size)`` calls, a bound by its size that no content can exceed.

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
from rdsrecorder.rds.portions import (
    MAX_LINES,
    NOTICE_SUFFIX,
    WHOLE_FILE_HINT,
    LineModel,
    PortionCap,
    complete_lines,
    is_cut,
    lines_for,
    max_calls_for,
    span_of,
    target_bytes,
)
from rdsrecorder.retry import Decision, HttpAnswerError, answer_code, decide_code

log = logging.getLogger(__name__)

BINARY_DATA_TEXT = "contains binary data"
FIRST_PORTION_LINES = 2_000  # the probe, when nothing is known of an instance's lines yet
PORTION_SMALL_BYTES = 256 * 1024  # portions under this are gathered before they are passed on
LONG_LINES_BYTES = 256 * 1024  # a page this long sizes the next call even with few lines in it
COMPLETE_PATH = "v19/downloadCompleteLogFile"
COMPLETE_OPERATION = "DownloadCompleteLogFile"
STREAM_READ_BYTES = 256 * 1024
SHORT_BODIES_BEFORE_PORTIONS = 2  # whole-file streams that ended short before portions are used
COMPLETE_REPROBE_S = 900.0  # an instance denied the whole-file endpoint is tried again after this
NOT_SERVED_STATUSES = frozenset({404, 405, 501})  # without an AWS error code: no such endpoint
OVERLAP_TAIL_BYTES = 256 * 1024  # the end of the previous page kept to recognise a repeated head


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


def _tail(tail: bytes, data: bytes) -> bytes:
    """The last OVERLAP_TAIL_BYTES of what arrived, after ``data``."""
    kept = data[-OVERLAP_TAIL_BYTES:]
    return kept if len(kept) == OVERLAP_TAIL_BYTES else (tail + kept)[-OVERLAP_TAIL_BYTES:]


def _false_end(f: LogFile, stats: DownloadStats, marker: str, next_marker: str) -> bool:
    """``AdditionalDataPending=false`` with fewer bytes than listed and a marker that moved: a
    false end (aws-cli #2268, #3079), so the caller asks again from it (bounded by max_calls)."""
    if stats.covered_bytes >= f.size or not next_marker or next_marker == marker:
        return False
    stats.false_ends += 1
    log.info(
        "%s %s: DownloadDBLogFilePortion said no more data after %d of the %d bytes listed; "
        "going on from marker %s",
        f.instance,
        f.name,
        stats.covered_bytes,
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
        # Instances where the complete endpoint was denied, and when (clock seconds).
        self._portion_only: dict[str, float] = {}
        self._short_bodies: dict[tuple[str, str], int] = {}  # whole-file streams that ended short
        # Lines seen on each instance: a file's first portion is sized from them. Until an
        # instance's first answer, one file probes and the files that start meanwhile wait for
        # its answer instead of each paying for a probe of their own.
        self._lines: dict[str, LineModel] = {}
        self._probes: dict[str, asyncio.Event] = {}
        self._cap = PortionCap()  # the API's, learnt from the answers
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
            self._method is DownloadMethod.AUTO and self._may_try_complete(f.instance)
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
                again = f.instance in self._portion_only
                self._portion_only[f.instance] = self._aws.clock.now()
                log.log(
                    logging.DEBUG if again else logging.INFO,
                    "%s: whole-file download not allowed (%s); using DownloadDBLogFilePortion, "
                    "and trying it again in %d s",
                    f.instance,
                    exc,
                    COMPLETE_REPROBE_S,
                )
        async for chunk in self._download_portions(f, stats):
            yield chunk

    def _may_try_complete(self, instance: str) -> bool:
        denied_at = self._portion_only.get(instance)
        return denied_at is None or self._aws.clock.now() - denied_at >= COMPLETE_REPROBE_S

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
            body = (await resp.text(errors="replace"))[:2000]
            resp.release()
            code = answer_code(body)
            if code.startswith("DBLogFileNotFound"):
                raise LogFileGoneError(
                    f"{f.instance} {f.name} is gone (expired or rotated away)",
                    code="DBLogFileNotFoundFault",
                    operation=COMPLETE_OPERATION,
                )
            raise HttpAnswerError(resp.status, code, COMPLETE_OPERATION)

        try:
            return await self._aws.run("rds", COMPLETE_OPERATION, once)
        except AwsError as exc:
            cause = exc.__cause__
            not_served = (
                isinstance(cause, HttpAnswerError)
                and not cause.code
                and cause.status in NOT_SERVED_STATUSES
            )
            if decide_code(exc.code) is Decision.DENIED or not_served:
                raise _CompleteUnavailable(exc.code) from exc
            raise

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

    async def _first_portion_lines(
        self, f: LogFile, model: LineModel
    ) -> tuple[int, float, asyncio.Event | None]:
        """Lines for a file's first call and the bytes they should carry, planned from the
        instance's lines; or a probe (0: no prediction) and the event its answer sets. A file
        that needs more than one call waits for a probe already out instead of sending its own."""
        probe = self._probes.get(f.instance)
        if not model.bytes_per_line and probe is not None and f.size > self._cap.bytes:
            await probe.wait()
        if not model.bytes_per_line:
            probe = self._probes[f.instance] = asyncio.Event()
            return FIRST_PORTION_LINES, 0.0, probe
        bpl = model.bytes_per_line
        target = target_bytes(
            f.size, self._cap.bytes, model.margin, bpl, first_margin=model.first_margin
        )
        lines = lines_for(target, bpl)
        return lines, lines * bpl, None

    def _probed(self, instance: str, probe: asyncio.Event | None) -> None:
        """A probe's answer has been taken (or its file stopped): the files waiting for it go."""
        if probe is None:
            return
        probe.set()
        if self._probes.get(instance) is probe:
            del self._probes[instance]

    async def _download_portions(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]:
        """The file's portions, one call ahead: the next call goes out once an answer is parsed,
        while the consumer takes its bytes (spool, hashes, the upload); a consumer that falls
        behind holds one chunk and one answer."""
        stats.method = "portion"
        model = self._lines.setdefault(f.instance, LineModel())
        lines, predicted, probe = await self._first_portion_lines(f, model)
        file_bpl = 0.0  # bytes per line of the file's last portion
        marker = "0"
        tail = b""  # the end of what arrived, to recognise a page that repeats it
        # A portion is already a big chunk (~1 MB): passed on as it is, without a join; only
        # small ones (cuts, the probe, a file's end) are gathered.
        coalescer = _Coalescer(min(self._chunk_target_bytes, PORTION_SMALL_BYTES))
        ahead: asyncio.Task[dict[str, Any]] | None = None
        try:
            while True:
                if ahead is None:
                    ahead = self._send(f, stats, marker, lines)
                resp, ahead = await ahead, None
                raw: bytes = resp.get("LogFileData") or b""
                next_marker = str(resp.get("Marker") or "")
                pending = bool(resp.get("AdditionalDataPending"))
                del resp
                cut, fewer = self._judge(
                    f, stats, model, raw, marker, next_marker, lines, predicted
                )
                if fewer is not None:
                    lines, predicted = fewer, 0.0  # exactly the lines that fit: no guess
                    continue  # asked again from the same marker
                data, tail = self._page(f, stats, raw, cut, marker, next_marker, tail)
                del raw
                newlines = data.count(b"\n")
                if newlines and not cut and (newlines >= 100 or len(data) >= LONG_LINES_BYTES):
                    # A page of long lines tells their length as well as many short ones do.
                    file_bpl = len(data) / newlines
                    model.seen(len(data), newlines)
                self._probed(f.instance, probe)
                probe = None
                chunk = coalescer.add(data) if data else None
                del data
                more = _goes_on(f, stats, pending, marker, next_marker)
                marker = next_marker
                if more:
                    lines, predicted = self._next_lines(f, stats, model, file_bpl, lines)
                    ahead = self._send(f, stats, marker, lines)
                if chunk is not None:
                    yield chunk
                    del chunk
                if not more:
                    break
        finally:  # the consumer stopped, or a call failed: the call ahead is not wanted
            self._probed(f.instance, probe)
            if ahead is not None:
                await cancelled(ahead)
        if stats.truncated_lines and stats.covered_bytes < f.size:
            # Markers that are not byte offsets: the cut lines are what is missing.
            stats.truncated_bytes += f.size - stats.covered_bytes
        rest = coalescer.take()
        if rest is not None:
            yield rest

    def _judge(
        self,
        f: LogFile,
        stats: DownloadStats,
        model: LineModel,
        raw: bytes,
        marker: str,
        next_marker: str,
        lines: int,
        predicted: float,
    ) -> tuple[bool, int | None]:
        """Whether an answer was cut, and the lines to ask again for from the same marker
        (None: the answer is taken). What it teaches of the cap and of the lines is kept: a
        prediction at the file's start (marker "0") was made from other files' lines."""
        first = marker == "0"
        span = span_of(marker, next_marker)
        cut = is_cut(raw, span, self._cap)
        self._cap.answered(len(raw), cut)
        if not cut:
            if predicted and raw.count(b"\n") == lines:
                model.predicted(predicted, len(raw), first=first)
            return False, None
        if predicted and span is not None:
            model.predicted(predicted, span, first=first)
        fewer = self._after_cut(f, stats, raw, marker, lines)
        if fewer is None:
            self._lost(f, stats, raw, span)
        return True, fewer

    def _next_lines(
        self, f: LogFile, stats: DownloadStats, model: LineModel, file_bpl: float, lines: int
    ) -> tuple[int, float]:
        """Lines for the file's next call, and the bytes they should carry (0: no prediction)."""
        if not file_bpl:  # too few lines seen yet (a probe of long lines, a cut): more of them
            return max(1, min(MAX_LINES, lines * 2)), 0.0
        target = target_bytes(f.size - stats.covered_bytes, self._cap.bytes, model.margin, file_bpl)
        lines = lines_for(target, file_bpl)
        return lines, lines * file_bpl

    def _page(
        self,
        f: LogFile,
        stats: DownloadStats,
        data: bytes,
        cut: bool,
        marker: str,
        next_marker: str,
        tail: bytes,
    ) -> tuple[bytes, bytes]:
        """A portion's bytes (a repeated head dropped), counted, and the new tail."""
        if data and not cut:
            data = self._drop_overlap(f, stats, data, marker, next_marker, tail)
            tail = _tail(tail, data)
        if data:
            stats.bytes += len(data)
            self._hooks.bytes_downloaded(f.instance, len(data))
        return data, tail

    def _after_cut(
        self, f: LogFile, stats: DownloadStats, raw: bytes, marker: str, lines: int
    ) -> int | None:
        """A portion came back cut at the cap: the lines to ask again for (those it carried
        whole, which fit), or None when the one line asked for is longer than the cap."""
        if lines <= 1:
            return None
        whole = complete_lines(raw)
        # 0: the first line alone is over the cap; asked for alone, only its tail is lost.
        fewer = max(1, min(lines - 1, whole))
        stats.recovered_truncations += 1
        log.debug(
            "%s %s: portion of %d lines cut at %d bytes at marker %s; asking again for %d",
            f.instance,
            f.name,
            lines,
            len(raw),
            marker,
            fewer,
        )
        return fewer

    def _lost(self, f: LogFile, stats: DownloadStats, raw: bytes, span: int | None) -> None:
        """One line longer than the cap: RDS returned its head and the notice, and its marker
        skips the rest. Kept as RDS returned it; the bytes lost are counted when the markers
        tell (else at the end of the file, from the listed size)."""
        stats.truncated_lines += 1
        stats.notice_bytes += len(NOTICE_SUFFIX)
        lost = span - (len(raw) - len(NOTICE_SUFFIX)) if span is not None else 0
        stats.truncated_bytes += lost
        log.warning(
            "%s %s: a line of %s is longer than DownloadDBLogFilePortion's cap (%d bytes): "
            "%s of it lost on this API; %s",
            f.instance,
            f.name,
            f"{span} bytes" if span is not None else "unknown length",
            self._cap.bytes,
            f"{lost} bytes" if span is not None else "the rest",
            WHOLE_FILE_HINT,
        )

    def _send(
        self, f: LogFile, stats: DownloadStats, marker: str, lines: int
    ) -> asyncio.Task[dict[str, Any]]:
        return asyncio.ensure_future(self._counted_portion(f, stats, marker, lines))

    async def _counted_portion(
        self, f: LogFile, stats: DownloadStats, marker: str, lines: int
    ) -> dict[str, Any]:
        max_calls = max_calls_for(max(f.size, stats.covered_bytes))
        if stats.api_calls >= max_calls:
            raise DownloadError(
                f"{f.name}: gave up after {stats.api_calls} DownloadDBLogFilePortion calls "
                f"({stats.bytes} bytes of {f.size}); the API is not making progress"
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
        span = span_of(marker, next_marker)
        if span is None:
            return data
        extra = len(data) - span
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
