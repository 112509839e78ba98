"""`rdsrecorder verify` and `rdsrecorder ls`: prove a run's copy from S3 alone.

verify re-reads every object of the run (streamed), checks its sha256 and size against the
manifest and the object metadata, reports objects the manifest does not know, and checks that
the window has no holes: per instance, the spans of the copied files chain from the window start
to its finish, except where the manifest records a gap (idle DB, before retention)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

import pendulum

from rdsrecorder.errors import VerifyError
from rdsrecorder.hooks import Hooks
from rdsrecorder.manifest import Manifest, manifest_key
from rdsrecorder.models import META_SHA256, ObjectInfo


class Store(Protocol):
    async def get_bytes(self, key: str) -> bytes | None: ...

    async def head(self, key: str) -> ObjectInfo | None: ...

    def iter_object(self, key: str) -> object: ...

    def list_objects(self, prefix: str) -> object: ...

    async def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> list[str]: ...


@dataclass
class VerifyRow:
    key: str
    source: str
    status: (
        str  # ok | missing | corrupt | size | failed-in-run | lost-in-run | unexpected | partial
    )
    detail: str = ""


@dataclass
class VerifyReport:
    run_id: str
    rows: list[VerifyRow] = field(default_factory=list)
    holes: list[str] = field(default_factory=list)
    ok: bool = True
    manifest: Manifest | None = None


@dataclass
class RunSummary:
    run_id: str
    db_identifier: str
    window_start: str
    window_finish: str | None
    mode: str
    files: int
    bytes: int
    started_at: str
    finished_at: str | None
    status: str


def _ts(iso: str) -> float:
    parsed = pendulum.parse(iso)
    assert isinstance(parsed, pendulum.DateTime)
    return parsed.timestamp()


async def _sha256(store: Store, key: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    async for chunk in store.iter_object(key):  # type: ignore[attr-defined]
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _holes(m: Manifest) -> list[str]:
    start_s = _ts(m.window_start)
    finish_s = _ts(m.window_finish) if m.window_finish else None
    holes: list[str] = []
    for instance in sorted({e.instance for e in m.files.values()} | set(m.instances)):
        gaps = sorted(
            (_ts(g["start"]), _ts(g["end"])) for g in m.gaps if g.get("instance") == instance
        )
        spans = sorted(
            (_ts(e.span_start), _ts(e.span_end) if e.span_end else None)
            for e in m.files.values()
            if e.instance == instance and e.status in ("copied", "skipped", "partial")
        )
        intervals = [(a, b) for a, b in spans] + [(a, b) for a, b in gaps]
        intervals.sort(key=lambda ab: ab[0])
        covered = start_s
        for a, b in intervals:
            if a > covered + 1:
                holes.append(
                    f"{instance}: nothing covers {pendulum.from_timestamp(covered, tz='UTC')} .. "
                    f"{pendulum.from_timestamp(a, tz='UTC')}"
                )
            covered = float("inf") if b is None else max(covered, b)
        if finish_s is not None and covered < finish_s - 1 and m.finished_at:
            holes.append(
                f"{instance}: nothing covers {pendulum.from_timestamp(covered, tz='UTC')} .. "
                f"{pendulum.from_timestamp(finish_s, tz='UTC')}"
            )
    return holes


async def verify_run(store: Store, run_id: str, hooks: Hooks | None = None) -> VerifyReport:
    data = await store.get_bytes(manifest_key(run_id))
    if data is None:
        raise VerifyError(f"no manifest for run {run_id!r} ({manifest_key(run_id)} is missing)")
    m = Manifest.from_json(data)
    report = VerifyReport(run_id=run_id, manifest=m)
    present: dict[str, int] = {}
    async for info in store.list_objects(f"{run_id}/"):  # type: ignore[attr-defined]
        present[info.key] = info.size
    for key, entry in sorted(m.files.items()):
        if entry.status in ("failed", "lost"):
            report.rows.append(VerifyRow(key, entry.source, f"{entry.status}-in-run", entry.error))
            continue
        if key not in present:
            report.rows.append(VerifyRow(key, entry.source, "missing", "object not in S3"))
            continue
        sha, size = await _sha256(store, key)
        head = await store.head(key)
        meta_sha = head.metadata.get(META_SHA256, "") if head else ""
        if size != entry.size:
            report.rows.append(
                VerifyRow(key, entry.source, "size", f"{size} bytes, manifest says {entry.size}")
            )
        elif sha != entry.sha256 or (meta_sha and meta_sha != sha):
            report.rows.append(VerifyRow(key, entry.source, "corrupt", f"sha256 {sha[:16]}…"))
        elif not entry.complete:
            report.rows.append(
                VerifyRow(key, entry.source, "partial", "copied while still being written")
            )
        else:
            detail = f"{entry.truncated_lines} truncated line(s)" if entry.truncated_lines else ""
            report.rows.append(VerifyRow(key, entry.source, "ok", detail))
    for key in sorted(set(present) - set(m.files) - {manifest_key(run_id)}):
        report.rows.append(VerifyRow(key, "", "unexpected", "not in the manifest"))
    report.holes = _holes(m)
    bad = {"missing", "corrupt", "size", "failed-in-run", "lost-in-run", "unexpected"}
    report.ok = not report.holes and not any(
        r.status in bad or "truncated" in r.detail for r in report.rows
    )
    return report


async def list_runs(store: Store) -> list[RunSummary]:
    runs: list[RunSummary] = []
    for prefix in await store.list_prefixes(""):
        run_id = prefix.rstrip("/")
        data = await store.get_bytes(manifest_key(run_id))
        if data is None:
            continue
        try:
            m = Manifest.from_json(data)
        except (ValueError, TypeError):
            continue
        statuses = [e.status for e in m.files.values()]
        bad = sum(s in ("failed", "lost") for s in statuses)
        status = "running/stopped" if not m.finished_at else ("incomplete" if bad else "complete")
        runs.append(
            RunSummary(
                run_id=m.run_id,
                db_identifier=m.db_identifier,
                window_start=m.window_start,
                window_finish=m.window_finish,
                mode=m.mode,
                files=sum(s in ("copied", "skipped", "partial") for s in statuses),
                bytes=sum(e.size for e in m.files.values() if e.status != "failed"),
                started_at=m.started_at,
                finished_at=m.finished_at,
                status=status,
            )
        )
    runs.sort(key=lambda r: r.started_at)
    return runs
