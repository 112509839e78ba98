"""What a DB's listing costs does not grow with the fleet: the lines of rdsrecorder code run while
ten hourly DBs are followed for three hours are the same, per listing, beside 990 quiet DBs (daily
files, not due in those hours) as alone. Counted with a line tracer on a FakeClock, never timed."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import FrameType
from typing import Any

import pendulum

import rdsrecorder
from rdsrecorder.clock import FakeClock
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import DownloadStats, LogFile
from rdsrecorder.recorder import Recorder, RecorderSettings
from rdsrecorder.transfer import Copier
from rdsrecorder.window import Mode, Window
from tests.fakes import FakeManifest, FakeSink

T0 = pendulum.datetime(2024, 2, 4, 10, tz="UTC").timestamp()
HOUR = 3600.0
PACKAGE = str(Path(rdsrecorder.__file__).parent)


class Fleet:
    """Hourly and daily DBs; a listing or download looks at its own DB only (a fake that scanned
    the fleet would hide what the recorder does)."""

    def __init__(self, clock: FakeClock, hourly: int, daily: int) -> None:
        self.clock = clock
        self.period = {f"h-{i:04d}": HOUR for i in range(hourly)}
        self.period.update({f"d-{i:04d}": 24 * HOUR for i in range(daily)})
        self.names = tuple(sorted(self.period))

    def _files(self, instance: str) -> dict[str, tuple[float, int]]:
        now_s = self.clock.now()
        period = self.period[instance]
        fmt = "YYYY-MM-DD-HH" if period == HOUR else "YYYY-MM-DD"
        first_s = (now_s // period - 3) * period
        out: dict[str, tuple[float, int]] = {}
        ts = first_s
        while ts <= now_s:
            stamp = pendulum.from_timestamp(ts, tz="UTC").format(fmt)
            written_s = min(now_s, ts + period - 1)
            out[f"error/postgresql.log.{stamp}.csv"] = (written_s, 1 + int(written_s - ts) // 60)
            ts += period
        return out

    async def list_log_files(
        self, instance: str, since_ms: int | None = None
    ) -> AsyncIterator[LogFile]:
        for name, (written_s, size) in self._files(instance).items():
            ms = int(written_s * 1000)
            if since_ms is None or ms >= since_ms:
                yield LogFile(instance, name, ms, size)

    async def download(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]:
        _, size = self._files(f.instance)[f.name]
        stats.bytes += size
        await asyncio.sleep(0)
        yield b"x" * size

    async def instances(self) -> tuple[str, ...]:
        return self.names

    def incarnation(self, instance: str) -> str:
        return ""

    def recreated(self) -> list[str]:
        return []

    def lost(self, instance: str) -> None:
        pass


class Tracer:
    """Counts the lines of the rdsrecorder package that run between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.lines = 0
        self._before: Any = None  # a tracer already set (coverage, a debugger) comes back after

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.lines += 1
        return self._local

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        return self._local if frame.f_code.co_filename.startswith(PACKAGE) else None

    def start(self) -> None:
        self._before = sys.gettrace()
        sys.settrace(self._global)

    def stop(self) -> None:
        if sys.gettrace() == self._global:
            sys.settrace(self._before)


class WindowClock(FakeClock):
    """Copies take no time (every other task runs before time jumps); lines are counted, and
    listings noted, from ``from_s`` to ``until_s``."""

    def __init__(self, start_s: float, from_s: float, until_s: float, tracer: Tracer) -> None:
        super().__init__(start_s)
        self.from_s, self.until_s, self.tracer = from_s, until_s, tracer
        self.recorder: Recorder | None = None
        self.listings: list[int] = []

    async def sleep_until(self, deadline_s: float, stop: asyncio.Event | None = None) -> bool:
        for _ in range(20):
            await asyncio.sleep(0)
        assert self.recorder is not None
        if self.now() < self.from_s <= deadline_s or self.now() < self.until_s <= deadline_s:
            self.tracer.stop() if self.listings else self.tracer.start()
            self.listings.append(self.recorder.listing_calls)
        return await super().sleep_until(deadline_s, stop)


async def lines_per_listing(hourly: int, daily: int) -> tuple[float, int]:
    tracer = Tracer()
    clock = WindowClock(T0 + 60, T0 + HOUR + 60, T0 + 4 * HOUR + 60, tracer)
    fleet = Fleet(clock, hourly, daily)
    sink = FakeSink()
    recorder = Recorder(
        RecorderSettings(
            window=Window(T0 - 2 * HOUR, T0 + 5 * HOUR, Mode.DOWNLOAD_AND_SYNC),
            run_id="RUN",
            per_instance_keys=True,
            concurrency=4,
            poll_interval_s=30.0,
            finish_grace_s=None,
            shutdown_grace_s=1.0,
            fleet=True,
        ),
        lister=fleet,
        resolver=fleet,
        copier=Copier(fleet, sink, sink, Hooks(), clock, "RUN"),
        manifest=FakeManifest(),
        hooks=Hooks(),
        clock=clock,
        stop=asyncio.Event(),
    )
    clock.recorder = recorder
    try:
        totals = await recorder.run()
    finally:
        tracer.stop()
    assert totals.ok
    assert len(clock.listings) == 2, clock.listings
    listings = clock.listings[1] - clock.listings[0]
    return tracer.lines / listings, listings


async def test_a_listing_costs_the_same_beside_a_thousand_quiet_dbs() -> None:
    alone, listed_alone = await lines_per_listing(hourly=10, daily=0)
    beside, listed_beside = await lines_per_listing(hourly=10, daily=990)
    # The quiet DBs are not due in those hours: the same listings are made ...
    assert listed_alone == listed_beside >= 30
    # ... and each runs the same code, give or take a heap's bookkeeping.
    assert beside <= 1.05 * alone, (alone, beside)
