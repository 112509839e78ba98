"""``rdsrecorder verify`` and ``rdsrecorder ls``: prove a run's copy from S3 alone.

``verify_run`` reads every manifest of the run — ``<RUNID>/manifest.json`` (a run over one DB)
and ``<RUNID>/<db>/manifest.json`` (each DB of a fleet run, written by its owner only) — and then:

* checks every object the manifest lists. When S3 keeps a checksum of the object (it verified the
  bytes against it on arrival: ``ChecksumSHA256`` of a single PutObject, the composite
  ``ChecksumSHA256`` of a multipart upload's part digests) and it equals the one the manifest
  recorded, with the same stored size, the object is proven without reading it. Otherwise (or with
  ``--download``) the object is re-read (streamed, a few at a time, decompressed when it is ``.gz``)
  and the size and sha256 of the log's bytes are checked against the manifest and the object's own
  metadata. Row statuses: ``ok``, ``partial`` (intact, but copied while the source was still being
  written), ``missing``, ``size``, ``short`` (a complete copy smaller than the size RDS listed for
  the file: the manifest's ``size`` < ``source_size``), ``corrupt``, ``unreadable`` (S3 refused the
  read), ``failed-in-run`` / ``lost-in-run`` / ``changed-in-run`` (the run itself could not copy the
  file) and ``unexpected`` (an object under the run's prefix the manifest does not know);
* checks that the window has no holes: per instance, the spans of the files that landed, sorted,
  must chain (the end of one is the start of the next) from the window start to its finish,
  except where the manifest records a gap (``before-retention``: RDS had already deleted the
  logs; ``no-log-file``: the DB wrote no file for a while). The end of the window is checked
  only when the window has a finish; for a run that has not finished yet (still running, or
  interrupted) a missing tail is reported as "not copied yet".

``ok`` is True when every row is ``ok``/``partial`` without truncated lines and there is no hole.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from rdsrecorder.compression import Compression, compression_of, decompressed, same_checksum
from rdsrecorder.concurrency import bounded
from rdsrecorder.errors import AwsError, RecordError, VerifyError
from rdsrecorder.hooks import Hooks
from rdsrecorder.manifest import MANIFEST_NAME, FileEntry, Manifest, manifest_key, read_record
from rdsrecorder.models import META_SHA256, META_SOURCE, FileStatus, ObjectInfo, meta_decode
from rdsrecorder.s3.bucket import NOT_FOUND
from rdsrecorder.times import iso, parse_iso

log = logging.getLogger(__name__)
T = TypeVar("T")

VERIFY_CONCURRENCY = 4  # objects re-read at once (memory: one 1 MiB read chunk each)
LIST_CONCURRENCY = 8  # manifests read at once by ``list_runs``
SPAN_SLACK_S = 1.0  # spans come from whole-second timestamps: allow rounding
GOOD_STATUSES = frozenset({"ok", "partial"})
NOT_LANDED = (FileStatus.FAILED, FileStatus.LOST, FileStatus.CHANGED)


class ManifestReader(Protocol):
    """What reading a run's manifests needs of ``rdsrecorder.s3.bucket.Bucket``."""

    async def get_bytes(self, key: str) -> bytes | None: ...

    async def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> list[str]: ...


class Store(ManifestReader, Protocol):
    """What verify needs of ``rdsrecorder.s3.bucket.Bucket``."""

    async def head(self, key: str) -> ObjectInfo | None: ...

    def iter_object(self, key: str) -> AsyncIterator[bytes]: ...

    def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]: ...


@dataclass
class VerifyRow:
    key: str
    source: str
    status: str  # see the module docstring
    detail: str = ""
    instance: str = ""
    size: int = 0  # bytes found in S3
    read: bool = True  # False: proven by the checksum S3 keeps, without reading the object


@dataclass
class VerifyReport:
    run_id: str
    rows: list[VerifyRow] = field(default_factory=list)
    holes: list[str] = field(default_factory=list)
    ok: bool = True
    manifest: Manifest | None = None  # the first manifest (the only one of a single-DB run)
    manifests: list[Manifest] = field(default_factory=list)  # every manifest of the run
    finished: bool = False  # the run wrote finished_at (it was not interrupted / is not running)
    bytes_read: int = 0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.status] = out.get(row.status, 0) + 1
        return out


