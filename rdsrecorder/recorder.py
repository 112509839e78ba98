"""The recorder: one poll loop that serves all three sync modes, for one DB or a fleet.

Each round lists the log files of the instances that are *due*, gives them spans, keeps those
overlapping the window, and queues a copy for every file that is *ready*:

* complete — a newer file of its series exists (it rotated) or it has been idle for longer than
  the rotation period: copied once, never partially;
* in *Download interval & Finish* mode the file still being written is copied as it is now
  (marked partial; a re-run with the same run id replaces it once it has rotated);
* after ``finish + grace`` a file that still has not rotated is copied as it is, with a warning.

Backfill is simply the first round; following is the next rounds.

Listing is scheduled per instance (500 DBs listed every 30 s would spend more than the account's
API budget): an instance is listed again ``ROTATION_SLACK_S`` after its next expected rotation
(the newest file's timestamp + the rotation period learnt from the names), with an exponential
back-off from ``poll_interval_s`` when the rotation is late (up to ``idle_poll_s``); a period
learnt from minute names (which an idle spell may distort) is never trusted for longer than
``idle_poll_s``, while an hourly or daily name cannot change before its hour or day is over.
Readiness by idleness is judged at the time of the instance's last listing, never on stale data.

Copies run in one ``asyncio.TaskGroup``, at most ``concurrency`` at a time for the whole process
(memory per file in flight: see the README, "Speed and memory"). Ready files wait in a queue per
instance; a free slot goes to the oldest file across all instances (the one closest to expiry),
except that an instance already holding ``per_db_cap`` slots yields to the others while they have
work (a DB with 10,000 small files does not hold up the rest); at equal age the instance with the
fewest files in flight, then the one served least recently, goes first.

An instance that leaves (a cluster member removed, a DB no longer discovered or deleted) finishes:
every file of it already listed is queued at once — copied, or reported failed / lost.

A stop ``Event`` (SIGTERM / SIGINT) ends the loop: no new copy starts, copies in flight get
``shutdown_grace_s`` to finish and are then cancelled (their multipart uploads are aborted).

Series: only ``postgresql.log`` files (the PostgreSQL log, csv and, with ``include_plain``, its
plain twin) are copied and own the documented key ``rds_log_<RUNID>_<unix>``. Files of another
series (``error/audit.log.2024-03-04-17.csv``, say) are copied only when named in
``include_series``, and then under a key that names their series (``..._<unix>_audit.log``), so
they never take the key of a PostgreSQL log.

Following: a file that failed (or kept changing) is copied again in later rounds, after
``RETRY_FIRST_S`` doubling up to ``RETRY_MAX_S``, until it lands or RDS stops listing it (its
manifest entry stays ``failed`` meanwhile). A run with a finish keeps retrying until
``finish + grace``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from rdsrecorder.clock import Clock
from rdsrecorder.errors import AwsError, DbNotFoundError
from rdsrecorder.hooks import Hooks
from rdsrecorder.logfiles import (
    IDLE_SLACK_S,
    NOMINAL_PERIOD_S,
    SpannedFile,
    assign_spans,
    is_complete,
    object_key,
    parse_name,
    rotation_period_s,
    select,
)
from rdsrecorder.manifest import FileEntry
from rdsrecorder.models import FileStatus, LogFile
from rdsrecorder.rds.control import INSTANCE_NOT_FOUND
from rdsrecorder.times import human, iso
from rdsrecorder.transfer import Copier
from rdsrecorder.window import Mode, Window

log = logging.getLogger(__name__)

FULL_LISTING_EVERY = 10  # listings of an instance; between them FileLastWritten keeps them small
ROTATION_SLACK_S = 5.0  # list this long after an expected rotation (RDS shows the file at once)
IDLE_POLL_S = 600.0  # the slowest an instance is listed (idle DBs, late rotations)
MIN_ROTATION_S = 60  # log_rotation_age is 1 to 1440 minutes
DEFAULT_RETENTION_S = 3 * 86400.0  # rds.log_retention_period's default (4320 min)
LISTING_MARGIN_MS = 5 * 60 * 1000  # LastWritten is updated lazily: look back a little further
GRACE_EXTRA_S = 5 * 60
IN_FLIGHT = "in-flight"
ABORTED = "aborted"


POSTGRES_SERIES = "postgresql.log"
RETRY_FIRST_S = 30.0  # a failed file's first retry in a later round (follow mode)
RETRY_MAX_S = 15 * 60.0
RETRIED = (FileStatus.FAILED, FileStatus.CHANGED)


def series_of(name: str) -> str:
    """The series a log file belongs to: ``postgresql.log`` for ``error/postgresql.log.<date>``."""
    parsed = parse_name(name)
    base = parsed.base if parsed is not None else name
    return base.rsplit("/", 1)[-1]


def series_suffix(series: str) -> str:
    return "_" + re.sub(r"[^A-Za-z0-9.-]", "-", series)


class Lister(Protocol):
    def list_log_files(
        self, instance: str, since_ms: int | None = None
    ) -> AsyncIterator[LogFile]: ...


class ManifestSink(Protocol):
    def record(self, entry: FileEntry) -> None: ...

    def add_gap(self, instance: str, start: str, end: str, reason: str) -> None: ...

    async def flush(self, force: bool = False) -> None: ...


class Resolver(Protocol):
    async def instances(self) -> tuple[str, ...]:
        """Current instances of the target (cluster members change over time)."""
        ...


@dataclass
class RunTotals:
    copied: int = 0
    partial: int = 0
    skipped: int = 0
    failed: int = 0
    lost: int = 0
    changed: int = 0  # ended short or changed while read, on every attempt (nothing written)
    bytes: int = 0
    truncated_lines: int = 0
    not_started: int = 0  # ready, but the run was stopped before their copy began
    aborted: int = 0  # in flight when the run was stopped
    interrupted: bool = False
    entries: list[FileEntry] = field(default_factory=list)

    def add(self, entry: FileEntry) -> None:
        self.entries.append(entry)
        self._count(entry, 1)

    def replace(self, old: FileEntry, new: FileEntry) -> None:
        """A retried file's new ending replaces its earlier one (a failure that later landed is
        not a failure of the run)."""
        if old in self.entries:
            self.entries.remove(old)
            self._count(old, -1)
        self.add(new)

    def _count(self, entry: FileEntry, n: int) -> None:
        status = FileStatus(entry.status)
        name = {
            FileStatus.COPIED: "copied",
            FileStatus.PARTIAL: "partial",
            FileStatus.SKIPPED: "skipped",
            FileStatus.LOST: "lost",
            FileStatus.CHANGED: "changed",
        }.get(status, "failed")
        setattr(self, name, getattr(self, name) + n)
        if status in (FileStatus.COPIED, FileStatus.PARTIAL):
            self.bytes += n * entry.size
        self.truncated_lines += n * entry.truncated_lines

    @property
    def ok(self) -> bool:
        return not (
            self.failed or self.lost or self.changed or self.truncated_lines or self.interrupted
        )


class Recorder:
    def __init__(
        self,
        *,
        window: Window,
        run_id: str,
        per_instance_keys: bool,
        lister: Lister,
        resolver: Resolver,
        copier: Copier,
        manifest: ManifestSink,
        hooks: Hooks,
        clock: Clock,
        stop: asyncio.Event,
        concurrency: int,
        poll_interval_s: float,
        finish_grace_s: float | None,
        shutdown_grace_s: float,
        include_plain: bool = False,
        idle_poll_s: float = IDLE_POLL_S,
        per_db_cap: int | None = None,
        retention_s: Callable[[str], float] | None = None,
        fleet: bool = False,
        include_series: tuple[str, ...] = (),
    ) -> None:
        self._window = window
        self._run_id = run_id
        self._per_instance_keys = per_instance_keys
        self._lister = lister
        self._resolver = resolver
        self._copier = copier
        self._manifest = manifest
        self._hooks = hooks
        self._clock = clock
        self._stop = stop
        self._concurrency = concurrency
        # Work-conserving: the cap only applies while another instance has work queued.
        self._per_db_cap = per_db_cap or max(1, math.ceil(concurrency / 2))
        self._idle_poll_s = max(idle_poll_s, poll_interval_s)
        self._retention_s = retention_s or (lambda _instance: DEFAULT_RETENTION_S)
        self._poll_interval_s = poll_interval_s
        self._finish_grace_s = finish_grace_s
        self._shutdown_grace_s = shutdown_grace_s
        self._include_plain = include_plain
        self._series = frozenset({POSTGRES_SERIES, *include_series})
        self._skipped_series: set[tuple[str, str]] = set()
        self._retry_at: dict[tuple[str, str], float] = {}
        self._retries: dict[tuple[str, str], int] = {}
        self._ended: dict[tuple[str, str], FileEntry] = {}
        self._known: dict[tuple[str, str], LogFile] = {}
        # IN_FLIGHT, ABORTED or the FileStatus a copy ended with
        self._state: dict[tuple[str, str], str] = {}
        self._keys: dict[str, tuple[str, str]] = {}
        self._gaps: set[tuple[str, float, float]] = set()
        self._grace_warned: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._listing_failures = 0
        self.totals = RunTotals()
        # -- listing schedule, per instance --
        self._active: list[str] = []
        self._departed: set[str] = set()
        self._spanned: dict[str, list[SpannedFile]] = {}
        self._next_list_s: dict[str, float] = {}
        self._listed_at_s: dict[str, float] = {}
        self._listings: dict[str, int] = {}
        self._late: dict[str, int] = {}  # listings in a row that found the rotation late
        # -- the ready queue: one heap per instance of (timestamp, seq, file, key, complete) --
        self._queues: dict[str, list[tuple[int, int, SpannedFile, str, bool]]] = {}
        self._seq = itertools.count()
        self._busy = 0  # files downloading: at most ``concurrency``
        self._uploading = 0  # files downloaded whose upload is ending
        self._busy_by: dict[str, int] = {}
        self._served_at: dict[str, int] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._fleet = fleet  # an instance that no longer exists leaves instead of failing the run
        self._gone: set[str] = set()  # not found when listed: ignored while the resolver has it
        self.listing_calls = 0  # listings made (one per instance listed), for tests and benchmarks

    # -- listing ---------------------------------------------------------------------------------
    async def _refresh(self, instance: str, now_s: float) -> None:
        full = self._listings.get(instance, 0) % FULL_LISTING_EVERY == 0
        since_ms = None if full else self._since_ms(instance)
        seen: set[str] = set()
        self.listing_calls += 1
        async for f in self._lister.list_log_files(instance, since_ms):
            self._known[(instance, f.name)] = f
            seen.add(f.name)
        if full:
            # Expired by retention: forget files we are not copying any more.
            for k in [k for k in self._known if k[0] == instance and k[1] not in seen]:
                if self._state.get(k) != IN_FLIGHT:
                    del self._known[k]
        self._listings[instance] = self._listings.get(instance, 0) + 1
        self._listed_at_s[instance] = now_s
        before = self._spanned.get(instance, [])
        self._spanned[instance] = self._wanted(
            assign_spans(
                (f for (inst, _), f in self._known.items() if inst == instance),
                include_plain=self._include_plain,
            )
        )
        self._schedule(instance, now_s, before)

    def _schedule(self, instance: str, now_s: float, before: list[SpannedFile]) -> None:
        """When to list ``instance`` next: just after its next expected rotation."""
        files = self._spanned[instance]
        newest_s = max((sf.timestamp_s for sf in files), default=None)
        old_newest_s = max((sf.timestamp_s for sf in before), default=None)
        if newest_s is None:
            self._next_list_s[instance] = now_s + self._backoff_s(instance)
            return
        if old_newest_s is None or newest_s > old_newest_s:
            self._late[instance] = 0
        newest = max(files, key=lambda sf: sf.timestamp_s)
        learnt = NOMINAL_PERIOD_S[newest.granularity] is None
        if learnt and len({sf.timestamp_s for sf in files}) < 2:
            # One minute-named file tells nothing of the period but its least: log_rotation_age
            # is at least a minute. Look just after that, then again sooner than later.
            soonest_s = newest_s + MIN_ROTATION_S + ROTATION_SLACK_S
            self._next_list_s[instance] = (
                soonest_s if soonest_s > now_s else now_s + self._backoff_s(instance)
            )
            return
        expected_s = newest_s + rotation_period_s(files) + ROTATION_SLACK_S
        due_s = expected_s if expected_s > now_s else now_s + self._backoff_s(instance)
        # An hourly or daily name cannot change before its hour or day is over; a period learnt
        # from minute names may be wrong (an idle spell): then the idle poll bounds the wait.
        self._next_list_s[instance] = min(due_s, now_s + self._idle_poll_s) if learnt else due_s

    def _backoff_s(self, instance: str) -> float:
        late = self._late.get(instance, 0)
        self._late[instance] = late + 1
        return float(min(self._idle_poll_s, self._poll_interval_s * 2 ** min(late, 16)))

    def _since_ms(self, instance: str) -> int | None:
        pending = [
            f.last_written_ms
            for (inst, name), f in self._known.items()
            if inst == instance and (inst, name) not in self._state
        ]
        mine = [f.last_written_ms for (inst, _), f in self._known.items() if inst == instance]
        if not mine:
            return None
        return max(0, (min(pending) if pending else max(mine)) - LISTING_MARGIN_MS)

    async def _resolve(self) -> list[str] | None:
        try:
            resolved = await self._resolver.instances()
        except (AwsError, DbNotFoundError) as exc:
            self._failed_listing(exc)
            return None
        self._gone &= set(resolved)
        current = [i for i in resolved if i not in self._gone]
        for gone in sorted(set(self._active) - set(current)):
            self._depart(gone, "left")
        for back in set(current) & self._departed:
            self._departed.discard(back)
        self._active = current
        return current

    def _depart(self, instance: str, why: str) -> None:
        pending = sum(
            1
            for (inst, name) in self._known
            if inst == instance and (inst, name) not in self._state
        )
        log.info(
            "%s %s: its %d listed file(s) not copied yet are queued now", instance, why, pending
        )
        self._departed.add(instance)
        self._next_list_s.pop(instance, None)

    async def _list_due(self, instances: list[str]) -> bool:
        """Lists the instances that are due. An instance listed before queues its ready files
        at once; the first listings (the backfill) all come first, so that the oldest file of
        the whole fleet goes first, not the first DB listed. False when a listing failed."""
        failure: AwsError | None = None
        for instance in instances:
            now_s = self._clock.now()
            if self._stop.is_set() or self._next_list_s.get(instance, float("-inf")) > now_s:
                continue
            try:
                await self._refresh(instance, now_s)
            except AwsError as exc:
                if exc.code in INSTANCE_NOT_FOUND and self._fleet:
                    self._gone.add(instance)
                    self._active = [i for i in self._active if i != instance]
                    self._depart(instance, "no longer exists")
                    continue
                failure = failure or exc  # the others are still listed: one DB must not block all
                continue
            if self._listings[instance] > 1:
                self._evaluate([instance])  # queued at once: its rotation is what we waited for
        if failure is not None:
            self._failed_listing(failure)
            return False
        if self._listing_failures:
            self._hooks.healthy(True)
        self._listing_failures = 0
        return True

    def _failed_listing(self, exc: AwsError | DbNotFoundError) -> None:
        self._listing_failures += 1
        if self._window.mode is Mode.DOWNLOAD_AND_FINISH or self._listing_failures >= 20:
            raise exc
        log.warning("listing log files failed (%s); trying again next round", exc)
        if self._listing_failures >= 3:
            self._hooks.healthy(False, f"listing log files failed {self._listing_failures}x")

    # -- deciding ----------------------------------------------------------------------------------
    def _grace_s(self, period_s: int) -> float:
        if self._finish_grace_s is not None:
            return self._finish_grace_s
        return period_s + GRACE_EXTRA_S

    def _key(self, sf: SpannedFile) -> str:
        key = object_key(
            self._run_id, sf.timestamp_s, sf.instance if self._per_instance_keys else None
        )
        series = series_of(sf.name)
        if series != POSTGRES_SERIES:
            key += series_suffix(series)
        if not sf.name.endswith(".csv"):
            key += "_stderr"  # the plain twin (--include-plain) shares the csv file's timestamp
        ident = (sf.instance, sf.name)
        n = 1
        candidate = key
        while self._keys.setdefault(candidate, ident) != ident:
            n += 1
            candidate = f"{key}_{n}"
        if candidate != key:
            log.warning("%s %s shares its timestamp with another file: key %s", *ident, candidate)
        return candidate

    def _ready(
        self, selected: list[SpannedFile], period_s: int, listed_s: float, now_s: float
    ) -> tuple[list[tuple[SpannedFile, bool]], list[SpannedFile]]:
        ready: list[tuple[SpannedFile, bool]] = []
        waiting: list[SpannedFile] = []
        finish_s = self._window.finish_s
        for sf in selected:
            ident = (sf.instance, sf.name)
            if ident in self._state:
                if not self._retry_due(ident, now_s):
                    if ident in self._retry_at and self._retrying(now_s, period_s):
                        waiting.append(sf)  # the run waits for its retry
                    continue
                del self._state[ident]
            # Idleness is judged when the instance was last listed, never on stale data.
            if is_complete(sf, listed_s, period_s):
                ready.append((sf, True))
            elif sf.instance in self._departed:
                log.warning(
                    "%s %s: the instance left; copying the file as it is now", sf.instance, sf.name
                )
                ready.append((sf, False))
            elif self._window.mode is Mode.DOWNLOAD_AND_FINISH:
                log.warning(
                    "%s %s is still being written: copying it as it is now (re-run with the same "
                    "--run-id after it rotates to replace it)",
                    sf.instance,
                    sf.name,
                )
                ready.append((sf, False))
            elif finish_s is not None and now_s >= finish_s + self._grace_s(period_s):
                log.warning(
                    "%s %s has not rotated %.0f s after finish: copying it as it is",
                    sf.instance,
                    sf.name,
                    now_s - finish_s,
                )
                ready.append((sf, False))
            else:
                waiting.append(sf)
        return ready, waiting

    def _retry_due(self, ident: tuple[str, str], now_s: float) -> bool:
        at = self._retry_at.get(ident)
        return at is not None and now_s >= at and self._state.get(ident) in RETRIED

    def _retrying(self, now_s: float, period_s: int) -> bool:
        """Failed files are retried while the run follows: forever without a finish, until
        finish + grace with one."""
        finish_s = self._window.finish_s
        return finish_s is None or now_s < finish_s + self._grace_s(period_s)

    def _schedule_retry(self, sf: SpannedFile, entry: FileEntry) -> None:
        ident = (sf.instance, sf.name)
        if self._window.mode is Mode.DOWNLOAD_AND_FINISH or entry.status not in RETRIED:
            self._retry_at.pop(ident, None)
            self._retries.pop(ident, None)
            return
        n = self._retries.get(ident, 0) + 1
        self._retries[ident] = n
        delay_s = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (n - 1))
        self._retry_at[ident] = self._clock.now() + delay_s
        self._hooks.retry_scheduled(sf.instance)
        log.warning(
            "%s %s ended %s (%s); retry %d in %.0f s (the manifest says %s meanwhile)",
            sf.instance,
            sf.name,
            entry.status,
            entry.error or "no detail",
            n,
            delay_s,
            entry.status,
        )

    def _wanted(self, spanned: list[SpannedFile]) -> list[SpannedFile]:
        """Files of the series this run copies; the others are said once each."""
        out = []
        for sf in spanned:
            series = series_of(sf.name)
            if series in self._series:
                out.append(sf)
            elif (sf.instance, series) not in self._skipped_series:
                self._skipped_series.add((sf.instance, series))
                log.info(
                    "%s: files of series %s (%s, ...) are not copied (--include-series %s "
                    "copies them)",
                    sf.instance,
                    series,
                    sf.name,
                    series,
                )
        return out

    def _record_gaps(self, selected: list[SpannedFile], spanned: list[SpannedFile]) -> None:
        by_instance: dict[str, list[SpannedFile]] = {}
        for sf in selected:
            by_instance.setdefault(sf.instance, []).append(sf)
        oldest: dict[str, int] = {}
        for sf in spanned:
            oldest.setdefault(sf.instance, sf.timestamp_s)
        for instance, files in by_instance.items():
            first = files[0]
            if first.timestamp_s > self._window.start_s:
                reason = (
                    "before-retention"
                    if oldest.get(instance) == first.timestamp_s
                    else "no-log-file"
                )
                self._gap(instance, self._window.start_s, first.timestamp_s, reason)
            for a, b in itertools.pairwise(files):
                if a.end_s is not None and a.end_s < b.timestamp_s:
                    self._gap(instance, a.end_s, b.timestamp_s, "no-log-file")

    def _gap(self, instance: str, start_s: float, end_s: float, reason: str) -> None:
        if (instance, start_s, end_s) in self._gaps:
            return
        self._gaps.add((instance, start_s, end_s))
        log.info(
            "%s: no log file covers %s .. %s (%s)", instance, human(start_s), human(end_s), reason
        )
        self._manifest.add_gap(instance, iso(start_s), iso(end_s), reason)

    # -- copying -----------------------------------------------------------------------------------
    def _enqueue(self, sf: SpannedFile, complete: bool) -> None:
        self._state[(sf.instance, sf.name)] = IN_FLIGHT
        heapq.heappush(
            self._queues.setdefault(sf.instance, []),
            (sf.timestamp_s, next(self._seq), sf, self._key(sf), complete),
        )

    def _pick(self) -> str | None:
        """The instance whose queued file goes next (see the module docstring)."""
        best: tuple[bool, int, int, int] | None = None
        choice: str | None = None
        for instance, queue in self._queues.items():
            if not queue:
                continue
            busy = self._busy_by.get(instance, 0)
            rank = (
                busy >= self._per_db_cap,
                queue[0][0],
                busy,
                self._served_at.get(instance, -1),
            )
            if best is None or rank < best:
                best, choice = rank, instance
        return choice

    def _dispatch(self) -> None:
        tg = self._tg
        while (
            tg is not None
            and not self._stop.is_set()
            and self._busy < self._concurrency
            # Uploads that outlive their download (see _copy) are bounded too.
            and self._busy + self._uploading < 2 * self._concurrency
        ):
            instance = self._pick()
            if instance is None:
                return
            _, _, sf, key, complete = heapq.heappop(self._queues[instance])
            self._busy += 1
            self._busy_by[instance] = self._busy_by.get(instance, 0) + 1
            self._served_at[instance] = next(self._seq)
            task = tg.create_task(self._copy(sf, key, complete))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._look_ahead()

    def _look_ahead(self) -> None:
        """The S3 check of the files most likely to start next (the oldest queued ones), made
        while the slots are busy: see ``Copier.look_ahead``."""
        if self._stop.is_set():
            return
        n = self._concurrency
        heads = heapq.nsmallest(
            n, (e for q in self._queues.values() for e in heapq.nsmallest(n, q))
        )
        self._copier.look_ahead((key for _, _, _, key, _ in heads), limit=n)

    def _free_slot(self, instance: str) -> None:
        self._busy -= 1
        self._busy_by[instance] -= 1

    def queued(self, instance: str | None = None) -> int:
        """Files ready and waiting for a slot (of one instance, or of all)."""
        if instance is not None:
            return len(self._queues.get(instance, ()))
        return sum(len(q) for q in self._queues.values())

    async def _copy(self, sf: SpannedFile, key: str, complete: bool) -> None:
        ident = (sf.instance, sf.name)
        uploading = False

        def downloaded() -> None:
            # The download is over: its slot goes to the next file while this upload ends.
            nonlocal uploading
            if not uploading:
                uploading = True
                self._free_slot(sf.instance)
                self._uploading += 1
                self._dispatch()

        try:
            entry = await self._copier.copy(sf, key, complete=complete, downloaded=downloaded)
        except asyncio.CancelledError:
            self._state[ident] = ABORTED
            self.totals.aborted += 1
            raise
        finally:
            if uploading:
                self._uploading -= 1
            else:
                self._free_slot(sf.instance)
        self._state[ident] = entry.status
        earlier = self._ended.get(ident)
        if earlier is None:
            self.totals.add(entry)
        else:
            self.totals.replace(earlier, entry)
        self._ended[ident] = entry
        self._schedule_retry(sf, entry)
        self._manifest.record(entry)
        self._dispatch()
        await self._manifest.flush()

    def _finished(self, now_s: float, waiting: bool) -> bool:
        if self._window.mode is Mode.DOWNLOAD_AND_FINISH:
            return True
        finish_s = self._window.finish_s
        if finish_s is None or now_s < finish_s or waiting:
            return False
        # Every file that overlaps the window is copied or in flight. Wait until each instance
        # shows a file that starts at or after finish (or a minute passed), so that a rotation the
        # listing has not caught up with yet is not missed.
        if now_s >= finish_s + IDLE_SLACK_S:
            return True
        newest = {inst: 0 for inst in self._active}
        for (inst, _), f in self._known.items():
            if inst in newest:
                newest[inst] = max(newest[inst], f.last_written_ms)
        return all(ms / 1000 >= finish_s for ms in newest.values())

    async def run(self) -> RunTotals:
        w = self._window
        log.info(
            "recording %s .. %s (%s), looking every %.0f s",
            human(w.start_s),
            human(w.finish_s) if w.finish_s is not None else "forever",
            w.mode.label,
            self._poll_interval_s,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                await self._loop()
                await self._drain()
        finally:
            self._copier.close()
        self.totals.interrupted = self._stop.is_set()
        return self.totals

    async def _loop(self) -> None:
        next_poll_s = self._clock.now()
        while not self._stop.is_set():
            instances = await self._resolve()
            if instances is not None and await self._list_due(instances):
                now_s = self._clock.now()
                waiting = self._evaluate([*instances, *sorted(self._departed)])
                self._departed = {i for i in self._departed if self.queued(i)}
                if self._finished(now_s, waiting):
                    return
            # Drift-correcting schedule: the next look is due poll_interval after the previous
            # one was due, or when an instance is due to be listed, whichever is first.
            next_poll_s += self._poll_interval_s
            if next_poll_s < self._clock.now():
                next_poll_s = self._clock.now() + self._poll_interval_s
            wake_s = min([next_poll_s, *self._next_list_s.values()])
            if not await self._clock.sleep_until(max(wake_s, self._clock.now()), self._stop):
                return

    def _evaluate(self, instances: Iterable[str]) -> bool:
        """Queues the ready files of ``instances``; True when some file still waits to rotate."""
        now_s = self._clock.now()
        any_waiting = False
        for inst in instances:
            spanned = self._spanned.get(inst, [])
            selected = select(spanned, self._window.start_s, self._window.finish_s)
            self._record_gaps(selected, spanned)
            ready, waiting = self._ready(
                selected,
                rotation_period_s(spanned),
                self._listed_at_s.get(inst, now_s),
                now_s,
            )
            for sf, complete in ready:
                self._enqueue(sf, complete)
            any_waiting = any_waiting or bool(waiting)
            self._report(inst, selected, now_s)
        self._dispatch()
        return any_waiting

    def _report(self, inst: str, selected: list[SpannedFile], now_s: float) -> None:
        """Per-instance gauges: files pending, retention headroom, lag behind the last rotation."""
        pending = [
            sf for sf in selected if self._state.get((sf.instance, sf.name), IN_FLIGHT) == IN_FLIGHT
        ]
        self._hooks.files_pending(inst, len(pending))
        retention_s = self._retention_s(inst)
        oldest_ms = min((sf.file.last_written_ms for sf in pending), default=None)
        headroom_s = retention_s if oldest_ms is None else oldest_ms / 1000 + retention_s - now_s
        self._hooks.retention_headroom(inst, max(0.0, headroom_s))
        rotated = [sf.end_s for sf in pending if sf.end_s is not None and sf.has_successor]
        self._hooks.lag(inst, max(0.0, now_s - min(rotated)) if rotated else 0.0)

    async def _drain(self) -> None:
        if not self._stop.is_set():
            # A backfill's last look ends here: its copies (and the queued ones) must still see
            # a stop.
            stopped = asyncio.ensure_future(self._stop.wait())
            try:
                while self._tasks and not self._stop.is_set():
                    await asyncio.wait({*self._tasks, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
            if not self._stop.is_set():
                return
        self._drop_queued()
        if not self._tasks:
            return
        in_flight = [k for k, v in self._state.items() if v == IN_FLIGHT]
        log.warning(
            "stopping: %d file(s) in flight get %.0f s to finish; the rest is aborted "
            "(re-run with the same --run-id to resume)",
            len(in_flight),
            self._shutdown_grace_s,
        )
        _, pending = await asyncio.wait(set(self._tasks), timeout=self._shutdown_grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def _drop_queued(self) -> None:
        for queue in self._queues.values():
            for _, _, sf, _, _ in queue:
                self._state.pop((sf.instance, sf.name), None)
                self.totals.not_started += 1
            queue.clear()


def summary_line(t: RunTotals) -> str:
    return (
        f"{t.copied} copied, {t.partial} copied while still written, {t.skipped} already in S3, "
        f"{t.failed} failed, {t.lost} lost, "
        + (f"{t.changed} changed while read, " if t.changed else "")
        + f"{t.truncated_lines} truncated line(s), "
        f"{t.bytes} bytes"
        + (f", {t.aborted} aborted by the stop" if t.aborted else "")
        + (f", {t.not_started} not started before the stop" if t.not_started else "")
    )
