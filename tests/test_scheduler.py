"""The recorder's time logic on a FakeClock: every mode, rotation, grace, gaps, concurrency,
failures, stop and resume — each test runs in milliseconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rdsrecorder.clock import FakeClock
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import META_COMPLETE, META_SOURCE, ObjectInfo, UploadResult
from rdsrecorder.recorder import Recorder, RecorderSettings, RunTotals
from rdsrecorder.transfer import Copier
from rdsrecorder.window import Mode, Window
from tests.fakes import (
    HOUR,
    T0,
    FakeManifest,
    FakeSink,
    FakeSource,
    StaticResolver,
    key,
    rotating_db,
)


def make(
    source: FakeSource,
    clock: FakeClock,
    *,
    start_s: float,
    finish_s: float | None,
    mode: Mode,
    sink: FakeSink | None = None,
    concurrency: int = 4,
    finish_grace_s: float | None = None,
    stop: asyncio.Event | None = None,
    poll_interval_s: float = 30.0,
) -> tuple[Recorder, FakeSink, FakeManifest]:
    sink = sink or FakeSink()
    manifest = FakeManifest()
    recorder = Recorder(
        RecorderSettings(
            window=Window(start_s, finish_s, mode),
            run_id="RUN",
            per_instance_keys=False,
            concurrency=concurrency,
            poll_interval_s=poll_interval_s,
            finish_grace_s=finish_grace_s,
            shutdown_grace_s=0.5,
        ),
        lister=source,
        resolver=StaticResolver("db"),
        copier=Copier(source, sink, sink, Hooks(), clock, "RUN", retry_delay_s=0.01),
        manifest=manifest,
        hooks=Hooks(),
        clock=clock,
        stop=stop or asyncio.Event(),
    )
    return recorder, sink, manifest


async def test_download_and_finish_copies_window_and_exits() -> None:
    clock = FakeClock(T0 + 6.5 * HOUR)  # 16:30; files 10..16, 16 being written
    source = FakeSource(clock, rotating_db(T0, HOUR))
    rec, sink, manifest = make(
        source,
        clock,
        start_s=T0 + 2.5 * HOUR,
        finish_s=T0 + 4 * HOUR,
        mode=Mode.DOWNLOAD_AND_FINISH,
    )
    totals = await rec.run()
    # 12:30 .. 14:00 -> the 12:00 file (the Go tool lost it) and the 13:00 file; never the twins
    assert sorted(sink.objects) == [key(12), key(13)]
    assert totals.copied == 2 and totals.ok
    assert sink.objects[key(12)][1][META_SOURCE] == "error/postgresql.log.2024-02-04-12.csv"
    assert clock.now() == T0 + 6.5 * HOUR  # did not wait for anything
    assert set(manifest.entries) == {key(12), key(13)}


async def test_finish_mode_copies_current_file_as_partial(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(T0 + 2.5 * HOUR)  # 12:30, file 12 is current
    source = FakeSource(clock, rotating_db(T0, HOUR))
    rec, sink, _ = make(
        source,
        clock,
        start_s=T0 + 1.5 * HOUR,
        finish_s=T0 + 2.2 * HOUR,
        mode=Mode.DOWNLOAD_AND_FINISH,
    )
    with caplog.at_level(logging.WARNING):
        totals = await rec.run()
    assert sorted(sink.objects) == [key(11), key(12)]
    assert sink.objects[key(12)][1][META_COMPLETE] == "false"
    assert sink.objects[key(11)][1][META_COMPLETE] == "true"
    assert totals.partial == 1 and totals.copied == 1
    assert "still being written" in caplog.text


@pytest.mark.parametrize("minute_names", [False, True])
async def test_sync_follows_rotation_until_finish(minute_names: bool) -> None:
    rotation_s = 60.0 if minute_names else HOUR
    clock = FakeClock(T0 + 3.5 * rotation_s)
    source = FakeSource(clock, rotating_db(T0, rotation_s, minute_names=minute_names))
    start_s, finish_s = T0 + 1.5 * rotation_s, T0 + 7.5 * rotation_s
    rec, sink, _ = make(
        source,
        clock,
        start_s=start_s,
        finish_s=finish_s,
        mode=Mode.DOWNLOAD_AND_SYNC,
        poll_interval_s=rotation_s / 4,
    )
    totals = await rec.run()
    # files 1..7 overlap the window; each copied once, complete, after it rotated
    assert totals.copied == 7 and totals.partial == 0 and totals.ok
    assert len(sink.uploads) == 7 == len(set(sink.uploads))
    assert all(meta[META_COMPLETE] == "true" for _, meta in sink.objects.values())
    # Each object is the file's final content, not a snapshot taken while it grew.
    final = rotating_db(T0, rotation_s, minute_names=minute_names)(clock.now())
    for data, meta in sink.objects.values():
        assert data == final[("db", meta[META_SOURCE])].content
    # exits by itself shortly after the last file rotated
    assert finish_s <= clock.now() <= T0 + 8 * rotation_s + 60 + rotation_s / 4
    # after the first full listing, polls ask only for recently written files
    assert any(s is not None for s in source.listings)


async def test_file_that_never_rotates_is_copied_after_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(T0 + 0.5 * HOUR)
    source = FakeSource(clock, rotating_db(T0, HOUR, stop_rotating_at=T0 + 2 * HOUR))
    rec, sink, _ = make(
        source,
        clock,
        start_s=T0,
        finish_s=T0 + 2.5 * HOUR,
        mode=Mode.DOWNLOAD_AND_SYNC,
        finish_grace_s=600,
        poll_interval_s=60,
    )
    with caplog.at_level(logging.WARNING):
        totals = await rec.run()
    assert sorted(sink.objects) == [key(10), key(11), key(12)]
    assert sink.objects[key(12)][1][META_COMPLETE] == "false"
    assert totals.partial == 1
    assert T0 + 2.5 * HOUR + 600 <= clock.now() < T0 + 2.5 * HOUR + 600 + 61
    assert "has not rotated" in caplog.text


async def test_default_grace_is_one_rotation_plus_five_minutes() -> None:
    clock = FakeClock(T0 + 0.5 * HOUR)
    source = FakeSource(clock, rotating_db(T0, HOUR, stop_rotating_at=T0 + HOUR))
    rec, sink, _ = make(
        source,
        clock,
        start_s=T0,
        finish_s=T0 + 1.5 * HOUR,
        mode=Mode.DOWNLOAD_AND_SYNC,
        poll_interval_s=60,
    )
    await rec.run()
    assert T0 + 1.5 * HOUR + HOUR + 300 <= clock.now() < T0 + 1.5 * HOUR + HOUR + 361
    assert len(sink.objects) == 2


async def test_idle_hours_leave_recorded_gaps_and_idle_file_completes() -> None:
    clock = FakeClock(T0 + 0.5 * HOUR)
    idle_hours = {T0 + HOUR, T0 + 2 * HOUR}
    source = FakeSource(clock, rotating_db(T0, HOUR, idle=lambda ts: ts in idle_hours))
    rec, sink, manifest = make(
        source,
        clock,
        start_s=T0,
        finish_s=T0 + 3.5 * HOUR,
        mode=Mode.DOWNLOAD_AND_SYNC,
        poll_interval_s=300,
    )
    totals = await rec.run()
    assert sorted(sink.objects) == [key(10), key(13)]
    assert totals.ok
    assert [(g[0], g[3]) for g in manifest.gaps] == [("db", "no-log-file")]
    assert manifest.gaps[0][1].startswith("2024-02-04T11:00:00")
    assert manifest.gaps[0][2].startswith("2024-02-04T13:00:00")


async def test_window_before_oldest_file_is_a_retention_gap() -> None:
    clock = FakeClock(T0 + 2.5 * HOUR)
    source = FakeSource(clock, rotating_db(T0, HOUR))
    rec, _, manifest = make(
        source, clock, start_s=T0 - HOUR, finish_s=T0 + 1.5 * HOUR, mode=Mode.DOWNLOAD_AND_FINISH
    )
    await rec.run()
    assert [g[3] for g in manifest.gaps] == ["before-retention"]


async def test_files_in_flight_never_exceed_concurrency() -> None:
    clock = FakeClock(T0 + 12.5 * HOUR)
    source = FakeSource(clock, rotating_db(T0, HOUR), chunk_bytes=50, download_delay_s=0.0005)
    rec, _sink, _ = make(
        source,
        clock,
        start_s=T0,
        finish_s=T0 + 12 * HOUR,
        mode=Mode.DOWNLOAD_AND_FINISH,
        concurrency=3,
    )
    totals = await rec.run()
    assert totals.copied == 12
    assert source.max_in_flight == 3
    # oldest first: they expire first
    assert source.downloads[:3] == [
        "error/postgresql.log.2024-02-04-10.csv",
        "error/postgresql.log.2024-02-04-11.csv",
        "error/postgresql.log.2024-02-04-12.csv",
    ]


class SlowEndSink(FakeSink):
    """S3 whose uploads take a while after the last byte arrived (a CompleteMultipartUpload);
    counts the files between their first request (the HEAD of the key) and their upload's end."""

    def __init__(self) -> None:
        super().__init__()
        self.started: set[str] = set()
        self.peak = 0

    async def head(self, key: str) -> ObjectInfo | None:
        self.started.add(key.removesuffix(".gz"))  # the file's key, or its other form's
        self.peak = max(self.peak, len(self.started))
        return await super().head(key)

    async def upload(self, key: str, chunks: AsyncIterator[bytes], **kw: Any) -> UploadResult:
        try:
            result = await super().upload(key, chunks, **kw)
            await asyncio.sleep(0.002)
            return result
        finally:
            self.started.discard(key)


