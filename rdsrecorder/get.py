"""``rdsrecorder get``: the log files of one DB for a time window, back from S3, whatever run
copied them.

* **Finding the copies.** Every manifest of the bucket is read: ``<RUNID>/manifest.json`` (one DB
  per run) and ``<RUNID>/<db>/manifest.json`` (several DBs per run), that is the keys named
  ``manifest.json`` at depth 1 or 2. A manifest's entries count when the manifest was made for
  the DB (``db_identifier``: an instance, or an Aurora cluster and so all its members) or when
  the entry's ``instance`` is the DB. Entries that landed (``copied``, ``partial``, ``skipped``)
  and whose span overlaps ``[start, finish)`` are the candidates.
* **Choosing.** Per (instance, RDS file name), every copy (across runs, raw or gzip), best first:
  a complete copy over one taken while the file was still being written, then the newest
  (``copied_at``). The first copy that passes its check is the one written; a copy that fails
  it is said in a warning and the next one is tried. A file fails only when no copy passes.
* **Fetching.** At most ``concurrency`` objects at a time, streamed (memory: one read chunk and
  one decompressed piece per object), decompressed when ``.gz``, and checked against the
  manifest's size and sha256 of the log's bytes before they count. Files go to
  ``<output_dir>/<instance>/<RDS file name>``
  (``.../prod-db/error/postgresql.log.2024-02-04-13.csv``) through a ``.part`` file renamed
  once checked, so a file that is there is whole and right.
  Names that would leave the directory (``..``, absolute) are refused.
* **stdout.** Files in time order, each spooled to an anonymous temporary file and checked before
  its first byte reaches the pipe; the next ones are fetched meanwhile (the same bound).
* **Holes.** Per instance, the spans of the copies written (a copy taken while its file was
  still being written covers only up to its ``copied_at``) and the gaps the runs recorded (no
  log file, before RDS retention) must chain from ``start`` to ``finish``; what does not is
  reported.

The result is a ``GetReport``; the command's exit code: 0 when every file was written and
checked and there is no hole, 6 (``EXIT_VERIFY``) otherwise (the files that passed are written
anyway), and 6 with one ``error:`` line when the bucket has no copy of the DB in the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from rdsrecorder.compression import decompressed
from rdsrecorder.concurrency import bounded
from rdsrecorder.errors import EXIT_OK, EXIT_VERIFY, AwsError, RdsRecorderError
from rdsrecorder.hooks import Hooks
from rdsrecorder.manifest import FileEntry, Manifest
from rdsrecorder.models import FileStatus
from rdsrecorder.times import iso, parse_iso
from rdsrecorder.verify import LIST_CONCURRENCY, SPAN_SLACK_S, entry_compression, run_manifests

log = logging.getLogger(__name__)


class GetError(RdsRecorderError):
    exit_code = EXIT_VERIFY


class NoCopyError(GetError):
    """No run holds a copy of the DB in the window."""


class Store(Protocol):
    """What ``get`` needs of ``rdsrecorder.s3.bucket.Bucket``."""

    async def get_bytes(self, key: str) -> bytes | None: ...

    def iter_object(self, key: str) -> AsyncIterator[bytes]: ...

    async def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> list[str]: ...


@dataclass(frozen=True)
class Candidate:
    entry: FileEntry
    run_id: str
    start_s: float
    covers_until_s: float  # the end of its span, or its copy time for a copy of a live file

    @property
    def complete(self) -> bool:
        return self.entry.complete and self.entry.status is not FileStatus.PARTIAL


@dataclass
class GotFile:
    instance: str
    source: str
    run_id: str
    key: str
    size: int
    path: str  # "" when streamed to stdout


@dataclass
class GetReport:
    db_identifier: str
    start_s: float
    finish_s: float
    runs: int = 0  # manifests that hold copies of the DB in the window
    files: list[GotFile] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # one line each: checksum, read, name
    # Copies that failed their check where another copy of the same file passed (not failures).
    replaced: list[str] = field(default_factory=list)
    holes: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)  # files only copied while being written

    @property
    def exit_code(self) -> int:
        return EXIT_VERIFY if self.failures or self.holes else EXIT_OK


async def find_manifests(store: Store) -> list[tuple[str, Manifest]]:
    """Every readable manifest of the bucket, at depth 1 or 2, by key: each run's, as verify
    reads them (an unreadable one is skipped with a warning)."""

    async def in_run(prefix: str) -> list[tuple[str, Manifest]]:
        return await run_manifests(store, prefix.rstrip("/"), strict=False)

    runs = await store.list_prefixes("")
    out = [m for found in await bounded(LIST_CONCURRENCY, map(in_run, runs)) for m in found]
    out.sort(key=lambda km: km[0])
    return out


def _covers_until(entry: FileEntry) -> float:
    end_s = parse_iso(entry.span_end) if entry.span_end else float("inf")
    if (not entry.complete or entry.status is FileStatus.PARTIAL) and entry.copied_at:
        end_s = min(end_s, parse_iso(entry.copied_at))
    return end_s


def candidates(
    manifests: list[tuple[str, Manifest]], db: str, start_s: float, finish_s: float
) -> tuple[list[Candidate], set[str], list[dict[str, str]], int]:
    """The copies of ``db`` overlapping the window, the instances the matching runs cover, their
    recorded gaps, and how many manifests matched."""
    found: list[Candidate] = []
    instances: set[str] = set()
    gaps: list[dict[str, str]] = []
    runs = 0
    for _, m in manifests:
        whole_run = m.db_identifier == db
        matched = False
        for entry in m.files.values():
            if not (whole_run or entry.instance == db):
                continue
            if not entry.status.landed or not entry.sha256:
                continue
            begin_s = parse_iso(entry.span_start)
            end_s = parse_iso(entry.span_end) if entry.span_end else float("inf")
            if begin_s >= finish_s or end_s <= start_s:
                continue
            found.append(Candidate(entry, m.run_id, begin_s, _covers_until(entry)))
            instances.add(entry.instance)
            matched = True
        if whole_run:
            instances.update(m.instances)
        if matched or whole_run:
            runs += matched
            gaps += [g for g in m.gaps if whole_run or g.get("instance") == db]
    return found, instances, gaps, runs


def _rank(c: Candidate) -> tuple[bool, str, str]:
    return (c.complete, c.entry.copied_at, c.run_id)


def choose(found: list[Candidate]) -> list[list[Candidate]]:
    """The copies of each (instance, file), best first (complete over partial, then the newest),
    one per object key; the files in time order. ``get`` takes the first that passes its check."""
    copies: dict[tuple[str, str], dict[str, Candidate]] = {}
    for c in found:
        by_key = copies.setdefault((c.entry.instance, c.entry.source), {})
        held = by_key.get(c.entry.key)
        if held is None or _rank(c) > _rank(held):
            by_key[c.entry.key] = c
    ranked = [sorted(by_key.values(), key=_rank, reverse=True) for by_key in copies.values()]
    return sorted(ranked, key=lambda cs: (cs[0].start_s, cs[0].entry.instance, cs[0].entry.source))


def holes(
    chosen: list[Candidate],
    instances: set[str],
    gaps: list[dict[str, str]],
    start_s: float,
    finish_s: float,
) -> list[str]:
    out: list[str] = []
    for instance in sorted(instances):
        intervals = [(c.start_s, c.covers_until_s) for c in chosen if c.entry.instance == instance]
        intervals += [
            (parse_iso(g["start"]), parse_iso(g["end"]))
            for g in gaps
            if g.get("instance") == instance
        ]
        intervals.sort()
        covered_s = start_s
        for begin_s, end_s in intervals:
            if begin_s >= finish_s:
                break
            if begin_s > covered_s + SPAN_SLACK_S:
                out.append(f"{instance}: nothing covers {iso(covered_s)} .. {iso(begin_s)}")
            covered_s = max(covered_s, end_s)
        if covered_s < finish_s - SPAN_SLACK_S:
            out.append(f"{instance}: nothing covers {iso(covered_s)} .. {iso(finish_s)}")
    return out


def safe_relative(instance: str, source: str) -> PurePosixPath:
    """``<instance>/<source>``, refused when either would leave the output directory."""
    inst = PurePosixPath(instance)
    src = PurePosixPath(source)
    if (
        len(inst.parts) != 1
        or inst.is_absolute()
        or src.is_absolute()
        or not src.parts
        or any(part in ("", ".", "..") for part in (*inst.parts, *src.parts))
        or "\\" in instance + source
        or "\0" in instance + source
    ):
        raise ValueError(f"refusing the unsafe file name {instance!r} / {source!r}")
    return inst / src


async def _fetch(store: Store, c: Candidate, out: IO[bytes], hooks: Hooks) -> str | None:
    """Writes the log's bytes of ``c`` to ``out``; None when they match the manifest, else why."""
    sha = hashlib.sha256()
    size = 0
    entry = c.entry

    async def counted() -> AsyncIterator[bytes]:
        async for chunk in store.iter_object(entry.key):
            hooks.bytes_downloaded(entry.instance, len(chunk))
            yield chunk

    try:
        async for chunk in decompressed(counted(), entry_compression(entry)):
            sha.update(chunk)
            size += len(chunk)
            await asyncio.to_thread(out.write, chunk)
    except ValueError as exc:
        return f"{entry.key}: {exc}"
    except AwsError as exc:
        return f"{entry.key}: {exc}"
    if size != entry.size:
        return f"{entry.key}: {size} bytes, the manifest of run {c.run_id} says {entry.size}"
    if sha.hexdigest() != entry.sha256:
        return f"{entry.key}: sha256 does not match the manifest of run {c.run_id}"
    return None


