"""The run manifest: JSON round trip, debounced and serialised writes, failed writes retried; and
the same against a real S3 server (moto)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from rdsrecorder.aws import Aws
from rdsrecorder.clock import FakeClock
from rdsrecorder.config import AwsSettings
from rdsrecorder.errors import RdsRecorderError
from rdsrecorder.hooks import Hooks
from rdsrecorder.manifest import (
    SCHEMA_VERSION,
    FileEntry,
    Manifest,
    ManifestStore,
    manifest_key,
)
from rdsrecorder.times import parse_iso
from tests.fakes import MemoryStorage, manifest
from tests.s3_servers import MIB, BucketSink, S3Server
from tests.waits import until

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def entry(hour: int, status: str = "copied", **fields: object) -> FileEntry:
    e = FileEntry(
        key=f"run1/rds_log_run1_{1_699_992_000 + 3600 * (hour - 20)}",
        source=f"error/postgresql.log.2023-11-14-{hour:02d}.csv",
        instance="db-1",
        span_start=f"2023-11-14T{hour:02d}:00:00Z",
        span_end=f"2023-11-14T{hour + 1:02d}:00:00Z",
        size=1000 + hour,
        sha256=f"{hour:064x}",
        method="portion",
        status=status,
        source_size=1000 + hour,
    )
    for name, value in fields.items():
        setattr(e, name, value)
    return e


def test_round_trip_keeps_every_field() -> None:
    m = manifest()
    m.files = {e.key: e for e in (entry(20), entry(21, truncated_lines=2), entry(22, "failed"))}
    m.files[entry(22).key].error = "marker stuck"
    m.gaps = [
        {
            "instance": "db-1",
            "start": "2023-11-14T20:00:00Z",
            "end": "2023-11-14T21:00:00Z",
            "reason": "no-log-file",
        }
    ]
    m.summary = {"copied": 2, "failed": 1}
    m.notes = {"snapshot": {"id": "snap-1"}}
    text = m.to_json()
    assert json.loads(text)["schema"] == SCHEMA_VERSION
    assert Manifest.from_json(text) == m
    assert Manifest.from_json(text.encode()) == m


def test_unknown_fields_are_tolerated_and_a_newer_schema_is_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = json.loads(manifest().to_json())
    data["schema"] = SCHEMA_VERSION + 1
    data["added_later"] = {"x": 1}
    key = entry(20).key
    data["files"] = {key: {**json.loads(json.dumps(entry(20).__dict__)), "checksum_crc": "x"}}
    with caplog.at_level(logging.WARNING):
        m = Manifest.from_json(json.dumps(data))
    assert m.files[key] == entry(20)
    assert "newer" in caplog.text
    # written before some fields existed: their defaults apply
    old = json.loads(manifest().to_json())
    del old["notes"], old["summary"], old["schema"]
    assert Manifest.from_json(json.dumps(old)).notes == {}


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"run_id": "x"}', '{"files": 3}', "not json"])
def test_invalid_manifests_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        Manifest.from_json(text)


async def test_load_returns_none_or_the_manifest_and_refuses_garbage() -> None:
    storage = MemoryStorage()
    store = ManifestStore(storage, "run1", FakeClock(T0))
    assert await store.load() is None
    storage.objects[manifest_key("run1")] = manifest().to_json().encode()
    assert await store.load() == manifest()
    storage.objects[manifest_key("run1")] = b"{oops"
    with pytest.raises(RdsRecorderError, match=r"run1/manifest.json is not a valid manifest"):
        await store.load()


async def test_flush_is_debounced_and_force_writes_at_once() -> None:
    storage, clock = MemoryStorage(), FakeClock(T0)
    store = ManifestStore(storage, "run1", clock, min_interval_s=10.0)
    await store.flush()
    assert storage.puts == 0  # nothing started yet
    store.start(manifest())
    await store.flush()
    assert storage.puts == 1  # the first write is not delayed
    store.record(entry(20))
    await store.flush()
    assert storage.puts == 1  # within the interval: kept in memory
    clock.advance(9.9)
    await store.flush()
    assert storage.puts == 1
    clock.advance(0.1)
    await store.flush()
    assert storage.puts == 2 and entry(20).key in storage.saved().files
    clock.advance(60)
    await store.flush()
    assert storage.puts == 2  # not dirty: no write
    store.add_gap("db-1", "2023-11-14T20:00:00Z", "2023-11-14T21:00:00Z", "no-log-file")
    store.add_gap("db-1", "2023-11-14T20:00:00Z", "2023-11-14T21:00:00Z", "no-log-file")
    await store.flush(force=True)
    assert storage.puts == 3
    assert len(storage.saved().gaps) == 1
    assert storage.saved().updated_at == "2023-11-14T22:14:30Z"


async def test_a_failed_write_is_logged_and_retried_at_the_next_flush(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage, clock = MemoryStorage(), FakeClock(T0)
    store = ManifestStore(storage, "run1", clock, min_interval_s=10.0)
    store.start(manifest())
    store.record(entry(20))
    storage.fail_next = 1
    with caplog.at_level(logging.WARNING, logger="rdsrecorder.manifest"):
        await store.flush()  # does not raise
    assert "writing run1/manifest.json failed" in caplog.text
    assert storage.puts == 0 and store.dirty and store.failed_writes == 1
    await store.flush()  # the interval counts from the last successful write: retried now
    assert storage.puts == 1 and not store.dirty
    assert entry(20).key in storage.saved().files


async def test_concurrent_flushes_are_serialised_and_lose_nothing() -> None:
    storage, clock = MemoryStorage(), FakeClock(T0)
    store = ManifestStore(storage, "run1", clock, min_interval_s=0.0)
    store.start(manifest())
    storage.gate = asyncio.Event()
    first = asyncio.create_task(store.flush())
    await until(lambda: storage.writing > 0, "the first write started")
    store.record(entry(21))  # lands while the first write is in flight
    second = asyncio.create_task(store.flush())
    await asyncio.sleep(0.01)
    assert storage.writing == 1  # the second flush waits for the first
    storage.gate.set()
    await asyncio.gather(first, second)
    assert storage.most_writing == 1 and storage.puts == 2
    assert entry(21).key in storage.saved().files


async def test_a_cancelled_write_leaves_the_manifest_dirty() -> None:
    storage = MemoryStorage()
    store = ManifestStore(storage, "run1", FakeClock(T0))
    store.start(manifest())
    storage.gate = asyncio.Event()
    task = asyncio.create_task(store.flush())
    await until(lambda: storage.writing > 0, "the first write started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.dirty
    storage.gate.set()
    await store.close(finished=False)
    assert storage.saved().finished_at is None


async def test_close_always_writes_and_retries(caplog: pytest.LogCaptureFixture) -> None:
    storage, clock = MemoryStorage(), FakeClock(T0)
    store = ManifestStore(storage, "run1", clock, min_interval_s=3600.0)
    store.start(manifest())
    await store.flush()
    store.record(entry(20))
    storage.fail_next = 2
    await store.close(finished=True)  # within the interval, and two writes fail
    saved = storage.saved()
    assert saved.finished_at == "2023-11-14T22:13:20Z"
    # After retry delays of 1 s + 2 s, each at random from half to one and a half of it.
    assert 1.5 <= parse_iso(saved.updated_at) - T0 <= 4.5
    assert entry(20).key in saved.files
    storage.fail_next = 99
    store.record(entry(21))
    with caplog.at_level(logging.ERROR, logger="rdsrecorder.manifest"):
        await store.close(finished=True)  # gives up, loudly, without raising
    assert "could not write run1/manifest.json after 3 attempts" in caplog.text


def test_record_keeps_the_earlier_copy_when_a_resume_skips_it() -> None:
    store = ManifestStore(MemoryStorage(), "run1", FakeClock(T0))
    store.start(manifest())
    store.record(entry(20, method="complete", truncated_lines=0, copied_at="then"))
    store.record(entry(20, "skipped", method="skipped", copied_at="now"))
    store.record(entry(21, "failed", error="boom"))
    store.record(entry(21, "copied"))
    files = store.manifest.files if store.manifest else {}
    assert (files[entry(20).key].status, files[entry(20).key].method) == ("copied", "complete")
    assert files[entry(20).key].copied_at == "then"
    assert files[entry(21).key].status == "copied"
    with pytest.raises(RuntimeError):
        ManifestStore(MemoryStorage(), "r", FakeClock(T0)).record(entry(20))


async def test_manifest_in_real_s3(moto: S3Server) -> None:
    bucket = moto.new_bucket("manifest")
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = BucketSink(aws, bucket, Hooks(), part_size_bytes=8 * MIB)
        store = ManifestStore(sink, "run1", FakeClock(T0))
        assert await store.load() is None
        store.start(manifest())
        store.record(entry(20))
        store.note("snapshot", {"id": "snap-1"})
        store.set_summary({"copied": 1})
        await store.close(finished=True)
        again = await ManifestStore(sink, "run1", FakeClock(T0)).load()
    assert again is not None and again == store.manifest
    head = moto.client().head_object(Bucket=bucket, Key="run1/manifest.json")
    assert head["ContentType"] == "application/json"
