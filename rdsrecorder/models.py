"""Plain data shared by the source, the uploader, the recorder and the readers. No I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

MIB = 1024 * 1024


class FileStatus(enum.StrEnum):
    """How a file of the window ended, as the manifest, verify, the summary and metrics say it."""

    COPIED = "copied"  # landed complete (the file had rotated)
    PARTIAL = "partial"  # landed while the source was still being written
    SKIPPED = "skipped"  # a complete copy was already in S3
    FAILED = "failed"  # could not be copied (after retries)
    LOST = "lost"  # vanished from RDS (expired) before it could be copied
    # Did not arrive as listed: it ended short, shrank, or its size / LastWritten changed while it
    # was read, on every attempt. When RDS kept listing it unchanged, the bytes that did arrive
    # are kept under its key; otherwise nothing was written. A follower tries again later.
    CHANGED = "changed"
    # Landed with a known loss: lines longer than the portion API's cap, whose tails that API
    # never returns (the whole-file download would). Not retried: asking again loses them again.
    TRUNCATED = "truncated"

    @property
    def landed(self) -> bool:
        """An object for the file is in S3."""
        return self in (
            FileStatus.COPIED,
            FileStatus.PARTIAL,
            FileStatus.SKIPPED,
            FileStatus.TRUNCATED,
        )

    @property
    def outcome(self) -> str:
        """The metrics outcome: copied (partial included), skipped, failed, lost."""
        return FileStatus.COPIED.value if self is FileStatus.PARTIAL else self.value


@dataclass(frozen=True, slots=True)
class LogFile:
    """One entry of DescribeDBLogFiles for one DB instance."""

    instance: str
    name: str  # e.g. "error/postgresql.log.2024-03-04-19.csv"
    last_written_ms: int  # epoch milliseconds, as the API returns it
    size: int  # bytes, as listed (the current file keeps growing)
    # The instance's DbiResourceId when known: a DB deleted and recreated under the same name is
    # another incarnation, whose files are other files even where their names repeat.
    incarnation: str = ""


class DownloadMethod(enum.StrEnum):
    AUTO = "auto"
    COMPLETE = "complete"  # REST downloadCompleteLogFile, streamed
    PORTION = "portion"  # DownloadDBLogFilePortion paging


@dataclass(slots=True)
class DownloadStats:
    """Filled in by a download generator while it runs; read by the caller afterwards."""

    method: str = ""  # "complete" or "portion", the one that actually served the bytes
    api_calls: int = 0
    bytes: int = 0
    truncated_lines: int = 0  # lines longer than the portion API's cap: their tails are lost
    truncated_bytes: int = 0  # the bytes of those tails
    notice_bytes: int = 0  # RDS's truncation notices, kept in the copy where the tails were
    recovered_truncations: int = 0  # cuts recovered by asking for fewer lines
    false_ends: int = 0  # "no more data" answers before the listed size, gone on from the marker
    overlap_bytes: int = 0  # bytes a page repeated from the previous one, dropped
    warnings: list[str] = field(default_factory=list)

    @property
    def covered_bytes(self) -> int:
        """The bytes of the source the download has gone past: what arrived, less the notices
        RDS put in, plus the tails it did not return."""
        return self.bytes - self.notice_bytes + self.truncated_bytes


@dataclass(frozen=True, slots=True)
class UploadResult:
    key: str
    size: int  # bytes of the log file (before compression)
    sha256: str  # hex sha256 of the log file's bytes (before compression)
    etag: str
    parts: int  # 0 for a single PutObject
    stored_size: int = -1  # bytes of the object; -1: the same as ``size``
    checksum: str = ""  # what S3 verified and stores: "SHA256:<base64>[-<parts>]"
    compression: str = "none"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What HeadObject tells about an object we wrote (metadata keys without x-amz-meta-)."""

    key: str
    size: int
    metadata: dict[str, str]
    checksum: str = ""  # the checksum S3 stores, "SHA256:<base64>" / "CRC32:<base64>", if any
    storage_class: str = ""


# Object metadata keys written on every log object (S3 lower-cases them anyway).
META_SOURCE = "source-file"
META_INSTANCE = "db-instance"
META_SOURCE_SIZE = "source-size"  # size DescribeDBLogFiles listed when the copy started
META_SOURCE_LAST_WRITTEN = "source-last-written-ms"
# hex sha256 of the log's bytes (before compression): on single-PutObject objects only (a
# multipart upload's metadata is fixed before the hash is known: the manifest holds it)
META_SHA256 = "sha256"
META_SIZE = "size"  # bytes of the log (before compression): single-PutObject objects only
META_COMPRESSION = "compression"  # "gzip" on compressed objects; absent otherwise
META_RUN_ID = "run-id"
META_COMPLETE = "complete"  # "true" when the source file had rotated, "false" if copied live
META_DB_RESOURCE_ID = "db-resource-id"  # the instance's DbiResourceId (its incarnation), if known

# Printable ASCII that S3 metadata carries as it is; everything else (non-ASCII, control
# characters, and "%" itself) is percent-encoded, so a name from the API always fits a header.
_META_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def meta_encode(value: str) -> str:
    """An object metadata value: S3 headers take ASCII only (non-ASCII fails every retry)."""
    return quote(value, safe=_META_SAFE)


def meta_decode(value: str) -> str:
    """The inverse of ``meta_encode`` (what verify, ls and the skip check compare)."""
    return unquote(value) if "%" in value else value
