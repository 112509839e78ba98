"""Copy one log file from RDS to S3: skip it when a complete copy is already there, restart a
download that broke after bytes were handed on (the whole file again, never duplicating bytes),
and turn every ending into a manifest entry. Never raises except on cancellation.

Retries: each AWS call already had its attempts (``rdsrecorder.retry``); the copier restarts a
file only for a ``DownloadError`` (a stream that broke, a marker that stopped) or a
``WriteConflictError`` (409: another write raced this one), so attempts never multiply.

Contracts kept here, whatever the download path:

* **Size.** A file must arrive with at least the bytes RDS listed (a rotated one: exactly). When
  it does not (it ended short, it shrank, it came out longer than a rotated file can), the
  generator fails before its last chunk, so nothing is written; the file is listed again and
  the copy redone from the start with what RDS says now. A file that keeps arriving otherwise
  than listed ends as ``changed``, never ``copied`` (when RDS kept listing it unchanged, the last
  attempt keeps what arrived).
* **Written once.** Every object is written with ``If-None-Match: *`` (``rdsrecorder.s3.upload``):
  nothing is ever overwritten. Before a copy, its key and the key of its other form (raw / gzip)
  are looked up at once: a finished copy in either form is skipped. An object that holds another
  file (another source name or instance, a complete copy with another listed size: a recreated
  instance), or a copy of this one at another listed size (taken while it was being written), is
  kept and the file goes beside it under ``<key>_v<n>``. When S3 refuses the write (412: another
  process wrote the key meanwhile, or it held a copy whose bytes nothing proved), what is there
  decides: the same bytes are recorded with nothing written, other bytes send the file on to the
  next ``_v<n>``. A HEAD that fails is never read as "nothing there": the file fails (nothing
  written) and is tried again later. docs/design-uploads.md has the design.
* **One owner.** ``owner_check(instance)`` (the manifest still names the instance's DB) runs
  before every write; its ``OwnerError`` ends the run. It runs beside the download's first
  request, and the download hands nothing on (so the uploader writes nothing) until it passed.
* **Names are data.** Metadata values are percent-encoded to ASCII (``models.meta_encode``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from rdsrecorder.clock import Clock
from rdsrecorder.compression import Compression, same_checksum
from rdsrecorder.errors import (
    DownloadError,
    KeyTakenError,
    LogFileGoneError,
    OwnerError,
    RdsRecorderError,
    ShortBodyError,
    SourceChangedError,
    UnsafeNameError,
    WriteConflictError,
    one_line,
)
from rdsrecorder.hooks import Hooks
from rdsrecorder.logfiles import SpannedFile
from rdsrecorder.manifest import FileEntry
from rdsrecorder.models import (
    META_COMPLETE,
    META_COMPRESSION,
    META_DB_RESOURCE_ID,
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
    meta_decode,
    meta_encode,
)
from rdsrecorder.rds.portions import WHOLE_FILE_HINT
from rdsrecorder.times import iso, iso_or_none

log = logging.getLogger(__name__)


class Source(Protocol):
    def download(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]: ...


class FileLister(Protocol):
    async def describe_file(self, instance: str, name: str) -> LogFile | None:
        """How RDS lists one file now (None: not listed any more)."""
        ...


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
    as RDS lists it now; None when the file must be copied.

    Objects appear whole (a PutObject or a completed multipart upload; never a rewrite), so an
    object that exists holds a stream that ended normally. Its sha256 comes from its metadata
    (single PutObject) or, for a multipart object, from the run's manifest entry for the key,
    which must name the same source and the same stored size. A multipart object the manifest
    does not know (the process died between CompleteMultipartUpload and the next manifest write)
    is not proven by this: the copy is made again to its key, where the conditional write is
    refused and what S3 holds is compared with what the copy would have stored."""
    meta = info.metadata
    if meta_decode(meta.get(META_SOURCE, "")) != sf.name:
        return None
    if meta.get(META_SOURCE_SIZE) != str(sf.file.size):
        return None
    if meta_decode(meta.get(META_INSTANCE, sf.instance)) != sf.instance:
        return None
    incarnation = sf.file.incarnation  # a recreated DB's file is another file, whatever its size
    if incarnation and meta.get(META_DB_RESOURCE_ID, incarnation) != incarnation:
        return None
    # A copy that kept a short download (status changed) is not a finished copy.
    log_size = meta.get(META_SIZE, "")
    if log_size.isdigit() and int(log_size) < sf.file.size:
        return None
    if META_COMPRESSION not in meta and info.size < sf.file.size:
        return None  # uncompressed: the object's size is the log's
    if known is not None and known.status is FileStatus.CHANGED:
        return None
    # A copy taken while the file was still being written does not do for a complete one.
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


