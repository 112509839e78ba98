"""In-memory fakes shared by the test modules: the RDS source and the S3 side driven by a
FakeClock (they implement the protocols of the RDS downloader and lister and of the S3 bucket and
uploader, so the recorder's time logic runs in milliseconds), a rotating DB, the manifest's
storage and a run's objects in memory. Real servers are in ``conftest.py``."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pendulum

from rdsrecorder.clock import FakeClock
from rdsrecorder.compression import Compression
from rdsrecorder.errors import AwsError, DownloadError, KeyTakenError, LogFileGoneError
from rdsrecorder.manifest import FileEntry, Manifest, manifest_key
from rdsrecorder.models import META_SHA256, DownloadStats, LogFile, ObjectInfo, UploadResult


@dataclass
class FakeFile:
    content: bytes
    last_written_s: float


@dataclass
class FakeSource:
    """files(now_s) -> {(instance, name): FakeFile}: the listing as RDS would show it at now_s."""

    clock: FakeClock
    files: Callable[[float], dict[tuple[str, str], FakeFile]]
    chunk_bytes: int = 1000
    fail_names: set[str] = field(default_factory=set)
    gone_names: set[str] = field(default_factory=set)
    download_delay_s: float = 0.0  # real seconds, to hold files in flight
    in_flight: int = 0
    max_in_flight: int = 0
    downloads: list[str] = field(default_factory=list)
    listings: list[int | None] = field(default_factory=list)

    async def list_log_files(
        self, instance: str, since_ms: int | None = None
    ) -> AsyncIterator[LogFile]:
        self.listings.append(since_ms)
        for (inst, name), f in sorted(self.files(self.clock.now()).items()):
            ms = int(f.last_written_s * 1000)
            if inst == instance and (since_ms is None or ms >= since_ms):
                yield LogFile(inst, name, ms, len(f.content))

    async def download(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]:
        self.downloads.append(f.name)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if f.name in self.gone_names:
                raise LogFileGoneError(
                    "DBLogFileNotFoundFault: gone", code="DBLogFileNotFoundFault"
                )
            content = self.files(self.clock.now())[(f.instance, f.name)].content
            stats.method = "portion"
            for i in range(0, len(content), self.chunk_bytes):
                if self.download_delay_s:
                    await asyncio.sleep(self.download_delay_s)
                else:
                    await asyncio.sleep(0)
                if f.name in self.fail_names and i > 0:
                    raise DownloadError("marker stuck")
                chunk = content[i : i + self.chunk_bytes]
                stats.bytes += len(chunk)
                stats.api_calls += 1
                yield chunk
        finally:
            self.in_flight -= 1


@dataclass
class FakeSink:
    objects: dict[str, tuple[bytes, dict[str, str]]] = field(default_factory=dict)
    uploads: list[str] = field(default_factory=list)

    async def head(self, key: str) -> ObjectInfo | None:
        if key not in self.objects:
            return None
        data, meta = self.objects[key]
        return ObjectInfo(key, len(data), dict(meta))

    async def before_upload(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        """What a subclass does first on each upload (note when, refuse it ...)."""

    async def upload(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        metadata: dict[str, str],
        instance: str,
        size_hint_bytes: int | None = None,
        compression: Compression = Compression.NONE,
    ) -> UploadResult:
        assert compression is Compression.NONE  # compression is tested against real S3 servers
        await self.before_upload(key, chunks)
        self.uploads.append(key)
        parts = [c async for c in chunks]
        data = b"".join(parts)
        sha = hashlib.sha256(data).hexdigest()
        result = UploadResult(key, len(data), sha, "etag", 0)
        if key in self.objects:  # S3's If-None-Match: * on the object's write
            raise KeyTakenError(f"{key} is taken", result)
        self.objects[key] = (data, {**metadata, META_SHA256: sha})
        return result


@dataclass
class FakeManifest:
    entries: dict[str, FileEntry] = field(default_factory=dict)
    gaps: list[tuple[str, str, str, str]] = field(default_factory=list)
    flushes: int = 0

    def record(self, entry: FileEntry) -> None:
        self.entries[entry.key] = entry

    def add_gap(self, instance: str, start: str, end: str, reason: str) -> None:
        self.gaps.append((instance, start, end, reason))

    async def flush(self, force: bool = False) -> None:
        self.flushes += 1


class StaticResolver:
    def __init__(self, *instances: str) -> None:
        self.current: tuple[str, ...] = instances
        self.incarnations: dict[str, str] = {}
        self.lost_ones: list[str] = []

    async def instances(self) -> tuple[str, ...]:
        return self.current

    def incarnation(self, instance: str) -> str:
        return self.incarnations.get(instance, "")

    def recreated(self) -> list[str]:
        return []

    def lost(self, instance: str) -> None:
        self.lost_ones.append(instance)


# -- a DB that rotates its csvlog, for the recorder's time logic ---------------------------------
# The epoch of the scheduler tests (2024-02-04 10:00 UTC); key(h) is the object key of hour h.
T0 = pendulum.datetime(2024, 2, 4, 10, tz="UTC").timestamp()
HOUR = 3600.0


def rotating_db(
    first_s: float,
    rotation_s: float,
    *,
    minute_names: bool = False,
    instance: str = "db",
    idle: Callable[[float], bool] = lambda ts: False,
    stop_rotating_at: float | None = None,
) -> Callable[[float], dict[tuple[str, str], FakeFile]]:
    """A DB writing csvlog: one file per rotation period, growing while current, plain twins."""

    def files(now_s: float) -> dict[tuple[str, str], FakeFile]:
        out: dict[tuple[str, str], FakeFile] = {}
        ts = first_s
        while ts <= now_s:
            end = ts + rotation_s
            if stop_rotating_at is not None and end > stop_rotating_at >= ts:
                end = float("inf")  # rotation broken: this file is written forever
            if not idle(ts):
                fmt = "YYYY-MM-DD-HHmm" if minute_names else "YYYY-MM-DD-HH"
                stamp = pendulum.from_timestamp(ts, tz="UTC").format(fmt)
                written = min(now_s, end - 1)
                body = f"{stamp} line\n".encode() * (1 + int((written - ts) // 60))
                out[(instance, f"error/postgresql.log.{stamp}.csv")] = FakeFile(body, written)
                out[(instance, f"error/postgresql.log.{stamp}")] = FakeFile(b"x", written)
            if end == float("inf"):
                break
            ts = end
        return out

    return files


def key(hour: int, minute: int = 0) -> str:
    return f"RUN/rds_log_RUN_{int(T0 + (hour - 10) * HOUR + minute * 60)}"


# -- the manifest's storage and a run's objects, in memory -----------------------------------------
def etag_of(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


class MemoryStorage:
    """The calls the store makes of the bucket, in memory, with failures and pauses to order,
    and S3's conditional writes (ETag: the MD5 of the bytes, as S3 gives a single PutObject)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts = 0
        self.fail_next = 0
        self.gate: asyncio.Event | None = None  # when set, a put waits for it
        self.writing = 0
        self.most_writing = 0
        self.refused = 0  # conditional writes refused (412)

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """As S3: ``if_match`` / ``if_none_match`` checked when the write lands (after the gate)."""
        assert content_type == "application/json"
        self.writing += 1
        self.most_writing = max(self.most_writing, self.writing)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if self.fail_next:
                self.fail_next -= 1
                raise AwsError("s3 PutObject failed: InternalError", code="InternalError")
            held = self.objects.get(key)
            if (if_none_match and held is not None) or (
                if_match is not None and (held is None or etag_of(held) != if_match)
            ):
                self.refused += 1
                raise AwsError("s3 PutObject failed: PreconditionFailed", code="PreconditionFailed")
            self.objects[key] = data
            self.puts += 1
            return etag_of(data)
        finally:
            self.writing -= 1

    async def get_bytes(self, key: str) -> bytes | None:
        return self.objects.get(key)

    async def get_document(self, key: str) -> tuple[bytes, str] | None:
        data = self.objects.get(key)
        return None if data is None else (data, etag_of(data))

    def saved(self, run_id: str = "run1") -> Manifest:
        return Manifest.from_json(self.objects[manifest_key(run_id)])


