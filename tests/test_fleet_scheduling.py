"""The recorder over many DBs on a FakeClock: what following costs in listings, how soon a rotated
file lands, which file goes first across DBs, that no DB starves, and DBs that join and leave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pendulum

from rdsrecorder.clock import FakeClock
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import META_COMPLETE, LogFile
from rdsrecorder.recorder import Recorder, RecorderSettings, RunTotals
from rdsrecorder.transfer import Copier
from rdsrecorder.window import Mode, Window
from tests.fakes import (
    FakeFile,
    FakeManifest,
    FakeSink,
    FakeSource,
    StaticResolver,
    rotating_db,
)

T0 = pendulum.datetime(2024, 2, 4, 10, tz="UTC").timestamp()
Files = Callable[[float], dict[tuple[str, str], FakeFile]]


class InstantClock(FakeClock):
    """A FakeClock under which copies take no time: before time jumps, every other task runs
    until it waits (a plain FakeClock jumps while copies are half-way, so they seem slow)."""

    async def sleep_until(self, deadline_s: float, stop: asyncio.Event | None = None) -> bool:
        for _ in range(50):
            await asyncio.sleep(0)
        return await super().sleep_until(deadline_s, stop)


def fleet_of(*dbs: Files) -> Files:
    def files(now_s: float) -> dict[tuple[str, str], FakeFile]:
        out: dict[tuple[str, str], FakeFile] = {}
        for db in dbs:
            out.update(db(now_s))
        return out

    return files


@dataclass
class TimedSink(FakeSink):
    """Remembers when (on the fake clock) each copy began. (It lands a moment later; on the fake
    clock that moment may be the recorder's next wake-up, so the start is the honest time.)"""

    clock: FakeClock | None = None
    landed_at: dict[str, float] = field(default_factory=dict)

    async def before_upload(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        assert self.clock is not None
        self.landed_at[key] = self.clock.now()


class Gauges(Hooks):
    def __init__(self) -> None:
        self.headroom: dict[str, float] = {}
        self.lags: dict[str, list[float]] = {}

    def retention_headroom(self, instance: str, seconds: float) -> None:
        self.headroom[instance] = seconds

    def lag(self, instance: str, seconds: float) -> None:
        self.lags.setdefault(instance, []).append(seconds)


def recorder(
    source: FakeSource,
    clock: FakeClock,
    resolver: StaticResolver,
    *,
    start_s: float,
    finish_s: float | None,
    mode: Mode = Mode.DOWNLOAD_AND_SYNC,
    sink: FakeSink | None = None,
    concurrency: int = 4,
    hooks: Hooks | None = None,
    stop: asyncio.Event | None = None,
) -> tuple[Recorder, FakeSink]:
    sink = sink or FakeSink()
    hooks = hooks or Hooks()
    rec = Recorder(
        RecorderSettings(
            window=Window(start_s, finish_s, mode),
            run_id="RUN",
            per_instance_keys=True,
            concurrency=concurrency,
            poll_interval_s=30.0,
            finish_grace_s=None,
            shutdown_grace_s=1.0,
            fleet=True,
        ),
        lister=source,
        resolver=resolver,
        copier=Copier(source, sink, sink, hooks, clock, "RUN", retry_delay_s=0.01),
        manifest=FakeManifest(),
        hooks=hooks,
        clock=clock,
        stop=stop or asyncio.Event(),
    )
    return rec, sink


async def test_following_costs_a_listing_per_rotation_and_lands_within_a_minute() -> None:
    n = 20
    clock = InstantClock(T0 + 65)
    names = [f"db-{i:02d}" for i in range(n)]
    # Rotations on the minute, each DB's new file visible 0-9 s later.
    dbs = [
        rotating_db(T0 + i % 10, 60, minute_names=True, instance=name)
        for i, name in enumerate(names)
    ]
    source = FakeSource(clock, fleet_of(*dbs))
    sink = TimedSink(clock=clock)
    hooks = Gauges()
    rotations = 10
    rec, _ = recorder(
        source,
        clock,
        StaticResolver(*names),
        start_s=T0,
        finish_s=T0 + rotations * 60 + 60,
        sink=sink,
        hooks=hooks,
    )
    totals = await rec.run()
    assert totals.ok
    per_db_per_rotation = len(source.listings) / (n * rotations)
    assert per_db_per_rotation <= 3, per_db_per_rotation
    # Every rotated file landed within 60 s of its rotation (transfers are instant here).
    lags = []
    for i, name in enumerate(names):
        for r in range(rotations):
            key = f"RUN/{name}/rds_log_RUN_{int(T0 + r * 60)}"
            if key in sink.landed_at:
                lags.append(sink.landed_at[key] - (T0 + i % 10 + (r + 1) * 60))
    assert len(lags) >= n * (rotations - 1)
    assert max(lags) <= 60, max(lags)
    assert max(max(v) for v in hooks.lags.values()) <= 60


async def test_a_db_with_one_minute_named_file_is_listed_just_after_its_first_rotation() -> None:
    # One file tells nothing of the period but its least (a minute): the first rotation must not
    # wait for a back-off that grew while nothing happened.
    clock = InstantClock(T0 + 1)
    source = FakeSource(clock, rotating_db(T0, 60, minute_names=True, instance="new-db"))
    sink = TimedSink(clock=clock)
    rec, _ = recorder(
        source, clock, StaticResolver("new-db"), start_s=T0, finish_s=T0 + 120, sink=sink
    )
    await rec.run()
    first = "RUN/new-db/rds_log_RUN_" + str(int(T0))
    assert first in sink.landed_at
    assert sink.landed_at[first] - (T0 + 60) <= 10, sink.landed_at[first] - (T0 + 60)


async def test_hourly_dbs_are_listed_about_once_an_hour() -> None:
    names = [f"h-{i}" for i in range(10)]
    clock = FakeClock(T0 + 120)
    source = FakeSource(clock, fleet_of(*(rotating_db(T0, 3600, instance=name) for name in names)))
    rec, _ = recorder(source, clock, StaticResolver(*names), start_s=T0, finish_s=T0 + 5 * 3600)
    totals = await rec.run()
    assert totals.copied == 5 * len(names) and totals.ok
    # 30 s polling would have listed each DB 600 times in these five hours.
    assert len(source.listings) / (len(names) * 5) <= 3


def old_and_new(now_s: float) -> dict[tuple[str, str], FakeFile]:
    week_old = pendulum.from_timestamp(T0 - 7 * 86400 + 7200, tz="UTC").format("YYYY-MM-DD-HH")
    fresh = pendulum.from_timestamp(T0 - 7200, tz="UTC").format("YYYY-MM-DD-HH")
    return {
        ("fresh-db", f"error/postgresql.log.{fresh}.csv"): FakeFile(b"fresh\n", T0 - 3601),
        ("old-db", f"error/postgresql.log.{week_old}.csv"): FakeFile(
            b"old\n", T0 - 7 * 86400 + 7200 + 3599
        ),
    }


async def test_the_file_closest_to_expiry_goes_first_across_dbs() -> None:
    clock = FakeClock(T0)
    source = FakeSource(clock, old_and_new)
    hooks = Gauges()
    # fresh-db is listed first: listing order must not decide the copy order.
    rec, _ = recorder(
        source,
        clock,
        StaticResolver("fresh-db", "old-db"),
        start_s=T0 - 7 * 86400 + 3600,
        finish_s=T0 - 60,
        mode=Mode.DOWNLOAD_AND_FINISH,
        concurrency=1,
        hooks=hooks,
    )
    totals = await rec.run()
    assert totals.copied == 2
    assert [name.split(".")[2][:10] for name in source.downloads] == [
        pendulum.from_timestamp(T0 - 7 * 86400 + 7200, tz="UTC").format("YYYY-MM-DD"),
        pendulum.from_timestamp(T0 - 7200, tz="UTC").format("YYYY-MM-DD"),
    ]
    # Seen before the copies: the week-old file was past 3 days' retention, the fresh one had
    # 3 days less the hour since it was last written.
    assert hooks.headroom["old-db"] == 0
    assert hooks.headroom["fresh-db"] == 3 * 86400 - 3601


async def test_a_db_with_thousands_of_files_does_not_hold_up_the_others() -> None:
    clock = FakeClock(T0 + 6 * 3600)
    busy = rotating_db(T0, 60, minute_names=True, instance="busy")  # 360 minute files
    quiet = rotating_db(T0 + 3 * 3600, 3600, instance="quiet")  # 3 hourly files, newer
    source = FakeSource(clock, fleet_of(busy, quiet), download_delay_s=0.0)
    rec, _ = recorder(
        source,
        clock,
        StaticResolver("busy", "quiet"),
        start_s=T0,
        finish_s=T0 + 5 * 3600,
        mode=Mode.DOWNLOAD_AND_FINISH,
        concurrency=4,
    )
    totals = await rec.run()
    assert totals.ok
    quiet_names = {n for (i, n) in quiet(clock.now()) if i == "quiet" and n.endswith(".csv")}
    order = [n in quiet_names for n in source.downloads]
    # The busy DB's files are older (they go first), but it may hold only half the slots: the
    # quiet DB's files are copied alongside, not after 300 others.
    assert len(order) > 300 and sum(order) == 2
    assert [i for i, q in enumerate(order) if q] == [2, 3]


async def test_dbs_that_join_and_leave_while_following() -> None:
    clock = FakeClock(T0 + 30 * 60)
    stays = rotating_db(T0, 600, minute_names=True, instance="stays")
    leaves = rotating_db(T0, 600, minute_names=True, instance="leaves")
    joins = rotating_db(T0, 600, minute_names=True, instance="joins")
    source = FakeSource(clock, fleet_of(stays, leaves, joins))
    resolver = StaticResolver("stays", "leaves")
    stop = asyncio.Event()
    rec, sink = recorder(
        source, clock, resolver, start_s=T0, finish_s=None, stop=stop, concurrency=2
    )

    async def drive() -> RunTotals:
        return await rec.run()

    task = asyncio.create_task(drive())
    for _ in range(200):
        await asyncio.sleep(0)
        if clock.now() >= T0 + 45 * 60:
            break
    resolver.current = ("stays", "joins")  # leaves is gone (untagged, deleted, moved shard)
    for _ in range(2000):
        await asyncio.sleep(0)
        if clock.now() >= T0 + 80 * 60:
            break
    stop.set()
    totals = await task
    keys = set(sink.objects)
    # The one that joined: its backlog and its rotations.
    assert sum(k.startswith("RUN/joins/") for k in keys) >= 7
    # The one that left: every file it listed landed, its current file as it was (partial).
    left = {k: meta for k, (_, meta) in sink.objects.items() if k.startswith("RUN/leaves/")}
    assert len(left) >= 5
    assert [m[META_COMPLETE] for m in left.values()].count("false") == 1
    assert totals.failed == 0 and totals.lost == 0


async def test_a_stop_during_the_first_listings_lists_no_further_db() -> None:
    names = [f"db-{i:02d}" for i in range(20)]
    clock = FakeClock(T0 + 2 * 3600 + 60)
    source = FakeSource(clock, fleet_of(*(rotating_db(T0, 3600, instance=n) for n in names)))
    stop = asyncio.Event()
    listed = source.list_log_files

    def stopping_after_three(instance: str, since_ms: int | None = None) -> AsyncIterator[LogFile]:
        if len(source.listings) == 2:
            stop.set()  # SIGTERM while the third DB is listed
        return listed(instance, since_ms)

    source.list_log_files = stopping_after_three  # type: ignore[method-assign]
    rec, sink = recorder(
        source, clock, StaticResolver(*names), start_s=T0, finish_s=None, stop=stop
    )
    totals = await rec.run()
    assert totals.interrupted
    assert len(source.listings) == 3 and sink.objects == {}