async def _first_good(
    store: Store, copies: list[Candidate], out: IO[bytes], hooks: Hooks, report: GetReport
) -> Candidate | None:
    """Writes to ``out`` the first of ``copies`` whose bytes match its manifest entry; None when
    none does (each failure is reported). ``out`` is emptied before each further try."""
    problems: list[str] = []
    for c in copies:
        out.seek(0)
        out.truncate()
        problem = await _fetch(store, c, out, hooks)
        if problem is None:
            if problems:
                log.warning(
                    "%s %s: %s; a good copy was found in s3 %s of run %s",
                    c.entry.instance,
                    c.entry.source,
                    "; ".join(problems),
                    c.entry.key,
                    c.run_id,
                )
                report.replaced += problems
            return c
        problems.append(problem)
    report.failures += problems
    return None


async def _to_dir(
    store: Store, copies: list[Candidate], root: Path, hooks: Hooks, report: GetReport
) -> Candidate | None:
    entry = copies[0].entry
    try:
        relative = safe_relative(entry.instance, entry.source)
    except ValueError as exc:
        report.failures.append(f"{entry.key}: {exc}")
        return None
    final = root / relative
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    with part.open("w+b") as out:
        good = await _first_good(store, copies, out, hooks, report)
    if good is None:
        part.unlink(missing_ok=True)
        return None
    os.replace(part, final)
    e = good.entry
    report.files.append(GotFile(e.instance, e.source, good.run_id, e.key, e.size, str(final)))
    return good


