"""A host clock 10 minutes off AWS's: the product against a lab whose clock (``clock_offset_s``)
is 10 minutes ahead of the host's, and one 10 minutes behind. A simulated DB on the lab's clock
writes a line every 10 s into minute-rotated csvlog files; the follower runs on a fake host clock
that the DB follows, so a quarter of an hour of following takes a few seconds. Every file must land
byte-exact, none before it rotated, each within a rotation period plus a minute of its rotation;
and the offset the product learnt from the ``Date`` headers is the lab's."""

from __future__ import annotations

import asyncio
import email.utils
import os
from dataclasses import dataclass, field
from pathlib import Path

import pendulum
import pytest

from rdsrecorder.clock import OFFSET_SAMPLES, AwsClock, FakeClock
from rdsrecorder.commands import run_sync
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import META_COMPLETE, META_SOURCE, meta_decode
from rdsrecorder_lab import Faults, Lab
from tests.e2e import objects, s3_client, sync_settings

DB = "tz-db"
LINE_EVERY_S = 10
ROTATION_S = 60
OFFSET_S = 600.0


@dataclass
class MinuteDb:
    """A PostgreSQL on the lab's clock: a csvlog line every 10 s, a new file every minute (named
    on its clock); each file's mtime is the host time of its last line (the lab adds its offset
    to make LastWritten)."""

    root: Path
    offset_s: float
    next_line_s: float  # the lab's time of the next line
    content: dict[str, bytes] = field(default_factory=dict)

    @staticmethod
    def name(lab_s: float) -> str:
        stamp = pendulum.from_timestamp(lab_s, tz="UTC").format("YYYY-MM-DD-HHmm")
        return f"error/postgresql.log.{stamp}.csv"

    def run_until(self, lab_now_s: float) -> None:
        while self.next_line_s <= lab_now_s:
            t = self.next_line_s
            name = self.name(t)
            stamp = pendulum.from_timestamp(t, tz="UTC").format("YYYY-MM-DD HH:mm:ss.SSS")
            line = f'{stamp} UTC,"app","shop",42,,1,LOG,00000,"statement: SELECT {int(t)}"\n'
            path = self.root / DB / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as f:
                f.write(line.encode())
            host_s = t - self.offset_s
            os.utime(path, (host_s, host_s))
            self.content[name] = self.content.get(name, b"") + line.encode()
            self.next_line_s += LINE_EVERY_S


class HostClock(FakeClock):
    """The host's fake clock; the DB writes up to the lab's time whenever it moves. The poll
    loop's sleep moves it only once the copies in flight have ended (they take real
    milliseconds, no fake time), so the times a test sees are the product's decisions."""

    def __init__(self, start_s: float, db: MinuteDb) -> None:
        super().__init__(start_s)
        self.db = db
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        db.run_until(self.lab_now())

    def lab_now(self) -> float:
        return self.now() + self.db.offset_s

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self.db.run_until(self.lab_now())

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        self.db.run_until(self.lab_now())

    async def sleep_until(self, deadline_s: float, stop: asyncio.Event | None = None) -> bool:
        await asyncio.sleep(0)  # the copies just queued start (and count themselves)
        await self.idle.wait()
        reached = await super().sleep_until(deadline_s, stop)
        self.db.run_until(self.lab_now())
        return reached


class Seen(Hooks):
    def __init__(self, clock: HostClock) -> None:
        self.clock = clock
        self.finished: list[tuple[float, str, float]] = []  # (log timestamp, outcome, lab time)
        self.offsets: dict[str, float] = {}
        self.lags: list[tuple[float, float]] = []  # (lab time, lag)

    def file_started(self, instance: str) -> None:
        self.clock.in_flight += 1
        self.clock.idle.clear()

    def file_finished(
        self, instance: str, outcome: str, duration_s: float, log_timestamp_s: float
    ) -> None:
        self.finished.append((log_timestamp_s, outcome, self.clock.lab_now()))
        self.clock.in_flight -= 1
        if not self.clock.in_flight:
            self.clock.idle.set()

    def clock_offset(self, service: str, seconds: float) -> None:
        self.offsets[service] = seconds

    def lag(self, instance: str, seconds: float) -> None:
        self.lags.append((self.clock.lab_now(), seconds))