async def test_concurrency_is_the_number_of_files_in_flight_uploads_included() -> None:
    clock = FakeClock(T0 + 12.5 * HOUR)
    source = FakeSource(clock, rotating_db(T0, HOUR), chunk_bytes=50)
    sink = SlowEndSink()
    rec, _, _ = make(
        source,
        clock,
        start_s=T0,
        finish_s=T0 + 12 * HOUR,
        mode=Mode.DOWNLOAD_AND_FINISH,
        sink=sink,
        concurrency=3,
    )
    totals = await rec.run()
    assert totals.copied == 12
    assert sink.peak == 3  # a file's slot is free only once its upload has ended


async def test_one_failing_and_one_vanished_file_do_not_stop_the_others() -> None:
    clock = FakeClock(T0 + 4.5 * HOUR)
    source = FakeSource(
        clock,
        rotating_db(T0, HOUR),
        fail_names={"error/postgresql.log.2024-02-04-11.csv"},
        gone_names={"error/postgresql.log.2024-02-04-12.csv"},
    )
    rec, sink, manifest = make(
        source, clock, start_s=T0, finish_s=T0 + 4 * HOUR, mode=Mode.DOWNLOAD_AND_FINISH
    )
    totals = await rec.run()
    assert (totals.copied, totals.failed, totals.lost) == (2, 1, 1)
    assert not totals.ok
    assert sorted(sink.objects) == [key(10), key(13)]
    assert manifest.entries[key(11)].status == "failed"
    assert "marker stuck" in manifest.entries[key(11)].error
    assert manifest.entries[key(12)].status == "lost"
    assert source.downloads.count("error/postgresql.log.2024-02-04-11.csv") == 3  # retried