@dataclass
class RunSummary:
    run_id: str
    db_identifier: str
    window_start: str
    window_finish: str | None
    mode: str
    files: int  # files that landed (copied, partial or skipped as already there)
    bytes: int
    started_at: str
    finished_at: str | None
    status: str  # complete | incomplete (files failed or lost) | unfinished (running/interrupted)
    failed: int = 0  # files the run could not copy (failed or lost)
    gaps: int = 0


def _check_entry(entry: FileEntry, sha_hex: str, size: int, meta: dict[str, str]) -> VerifyRow:
    def row(status: str, detail: str = "") -> VerifyRow:
        return VerifyRow(entry.key, entry.source, status, detail, entry.instance, size)

    if size != entry.size:
        return row("size", f"{size} bytes in S3, the manifest says {entry.size}")
    if sha_hex != entry.sha256:
        return row("corrupt", f"sha256 {sha_hex[:16]}.., the manifest says {entry.sha256[:16]}..")
    meta_sha = meta.get(META_SHA256, "")
    if meta_sha and meta_sha != sha_hex:
        return row("corrupt", f"the object's sha256 metadata says {meta_sha[:16]}..")
    meta_source = meta_decode(meta.get(META_SOURCE, ""))
    if meta_source and meta_source != entry.source:
        return row("corrupt", f"the object holds {meta_source}")
    return _row_ok(entry, size)


def _row_ok(entry: FileEntry, size: int, note: str = "") -> VerifyRow:
    def row(status: str, detail: str = "") -> VerifyRow:
        return VerifyRow(entry.key, entry.source, status, detail, entry.instance, size)

    complete = entry.complete and entry.status is not FileStatus.PARTIAL
    if entry.status is FileStatus.TRUNCATED:
        return row(
            "truncated",
            f"{entry.truncated_lines} line(s) longer than the portion API's cap: "
            f"{entry.truncated_bytes} bytes lost",
        )
    if complete and entry.size < entry.source_size:
        return row(
            "short",
            f"{entry.size} bytes, RDS listed {entry.source_size} for the file: data is missing",
        )
    notes = [note] if note else []
    if entry.truncated_lines:
        notes.append(f"{entry.truncated_lines} truncated line(s)")
    if not complete:
        return row("partial", "; ".join(["copied while still being written", *notes]))
    return row("ok", "; ".join(notes))


def _holes(m: Manifest) -> list[str]:
    start_s = parse_iso(m.window_start)
    finish_s = parse_iso(m.window_finish) if m.window_finish else None
    holes: list[str] = []
    for instance in sorted({e.instance for e in m.files.values()} | set(m.instances)):
        intervals: list[tuple[float, float]] = [
            (parse_iso(e.span_start), parse_iso(e.span_end) if e.span_end else float("inf"))
            for e in m.files.values()
            if e.instance == instance and e.status.landed
        ]
        intervals += [
            (parse_iso(g["start"]), parse_iso(g["end"]))
            for g in m.gaps
            if g.get("instance") == instance
        ]
        intervals.sort()
        covered_s = start_s
        for begin_s, end_s in intervals:
            if finish_s is not None and begin_s >= finish_s:
                break
            if begin_s > covered_s + SPAN_SLACK_S:
                holes.append(f"{instance}: nothing covers {iso(covered_s)} .. {iso(begin_s)}")
            covered_s = max(covered_s, end_s)
        if finish_s is not None and covered_s < finish_s - SPAN_SLACK_S:
            tail = f"{iso(covered_s)} .. {iso(finish_s)}"
            if m.finished_at:
                holes.append(f"{instance}: nothing covers {tail}")
            else:
                holes.append(f"{instance}: not copied yet (the run has not finished): {tail}")
    return holes