def same_bytes(info: ObjectInfo, result: UploadResult) -> bool:
    """``info`` holds what ``result`` would have stored: S3's checksum of the stored bytes, or
    the sha256 of the log's bytes in the metadata (a PutObject's), is the upload's."""
    if info.checksum and result.checksum and same_checksum(info.checksum, result.checksum):
        return True
    return bool(result.sha256) and info.metadata.get(META_SHA256) == result.sha256


MAX_CONFLICT_KEYS = 20  # versions of one key kept beside each other before giving up


def versioned_key(key: str, n: int, compression: Compression) -> str:
    """``key`` for ``n`` = 1, else ``<key>_v<n>`` before the compression's suffix."""
    if n == 1:
        return key
    suffix = compression.suffix
    return f"{key.removesuffix(suffix) if suffix else key}_v{n}{suffix}"


def holds_other_file(info: ObjectInfo, sf: SpannedFile) -> bool:
    """The object must be kept: objects appear whole, and this one holds another file (source
    name, instance, incarnation of the instance) or is a complete copy of a same-name file with
    another listed size (a recreated instance's file, when the incarnation is not known)."""
    meta = info.metadata
    if meta_decode(meta.get(META_SOURCE, "")) != sf.name:
        return True
    if meta_decode(meta.get(META_INSTANCE, sf.instance)) != sf.instance:
        return True
    incarnation = sf.file.incarnation
    if incarnation and meta.get(META_DB_RESOURCE_ID, incarnation) != incarnation:
        return True
    return meta.get(META_COMPLETE) == "true" and meta.get(META_SOURCE_SIZE) != str(sf.file.size)


@dataclasses.dataclass(frozen=True, slots=True)
class Taken:
    """S3 refused the write of a copy: its key held the same bytes (``recorded``: the copy's
    entry, nothing written), other bytes, or none any more (``gone``: deleted since)."""

    gone: bool = False
    recorded: FileEntry | None = None


