"""``<RUNID>/manifest.json``: what a run copied, kept in S3 next to the objects and updated as
files land. ``verify``, ``ls`` and ``get`` read it; a re-run with the same run id resumes from it.

Several processes may write one DB's manifest at once (a second container with the same command,
the old and the new generation of a rolling reshard, a resume that overlaps): the design and why
are in docs/design-records.md. In short, ``ManifestStore`` is one of its writers:

* ``record`` / ``add_gap`` change the manifest in memory and mark it dirty; ``flush`` writes it when
  dirty and ``min_interval_s`` has passed since the last write (``force`` skips that wait);
  ``close`` always writes (and stamps ``finished_at`` when the run finished).
* Every write is conditional: ``If-Match`` on the ETag this writer last read or wrote, or
  ``If-None-Match: *`` when it found none. When another writer got there first (412, or 409 for a
  write that raced another), the manifest is read again, checked (the same run, the same DB, a
  valid record), merged into this writer's (``merge``: entries are never dropped; per key the
  better-founded entry wins) and written again. No writer's update is lost.
* Flushes are serialised by a lock, and the JSON is rendered before the write starts, so two
  flushes never interleave and a change made during a write is written by the next flush.
* A failed (or cancelled) write marks the manifest dirty again: it is logged and retried by the
  next flush, never raised into the run.
* One owner DB: ``check_owner`` (called before every write of a log file) reads the head of the
  manifest in S3 again and raises ``OwnerError`` when it names another DB (another process took
  the run id for another DB); a re-read for a merge that finds another run or DB does the same.
  From then on this store writes nothing. Processes copying the same DB under the same run id
  are not refused: they share the manifest.

Schema: ``schema`` holds the format version ``SCHEMA_VERSION``; ``Manifest.from_json`` checks
every known field's type and shape (``ValueError`` naming the field). Readers ignore fields they
do not know, so a newer writer can add fields without breaking older readers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import random
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Protocol

from rdsrecorder.clock import Clock
from rdsrecorder.compression import Compression
from rdsrecorder.concurrency import retrieved
from rdsrecorder.errors import AwsError, OwnerError, RecordError
from rdsrecorder.models import FileStatus
from rdsrecorder.times import iso, parse_iso

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
OWNER_HEAD_BYTES = 4096  # the manifest's keys are sorted: db_identifier is in its first lines
_DB_RE = re.compile(r'"db_identifier":\s*("(?:[^"\\]|\\.)*")')
CLOSE_ATTEMPTS = 3
CLOSE_RETRY_DELAY_S = 1.0
# Writes of one flush that another writer overtook (read again, merged, written again) before the
# flush gives up until the next one: two writers rarely collide twice in a row.
MERGE_ATTEMPTS = 6
# Before merging again, a random wait of up to MERGE_BACKOFF_S doubled at each attempt (0.05 s
# .. 1.6 s): writers that collided spread out instead of colliding again.
MERGE_BACKOFF_S = 0.05
# Answers to a conditional write that mean "another writer changed it meanwhile". NoSuchKey:
# If-Match on a manifest that is gone (AWS and moto; SeaweedFS answers 412).
CONFLICT_CODES = frozenset(
    {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"}
)
# A store that does not take conditional writes at all (it refuses the header).
UNCONDITIONAL_CODES = frozenset({"NotImplemented", "501"})
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


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
        """Raises ``ValueError`` naming the field when ``text`` is not a valid manifest."""
        try:
            data = json.loads(text)
        except ValueError as exc:  # UnicodeDecodeError included
            raise ValueError(f"not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object but {_describe(data)}")
        schema = data.get("schema", SCHEMA_VERSION)
        if not _conforms(schema, int) or schema < 1:
            raise ValueError(f"schema is {_describe(schema)}, not a format version")
        if schema > SCHEMA_VERSION:
            log.warning(
                "manifest schema %d is newer than this version (%d): unknown fields are ignored",
                schema,
                SCHEMA_VERSION,
            )
        kwargs = _checked_fields(cls, data, "")
        files = kwargs.get("files", {})
        kwargs["files"] = {
            key: FileEntry(**_checked_fields(FileEntry, entry, f"files[{key!r}]"))
            for key, entry in files.items()
        }
        m = cls(**kwargs)
        _check_values(m)
        return m


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is dict or dataclasses.is_dataclass(hint):
        return "an object"
    if origin is list:
        return "a list"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    names = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}
    return names.get(hint, "any value")


def _conforms(value: object, hint: Any) -> bool:
    """``value`` (parsed JSON) is of the type ``hint`` says (its elements are checked apart)."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        return any(_conforms(value, a) for a in typing.get_args(hint))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, str) and value in {m.value for m in hint}
    if hint is str:
        return isinstance(value, str)
    if origin is dict or dataclasses.is_dataclass(hint):
        return isinstance(value, dict)
    if origin is list:
        return isinstance(value, list)
    return False