async def _to_stream(
    store: Store,
    chosen: list[list[Candidate]],
    sink: IO[bytes],
    concurrency: int,
    hooks: Hooks,
    report: GetReport,
) -> list[Candidate]:
    """In time order; up to ``concurrency`` files fetched ahead into anonymous temp files.
    Returns the copies written."""

    async def spooled(copies: list[Candidate]) -> tuple[IO[bytes], Candidate | None]:
        spool = tempfile.TemporaryFile()
        try:
            return spool, await _first_good(store, copies, spool, hooks, report)
        except BaseException:
            spool.close()
            raise

    written: list[Candidate] = []
    pending: list[asyncio.Task[tuple[IO[bytes], Candidate | None]]] = []
    queue = list(chosen)
    try:
        while queue or pending:
            while queue and len(pending) < max(1, concurrency):
                pending.append(asyncio.create_task(spooled(queue.pop(0))))
            spool, good = await pending.pop(0)
            with spool:
                if good is None:
                    return written  # nothing after a bad file: the pipe must not skip ahead
                spool.seek(0)
                while block := await asyncio.to_thread(spool.read, 1 << 20):
                    await asyncio.to_thread(sink.write, block)
                await asyncio.to_thread(sink.flush)
            e = good.entry
            report.files.append(GotFile(e.instance, e.source, good.run_id, e.key, e.size, ""))
            written.append(good)
        return written
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                spool, _ = await task
                spool.close()


async def get_window(
    store: Store,
    db: str,
    start_s: float,
    finish_s: float,
    *,
    output_dir: str | None,
    stdout: IO[bytes] | None = None,
    concurrency: int = 4,
    hooks: Hooks | None = None,
) -> GetReport:
    hooks = hooks or Hooks()
    report = GetReport(db, start_s, finish_s)
    manifests = await find_manifests(store)
    found, instances, gaps, report.runs = candidates(manifests, db, start_s, finish_s)
    if not found:
        raise NoCopyError(
            f"no copy of {db!r} overlaps {iso(start_s)} .. {iso(finish_s)} in this bucket "
            f"({len(manifests)} manifest(s) read)"
        )
    chosen = choose(found)
    log.info(
        "get %s: %d file(s) from %d run(s) for %s .. %s",
        db,
        len(chosen),
        report.runs,
        iso(start_s),
        iso(finish_s),
    )
    if stdout is not None:
        # Stops at a file without a good copy: what follows is not written (and is a hole).
        written = await _to_stream(store, chosen, stdout, concurrency, hooks, report)
    else:
        assert output_dir is not None
        root = Path(output_dir)
        root.mkdir(parents=True, exist_ok=True)
        got = await bounded(concurrency, (_to_dir(store, cs, root, hooks, report) for cs in chosen))
        written = [c for c in got if c is not None]
        report.files.sort(key=lambda f: f.path)
    # Holes: what the copies written cover (and the gaps recorded); a file with no good copy
    # leaves its span uncovered.
    report.holes = holes(written, instances, gaps, start_s, finish_s)
    report.partial = [
        f"{c.entry.instance} {c.entry.source}: copied while still being written "
        f"(up to {c.entry.copied_at})"
        for c in written
        if not c.complete
    ]
    return report