def _as_listed_now(sf: SpannedFile, current: object) -> SpannedFile:
    """The file as RDS lists it now: the next attempt copies that, from the start."""
    if isinstance(current, LogFile) and current != sf.file:
        return dataclasses.replace(sf, file=current)
    return sf


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
        lister: FileLister | None = None,
        owner_check: Callable[[str], Awaitable[None]] | None = None,
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
        self._lister = lister
        self._owner_check = owner_check
        self._other_form_copies = 0  # files found stored in the other form (said once)
        self._ignored_conditions = 0  # writes to taken keys that went through (said once)

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
            META_SOURCE: meta_encode(sf.name),
            META_INSTANCE: meta_encode(sf.instance),
            META_SOURCE_SIZE: str(sf.file.size),
            META_SOURCE_LAST_WRITTEN: str(sf.file.last_written_ms),
            META_RUN_ID: self._run_id,
            META_COMPLETE: "true" if complete else "false",
        }
        if self._compression is not Compression.NONE:
            meta[META_COMPRESSION] = self._compression.value
        if sf.file.incarnation:
            meta[META_DB_RESOURCE_ID] = sf.file.incarnation
        return meta

    async def copy(
        self,
        sf: SpannedFile,
        key: str,
        *,
        complete: bool,
    ) -> FileEntry:
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

    async def _place(
        self, sf: SpannedFile, key: str, complete: bool, n: int = 1
    ) -> FileEntry | tuple[str, int, bool]:
        """Where the file goes, looking from ``<key>`` (``n`` = 1) or ``<key>_v<n>`` on: the
        entry of a finished copy already there (nothing to write), or the first key that is free
        and its number. A key that holds a copy of this file as listed now whose bytes nothing
        proves (a multipart object the manifest does not know, a copy that kept a short
        download) is written to as well: S3 refuses the conditional write there, and the bytes
        decide (``_taken``). A HEAD that fails raises: it is never read as "nothing there"."""
        first = n
        while True:
            if n > MAX_CONFLICT_KEYS:
                raise DownloadError(
                    f"{key} and {MAX_CONFLICT_KEYS - 1} versions beside it hold other files"
                )
            candidate = versioned_key(key, n, self._compression)
            info = await self._reader.head(candidate)
            if info is None:
                break
            known = self._known(candidate)
            sha = already_copied(info, sf, complete, known)
            if sha is not None:
                return self._skipped(sf, candidate, info, known, sha)
            if holds_other_file(info, sf):
                self._hooks.conflict(sf.instance)
                log.warning(
                    "s3 %s holds a copy of another file than %s %s (%d bytes listed): kept; "
                    "this one goes beside it",
                    candidate,
                    sf.instance,
                    sf.name,
                    sf.file.size,
                )
            elif info.metadata.get(META_SOURCE_SIZE) == str(sf.file.size):
                break  # a copy of the file as listed now, bytes unproven: the write decides
            else:
                log.info(
                    "s3 %s holds a copy of %s %s taken at another size: kept; this one goes "
                    "beside it",
                    candidate,
                    sf.instance,
                    sf.name,
                )
            n += 1
        if n != first:
            log.info("%s %s goes to s3 %s", sf.instance, sf.name, candidate)
        return candidate, n, info is not None

    async def _in_other_form(self, sf: SpannedFile, key: str, complete: bool) -> FileEntry | None:
        """The entry of a finished copy of the file in the other form (``--compress`` switched on
        a run that has it raw, or off on one that has it gzipped), or None."""
        other = Compression.NONE if self._compression is Compression.GZIP else Compression.GZIP
        other_key = key.removesuffix(self._compression.suffix) + other.suffix
        for n in range(1, MAX_CONFLICT_KEYS + 1):
            candidate = versioned_key(other_key, n, other)
            info = await self._reader.head(candidate)
            if info is None:
                return None
            known = self._known(candidate)
            sha = already_copied(info, sf, complete, known)
            if sha is not None:
                self._other_form_copies += 1
                first = self._other_form_copies == 1
                (log.warning if first else log.info)(
                    "%s %s is in s3 already as %s (%s): not stored again as %s%s",
                    sf.instance,
                    sf.name,
                    candidate,
                    other.value,
                    self._compression.value,
                    "; said once (further files at info level)" if first else "",
                )
                return self._skipped(sf, candidate, info, known, sha)
        return None

    async def _taken(
        self,
        sf: SpannedFile,
        key: str,
        complete: bool,
        stats: DownloadStats,
        taken: KeyTakenError,
    ) -> FileEntry | Taken:
        """S3 refused the conditional write to ``key``: another process wrote it meanwhile, or it
        held a copy whose bytes were unproven. What is there decides: the same bytes are
        recorded as this copy's, with nothing written; other bytes (or none: deleted since) send
        the file on to the next free key."""
        try:
            info = await self._reader.head(key)
        except RdsRecorderError as exc:
            return self._unchecked(sf, key, exc)
        result = taken.result
        if info is None:
            return Taken(gone=True)
        if (
            isinstance(result, UploadResult)
            and not holds_other_file(info, sf)
            and same_bytes(info, result)
        ):
            return Taken(recorded=self._finished(sf, key, complete, stats, result, written=False))
        if holds_other_file(info, sf):
            self._hooks.conflict(sf.instance)
        log.warning(
            "s3 %s holds other bytes than %s %s (written meanwhile, or unproven): kept; this one "
            "goes beside it",
            key,
            sf.instance,
            sf.name,
        )
        return Taken(gone=False)

    def _unchecked(self, sf: SpannedFile, key: str, exc: BaseException) -> FileEntry:
        """S3 could not say what a key holds: nothing is written (a failed check is never read
        as "nothing there"); the file is failed, and the recorder tries it again later."""
        if isinstance(exc, RdsRecorderError):
            log.error(
                "failed %s %s: cannot check s3 %s (%s): nothing written",
                sf.instance,
                sf.name,
                key,
                exc,
            )
        else:
            log.error("unexpected error checking s3 %s", key, exc_info=exc)
        return self._failed(sf, key, f"cannot check s3 {key}: {exc}", None)

    async def _checked(
        self,
        sf: SpannedFile,
        complete: bool,
        stats: DownloadStats,
        *,
        keep: bool = False,
    ) -> AsyncIterator[bytes]:
        """The download, held to the listed size: a failure raised here, before the last chunk
        is handed on, means nothing is written. ``keep`` (the last attempt, after RDS kept
        listing the file unchanged while serving other sizes): what arrives is kept, and the
        entry says ``changed``."""
        f = sf.file
        owner = (
            asyncio.ensure_future(self._owner_check(sf.instance))
            if self._owner_check is not None
            else None
        )
        try:
            async for chunk in self._source.download(f, stats):
                if owner is not None:
                    await owner  # before the first byte is handed on: nothing written before
                    owner = None
                yield chunk
        except BaseException as exc:
            if owner is not None:
                if not owner.done():
                    owner.cancel()
                elif not owner.cancelled():
                    owner.exception()  # retrieved: the download's own ending is what is said
            if not isinstance(exc, ShortBodyError):
                raise
            current = await self._relist(f)
            if current != f:  # it changed: the next attempt copies it as listed now
                raise SourceChangedError(str(exc), current) from exc
            raise
        if owner is not None:
            await owner  # an empty file: checked before its (empty) object is written
        got = stats.covered_bytes  # lines the portion API cannot return count as come
        if got == f.size or (got > f.size and not complete) or keep:
            return  # as listed (a file still being written may have grown)
        current = await self._relist(f)
        if got < f.size:
            what = f"{got} of the {f.size} bytes listed arrived"
        else:
            what = f"{got} bytes arrived, {f.size} were listed for a rotated file"
        now = (
            "; RDS no longer lists it"
            if current is None
            else f"; RDS lists {current.size} bytes now"
            if current != f
            else ""
        )
        raise SourceChangedError(f"{f.name}: {what}{now}", current)

    async def _relist(self, f: LogFile) -> LogFile | None:
        if self._lister is None:
            return f
        try:
            return await self._lister.describe_file(f.instance, f.name)
        except RdsRecorderError as exc:
            log.warning("cannot list %s %s again (%s)", f.instance, f.name, exc)
            return f

    async def _copy(self, sf: SpannedFile, key: str, complete: bool) -> FileEntry:
        try:
            # Both forms at once: the other form's HEAD costs no time.
            async with asyncio.TaskGroup() as tg:
                here = tg.create_task(self._place(sf, key, complete))
                elsewhere = tg.create_task(self._in_other_form(sf, key, complete))
        except ExceptionGroup as group:
            return self._unchecked(sf, key, group.exceptions[0])
        placed = here.result()
        other = elsewhere.result()
        if not isinstance(placed, FileEntry) and other is not None:
            placed = other
        for _ in range(MAX_CONFLICT_KEYS):
            if isinstance(placed, FileEntry):
                return placed
            target, n, taken = placed
            outcome = await self._attempts(sf, target, complete)
            if isinstance(outcome, FileEntry):
                if taken and outcome.status.landed:
                    self._conditions_ignored(target)
                return outcome
            if outcome.recorded is not None:
                return outcome.recorded
            try:
                placed = await self._place(sf, key, complete, n if outcome.gone else n + 1)
            except RdsRecorderError as exc:
                return self._unchecked(sf, target, exc)
        return self._failed(sf, key, f"{key}: taken again and again while being written", None)

    def _conditions_ignored(self, key: str) -> None:
        """A write to a key S3 had just shown taken went through: the store ignores
        ``If-None-Match`` (or the object was deleted in between). Said once per run."""
        self._ignored_conditions += 1
        (log.error if self._ignored_conditions == 1 else log.info)(
            "s3 accepted a write to %s although it held an object a moment before: this store "
            "seems to ignore conditional writes (If-None-Match), so objects can be overwritten "
            "(docs/design-uploads.md)",
            key,
        )

    def _skipped(
        self, sf: SpannedFile, key: str, existing: ObjectInfo, known: FileEntry | None, sha: str
    ) -> FileEntry:
        log.info("skip %s %s: already in s3 as %s", sf.instance, sf.name, key)
        meta_size = existing.metadata.get(META_SIZE, "")
        return self._entry(
            sf,
            key,
            size=int(meta_size) if meta_size.isdigit() else known.size if known else existing.size,
            stored_size=existing.size,
            sha256=sha,
            checksum=existing.checksum or (known.checksum if known else ""),
            compression=existing.metadata.get(META_COMPRESSION, "none"),
            method="skipped",
            status=FileStatus.SKIPPED,
            complete=existing.metadata.get(META_COMPLETE) == "true",
        )

    async def _attempts(self, sf: SpannedFile, key: str, complete: bool) -> FileEntry | Taken:
        """The copy's attempts, writing to ``key`` only if it is free: the entry, or ``Taken``
        when S3 refused the write (the caller records the copy, or finds the next key)."""
        last_error = ""
        changed = False
        steady = False  # the last attempt ended with another size while the listing stayed
        for attempt in range(1, self._max_attempts + 1):
            stats = DownloadStats()
            keep = steady and attempt == self._max_attempts
            try:
                result = await self._writer.upload(
                    key,
                    self._checked(sf, complete, stats, keep=keep),
                    metadata=self._metadata(sf, complete),
                    instance=sf.instance,
                    size_hint_bytes=sf.file.size,
                    compression=self._compression,
                )
            except OwnerError:
                raise  # the run id belongs to another DB now: the run must end
            except KeyTakenError as exc:
                return await self._taken(sf, key, complete, stats, exc)  # nothing written
            except LogFileGoneError as exc:
                log.error("lost %s %s: %s", sf.instance, sf.name, exc)
                return self._entry(
                    sf, key, status=FileStatus.LOST, error=str(exc), method=stats.method
                )
            except UnsafeNameError as exc:
                log.error("failed %s %s: %s", sf.instance, sf.name, exc)
                return self._failed(sf, key, str(exc), stats)
            except (DownloadError, WriteConflictError) as exc:
                # Bytes were handed on before it broke, or another write to the key raced this
                # one (nothing written: the next attempt finds the key taken, or free): only a
                # restart of the file can help.
                last_error = str(exc)
                changed = isinstance(exc, SourceChangedError)
                steady = isinstance(exc, (SourceChangedError, ShortBodyError)) and (
                    getattr(exc, "current", sf.file) == sf.file
                )
                if isinstance(exc, SourceChangedError):
                    if exc.current is None:
                        log.error("lost %s %s: %s", sf.instance, sf.name, exc)
                        return self._entry(
                            sf, key, status=FileStatus.LOST, error=str(exc), method=stats.method
                        )
                    sf = _as_listed_now(sf, exc.current)
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
                return self._failed(sf, key, last_error, stats, changed=changed)
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
        self,
        sf: SpannedFile,
        key: str,
        error: str,
        stats: DownloadStats | None,
        *,
        changed: bool = False,
    ) -> FileEntry:
        return self._entry(
            sf,
            key,
            status=FileStatus.CHANGED if changed else FileStatus.FAILED,
            error=one_line(error),
            method=stats.method if stats else "",
        )

    def _truncated(
        self, sf: SpannedFile, key: str, stats: DownloadStats, landed: dict[str, object]
    ) -> FileEntry:
        """Landed with lines the portion API cut: a known loss, said once (not retried)."""
        error = (
            f"{stats.truncated_lines} line(s) longer than DownloadDBLogFilePortion's cap: "
            f"{stats.truncated_bytes} bytes lost (RDS's truncation notice marks each place in "
            f"s3 {key}); {WHOLE_FILE_HINT}"
        )
        log.error("truncated %s %s: %s", sf.instance, sf.name, error)
        self._hooks.truncated_lines(sf.instance, stats.truncated_lines)
        self._hooks.truncated_bytes(sf.instance, stats.truncated_bytes)
        return self._entry(sf, key, status=FileStatus.TRUNCATED, error=one_line(error), **landed)

    def _finished(
        self,
        sf: SpannedFile,
        key: str,
        complete: bool,
        stats: DownloadStats,
        result: UploadResult,
        *,
        written: bool = True,
    ) -> FileEntry:
        """The entry of a copy that arrived; ``written`` False: S3 held its bytes already."""
        for warning in stats.warnings:
            log.warning("%s %s: %s", sf.instance, sf.name, warning)
        if stats.false_ends or stats.overlap_bytes:
            log.info(
                "%s %s: %d false end(s) of data gone past, %d repeated byte(s) dropped",
                sf.instance,
                sf.name,
                stats.false_ends,
                stats.overlap_bytes,
            )
        landed = {
            "size": result.size,
            "sha256": result.sha256,
            "stored_size": result.stored_size if result.stored_size >= 0 else result.size,
            "checksum": result.checksum,
            "compression": result.compression,
            "method": stats.method,
            "truncated_lines": stats.truncated_lines,
            "truncated_bytes": stats.truncated_bytes,
        }
        if stats.truncated_lines:
            return self._truncated(sf, key, stats, landed)
        if complete and result.size != sf.file.size:
            error = (
                f"{sf.name}: {result.size} bytes arrived on every attempt, RDS lists "
                f"{sf.file.size}; what arrived is kept in s3 {key}"
            )
            log.error("changed %s %s: %s", sf.instance, sf.name, error)
            return self._entry(sf, key, status=FileStatus.CHANGED, error=one_line(error), **landed)
        log.info(
            "%s %s %s -> s3 %s (%d bytes, %s%s)",
            "copied" if written else "recorded (s3 held the same bytes already, nothing written)",
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
            status=FileStatus.COPIED if complete else FileStatus.PARTIAL,
            complete=complete,
            **landed,
        )