@pytest.mark.parametrize("offset_s", [OFFSET_S, -OFFSET_S], ids=["lab-ahead", "lab-behind"])
async def test_a_host_clock_ten_minutes_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offset_s: float
) -> None:
    run_id = "tz-ahead" if offset_s > 0 else "tz-behind"  # moto's buckets live per process
    host_start_s = float(int(pendulum.now("UTC").timestamp()) // 60 * 60 + 25)
    lab_start_s = host_start_s + offset_s
    # The DB has written for 5 minutes (lab time) when the follower starts; a line at every
    # minute's start, as PostgreSQL opens the next file when it rotates.
    db = MinuteDb(tmp_path, offset_s, next_line_s=(lab_start_s - 300) // 60 * 60)
    clock = HostClock(host_start_s, db)
    hooks = Seen(clock)
    start_s = min(host_start_s, lab_start_s) - 900
    finish_s = max(host_start_s, lab_start_s) + 600
    async with Lab(
        tmp_path, s3="moto", faults=Faults(clock_offset_s=offset_s), now=clock.now
    ) as lab:
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)
        report = await run_sync(
            sync_settings(
                db=DB,
                bucket=lab.bucket,
                start=pendulum.from_timestamp(start_s, tz="UTC"),
                finish=pendulum.from_timestamp(finish_s, tz="UTC"),
                run_id=run_id,
                poll_interval_s=5.0,
            ),
            hooks=hooks,
            clock=clock,
        )
        client = s3_client(lab.env)
        got = objects(client, lab.bucket, f"{run_id}/rds_log_")
        meta = {k: client.head_object(Bucket=lab.bucket, Key=k)["Metadata"] for k in got}
    assert report.exit_code == 0, report.totals
    # Every file of the window, byte-exact, each recorded as complete (copied after it rotated).
    expected = {
        name: data
        for name, data in db.content.items()
        if pendulum.from_format(name[21:36], "YYYY-MM-DD-HHmm", tz="UTC").timestamp() < finish_s
    }
    assert len(expected) >= 15
    landed = {meta_decode(meta[k][META_SOURCE]): data for k, data in got.items()}
    assert landed == expected
    assert all(m[META_COMPLETE] == "true" for m in meta.values())
    # Never before its rotation (the next minute on the lab's clock); at most a rotation period
    # plus a minute after it (or after the follower started, for the backfill).
    assert {outcome for _, outcome, _ in hooks.finished} == {"copied"}
    for timestamp_s, _, copied_lab_s in hooks.finished:
        rotated_s = timestamp_s + ROTATION_S
        assert copied_lab_s >= rotated_s, (timestamp_s, copied_lab_s)
        assert copied_lab_s - max(rotated_s, lab_start_s) <= ROTATION_S + 60, (
            timestamp_s,
            copied_lab_s,
        )
    # The lag gauge once the backfill (files that rotated before the follower started) is out.
    assert hooks.lags[0][1] > ROTATION_S
    assert max(lag for at_s, lag in hooks.lags if at_s > lab_start_s) <= ROTATION_S + 60
    # What the product learnt of AWS's clock (from RDS's Date headers: the lab's S3 keeps the
    # host's clock).
    assert abs(hooks.offsets["rds"] - offset_s) <= 2


async def test_the_estimate_takes_the_quickest_of_the_newest_answers() -> None:
    host = FakeClock(1_000_000.0)
    aws = AwsClock(host)
    assert aws.now() == host.now()

    def date(s: float) -> str:
        return email.utils.formatdate(s, usegmt=True)

    aws.observe("s3", date(1_000_000), 999_999.0, 1_000_001.0)  # S3 stands in until RDS answers
    assert aws.offset_s == pytest.approx(0.5)
    aws.observe("rds", date(1_000_600), 1_000_000.0, 1_000_000.2)  # 600 s ahead
    assert aws.offset_s == pytest.approx(600.4)
    aws.observe("rds", date(1_000_610), 1_000_000.0, 1_000_010.0)  # a slow answer says less
    assert aws.offset_s == pytest.approx(600.4)
    aws.observe("rds", "not a date", 1_000_000.0, 1_000_000.0)
    aws.observe("rds", None, 1_000_000.0, 1_000_000.0)
    assert aws.offset_s == pytest.approx(600.4)
    assert aws.now() == pytest.approx(host.now() + 600.4)
    reached = await aws.sleep_until(aws.now() + 30)
    assert reached and host.now() == pytest.approx(1_000_030.0)
    # A host clock stepped by NTP: followed once its answers fill the window.
    for _ in range(OFFSET_SAMPLES):
        aws.observe("rds", date(host.now() + 5), host.now(), host.now())
    assert aws.offset_s == pytest.approx(5.5)
