"""Copy one log file from RDS to S3: skip it when a complete copy is already there, restart a
download that broke after bytes were handed on (the whole file again, never duplicating bytes),
and turn every ending into a manifest entry. Never raises except on cancellation.

Retries: each AWS call already had its attempts (``rdsrecorder.retry``); the copier restarts a
file only for a ``DownloadError`` (a stream that broke, a marker that stopped), so attempts never
multiply."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from rdsrecorder.clock import Clock
from rdsrecorder.compression import Compression
from rdsrecorder.errors import DownloadError, LogFileGoneError, RdsRecorderError, one_line
from rdsrecorder.hooks import Hooks
from rdsrecorder.logfiles import SpannedFile
from rdsrecorder.manifest import FileEntry
from rdsrecorder.models import (
    META_COMPLETE,
    META_COMPRESSION,
    META_INSTANCE,
    META_RUN_ID,
    META_SHA256,
    META_SIZE,
    META_SOURCE,
    META_SOURCE_LAST_WRITTEN,
    META_SOURCE_SIZE,
    DownloadStats,
    FileStatus,
    LogFile,
    ObjectInfo,
    UploadResult,
)
from rdsrecorder.times import iso, iso_or_none

log = logging.getLogger(__name__)


class Source(Protocol):
    def download(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]: ...


class Reader(Protocol):
    async def head(self, key: str) -> ObjectInfo | None: ...


class Writer(Protocol):
    async def upload(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        metadata: dict[str, str],
        instance: str,
        size_hint_bytes: int | None = None,
        compression: Compression = Compression.NONE,
    ) -> UploadResult: ...


def already_copied(
    info: ObjectInfo, sf: SpannedFile, complete: bool, known: FileEntry | None = None
) -> str | None:
    """The sha256 of the log's bytes when ``info`` is a finished copy of the same source, as large
    as RDS lists it now; None when the file must be copied (again).

    Objects appear whole (a PutObject or a completed multipart upload; never a rewrite), so an
    object that exists holds a stream that ended normally. Its sha256 comes from its metadata
    (single PutObject) or, for a multipart object, from the run's manifest entry for the key,
    which must name the same source and the same stored size. A multipart object the manifest
    does not know (the process died between CompleteMultipartUpload and the next manifest write)
    is copied again: nothing else proves what it holds."""
    meta = info.metadata
    if meta.get(META_SOURCE) != sf.name or meta.get(META_SOURCE_SIZE) != str(sf.file.size):
        return None
    # A copy taken while the file was still being written is replaced once the file is complete.
    if complete and meta.get(META_COMPLETE) != "true":
        return None
    if meta.get(META_SHA256):
        return meta[META_SHA256]
    if (
        known is not None
        and known.status.landed
        and known.sha256
        and known.source == sf.name
        and known.stored_bytes == info.size
    ):
        return known.sha256
    return None


class Copier:
    def __init__(
        self,
        source: Source,
        reader: Reader,
        writer: Writer,
        hooks: Hooks,
        clock: Clock,
        run_id: str,
        *,
        max_attempts: int = 3,
        retry_delay_s: float = 2.0,
        compression: Compression = Compression.NONE,
        known: Callable[[str], FileEntry | None] | None = None,
    ) -> None:
        self._source = source
        self._reader = reader
        self._writer = writer
        self._hooks = hooks
        self._clock = clock
        self._run_id = run_id
        self._max_attempts = max_attempts
        self._retry_delay_s = retry_delay_s
        self._compression = compression
        # What the run's manifest knows of a key (resume): proves a multipart object complete.
        self._known = known or (lambda key: None)

    def _entry(self, sf: SpannedFile, key: str, **fields: object) -> FileEntry:
        entry = FileEntry(
            key=key,
            source=sf.name,
            instance=sf.instance,
            span_start=iso(sf.timestamp_s),
            span_end=iso_or_none(sf.end_s),
            size=0,
            sha256="",
            method="",
            status=FileStatus.FAILED,
            source_size=sf.file.size,
            copied_at=iso(self._clock.now()),
        )
        for name, value in fields.items():
            setattr(entry, name, value)
        return entry

    def _metadata(self, sf: SpannedFile, complete: bool) -> dict[str, str]:
        meta = {
            META_SOURCE: sf.name,
            META_INSTANCE: sf.instance,
            META_SOURCE_SIZE: str(sf.file.size),
            META_SOURCE_LAST_WRITTEN: str(sf.file.last_written_ms),
            META_RUN_ID: self._run_id,
            META_COMPLETE: "true" if complete else "false",
        }
        if self._compression is not Compression.NONE:
            meta[META_COMPRESSION] = self._compression.value
        return meta

    async def copy(self, sf: SpannedFile, key: str, *, complete: bool) -> FileEntry:
        """Copies ``sf`` to ``key`` (plus the compression's suffix: ``.gz``)."""
        key += self._compression.suffix
        started = time.monotonic()
        self._hooks.file_started(sf.instance)
        outcome = FileStatus.FAILED.outcome
        try:
            entry = await self._copy(sf, key, complete)
            outcome = FileStatus(entry.status).outcome
            return entry
        finally:
            self._hooks.file_finished(
                sf.instance, outcome, time.monotonic() - started, float(sf.timestamp_s)
            )

    async def _copy(self, sf: SpannedFile, key: str, complete: bool) -> FileEntry:
        try:
            existing = await self._reader.head(key)
        except RdsRecorderError as exc:
            log.warning("cannot check s3 object %s (%s); copying again", key, exc)
            existing = None
        known = self._known(key) if existing is not None else None
        sha = already_copied(existing, sf, complete, known) if existing is not None else None
        if existing is not None and sha is not None:
            log.info("skip %s %s: already in s3 as %s", sf.instance, sf.name, key)
            meta_size = existing.metadata.get(META_SIZE, "")
            return self._entry(
                sf,
                key,
                size=int(meta_size)
                if meta_size.isdigit()
                else known.size
                if known
                else existing.size,
                stored_size=existing.size,
                sha256=sha,
                checksum=existing.checksum or (known.checksum if known else ""),
                compression=existing.metadata.get(META_COMPRESSION, "none"),
                method="skipped",
                status=FileStatus.SKIPPED,
                complete=existing.metadata.get(META_COMPLETE) == "true",
            )
        last_error = ""
        for attempt in range(1, self._max_attempts + 1):
            stats = DownloadStats()
            try:
                result = await self._writer.upload(
                    key,
                    self._source.download(sf.file, stats),
                    metadata=self._metadata(sf, complete),
                    instance=sf.instance,
                    size_hint_bytes=sf.file.size,
                    compression=self._compression,
                )
            except LogFileGoneError as exc:
                log.error("lost %s %s: %s", sf.instance, sf.name, exc)
                return self._entry(
                    sf, key, status=FileStatus.LOST, error=str(exc), method=stats.method
                )
            except DownloadError as exc:
                # Bytes were handed on before it broke: only a restart of the file can help.
                last_error = str(exc)
                if attempt < self._max_attempts:
                    log.warning(
                        "attempt %d/%d for %s %s failed: %s; retrying",
                        attempt,
                        self._max_attempts,
                        sf.instance,
                        sf.name,
                        exc,
                    )
                    await self._clock.sleep(self._retry_delay_s * attempt)
                    continue
                log.error("failed %s %s after %d attempts: %s", sf.instance, sf.name, attempt, exc)
                return self._failed(sf, key, last_error, stats)
            except RdsRecorderError as exc:
                # An AWS call that used all its attempts, or an upload that failed: final.
                log.error("failed %s %s: %s", sf.instance, sf.name, exc)
                return self._failed(sf, key, str(exc), stats)
            except Exception as exc:  # a bug must not take the other files down with it
                log.exception("unexpected error copying %s %s", sf.instance, sf.name)
                return self._failed(sf, key, f"{type(exc).__name__}: {exc}", stats)
            return self._finished(sf, key, complete, stats, result)
        return self._failed(sf, key, last_error, None)  # pragma: no cover

    def _failed(
        self, sf: SpannedFile, key: str, error: str, stats: DownloadStats | None
    ) -> FileEntry:
        return self._entry(
            sf,
            key,
            status=FileStatus.FAILED,
            error=one_line(error),
            method=stats.method if stats else "",
        )

    def _finished(
        self,
        sf: SpannedFile,
        key: str,
        complete: bool,
        stats: DownloadStats,
        result: UploadResult,
    ) -> FileEntry:
        for warning in stats.warnings:
            log.warning("%s %s: %s", sf.instance, sf.name, warning)
        if stats.truncated_lines:
            log.warning(
                "%s %s: %d line(s) longer than 1 MB were cut by DownloadDBLogFilePortion; the rest "
                "of them is lost (allow rds:DownloadCompleteDBLogFile to avoid this)",
                sf.instance,
                sf.name,
                stats.truncated_lines,
            )
        log.info(
            "copied %s %s -> s3 %s (%d bytes, %s%s)",
            sf.instance,
            sf.name,
            key,
            result.size,
            stats.method or "?",
            "" if complete else ", still being written",
        )
        return self._entry(
            sf,
            key,
            size=result.size,
            sha256=result.sha256,
            stored_size=result.stored_size if result.stored_size >= 0 else result.size,
            checksum=result.checksum,
            compression=result.compression,
            method=stats.method,
            status=FileStatus.COPIED if complete else FileStatus.PARTIAL,
            truncated_lines=stats.truncated_lines,
            complete=complete,
        )
