"""``<RUNID>/manifest.json``: what a run copied, kept in S3 next to the objects and updated as
files land.

One writer (a lock serialises flushes); writes are debounced (``min_interval_s``); a failed write
is logged and retried at the next flush, never crashing the run; ``close`` always writes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import pendulum

from rdsrecorder.clock import Clock
from rdsrecorder.errors import RdsRecorderError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def manifest_key(run_id: str) -> str:
    return f"{run_id}/manifest.json"


@dataclass
class FileEntry:
    key: str
    source: str
    instance: str
    span_start: str  # ISO-8601 UTC
    span_end: str | None  # None: the file had not rotated when copied
    size: int
    sha256: str
    method: str  # "complete", "portion" or "skipped"
    status: str  # "copied" | "skipped" | "partial" | "failed" | "lost"
    source_size: int
    truncated_lines: int = 0
    error: str = ""
    copied_at: str = ""
    complete: bool = True  # False: copied while the source was still being written

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileEntry:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


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
    files: dict[str, FileEntry] = field(default_factory=dict)
    gaps: list[dict[str, str]] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["schema"] = SCHEMA_VERSION
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["files"] = {k: FileEntry.from_dict(v) for k, v in data.get("files", {}).items()}
        return cls(**kwargs)


class ManifestStorage(Protocol):
    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get_bytes(self, key: str) -> bytes | None: ...


class ManifestStore:
    def __init__(
        self, sink: ManifestStorage, run_id: str, clock: Clock, min_interval_s: float = 10.0
    ) -> None:
        self._sink = sink
        self._run_id = run_id
        self._clock = clock
        self._min_interval_s = min_interval_s
        self._manifest: Manifest | None = None
        self._dirty = False
        self._last_write_s = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def manifest(self) -> Manifest | None:
        return self._manifest

    async def load(self) -> Manifest | None:
        data = await self._sink.get_bytes(manifest_key(self._run_id))
        if data is None:
            return None
        try:
            return Manifest.from_json(data)
        except (ValueError, TypeError) as exc:
            raise RdsRecorderError(
                f"{manifest_key(self._run_id)} is not a valid manifest ({exc}); choose another "
                "--run-id"
            ) from exc

    def start(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._dirty = True

    def _require(self) -> Manifest:
        if self._manifest is None:
            raise RuntimeError("ManifestStore.start() was not called")
        return self._manifest

    def record(self, entry: FileEntry) -> None:
        m = self._require()
        old = m.files.get(entry.key)
        # A skip on resume keeps what the earlier run knew about the copy.
        if entry.status == "skipped" and old is not None and old.status in ("copied", "partial"):
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

    async def flush(self, force: bool = False) -> None:
        if self._manifest is None or not self._dirty:
            return
        if not force and self._clock.now() - self._last_write_s < self._min_interval_s:
            return
        async with self._lock:
            if not self._dirty:
                return
            m = self._manifest
            m.updated_at = pendulum.from_timestamp(self._clock.now(), tz="UTC").to_iso8601_string()
            self._dirty = False
            try:
                await self._sink.put_bytes(
                    manifest_key(self._run_id), m.to_json().encode(), "application/json"
                )
                self._last_write_s = self._clock.now()
            except RdsRecorderError as exc:
                self._dirty = True
                log.warning(
                    "writing %s failed (%s); retrying later", manifest_key(self._run_id), exc
                )

    async def close(self, finished: bool) -> None:
        if self._manifest is None:
            return
        if finished:
            self._manifest.finished_at = pendulum.from_timestamp(
                self._clock.now(), tz="UTC"
            ).to_iso8601_string()
        self._dirty = True
        await self.flush(force=True)
        if self._dirty:
            await asyncio.sleep(1)
            await self.flush(force=True)
