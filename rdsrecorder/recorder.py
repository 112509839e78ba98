"""The recorder: one loop that serves all three sync modes, for one DB or a fleet.

Each DB is listed when it is due (``schedule.ListingSchedule``); its files get spans, those
overlapping the window are kept, and every file that is *ready* goes to the ready queue
(``readyqueue.ReadyQueue``), which hands the ``concurrency`` slots out oldest-first and fairly.
A file is ready when:

* it is complete: a newer file of its series exists (it rotated), or it has been idle for longer
  than the rotation period, judged at the time of its DB's last listing (never on stale data);
  it is copied once, never partially;
* in *Download interval & Finish* mode the file still being written is copied as it is now
  (marked partial; a re-run with the same run id copies it again once it has rotated, beside
  the partial copy);
* after ``finish + grace`` a file that still has not rotated is copied as it is, with a warning.

Backfill is the first listing of every DB (all of them before any copy, so that the oldest file
of the fleet goes first); following is the next ones. A DB that leaves (a cluster member removed,
a DB no longer discovered or deleted) finishes: every file of it already listed is queued at
once, copied or reported failed / lost.

Following: a file that failed (or kept changing) is copied again after ``RETRY_FIRST_S`` doubling
up to ``RETRY_MAX_S``, until it lands or RDS stops listing it (its manifest entry says ``failed``
meanwhile); a run with a finish retries until ``finish + grace``.

A stop ``Event`` (SIGTERM / SIGINT) ends the loop: no new copy starts, copies in flight get
``shutdown_grace_s`` to finish and are then cancelled (their multipart uploads are aborted).

Only ``postgresql.log`` files are copied, and the series named in ``include_series`` (their keys:
``dbstate``). State is per DB (``dbstate.DbState``, its files by name): a DB's listing, readiness
and gauges touch that DB's files only, so their CPU does not grow with the fleet. Layout and
costs: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rdsrecorder.clock import Clock
from rdsrecorder.concurrency import cancelled
from rdsrecorder.dbstate import (
    ABORTED,
    IN_FLIGHT,
    POSTGRES_SERIES,
    DbState,
    FileState,
    file_key,
    series_of,
)
from rdsrecorder.errors import AwsError, DbNotFoundError
from rdsrecorder.hooks import Hooks
from rdsrecorder.logfiles import (
    IDLE_SLACK_S,
    SpannedFile,
    assign_spans,
    is_complete,
    rotation_period_s,
    select,
)
from rdsrecorder.manifest import FileEntry
from rdsrecorder.models import FileStatus, LogFile
from rdsrecorder.rds.control import INSTANCE_NOT_FOUND
from rdsrecorder.readyqueue import ReadyQueue
from rdsrecorder.schedule import IDLE_POLL_S, ListingSchedule, Timers
from rdsrecorder.times import human, iso
from rdsrecorder.transfer import Copier
from rdsrecorder.window import Mode, Window

log = logging.getLogger(__name__)

DEFAULT_RETENTION_S = 3 * 86400.0  # rds.log_retention_period's default (4320 min)
GRACE_EXTRA_S = 5 * 60

RETRY_FIRST_S = 30.0  # a failed file's first retry (follow mode)
RETRY_MAX_S = 15 * 60.0
RETRIED = (FileStatus.FAILED, FileStatus.CHANGED)


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

    def incarnation(self, instance: str) -> str:
        """The instance's DbiResourceId ("" when not known): a new one is a new DB."""
        ...

    def recreated(self) -> list[str]:
        """The instances recreated under their name since the last call (new incarnations)."""
        ...

    def lost(self, instance: str) -> None:
        """A listing said ``instance`` does not exist."""
        ...


@dataclass
class RunTotals:
    copied: int = 0
    partial: int = 0
    skipped: int = 0
    failed: int = 0
    lost: int = 0
    changed: int = 0  # ended short or changed while read, on every attempt (nothing written)
    truncated: int = 0  # landed with lines the portion API cut (a known loss)
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
            FileStatus.TRUNCATED: "truncated",
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


@dataclass(slots=True)
class _Copy:
    db: DbState
    file: FileState
    sf: SpannedFile
    complete: bool