def entry_compression(entry: FileEntry) -> Compression:
    """What the object of ``entry`` holds: the manifest says, or (older manifests) its key."""
    return compression_of(entry.compression if entry.compression != "none" else entry.key)


async def read_original(
    store: Store, key: str, compression: Compression, instance: str, hooks: Hooks
) -> tuple[str, int, int]:
    """sha256 (hex) and size of the log's bytes in the object, and the object's size. Raises
    ``ValueError`` when a compressed object does not decompress."""
    sha = hashlib.sha256()
    size = 0
    stored = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal stored
        async for chunk in store.iter_object(key):
            stored += len(chunk)
            hooks.bytes_downloaded(instance, len(chunk))
            yield chunk

    async for chunk in decompressed(counted(), compression):
        sha.update(chunk)
        size += len(chunk)
    return sha.hexdigest(), size, stored


async def _verify_entry(
    store: Store, entry: FileEntry, present: dict[str, int], hooks: Hooks, download: bool
) -> VerifyRow:
    if entry.status in NOT_LANDED:
        return VerifyRow(
            entry.key, entry.source, f"{entry.status}-in-run", entry.error, entry.instance
        )
    if entry.key not in present:
        return VerifyRow(entry.key, entry.source, "missing", "object not in S3", entry.instance)
    try:
        head = await store.head(entry.key)
        if head is None:
            return VerifyRow(entry.key, entry.source, "missing", "object not in S3", entry.instance)
        if head.checksum and entry.checksum:
            if not same_checksum(head.checksum, entry.checksum):
                return VerifyRow(
                    entry.key,
                    entry.source,
                    "corrupt",
                    f"S3 holds checksum {head.checksum}, the manifest says {entry.checksum}",
                    entry.instance,
                    head.size,
                )
            if not download and head.size == entry.stored_bytes:
                meta_source = meta_decode(head.metadata.get(META_SOURCE, ""))
                if meta_source and meta_source != entry.source:
                    return VerifyRow(
                        entry.key,
                        entry.source,
                        "corrupt",
                        f"the object holds {meta_source}",
                        entry.instance,
                        head.size,
                    )
                algorithm = head.checksum.split(":", 1)[0]
                row = _row_ok(entry, head.size, f"checked by S3 ({algorithm})")
                row.read = False
                return row
        compression = entry_compression(entry)
        try:
            sha_hex, size, stored = await read_original(
                store, entry.key, compression, entry.instance, hooks
            )
        except ValueError as exc:
            return VerifyRow(entry.key, entry.source, "corrupt", str(exc), entry.instance)
    except AwsError as exc:
        if exc.code in NOT_FOUND:
            return VerifyRow(entry.key, entry.source, "missing", "object not in S3", entry.instance)
        return VerifyRow(entry.key, entry.source, "unreadable", str(exc), entry.instance)
    if stored != entry.stored_bytes:
        return VerifyRow(
            entry.key,
            entry.source,
            "size",
            f"{stored} bytes in S3, the manifest says {entry.stored_bytes}",
            entry.instance,
            stored,
        )
    row = _check_entry(entry, sha_hex, size, head.metadata)
    row.size = stored
    return row


async def verify_run(
    store: Store,
    run_id: str,
    hooks: Hooks | None = None,
    *,
    concurrency: int = VERIFY_CONCURRENCY,
    download: bool = False,
) -> VerifyReport:
    hooks = hooks or Hooks()
    found = await run_manifests(store, run_id)
    if not found:
        raise VerifyError(
            f"no manifest for run {run_id!r} ({manifest_key(run_id)} and "
            f"{run_id}/<db>/{MANIFEST_NAME} are missing)"
        )
    holes: list[str] = []
    for key, m in found:
        try:
            holes += _holes(m)
        except ValueError as exc:
            raise VerifyError(f"{key} is not a valid manifest: {exc}") from exc
    manifests = [m for _, m in found]
    report = VerifyReport(
        run_id=run_id,
        manifest=manifests[0],
        manifests=manifests,
        finished=all(m.finished_at for m in manifests),
        holes=holes,
    )
    files: dict[str, FileEntry] = {}
    for m in manifests:
        files.update(m.files)
    manifest_keys = {key for key, _ in found}
    present: dict[str, int] = {}
    async for info in store.list_objects(f"{run_id}/"):
        present[info.key] = info.size
    report.rows = await bounded(
        concurrency,
        (_verify_entry(store, e, present, hooks, download) for _, e in sorted(files.items())),
    )
    report.rows += [
        VerifyRow(k, "", "unexpected", "not in the manifest", size=present[k])
        for k in sorted(set(present) - set(files) - manifest_keys)
        if not k.endswith("/" + MANIFEST_NAME)
    ]
    report.bytes_read = sum(r.size for r in report.rows if r.status != "unexpected" and r.read)
    report.ok = not report.holes and all(
        r.status in GOOD_STATUSES and "truncated" not in r.detail for r in report.rows
    )
    log.info("verify %s: %s", run_id, report.counts())
    return report


