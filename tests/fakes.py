"""In-memory fakes of the RDS source and the S3 side, driven by a FakeClock. They implement the
protocols of the RDS downloader and lister and of the S3 bucket and uploader, so the recorder's
time logic runs in milliseconds.
Real-server tests live in the other test modules."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from rdsrecorder.clock import FakeClock
from rdsrecorder.compression import Compression
from rdsrecorder.errors import DownloadError, LogFileGoneError
from rdsrecorder.manifest import FileEntry
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
        self.objects[key] = (data, {**metadata, META_SHA256: sha})
        return UploadResult(key, len(data), sha, "etag", 0)


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

    async def instances(self) -> tuple[str, ...]:
        return self.current