def manifest(run_id: str = "run1") -> Manifest:
    return Manifest(
        run_id=run_id,
        db_identifier="db-1",
        bucket="logs",
        window_start="2023-11-14T20:00:00Z",
        window_finish="2023-11-14T23:00:00Z",
        mode="backfill",
        version="0.1.0",
        started_at="2023-11-14T22:13:20Z",
        updated_at="2023-11-14T22:13:20Z",
        finished_at=None,
        instances=["db-1"],
    )


class MemoryStore:
    """``S3Sink`` in memory: what ``write_run`` and ``verify_run`` call."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}

    async def upload(
        self, key: str, chunks: AsyncIterator[bytes], *, metadata: dict[str, str], instance: str
    ) -> UploadResult:
        data = b"".join([c async for c in chunks])
        sha_hex = hashlib.sha256(data).hexdigest()
        self.objects[key] = (data, {**metadata, META_SHA256: sha_hex})
        return UploadResult(key, len(data), sha_hex, etag="", parts=0)

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        self.objects[key] = (data, {})  # one writer in these tests: conditions always hold
        return etag_of(data)

    async def get_bytes(self, key: str) -> bytes | None:
        return self.objects[key][0] if key in self.objects else None

    async def get_document(self, key: str) -> tuple[bytes, str] | None:
        data = await self.get_bytes(key)
        return None if data is None else (data, etag_of(data))

    async def head(self, key: str) -> ObjectInfo | None:
        if key not in self.objects:
            return None
        data, meta = self.objects[key]
        return ObjectInfo(key, len(data), meta)

    async def iter_object(self, key: str) -> AsyncIterator[bytes]:
        yield self.objects[key][0]

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        for key, (data, _) in sorted(self.objects.items()):
            if key.startswith(prefix):
                yield ObjectInfo(key, len(data), {})

    async def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> list[str]:
        return sorted(
            {
                prefix + k[len(prefix) :].split(delimiter)[0] + delimiter
                for k in self.objects
                if k.startswith(prefix) and delimiter in k[len(prefix) :]
            }
        )