async def test_rerun_skips_complete_copies_and_writes_the_finished_one_beside_a_partial() -> None:
    """Objects are written once (If-None-Match): the copy taken while file 13 was written stays,
    and its finished copy goes beside it."""
    clock = FakeClock(T0 + 3.5 * HOUR)
    source = FakeSource(clock, rotating_db(T0, HOUR))
    rec, sink, _ = make(
        source, clock, start_s=T0, finish_s=T0 + 3.2 * HOUR, mode=Mode.DOWNLOAD_AND_FINISH
    )
    first = await rec.run()
    assert (first.copied, first.partial) == (3, 1)
    clock.advance(HOUR)  # file 13 rotated
    source.downloads.clear()
    rec2, _, _ = make(
        source,
        clock,
        start_s=T0,
        finish_s=T0 + 3.2 * HOUR,
        mode=Mode.DOWNLOAD_AND_FINISH,
        sink=sink,
    )
    second: RunTotals = await rec2.run()
    assert (second.skipped, second.copied) == (3, 1)
    assert source.downloads == ["error/postgresql.log.2024-02-04-13.csv"]
    assert sink.objects[key(13)][1][META_COMPLETE] == "false"
    assert sink.objects[key(13) + "_v2"][1][META_COMPLETE] == "true"
    assert len(sink.objects) == 5


