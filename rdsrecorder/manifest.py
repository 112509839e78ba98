"""``<RUNID>/manifest.json``: what a run copied, kept in S3 next to the objects and updated as
files land. ``verify`` and ``ls`` read it; a re-run with the same run id resumes from it.

``ManifestStore`` is the one writer of a run's manifest:

* ``record`` / ``add_gap`` change it in memory and mark it dirty; ``flush`` writes it when dirty
  and ``min_interval_s`` has passed since the last write (``force`` skips that wait);
  ``close`` always writes (and stamps ``finished_at`` when the run finished).
* Flushes are serialised by a lock, and the JSON is rendered before the write starts, so two
  flushes never interleave and a change made during a write is written by the next flush.
* A failed (or cancelled) write marks the manifest dirty again: it is logged and retried by the
  next flush, never raised into the run.
* One owner: the first write records the run's DB; ``check_owner`` (called before every write of
  a log file) reads the head of the manifest in S3 again and raises ``OwnerError`` when it names
  another DB (another process took the run id). From then on this store writes nothing.

Schema: ``schema`` holds ``SCHEMA_VERSION``; readers ignore fields they do not know, so a newer
writer can add fields without breaking older readers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from rdsrecorder.clock import Clock
from rdsrecorder.concurrency import retrieved
from rdsrecorder.errors import OwnerError, RdsRecorderError
from rdsrecorder.models import FileStatus
from rdsrecorder.times import iso

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
OWNER_HEAD_BYTES = 4096  # the manifest's keys are sorted: db_identifier is in its first lines
_DB_RE = re.compile(r'"db_identifier":\s*("(?:[^"\\]|\\.)*")')
CLOSE_ATTEMPTS = 3
CLOSE_RETRY_DELAY_S = 1.0


MANIFEST_NAME = "manifest.json"


def manifest_key(run_id: str, db: str | None = None) -> str:
    """``<RUNID>/manifest.json`` (one DB), ``<RUNID>/<db>/manifest.json`` (a fleet run's DB)."""
    return f"{run_id}/{db}/{MANIFEST_NAME}" if db else f"{run_id}/{MANIFEST_NAME}"


def _known_fields(cls: type[Any], data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class FileEntry:
    key: str
    source: str
    instance: str
    span_start: str  # ISO-8601 UTC: the timestamp in the file's name
    span_end: str | None  # None: the file had not rotated when copied
    size: int
    sha256: str
    method: str  # "complete", "portion" or "skipped"
    status: FileStatus
    source_size: int
    truncated_lines: int = 0
    truncated_bytes: int = 0  # the bytes of those lines that were lost
    error: str = ""
    copied_at: str = ""
    complete: bool = True  # False: copied while the source was still being written
    # The object as stored (``size`` and ``sha256`` are those of the log's bytes): its size
    # (None: the same as ``size``, as in manifests written before compression existed), the
    # checksum S3 verified on arrival and keeps ("SHA256:<base64>" of a single PutObject,
    # "SHA256:<base64>-<parts>" composite of a multipart upload, "CRC32:<base64>" full-object in
    # manifests of before 2026-12-04; "" if unknown) and the compression.
    stored_size: int | None = None
    checksum: str = ""
    compression: str = "none"

    def __post_init__(self) -> None:
        self.status = FileStatus(self.status)  # raises ValueError for an unknown status

    @property
    def stored_bytes(self) -> int:
        return self.size if self.stored_size is None else self.stored_size

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileEntry:
        return cls(**_known_fields(cls, data))


@dataclass
class Manifest:
    run_id: str
    db_identifier: str
    bucket: str
    window_start: str
    window_finish: str | None
    mode: str
    version: str
    started_at: str
    updated_at: str
    finished_at: str | None
    files: dict[str, FileEntry] = field(default_factory=dict)  # by object key
    gaps: list[dict[str, str]] = field(default_factory=list)  # instance, start, end, reason
    instances: list[str] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. the snapshot of the run

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["schema"] = SCHEMA_VERSION
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Raises ``ValueError`` when ``text`` is not a manifest."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        schema = data.get("schema", SCHEMA_VERSION)
        if isinstance(schema, int) and schema > SCHEMA_VERSION:
            log.warning(
                "manifest schema %d is newer than this version (%d): unknown fields are ignored",
                schema,
                SCHEMA_VERSION,
            )
        kwargs = _known_fields(cls, data)
        try:
            kwargs["files"] = {
                key: FileEntry.from_dict(entry) for key, entry in data.get("files", {}).items()
            }
            return cls(**kwargs)
        except (TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"missing or malformed fields: {exc}") from exc


class ManifestStorage(Protocol):
    """What the store needs of ``rdsrecorder.s3.bucket.Bucket``."""

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None: ...


def owner_of(head: bytes) -> str | None:
    """The db_identifier named in the first bytes of a manifest, if it can be read there."""
    m = _DB_RE.search(head.decode("utf-8", "replace"))
    if m is None:
        return None
    try:
        value = json.loads(m.group(1))
    except ValueError:
        return None
    return value if isinstance(value, str) else None


class ManifestStore:
    def __init__(
        self,
        sink: ManifestStorage,
        run_id: str,
        clock: Clock,
        min_interval_s: float = 10.0,
        *,
        key: str | None = None,
    ) -> None:
        self._sink = sink
        self._run_id = run_id
        self._key = key or manifest_key(run_id)  # a fleet run: <RUNID>/<db>/manifest.json
        self._clock = clock
        self._min_interval_s = min_interval_s
        self._manifest: Manifest | None = None
        self._dirty = False
        self._last_write_s = float("-inf")
        self._lock = asyncio.Lock()
        self.writes = 0  # successful writes, for logs and tests
        self.failed_writes = 0
        self._foreign: str | None = None  # the DB another process wrote into this run id
        self._owner_read: asyncio.Future[None] | None = None  # the owner check in flight

    @property
    def manifest(self) -> Manifest | None:
        return self._manifest

    @property
    def dirty(self) -> bool:
        return self._dirty

    async def load(self) -> Manifest | None:
        """The manifest this run id already has in S3 (resume), or None."""
        data = await self._sink.get_bytes(self._key)
        if data is None:
            return None
        try:
            return Manifest.from_json(data)
        except ValueError as exc:
            raise RdsRecorderError(
                f"{self._key} is not a valid manifest ({exc}); choose another --run-id"
            ) from exc

    def start(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._dirty = True

    def _owner_error(self, other: str) -> OwnerError:
        mine = self._require().db_identifier
        return OwnerError(
            f"run id {self._run_id!r} now holds logs of {other!r} (another process uses it); "
            f"this run of {mine!r} stops before writing more: give each DB its own --run-id"
        )

    async def check_owner(self) -> None:
        """Raises ``OwnerError`` when the manifest in S3 names another DB than this run's.
        Callers that ask while a check is in flight share its answer (files that start together
        make one GET, not one each)."""
        if self._foreign is not None:
            raise self._owner_error(self._foreign)
        read = self._owner_read
        if read is None or read.done():
            read = self._owner_read = asyncio.ensure_future(self._read_owner())
            # Retrieved even when every caller was cancelled meanwhile.
            read.add_done_callback(retrieved)
        await asyncio.shield(read)

    async def _read_owner(self) -> None:
        head = await self._sink.get_bytes(self._key, max_bytes=OWNER_HEAD_BYTES)
        other = owner_of(head) if head else None
        if other is not None and other != self._require().db_identifier:
            self._foreign = other
            log.error("%s names %r now: this run writes nothing more", self._key, other)
            raise self._owner_error(other)

    def _require(self) -> Manifest:
        if self._manifest is None:
            raise RuntimeError("ManifestStore.start() was not called")
        return self._manifest

    def record(self, entry: FileEntry) -> None:
        m = self._require()
        old = m.files.get(entry.key)
        if (
            entry.status is FileStatus.SKIPPED
            and old is not None
            and old.status in (FileStatus.COPIED, FileStatus.PARTIAL)
        ):
            # A skip on resume keeps what the earlier run knew of the copy (method, truncations).
            old.copied_at = old.copied_at or entry.copied_at
        else:
            m.files[entry.key] = entry
        self._dirty = True

    def add_gap(self, instance: str, start: str, end: str, reason: str) -> None:
        m = self._require()
        gap = {"instance": instance, "start": start, "end": end, "reason": reason}
        if gap not in m.gaps:
            m.gaps.append(gap)
            self._dirty = True

    def note(self, name: str, value: Any) -> None:
        self._require().notes[name] = value
        self._dirty = True

    def set_summary(self, summary: dict[str, int]) -> None:
        self._require().summary = dict(summary)
        self._dirty = True

    def _due(self, force: bool) -> bool:
        if self._manifest is None or not self._dirty or self._foreign is not None:
            return False
        return force or self._clock.now() - self._last_write_s >= self._min_interval_s

    async def flush(self, force: bool = False) -> None:
        """Writes the manifest if it changed and the last write is ``min_interval_s`` old."""
        if not self._due(force):
            return
        async with self._lock:
            # Checked again: the flush that held the lock may have written our changes already.
            if not self._due(force):
                return
            m = self._require()
            m.updated_at = iso(self._clock.now())
            body = m.to_json().encode()
            self._dirty = False
            try:
                await self._sink.put_bytes(self._key, body, "application/json")
            except asyncio.CancelledError:
                self._dirty = True
                raise
            except Exception as exc:
                self._dirty = True
                self.failed_writes += 1
                log.warning("writing %s failed (%s); retrying at the next flush", self._key, exc)
                return
            self._last_write_s = self._clock.now()
            self.writes += 1

    async def close(self, finished: bool) -> None:
        """The final write, whatever the interval; retried a few times."""
        if self._manifest is None or self._foreign is not None:
            return
        if finished:
            self._manifest.finished_at = iso(self._clock.now())
        self._dirty = True
        for attempt in range(1, CLOSE_ATTEMPTS + 1):
            await self.flush(force=True)
            if not self._dirty:
                return
            if attempt < CLOSE_ATTEMPTS:
                await self._clock.sleep(CLOSE_RETRY_DELAY_S * attempt)
        log.error(
            "could not write %s after %d attempts: verify and resume of run %s will not see "
            "the last changes",
            self._key,
            CLOSE_ATTEMPTS,
            self._run_id,
        )