@dataclass(frozen=True)
class RecorderSettings:
    """What a run records and at what pace (``commands`` fills it from ``SyncSettings``)."""

    window: Window
    run_id: str
    per_instance_keys: bool  # keys under <RUNID>/<instance>/ (a fleet, a cluster)
    concurrency: int  # files in flight, for the whole process
    poll_interval_s: float
    finish_grace_s: float | None  # None: a rotation period + GRACE_EXTRA_S
    shutdown_grace_s: float
    include_plain: bool = False
    include_series: tuple[str, ...] = ()
    idle_poll_s: float = IDLE_POLL_S
    per_db_cap: int | None = None  # None: half the slots
    fleet: bool = False  # an instance that no longer exists leaves instead of failing the run


class Recorder:
    def __init__(
        self,
        settings: RecorderSettings,
        *,
        lister: Lister,
        resolver: Resolver,
        copier: Copier,
        manifest: ManifestSink,
        hooks: Hooks,
        clock: Clock,
        stop: asyncio.Event,
        retention_s: Callable[[str], float] | None = None,
    ) -> None:
        self._settings = s = settings
        self._window = s.window
        self._lister = lister
        self._resolver = resolver
        self._copier = copier
        self._manifest = manifest
        self._hooks = hooks
        self._clock = clock
        self._stop = stop
        self._series = frozenset({POSTGRES_SERIES, *s.include_series})
        self._retention_s = retention_s or (lambda _instance: DEFAULT_RETENTION_S)
        self._schedule = ListingSchedule(
            poll_interval_s=s.poll_interval_s, idle_poll_s=s.idle_poll_s
        )
        # Work-conserving: the cap only applies while another DB has work queued.
        cap = s.per_db_cap or max(1, math.ceil(s.concurrency / 2))
        self._ready: ReadyQueue[_Copy] = ReadyQueue(slots=s.concurrency, per_db_cap=cap)
        self._dbs: dict[str, DbState] = {}
        self._resolved: tuple[str, ...] | None = None
        self._active: set[str] = set()
        self._gone: set[str] = set()  # not found when listed: ignored while the resolver has it
        self._unevaluated: list[DbState] = []  # listed for the first time, not evaluated yet
        self._recheck = Timers()  # when a DB's readiness changes with time alone (retry, grace)
        self._waiting: set[str] = set()  # DBs with files that wait to rotate or to be retried
        # What each DB of ``_waiting`` waits for, said in the log after finish (once per change).
        self._waits_for: dict[str, str] = {}
        self._said_waits = ""
        self._behind: set[str] = set()  # DBs whose newest file was written before finish
        self._lagging: set[str] = set()  # DBs with rotated files not copied yet (lag > 0)
        self._listing_failures = 0
        self._stopped_at: float | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.totals = RunTotals()
        self.listing_calls = 0  # listings made (one per DB listed), for tests and benchmarks

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self) -> RunTotals:
        w = self._window
        log.info(
            "recording %s .. %s (%s), looking every %.0f s",
            human(w.start_s),
            human(w.finish_s) if w.finish_s is not None else "forever",
            w.mode.label,
            self._settings.poll_interval_s,
        )
        noted = asyncio.ensure_future(self._note_stop())
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                await self._loop()
                await self._drain()
        finally:
            noted.cancel()
        self.totals.interrupted = self._stop.is_set()
        return self.totals

    async def _note_stop(self) -> None:
        """When the stop came (the loop's time): the grace counts from then, as the shutdown
        deadline of AWS calls does (``Aws.end_after``), not from when the drain began."""
        await self._stop.wait()
        self._stopped_at = asyncio.get_running_loop().time()

    async def _loop(self) -> None:
        next_poll_s = self._clock.now()
        while not self._stop.is_set():
            # Every poll: the resolver (members join and leave) and the gauges that age with
            # time. In between, a wake-up lists and re-checks only the DBs that are due.
            polled = self._clock.now() >= next_poll_s
            if await self._until_stop(self._look(polled)):
                return
            if polled:  # drift-correcting: the next poll is due poll_interval after this one was
                next_poll_s += self._settings.poll_interval_s
                if next_poll_s < self._clock.now():
                    next_poll_s = self._clock.now() + self._settings.poll_interval_s
            wake_s = min(
                t
                for t in (
                    next_poll_s,
                    self._schedule.next_s(),
                    self._recheck.next_s(),
                    self._finish_wake_s(),
                )
                if t is not None
            )
            if not await self._clock.sleep_until(max(wake_s, self._clock.now()), self._stop):
                return

    async def _look(self, polled: bool) -> bool:
        """One wake-up: resolve (on a poll), list what is due, queue what is ready. True when
        the run is over."""
        if (not polled or await self._resolve()) and await self._list_due():
            now_s = self._clock.now()
            self._evaluate([self._dbs[i] for i in self._recheck.pop_due(now_s)])
            if polled:
                for instance in list(self._lagging):
                    self._gauges(self._dbs[instance], now_s)
            if self._finished(now_s):
                return True
            self._say_waits(now_s)
        return False

    async def _until_stop(self, look: Coroutine[Any, Any, bool]) -> bool:
        """``look``'s answer, or True as soon as the stop is set: a listing that AWS does not
        answer must not hold a shutdown (the copies in flight get the grace, not the listing)."""
        task = asyncio.ensure_future(look)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await cancelled(task)
            raise
        finally:
            stopped.cancel()
        if not task.done():
            await cancelled(task)
            return True
        return task.result()

    def _finished(self, now_s: float) -> bool:
        if self._window.mode is Mode.DOWNLOAD_AND_FINISH:
            return True
        finish_s = self._window.finish_s
        if finish_s is None or now_s < finish_s or self._waiting:
            return False
        # Every file that overlaps the window is copied or in flight. Wait until each DB shows a
        # file written at or after finish (or a minute passed, or the shorter --finish-grace), so
        # that a rotation the listing has not caught up with yet is not missed.
        return now_s >= finish_s + self._finish_slack_s() or not self._behind

    def _finish_slack_s(self) -> float:
        grace_s = self._settings.finish_grace_s
        return IDLE_SLACK_S if grace_s is None else min(float(IDLE_SLACK_S), grace_s)

    def _finish_wake_s(self) -> float | None:
        """Wake-ups of their own around finish: at finish (to say what the run waits for), and
        when the wait for a file written after finish ends (no listing may be due for long after
        a DB's last file was copied)."""
        finish_s = self._window.finish_s
        if finish_s is None:
            return None
        if self._clock.now() < finish_s:
            return finish_s
        if self._waiting or not self._behind:
            return None
        return finish_s + self._finish_slack_s()

    def _say_waits(self, now_s: float) -> None:
        """After finish: what the run still waits for, one line each time it changes."""
        finish_s = self._window.finish_s
        if finish_s is None or now_s < finish_s:
            return
        waits = [self._waits_for.get(i) or f"{i}: a retry" for i in sorted(self._waiting)]
        if not waits and self._behind:
            until = human(finish_s + self._finish_slack_s())
            waits = [
                f"{i}: a file written after finish (until {until})" for i in sorted(self._behind)
            ]
        said = "; ".join(waits)
        if said and said != self._said_waits:
            log.info("finish passed; waiting for %s", said)
        self._said_waits = said

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
        for job in self._ready.clear():
            job.file.state = None
            self.totals.not_started += 1
        if not self._tasks:
            return
        loop = asyncio.get_running_loop()
        stopped_at = self._stopped_at if self._stopped_at is not None else loop.time()
        grace_s = max(0.0, stopped_at + self._settings.shutdown_grace_s - loop.time())
        log.warning(
            "stopping: %d file(s) in flight get %.1f s to finish; the rest is aborted "
            "(re-run with the same --run-id to resume)",
            self._ready.in_flight,
            grace_s,
        )
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- the DBs followed --------------------------------------------------------------------------
    async def _resolve(self) -> bool:
        try:
            resolved = await self._resolver.instances()
        except (AwsError, DbNotFoundError) as exc:
            self._failed_listing(exc)
            return False
        now_s = self._clock.now()
        for instance in self._resolver.recreated():
            self._renew(instance, now_s)
        if resolved == self._resolved:
            return True
        self._resolved = resolved
        self._gone &= set(resolved)
        current = [i for i in resolved if i not in self._gone]
        for gone in sorted(self._active.difference(current)):
            self._depart(gone, "left")
        for instance in current:
            if instance not in self._active:
                self._join(instance, now_s)
        return True

    def _renew(self, instance: str, now_s: float) -> None:
        """A new incarnation of ``instance`` (recreated under its name): what is known of the
        old one's files goes (its copies in flight end as they end, on their own state) and the
        new one is listed afresh, from the window's start. Its files are other files even where
        a name repeats: ``LogFile.incarnation`` sends them beside the old copies (``Copier``)."""
        incarnation = self._resolver.incarnation(instance)
        if instance not in self._dbs:
            return  # not followed yet: it joins with its incarnation
        for job in self._ready.drop(instance):
            job.file.state = None
        self._dbs[instance] = DbState(instance, incarnation=incarnation)
        self._gone.discard(instance)
        self._recheck.drop(instance)
        for tracked in (self._waiting, self._behind, self._lagging):
            tracked.discard(instance)
        self._schedule.drop(instance)
        if instance in self._active:
            self._schedule.add(instance, now_s)
            self._track_finish(self._dbs[instance])
        self._resolved = None  # joined again below, if it had left

    def _join(self, instance: str, now_s: float) -> None:
        db = self._dbs.setdefault(
            instance, DbState(instance, incarnation=self._resolver.incarnation(instance))
        )
        db.departed = False
        self._active.add(instance)
        self._schedule.add(instance, now_s)
        self._track_finish(db)

    def _depart(self, instance: str, why: str) -> None:
        db = self._dbs[instance]
        pending = sum(1 for st in db.files.values() if st.state is None)
        log.info(
            "%s %s: its %d listed file(s) not copied yet are queued now", instance, why, pending
        )
        db.departed = True
        self._active.discard(instance)
        self._behind.discard(instance)
        self._schedule.drop(instance)
        self._recheck.set(instance, self._clock.now())  # its files are queued on this wake-up

    def _track_finish(self, db: DbState) -> None:
        finish_s = self._window.finish_s
        if finish_s is not None and db.newest_s() < finish_s:
            self._behind.add(db.instance)
        else:
            self._behind.discard(db.instance)

    # -- listing -----------------------------------------------------------------------------------
    async def _list_due(self) -> bool:
        """Lists the DBs that are due. A DB listed before queues its ready files at once; the
        first listings (the backfill) are evaluated together once they all succeeded, so that
        the oldest file of the whole fleet goes first, not the first DB listed. False when a
        listing failed."""
        failure: AwsError | None = None
        for instance in self._schedule.pop_due(self._clock.now()):
            if self._stop.is_set():
                break  # the run ends: the DBs not listed yet do not matter any more
            now_s = self._clock.now()
            db = self._dbs[instance]
            try:
                await self._refresh(db, now_s)
            except AwsError as exc:
                if exc.code in INSTANCE_NOT_FOUND:
                    self._resolver.lost(instance)
                if exc.code in INSTANCE_NOT_FOUND and self._settings.fleet:
                    self._gone.add(instance)
                    self._depart(instance, "no longer exists")
                    continue
                self._schedule.failed(instance, now_s)
                failure = failure or exc  # the others are still listed: one DB must not block all
                continue
            if self._schedule.listings(instance) > 1:
                self._evaluate([db])  # queued at once: its rotation is what we waited for
            else:
                self._unevaluated.append(db)
        if failure is not None:
            self._failed_listing(failure)
            return False
        first, self._unevaluated = self._unevaluated, []
        self._evaluate(first)
        if self._listing_failures:
            self._hooks.healthy(True)
        self._listing_failures = 0
        return True

    async def _refresh(self, db: DbState, now_s: float) -> None:
        full = self._schedule.full(db.instance)
        self.listing_calls += 1
        since_ms = None if full else db.since_ms()
        listed = [f async for f in self._lister.list_log_files(db.instance, since_ms)]
        if db.incarnation:  # which incarnation the files are of: never mistaken for the old one's
            listed = [dataclasses.replace(f, incarnation=db.incarnation) for f in listed]
        db.update(listed, full=full)
        db.listed_at_s = now_s
        spanned = assign_spans(
            (st.listed for st in db.files.values()), include_plain=self._settings.include_plain
        )
        db.spanned = self._wanted(db, spanned)
        self._schedule.listed(db.instance, now_s, db.spanned)
        self._track_finish(db)

    def _failed_listing(self, exc: AwsError | DbNotFoundError) -> None:
        self._listing_failures += 1
        if self._window.mode is Mode.DOWNLOAD_AND_FINISH or self._listing_failures >= 20:
            raise exc
        log.warning("listing log files failed (%s); trying again next round", exc)
        if self._listing_failures >= 3:
            self._hooks.healthy(False, f"listing log files failed {self._listing_failures}x")

    def _wanted(self, db: DbState, spanned: list[SpannedFile]) -> list[SpannedFile]:
        """Files of the series this run copies; the others are said once each."""
        out = []
        for sf in spanned:
            series = series_of(sf.name)
            if series in self._series:
                out.append(sf)
            elif db.first_time(series):
                log.info(
                    "%s: files of series %s (%s, ...) are not copied (--include-series %s "
                    "copies them)",
                    sf.instance,
                    series,
                    sf.name,
                    series,
                )
        return out

    # -- readiness ---------------------------------------------------------------------------------
    def _evaluate(self, dbs: Iterable[DbState]) -> None:
        """Queues the ready files of ``dbs`` and hands out the free slots."""
        now_s = self._clock.now()
        for db in dbs:
            selected = select(db.spanned, self._window.start_s, self._window.finish_s)
            self._record_gaps(db, selected)
            period_s = rotation_period_s(db.spanned)
            if db.spanned:
                self._hooks.rotation_period(db.instance, period_s)
            waiting = False
            waits: list[str] = []
            for sf, st, complete in self._ready_files(db, selected, period_s, now_s):
                if st is None:
                    waiting = True
                    waits.append(sf.name)
                else:
                    self._enqueue(db, st, sf, complete)
            if waiting:
                self._waiting.add(db.instance)
                self._waits_for[db.instance] = self._describe_wait(db.instance, waits, period_s)
            else:
                self._waiting.discard(db.instance)
                self._waits_for.pop(db.instance, None)
            self._plan_recheck(db, selected, period_s, waiting, now_s)
            db.pending = [sf for sf in selected if db.files[sf.name].pending]
            self._gauges(db, now_s)
        self._dispatch()

    def _ready_files(
        self, db: DbState, selected: list[SpannedFile], period_s: int, now_s: float
    ) -> Iterable[tuple[SpannedFile, FileState | None, bool]]:
        """(file, its state, complete) for each file ready to copy, (file, None, False) for each
        one the run waits for (to rotate, or to be retried)."""
        finish_s = self._window.finish_s
        for sf in selected:
            st = db.files[sf.name]
            if st.state is not None:
                if not self._retry_due(st, now_s):
                    if st.retry_at_s is not None and self._retrying(now_s, period_s):
                        yield sf, None, False
                    continue
                st.state = None
            listed_s = db.listed_at_s if db.listed_at_s is not None else now_s
            if is_complete(sf, listed_s, period_s):
                yield sf, st, True
            elif db.departed:
                log.warning(
                    "%s %s: the instance left; copying the file as it is now", sf.instance, sf.name
                )
                yield sf, st, False
            elif self._window.mode is Mode.DOWNLOAD_AND_FINISH:
                log.warning(
                    "%s %s is still being written: copying it as it is now (re-run with the same "
                    "--run-id after it rotates for the finished copy)",
                    sf.instance,
                    sf.name,
                )
                yield sf, st, False
            elif finish_s is not None and now_s >= finish_s + self._grace_s(period_s):
                log.warning(
                    "%s %s has not rotated %.0f s after finish: copying it as it is",
                    sf.instance,
                    sf.name,
                    now_s - finish_s,
                )
                yield sf, st, False
            else:
                yield sf, None, False

    def _plan_recheck(
        self,
        db: DbState,
        selected: list[SpannedFile],
        period_s: int,
        waiting: bool,
        now_s: float,
    ) -> None:
        """When this DB's readiness next changes with time alone: a retry, or finish + grace."""
        times = [
            st.retry_at_s
            for sf in selected
            if (st := db.files[sf.name]).state in RETRIED and st.retry_at_s is not None
        ]
        finish_s = self._window.finish_s
        if waiting and finish_s is not None:
            times.append(finish_s + self._grace_s(period_s))
        later = [t for t in times if t > now_s]
        if later:
            self._recheck.set(db.instance, min(later))
        else:
            self._recheck.drop(db.instance)

    def _describe_wait(self, instance: str, names: list[str], period_s: int) -> str:
        finish_s = self._window.finish_s
        what = f"{instance}: {', '.join(names)} to rotate or be retried"
        if finish_s is None:
            return what
        return f"{what} (then copied as it is: {human(finish_s + self._grace_s(period_s))})"

    def _grace_s(self, period_s: int) -> float:
        if self._settings.finish_grace_s is not None:
            return self._settings.finish_grace_s
        return period_s + GRACE_EXTRA_S

    def _retry_due(self, st: FileState, now_s: float) -> bool:
        at = st.retry_at_s
        return at is not None and now_s >= at and st.state in RETRIED

    def _retrying(self, now_s: float, period_s: int) -> bool:
        """Failed files are retried while the run follows: forever without a finish, until
        finish + grace with one."""
        finish_s = self._window.finish_s
        return finish_s is None or now_s < finish_s + self._grace_s(period_s)

    def _record_gaps(self, db: DbState, selected: list[SpannedFile]) -> None:
        if not selected:
            return
        first = selected[0]
        if first.timestamp_s > self._window.start_s:
            oldest = db.spanned[0].timestamp_s
            reason = "before-retention" if oldest == first.timestamp_s else "no-log-file"
            self._gap(db, self._window.start_s, first.timestamp_s, reason)
        for a, b in itertools.pairwise(selected):
            if a.end_s is not None and a.end_s < b.timestamp_s:
                self._gap(db, a.end_s, b.timestamp_s, "no-log-file")

    def _gap(self, db: DbState, start_s: float, end_s: float, reason: str) -> None:
        if not db.first_time((start_s, end_s)):
            return
        log.info(
            "%s: no log file covers %s .. %s (%s)",
            db.instance,
            human(start_s),
            human(end_s),
            reason,
        )
        self._manifest.add_gap(db.instance, iso(start_s), iso(end_s), reason)

    def _gauges(self, db: DbState, now_s: float) -> None:
        """Per-DB gauges: files pending, retention headroom, lag behind the last rotation. Set
        when the DB is evaluated, and on every poll while it lags (the lag grows with time); a
        DB with nothing to copy is not revisited between its listings."""
        pending = [sf for sf in db.pending if (st := db.files.get(sf.name)) and st.pending]
        db.pending = pending
        inst = db.instance
        self._hooks.files_pending(inst, len(pending))
        retention_s = self._retention_s(inst)
        oldest_ms = min((sf.file.last_written_ms for sf in pending), default=None)
        headroom_s = retention_s if oldest_ms is None else oldest_ms / 1000 + retention_s - now_s
        self._hooks.retention_headroom(inst, max(0.0, headroom_s))
        rotated = [sf.end_s for sf in pending if sf.end_s is not None and sf.has_successor]
        self._hooks.lag(inst, max(0.0, now_s - min(rotated)) if rotated else 0.0)
        if rotated:
            self._lagging.add(inst)
        else:
            self._lagging.discard(inst)

    # -- copying -----------------------------------------------------------------------------------
    def _enqueue(self, db: DbState, st: FileState, sf: SpannedFile, complete: bool) -> None:
        st.state = IN_FLIGHT
        if not st.key:
            base = file_key(self._settings.run_id, sf, self._settings.per_instance_keys)
            st.key = db.claim_key(base, sf.name)
        self._ready.push(db.instance, sf.timestamp_s, _Copy(db, st, sf, complete))

    def _dispatch(self) -> None:
        """Starts queued copies while slots are free (see readyqueue for who goes first)."""
        while self._tg is not None and not self._stop.is_set():
            job = self._ready.take()
            if job is None:
                return
            task = self._tg.create_task(self._copy(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _copy(self, job: _Copy) -> None:
        st = job.file
        try:
            entry = await self._copier.copy(job.sf, st.key, complete=job.complete)
        except asyncio.CancelledError:
            st.state = ABORTED
            self.totals.aborted += 1
            raise
        finally:
            self._ready.release(job.db.instance)
        st.state = entry.status
        if st.ended is None:
            self.totals.add(entry)
        else:
            self.totals.replace(st.ended, entry)
        st.ended = entry
        self._schedule_retry(job.db, st, job.sf, entry)
        self._manifest.record(entry)
        self._dispatch()  # the slot handover: the next file starts before this one's flush
        await self._manifest.flush()

    def _schedule_retry(
        self, db: DbState, st: FileState, sf: SpannedFile, entry: FileEntry
    ) -> None:
        if self._window.mode is Mode.DOWNLOAD_AND_FINISH or entry.status not in RETRIED:
            st.retry_at_s = None
            st.retries = 0
            return
        st.retries += 1
        delay_s = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (st.retries - 1))
        now_s = self._clock.now()
        st.retry_at_s = now_s + delay_s
        self._recheck.set_earlier(db.instance, st.retry_at_s)
        if self._retrying(now_s, rotation_period_s(db.spanned)):
            self._waiting.add(db.instance)  # the run waits for it
        self._hooks.retry_scheduled(sf.instance)
        log.warning(
            "%s %s ended %s (%s); retry %d in %.0f s (the manifest says %s meanwhile)",
            sf.instance,
            sf.name,
            entry.status,
            entry.error or "no detail",
            st.retries,
            delay_s,
            entry.status,
        )


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