def summarize(m: Manifest) -> RunSummary:
    landed = [e for e in m.files.values() if e.status.landed]
    failed = sum(e.status in NOT_LANDED for e in m.files.values())
    if not m.finished_at:
        status = "unfinished"
    else:
        status = "incomplete" if failed else "complete"
    return RunSummary(
        run_id=m.run_id,
        db_identifier=m.db_identifier,
        window_start=m.window_start,
        window_finish=m.window_finish,
        mode=m.mode,
        files=len(landed),
        bytes=sum(e.size for e in landed),
        started_at=m.started_at,
        finished_at=m.finished_at,
        status=status,
        failed=failed,
        gaps=len(m.gaps),
    )


async def _load(
    store: ManifestReader, key: str, run_id: str, db: str | None, *, strict: bool
) -> Manifest | None:
    """The manifest at ``key``, checked (``read_record``). ``strict``: ``RecordError`` when it
    cannot be read or used; otherwise a warning naming it, and None (``ls``, ``get``)."""
    try:
        data = await store.get_bytes(key)
        if data is None:
            return None
        return read_record(data, key, run_id, db)
    except RecordError as exc:
        if strict:
            raise
        log.warning("skipping %s", exc)
    except AwsError as exc:
        if strict:
            raise RecordError(f"cannot read {key}: {exc}") from exc
        log.warning("skipping %s: cannot read it (%s)", key, exc)
    return None


async def run_manifests(
    store: ManifestReader, run_id: str, *, strict: bool = True
) -> list[tuple[str, Manifest]]:
    """Every manifest of a run, by key: ``<RUNID>/manifest.json`` when the run is over one DB,
    else one ``<RUNID>/<db>/manifest.json`` per DB (read a few at a time). Each must be of the
    run (and the one of a DB's folder of that DB)."""
    root = manifest_key(run_id)
    single = await _load(store, root, run_id, None, strict=strict)
    prefixes = await store.list_prefixes(f"{run_id}/")
    keys = [p + MANIFEST_NAME for p in prefixes]
    dbs = [p[len(run_id) + 1 :].rstrip("/") for p in prefixes]
    loaded = await bounded(
        LIST_CONCURRENCY,
        (_load(store, k, run_id, db, strict=strict) for k, db in zip(keys, dbs, strict=True)),
    )
    found = [(root, single)] if single is not None else []
    found += [(k, m) for k, m in zip(keys, loaded, strict=True) if m is not None]
    return found


async def list_runs(store: Store) -> list[RunSummary]:
    """Every run of the bucket, one row per DB: the top-level prefixes holding a readable
    manifest (``<RUNID>/manifest.json``, or ``<RUNID>/<db>/manifest.json`` per DB)."""

    async def one(prefix: str) -> list[RunSummary]:
        found = await run_manifests(store, prefix.rstrip("/"), strict=False)
        return [summarize(m) for _, m in found]

    prefixes = await store.list_prefixes("")
    runs = [r for rows in await bounded(LIST_CONCURRENCY, map(one, prefixes)) for r in rows]
    runs.sort(key=lambda r: (r.started_at, r.run_id, r.db_identifier))
    return runs