async def test_stop_event_ends_follow_and_reports_interrupted() -> None:
    clock = FakeClock(T0 + 2.5 * HOUR)
    source = FakeSource(clock, rotating_db(T0, HOUR))
    stop = asyncio.Event()
    rec, sink, _ = make(
        source,
        clock,
        start_s=T0,
        finish_s=None,
        mode=Mode.DOWNLOAD_AND_SYNC,
        stop=stop,
        poll_interval_s=60,
    )
    task = asyncio.create_task(rec.run())
    for _ in range(200):
        await asyncio.sleep(0)
        if len(sink.objects) == 2 and clock.now() > T0 + 3.2 * HOUR:
            break
    stop.set()
    totals = await asyncio.wait_for(task, 5)
    assert totals.interrupted
    assert not totals.ok
    assert key(10) in sink.objects and key(11) in sink.objects


async def test_cluster_members_joining_are_followed() -> None:
    clock = FakeClock(T0 + 1.5 * HOUR)
    a = rotating_db(T0, HOUR, instance="m1")
    b = rotating_db(T0, HOUR, instance="m2")
    source = FakeSource(clock, lambda now: {**a(now), **b(now)})
    resolver = StaticResolver("m1")
    sink, manifest = FakeSink(), FakeManifest()
    rec = Recorder(
        RecorderSettings(
            window=Window(T0, T0 + 3 * HOUR, Mode.DOWNLOAD_AND_SYNC),
            run_id="RUN",
            per_instance_keys=True,
            concurrency=2,
            poll_interval_s=600,
            finish_grace_s=None,
            shutdown_grace_s=1,
        ),
        lister=source,
        resolver=resolver,
        copier=Copier(source, sink, sink, Hooks(), clock, "RUN"),
        manifest=manifest,
        hooks=Hooks(),
        clock=clock,
        stop=asyncio.Event(),
    )
    task = asyncio.create_task(rec.run())
    while clock.now() < T0 + 2 * HOUR:
        await asyncio.sleep(0)
    resolver.current = ("m1", "m2")
    totals = await asyncio.wait_for(task, 5)
    assert totals.copied == 6
    assert {k.split("/")[1] for k in sink.objects} == {"m1", "m2"}


@pytest.mark.parametrize("grace_s", [0.0, 5.0, 30.0])
async def test_a_follower_ends_at_finish_plus_a_short_grace_and_says_what_it_waits_for(
    caplog: pytest.LogCaptureFixture, grace_s: float
) -> None:
    """A grace shorter than a minute is not stretched to a minute of silence: the run ends when
    the grace ends (the current file copied as it is), and logs what it waits for meanwhile."""
    clock = FakeClock(T0 + 0.5 * HOUR)
    source = FakeSource(clock, rotating_db(T0, HOUR, stop_rotating_at=T0 + HOUR))
    finish_s = T0 + 1.5 * HOUR
    rec, sink, _ = make(
        source,
        clock,
        start_s=T0,
        finish_s=finish_s,
        mode=Mode.DOWNLOAD_AND_SYNC,
        poll_interval_s=30,
        finish_grace_s=grace_s,
    )
    with caplog.at_level(logging.INFO):
        totals = await rec.run()
    assert sorted(sink.objects) == [key(10), key(11)]
    assert totals.partial == 1 and totals.copied == 1
    assert clock.now() == finish_s + grace_s
    waits = [r.getMessage() for r in caplog.records if "finish passed; waiting for" in r.message]
    if grace_s:
        assert (
            len(waits) == 1 and "db: error/postgresql.log.2024-02-04-11.csv to rotate" in waits[0]
        )
