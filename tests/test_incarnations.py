"""A DB deleted and recreated under its name while it is followed: named with -d (a run over one
DB) and discovered by tag (a fleet run). The new incarnation (a new DbiResourceId) is followed
again; its files land beside the old one's, never over them, even where a name repeats with the
same size; the old one's copies stay as they were. A named DB that is gone is missing (a metric)
and looked for again until it is back. The follower runs on a fake clock that the lab reads too,
so the minutes of the story take a second."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pendulum
import pytest

from rdsrecorder.clock import FakeClock
from rdsrecorder.commands import run_sync
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import META_DB_RESOURCE_ID, META_SOURCE, meta_decode
from rdsrecorder_lab import Lab
from tests.e2e import objects, s3_client, sync_settings

DB = "vic"
TAGS = {"team": "payments"}


def minute_name(ts: float) -> str:
    stamp = pendulum.from_timestamp(ts, tz="UTC").format("YYYY-MM-DD-HHmm")
    return f"error/postgresql.log.{stamp}.csv"


def write(root: Path, name: str, data: bytes, last_written_s: float) -> None:
    path = root / DB / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (last_written_s, last_written_s))


class StoryClock(FakeClock):
    """Fake time with things that happen at given times (as soon as time reaches them). The poll
    loop's sleep moves it only once the copies in flight have ended (they take real milliseconds,
    no fake time): the story happens between rounds, never under a copy."""

    def __init__(self, start_s: float) -> None:
        super().__init__(start_s)
        self.events: list[tuple[float, Callable[[], None]]] = []
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def _happen(self) -> None:
        while self.events and self.events[0][0] <= self.now():
            self.events.pop(0)[1]()

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self._happen()

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        self._happen()

    async def sleep_until(self, deadline_s: float, stop: asyncio.Event | None = None) -> bool:
        await asyncio.sleep(0)  # the copies just queued start (and count themselves)
        await self.idle.wait()
        reached = await super().sleep_until(deadline_s, stop)
        self._happen()
        return reached


class Seen(Hooks):
    def __init__(self, clock: StoryClock) -> None:
        self.clock = clock
        self.recreated: list[str] = []
        self.missing: list[tuple[str, bool]] = []

    def file_started(self, instance: str) -> None:
        self.clock.in_flight += 1
        self.clock.idle.clear()

    def file_finished(
        self, instance: str, outcome: str, duration_s: float, log_timestamp_s: float
    ) -> None:
        self.clock.in_flight -= 1
        if not self.clock.in_flight:
            self.clock.idle.set()

    def db_recreated(self, instance: str) -> None:
        self.recreated.append(instance)

    def db_missing(self, db: str, missing: bool) -> None:
        self.missing.append((db, missing))


@pytest.mark.parametrize("named", [True, False], ids=["named", "discovered"])
async def test_a_db_deleted_and_recreated_while_followed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    named: bool,
) -> None:
    caplog.set_level("INFO")
    run_id = "inc-named" if named else "inc-found"  # moto's buckets live per process
    t0 = float(int(pendulum.now("UTC").timestamp()) // 60 * 60)
    m = [t0 - 360 + 60 * i for i in range(5)]  # the old incarnation's minutes
    old = {minute_name(ts): f"old {i}\n".encode() * (20 + i) for i, ts in enumerate(m)}
    clock = StoryClock(t0 + 60)
    # The new incarnation repeats the old one's last name with another content of the same size
    # (a DB recreated within the hour, with hourly names), then goes on minute by minute.
    repeated = minute_name(m[4])
    new = {
        repeated: b"NEW " * (len(old[repeated]) // 4) + b"NEW "[: len(old[repeated]) % 4],
        minute_name(t0 + 180): b"new a\n" * 30,
        minute_name(t0 + 240): b"new b\n" * 31,
    }
    assert len(new[repeated]) == len(old[repeated])
    tail = minute_name(t0 + 300)  # the file the last one rotates into

    async with Lab(tmp_path, s3="moto", now=clock.now) as lab:
        lab.add_instance(DB, tags=TAGS)  # the first incarnation
        for i, (name, data) in enumerate(old.items()):
            write(tmp_path, name, data, m[i] + 50)  # the last one idle since t0 - 70 s: complete

        def delete() -> None:
            lab.remove_instance(DB)

        def recreate() -> None:
            lab.add_instance(DB, tags=TAGS)
            for name, data in new.items():
                write(tmp_path, name, data, clock.now() - 1)
            write(tmp_path, tail, b"still written\n", clock.now())

        clock.events = [(t0 + 120, delete), (t0 + 200, recreate)]
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)
        hooks = Seen(clock)
        target: dict[str, object] = (
            {"db_identifiers": (DB,)} if named else {"discover_tags": tuple(TAGS.items())}
        )
        report = await run_sync(
            sync_settings(
                db=DB if named else "",
                bucket=lab.bucket,
                start=pendulum.from_timestamp(t0 - 600, tz="UTC"),
                finish=pendulum.from_timestamp(t0 + 300, tz="UTC"),
                run_id=run_id,
                poll_interval_s=5.0,
                discover_interval_s=60.0,
                **target,
            ),
            hooks=hooks,
            clock=clock,
        )
        client = s3_client(lab.env)
        got = objects(client, lab.bucket, f"{run_id}/")
        meta = {k: client.head_object(Bucket=lab.bucket, Key=k)["Metadata"] for k in got}
    logs = {k: v for k, v in got.items() if not k.endswith("manifest.json")}
    prefix = f"{run_id}/" if named else f"{run_id}/{DB}/"
    assert report.exit_code == 0, report.totals
    # The old incarnation: every file, as it was.
    for ts, (name, data) in zip(m, old.items(), strict=True):
        key = f"{prefix}rds_log_{run_id}_{int(ts)}"
        assert logs[key] == data, name
    # The new one: every rotated file, its repeated name beside the old copy.
    repeated_key = f"{prefix}rds_log_{run_id}_{int(m[4])}"
    assert logs[f"{repeated_key}_v2"] == new[repeated]
    assert logs[f"{prefix}rds_log_{run_id}_{int(t0 + 180)}"] == new[minute_name(t0 + 180)]
    assert logs[f"{prefix}rds_log_{run_id}_{int(t0 + 240)}"] == new[minute_name(t0 + 240)]
    assert len(logs) == len(old) + len(new)
    # Which incarnation wrote which object: the metadata says.
    old_id = meta[repeated_key][META_DB_RESOURCE_ID]
    new_id = meta[f"{repeated_key}_v2"][META_DB_RESOURCE_ID]
    assert old_id.startswith("db-") and new_id.startswith("db-") and old_id != new_id
    assert meta_decode(meta[f"{repeated_key}_v2"][META_SOURCE]) == repeated
    assert hooks.recreated == [DB]
    assert f"{DB} was deleted and recreated" in caplog.text
    if named:
        assert hooks.missing == [(DB, True), (DB, False)]
        assert f"DB {DB} (named with -d) is not found" in caplog.text