def _check_type(name: str, value: object, hint: Any) -> None:
    """``ValueError`` naming the field (or element: ``gaps[2].start``) not of its type."""
    if not _conforms(value, hint):
        raise ValueError(f"{name} is {_describe(value)}, not {_type_name(hint)}")
    origin = typing.get_origin(hint)
    if origin is dict and isinstance(value, dict):
        _, item = typing.get_args(hint)
        for k, v in value.items():
            if not dataclasses.is_dataclass(item):  # entries: checked by ``_checked_fields``
                _check_type(f"{name}[{k!r}]", v, item)
    elif origin is list and isinstance(value, list):
        (item,) = typing.get_args(hint)
        for i, v in enumerate(value):
            _check_type(f"{name}[{i}]", v, item)


def _checked_fields(cls: type[Any], data: object, path: str) -> dict[str, Any]:
    """The known fields of ``data`` for the dataclass ``cls``, each of the type its annotation
    says; ``ValueError`` naming the first that is missing or of another type."""
    where = path or "the manifest"
    if not isinstance(data, dict):
        raise ValueError(f"{where} is {_describe(data)}, not a JSON object")
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = f"{path}.{f.name}" if path else f.name
        if f.name not in data:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                raise ValueError(f"{name} is missing")
            continue
        _check_type(name, data[f.name], hints[f.name])
        out[f.name] = data[f.name]
    return out


def _check_date(name: str, value: str | None, *, empty_ok: bool = False) -> None:
    if value is None or (empty_ok and value == ""):
        return
    try:
        parse_iso(value)
    except ValueError:
        raise ValueError(f"{name} is {_describe(value)}, not a date-time") from None


def _check_entry(where: str, key: str, e: FileEntry) -> None:
    if e.key != key:
        raise ValueError(f"{where}.key is {_describe(e.key)}, not its own key")
    _check_date(f"{where}.span_start", e.span_start)
    _check_date(f"{where}.span_end", e.span_end)
    _check_date(f"{where}.copied_at", e.copied_at, empty_ok=True)
    for name in ("size", "source_size", "stored_size", "truncated_lines"):
        value = getattr(e, name)
        if value is not None and value < 0:
            raise ValueError(f"{where}.{name} is {value}, below 0")
    if e.sha256 and not _SHA256_RE.fullmatch(e.sha256):
        raise ValueError(f"{where}.sha256 is {_describe(e.sha256)}, not a SHA-256 digest")
    if e.compression not in {c.value for c in Compression}:
        raise ValueError(f"{where}.compression is {_describe(e.compression)}")


def _check_values(m: Manifest) -> None:
    """What the types cannot say: dates that parse, sizes that are not negative, keys that agree,
    digests that are digests."""
    _check_date("window_start", m.window_start)
    _check_date("window_finish", m.window_finish)
    _check_date("started_at", m.started_at, empty_ok=True)
    _check_date("finished_at", m.finished_at)
    for key, e in m.files.items():
        _check_entry(f"files[{key!r}]", key, e)
    for i, gap in enumerate(m.gaps):
        for name in ("instance", "start", "end"):
            if name not in gap:
                raise ValueError(f"gaps[{i}].{name} is missing")
        _check_date(f"gaps[{i}].start", gap["start"])
        _check_date(f"gaps[{i}].end", gap["end"])


def _rank(e: FileEntry) -> tuple[bool, bool, bool, str]:
    """How well an entry knows its object: landed over not, complete over taken while being
    written, a copy over a skip (the copy knows the method and truncations), then the newer."""
    complete = e.complete and e.status is not FileStatus.PARTIAL
    return (e.status.landed, complete, e.status is not FileStatus.SKIPPED, e.copied_at)


def merge(into: Manifest, other: Manifest) -> int:
    """Adds to ``into`` what ``other`` (the same run's manifest as another writer left it) knows:
    its entries (per key, the one of the higher ``_rank``), gaps and instances, the earlier window
    start. Nothing of ``into`` is dropped. Returns how many entries were taken from ``other``."""
    taken = 0
    for key, theirs in other.files.items():
        mine = into.files.get(key)
        if mine is None or _rank(theirs) > _rank(mine):
            into.files[key] = theirs
            taken += 1
    for gap in other.gaps:
        if gap not in into.gaps:
            into.gaps.append(gap)
    into.instances = sorted(set(into.instances) | set(other.instances))
    if parse_iso(other.window_start) < parse_iso(into.window_start):
        into.window_start = other.window_start
    if other.started_at and (
        not into.started_at or parse_iso(other.started_at) < parse_iso(into.started_at)
    ):
        into.started_at = other.started_at
    into.notes = {**other.notes, **into.notes}
    return taken


class ManifestStorage(Protocol):
    """What the store needs of ``rdsrecorder.s3.bucket.Bucket``."""

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str: ...

    async def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None: ...

    async def get_document(self, key: str) -> tuple[bytes, str] | None: ...


def read_record(data: bytes, key: str, run_id: str, db: str | None = None) -> Manifest:
    """The manifest in ``data`` (the object at ``key``), checked to be of run ``run_id`` (and of
    ``db`` when given); ``RecordError`` naming the key otherwise."""
    try:
        m = Manifest.from_json(data)
    except ValueError as exc:
        raise RecordError(f"{key} is not a valid manifest: {exc}") from exc
    if m.run_id != run_id:
        raise RecordError(
            f"{key} is the manifest of run {m.run_id!r}, not of {run_id!r}: it was copied or "
            f"written there by something else; choose another --run-id"
        )
    if db is not None and m.db_identifier != db:
        raise RecordError(f"{key} is the manifest of {m.db_identifier!r}, not of {db!r}")
    return m


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
        # Why this store writes nothing more: another process's manifest of another DB (or
        # something that is no manifest of this run) is under its key.
        self._stopped: OwnerError | None = None
        self._owner_read: asyncio.Future[None] | None = None  # the owner check in flight
        # The ETag of the manifest as this writer last read or wrote it; None: there was none.
        self._etag: str | None = None
        self._conditional = True  # False: the store refused conditional writes (logged once)
        self.conflicts = 0  # writes another writer overtook (each: one more GET and PUT)
        self.merged = 0  # entries taken from other writers' versions of the manifest

    @property
    def manifest(self) -> Manifest | None:
        return self._manifest

    @property
    def dirty(self) -> bool:
        return self._dirty

    async def load(self) -> Manifest | None:
        """The manifest this run id already has in S3 (resume), or None. ``RecordError`` when it
        is not a valid manifest or is another run's."""
        doc = await self._sink.get_document(self._key)
        if doc is None:
            self._etag = None
            return None
        data, self._etag = doc
        return read_record(data, self._key, self._run_id)

    def start(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._dirty = True

    def _stop(self, error: OwnerError) -> OwnerError:
        self._stopped = error
        return error

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
        if self._stopped is not None:
            raise self._stopped
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
            log.error("%s names %r now: this run writes nothing more", self._key, other)
            raise self._stop(self._owner_error(other))

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
        elif old is not None and _rank(old)[:2] == (True, True) and not entry.status.landed:
            # The key holds a complete copy (this writer's or another's: keys are written
            # once); an attempt that failed meanwhile does not make it less there.
            log.debug("%s: kept as %s, not %s", entry.key, old.status, entry.status)
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
        if self._manifest is None or not self._dirty or self._stopped is not None:
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
            self._dirty = False
            try:
                await self._write()
            except asyncio.CancelledError:
                self._dirty = True
                raise
            except OwnerError as exc:
                log.error("%s", exc)
                return  # ``_stopped`` is set: the next owner check ends the run
            except Exception as exc:
                self._dirty = True
                self.failed_writes += 1
                log.warning("writing %s failed (%s); retrying at the next flush", self._key, exc)
                return
            self._last_write_s = self._clock.now()
            self.writes += 1

    async def _write(self) -> None:
        """One conditional write; when another writer overtook this one, its manifest is read,
        merged and the write made again over it (up to ``MERGE_ATTEMPTS`` times)."""
        m = self._require()
        for attempt in range(1, MERGE_ATTEMPTS + 1):
            m.updated_at = iso(self._clock.now())
            body = m.to_json().encode()
            try:
                self._etag = await self._put(body)
                return
            except AwsError as exc:
                if exc.code not in CONFLICT_CODES:
                    raise
            self.conflicts += 1
            await self._clock.sleep(random.uniform(0, MERGE_BACKOFF_S * 2 ** (attempt - 1)))
            await self._merge_from_s3()
        raise AwsError(
            f"{self._key} changed under {MERGE_ATTEMPTS} writes in a row (other writers)",
            code="PreconditionFailed",
        )

    async def _put(self, body: bytes) -> str:
        if self._conditional:
            try:
                return await self._sink.put_bytes(
                    self._key,
                    body,
                    "application/json",
                    if_match=self._etag,
                    if_none_match=self._etag is None,
                )
            except AwsError as exc:
                if exc.code not in UNCONDITIONAL_CODES:
                    raise
            self._conditional = False
            log.warning(
                "this S3 store refuses conditional writes: %s is written unconditionally, and "
                "two processes writing it at once may lose each other's entries",
                self._key,
            )
        return await self._sink.put_bytes(self._key, body, "application/json")

    async def _merge_from_s3(self) -> None:
        m = self._require()
        doc = await self._sink.get_document(self._key)
        if doc is None:
            self._etag = None  # deleted meanwhile: written again whole
            return
        data, etag = doc
        try:
            theirs = read_record(data, self._key, self._run_id)
        except RecordError as exc:
            # Written by something else than a writer of this run: never merged, never
            # overwritten; this process stops writing under the run id.
            raise self._stop(OwnerError(f"{exc}; this run writes nothing more")) from exc
        if theirs.db_identifier != m.db_identifier:
            raise self._stop(self._owner_error(theirs.db_identifier))
        taken = merge(m, theirs)
        self.merged += taken
        self._etag = etag
        log.debug("%s: merged %d entries of another writer", self._key, taken)

    async def close(self, finished: bool) -> None:
        """The final write, whatever the interval; retried a few times."""
        if self._manifest is None or self._stopped is not None:
            return
        if finished:
            self._manifest.finished_at = iso(self._clock.now())
        self._dirty = True
        for attempt in range(1, CLOSE_ATTEMPTS + 1):
            await self.flush(force=True)
            if not self._dirty and await self._confirmed():
                if self.conflicts:
                    log.info(
                        "%s: shared with other writers: %d write(s), %d overtaken and merged "
                        "(%d entries taken from the others)",
                        self._key,
                        self.writes,
                        self.conflicts,
                        self.merged,
                    )
                return
            if attempt < CLOSE_ATTEMPTS:
                # At random around the delay: writers closing together do not retry together.
                await self._clock.sleep(CLOSE_RETRY_DELAY_S * attempt * random.uniform(0.5, 1.5))
        log.error(
            "could not write %s after %d attempts: verify and resume of run %s will not see "
            "the last changes",
            self._key,
            CLOSE_ATTEMPTS,
            self._run_id,
        )

    async def _confirmed(self) -> bool:
        """The manifest in S3 holds every entry of this writer's, after its last write. A store
        whose conditional writes are not atomic (moto's check and write are two steps) can let
        another writer's write land over this one with the same ETag; earlier writes are
        repaired by the next one, the last is repaired here: merged and marked to be written
        again. One GET per close."""
        m = self._require()
        if self.conflicts:
            # Shared: a write that passed the same check as this one may still be landing.
            await self._clock.sleep(2 * MERGE_BACKOFF_S)
        try:
            doc = await self._sink.get_document(self._key)
            theirs = (
                None
                if doc is None
                else read_record(doc[0], self._key, self._run_id, m.db_identifier)
            )
        except (AwsError, RecordError) as exc:
            log.warning("cannot read %s back (%s): not checked", self._key, exc)
            return True
        if doc is None or theirs is None:
            self._etag = None
            self._dirty = True
            return False
        missing = [
            key
            for key, mine in m.files.items()
            if key not in theirs.files or _rank(theirs.files[key]) < _rank(mine)
        ]
        self._etag = doc[1]
        if not missing:
            return True
        log.warning(
            "%s lost %d entries to another writer's write: written again", self._key, len(missing)
        )
        self.merged += merge(m, theirs)
        self._dirty = True
        return False
