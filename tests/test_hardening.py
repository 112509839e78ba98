"""Issue 14 on fakes and pure functions: a follower retries what failed, restarts resume the
window, one owner per run id, series keys, names from the API as data, bounded error texts,
verify's size contract. Milliseconds each (FakeClock)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pendulum
import pytest
from botocore.exceptions import ClientError

from rdsrecorder.aws import translate
from rdsrecorder.clock import FakeClock
from rdsrecorder.commands import abort_stale_uploads, resumed_start
from rdsrecorder.errors import AwsError, OwnerError, UnsafeNameError, UploadError
from rdsrecorder.hooks import Hooks
from rdsrecorder.logfiles import Granularity, SpannedFile
from rdsrecorder.logsetup import setup_logging
from rdsrecorder.manifest import FileEntry, ManifestStore, manifest_key
from rdsrecorder.metrics import PrometheusHooks
from rdsrecorder.models import (
    META_SOURCE,
    DownloadStats,
    FileStatus,
    LogFile,
    meta_decode,
    meta_encode,
)
from rdsrecorder.rds.download import complete_path
from rdsrecorder.rds.portions import marker_offset
from rdsrecorder.recorder import Recorder, RecorderSettings
from rdsrecorder.transfer import Copier
from rdsrecorder.verify import verify_run
from rdsrecorder.window import Mode, Window
from tests.e2e import sync_settings
from tests.fakes import (
    HOUR,
    T0,
    FakeFile,
    FakeManifest,
    FakeSink,
    FakeSource,
    MemoryStorage,
    MemoryStore,
    StaticResolver,
    key,
    manifest,
    rotating_db,
)


@dataclass
class OutageSink(FakeSink):
    """S3 that refuses every upload until ``back_at_s`` (an outage), then works."""

    clock: FakeClock = field(default_factory=lambda: FakeClock(0))
    back_at_s: float = 0.0
    refused: int = 0

    async def before_upload(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        if self.clock.now() < self.back_at_s:
            self.refused += 1
            async for _ in chunks:
                pass
            raise UploadError("s3 PutObject failed: ServiceUnavailable (after retries)")


class RangedStorage(MemoryStorage):
    async def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None:
        data = self.objects.get(key)
        return data if data is None or max_bytes is None else data[:max_bytes]


class Counting(Hooks):
    def __init__(self) -> None:
        self.retries = 0
        self.conflicts = 0

    def retry_scheduled(self, instance: str) -> None:
        self.retries += 1

    def conflict(self, instance: str) -> None:
        self.conflicts += 1


def recorder(
    source: FakeSource,
    sink: FakeSink,
    clock: FakeClock,
    *,
    start_s: float,
    finish_s: float | None,
    mode: Mode,
    hooks: Hooks | None = None,
    include_series: tuple[str, ...] = (),
) -> tuple[Recorder, FakeManifest]:
    hooks = hooks or Hooks()
    manifest_sink = FakeManifest()
    rec = Recorder(
        RecorderSettings(
            window=Window(start_s, finish_s, mode),
            run_id="RUN",
            per_instance_keys=False,
            concurrency=4,
            poll_interval_s=60.0,
            finish_grace_s=None,
            shutdown_grace_s=0.5,
            include_series=include_series,
        ),
        lister=source,
        resolver=StaticResolver("db"),
        copier=Copier(source, sink, sink, hooks, clock, "RUN", retry_delay_s=0.01),
        manifest=manifest_sink,
        hooks=hooks,
        clock=clock,
        stop=asyncio.Event(),
    )
    return rec, manifest_sink


async def test_follower_retries_files_that_failed_in_an_s3_outage() -> None:
    clock = FakeClock(T0 + 2.5 * HOUR)
    source = FakeSource(clock, rotating_db(T0, HOUR))
    sink = OutageSink(clock=clock, back_at_s=T0 + 2.5 * HOUR + 600)  # 10 minutes of outage
    hooks = Counting()
    rec, manifest_sink = recorder(
        source,
        sink,
        clock,
        start_s=T0,
        finish_s=T0 + 4 * HOUR,
        mode=Mode.DOWNLOAD_AND_SYNC,
        hooks=hooks,
    )
    totals = await rec.run()
    # The two files that had rotated when the outage began were refused, retried, and landed
    # after it, with the others.
    assert sink.refused >= 4 and hooks.retries >= 2
    assert {key(10), key(11)} <= set(sink.objects)
    assert manifest_sink.entries[key(10)].status is FileStatus.COPIED
    assert totals.failed == 0 and totals.ok, totals


async def test_backfill_does_not_wait_for_retries() -> None:
    clock = FakeClock(T0 + 2.5 * HOUR)
    source = FakeSource(clock, rotating_db(T0, HOUR))
    sink = OutageSink(clock=clock, back_at_s=T0 + 10 * HOUR)
    rec, manifest_sink = recorder(
        source, sink, clock, start_s=T0, finish_s=T0 + 2 * HOUR, mode=Mode.DOWNLOAD_AND_FINISH
    )
    totals = await rec.run()
    assert totals.failed == 2 and not totals.ok
    assert manifest_sink.entries[key(10)].status is FileStatus.FAILED
    assert clock.now() < T0 + 2.6 * HOUR


async def test_only_postgresql_series_owns_the_seed_key() -> None:
    clock = FakeClock(T0 + 2.5 * HOUR)
    base = rotating_db(T0, HOUR)

    def files(now_s: float) -> dict[tuple[str, str], FakeFile]:
        out = dict(base(now_s))
        # a same-hour file of another series, listed first by name
        out[("db", "error/audit.log.2024-02-04-10.csv")] = FakeFile(b"audit\n", T0 + 100)
        return out

    source = FakeSource(clock, files)
    sink = FakeSink()
    rec, _ = recorder(
        source, sink, clock, start_s=T0, finish_s=T0 + HOUR, mode=Mode.DOWNLOAD_AND_FINISH
    )
    await rec.run()
    assert set(sink.objects) == {key(10)}
    assert meta_decode(sink.objects[key(10)][1][META_SOURCE]).startswith("error/postgresql.log")
    sink2 = FakeSink()
    rec2, _ = recorder(
        source,
        sink2,
        clock,
        start_s=T0,
        finish_s=T0 + HOUR,
        mode=Mode.DOWNLOAD_AND_FINISH,
        include_series=("audit.log",),
    )
    await rec2.run()
    assert set(sink2.objects) == {key(10), key(10) + "_audit.log"}
    assert sink2.objects[key(10) + "_audit.log"][0] == b"audit\n"


async def test_a_complete_copy_of_another_file_is_kept_beside() -> None:
    clock = FakeClock(T0 + 2.5 * HOUR)
    source = FakeSource(clock, rotating_db(T0, HOUR))
    sink = FakeSink()
    rec, _ = recorder(
        source, sink, clock, start_s=T0, finish_s=T0 + HOUR, mode=Mode.DOWNLOAD_AND_FINISH
    )
    await rec.run()
    original = sink.objects[key(10)]
    recreated = rotating_db(T0, HOUR, instance="db")

    def other(now_s: float) -> dict[tuple[str, str], FakeFile]:
        out = dict(recreated(now_s))
        name = ("db", "error/postgresql.log.2024-02-04-10.csv")
        out[name] = FakeFile(b"a recreated instance wrote this\n", out[name].last_written_s)
        return out

    hooks = Counting()
    rec2, manifest_sink = recorder(
        FakeSource(clock, other),
        sink,
        clock,
        start_s=T0,
        finish_s=T0 + HOUR,
        mode=Mode.DOWNLOAD_AND_FINISH,
        hooks=hooks,
    )
    totals = await rec2.run()
    assert sink.objects[key(10)] == original  # never overwritten
    assert sink.objects[key(10) + "_v2"][0] == b"a recreated instance wrote this\n"
    assert set(manifest_sink.entries) == {key(10) + "_v2"}
    assert hooks.conflicts == 1 and totals.ok
    # a third run finds both copies in place and writes nothing
    rec3, _ = recorder(
        FakeSource(clock, other),
        sink,
        clock,
        start_s=T0,
        finish_s=T0 + HOUR,
        mode=Mode.DOWNLOAD_AND_FINISH,
    )
    assert (await rec3.run()).skipped == 1


class ShortSource(FakeSource):
    """RDS lists more bytes than it serves (a false end nobody went past, a shrunk file)."""

    async def download(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]:
        async for chunk in super().download(f, stats):
            yield chunk[: len(chunk) // 2]
            stats.bytes -= len(chunk) - len(chunk) // 2


async def test_a_file_that_arrives_short_is_never_copied() -> None:
    clock = FakeClock(T0 + 2.5 * HOUR)
    source = ShortSource(clock, rotating_db(T0, HOUR))
    sink = FakeSink()
    rec, manifest_sink = recorder(
        source, sink, clock, start_s=T0, finish_s=T0 + HOUR, mode=Mode.DOWNLOAD_AND_FINISH
    )
    totals = await rec.run()
    entry = manifest_sink.entries[key(10)]
    assert entry.status is FileStatus.CHANGED and "RDS lists" in entry.error
    assert totals.changed == 1 and not totals.ok
    assert source.downloads.count("error/postgresql.log.2024-02-04-10.csv") == 3
    # RDS kept listing it unchanged: the last attempt keeps what arrived (nothing RDS served is
    # dropped), and the entry says it is short.
    data, _ = sink.objects[key(10)]
    assert entry.size == len(data) < entry.source_size
    # a re-run does not take that short object for a finished copy
    rec2, manifest2 = recorder(
        source, sink, clock, start_s=T0, finish_s=T0 + HOUR, mode=Mode.DOWNLOAD_AND_FINISH
    )
    assert (await rec2.run()).skipped == 0
    assert manifest2.entries[key(10)].status is FileStatus.CHANGED


class Manifests:
    """What ``resumed_start`` asks of the run's manifests."""

    def __init__(self, start: pendulum.DateTime | None) -> None:
        self.start = start

    def earliest_start(self) -> pendulum.DateTime | None:
        return self.start


def test_resumed_run_keeps_its_window_start(caplog: pytest.LogCaptureFixture) -> None:
    recorded = pendulum.datetime(2023, 11, 14, 20, tz="UTC")
    now = pendulum.datetime(2023, 11, 15, 12, tz="UTC")
    later = sync_settings(
        db="db-1", bucket="logs", start=now.subtract(hours=1), finish=None, run_id="run1"
    )
    with caplog.at_level(logging.INFO):
        assert resumed_start(Manifests(recorded), later) == recorded  # type: ignore[arg-type]
    assert "resumes from its manifest's window start" in caplog.text
    earlier = sync_settings(
        db="db-1",
        bucket="logs",
        start=pendulum.datetime(2023, 11, 14, 18, tz="UTC"),
        finish=None,
        run_id="run1",
    )
    assert resumed_start(Manifests(recorded), earlier) == earlier.start  # type: ignore[arg-type]
    assert resumed_start(Manifests(None), later) == later.start  # type: ignore[arg-type]


async def test_owner_is_checked_before_every_write_and_a_foreign_store_writes_nothing() -> None:
    storage = RangedStorage()
    store = ManifestStore(storage, "run1", FakeClock(T0), min_interval_s=0.0)
    store.start(manifest())
    await store.flush(force=True)
    await store.check_owner()  # our own manifest
    other = manifest()
    other.db_identifier = "db-2"
    storage.objects[manifest_key("run1")] = other.to_json().encode()
    with pytest.raises(OwnerError, match="db-2"):
        await store.check_owner()
    store.record(
        FileEntry(
            "run1/k", "s", "db-1", "2023-11-14T20:00:00Z", None, 1, "x", "portion", "copied", 1
        )
    )
    await store.close(finished=True)
    assert json.loads(storage.objects[manifest_key("run1")])["db_identifier"] == "db-2"


def test_complete_url_segments_are_encoded_and_dot_dot_refused() -> None:
    assert complete_path("db", "error/postgresql.log.2024-01-01-00.csv") == (
        "v19/downloadCompleteLogFile/db/error/postgresql.log.2024-01-01-00.csv"
    )
    assert complete_path("db", "error/a b?#ë.csv").endswith("/error/a%20b%3F%23%C3%AB.csv")
    for bad in ("error/../../x", "error//x", "./x", "error/.."):
        with pytest.raises(UnsafeNameError, match="not fetched"):
            complete_path("db", bad)


def test_metadata_values_are_ascii_and_round_trip() -> None:
    for name in ("error/postgresql.log.2024-01-01-00.csv", "error/zoë ミナ.csv", "a%b\nc"):
        encoded = meta_encode(name)
        assert encoded.isascii() and "\n" not in encoded
        assert meta_decode(encoded) == name


def test_markers_byte_offsets() -> None:
    assert marker_offset("0") == 0
    assert marker_offset("12:1048576") == 1048576
    assert marker_offset("opaque") is None


def test_control_characters_in_names_cannot_forge_log_lines() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream)
    logging.getLogger("rdsrecorder.test").warning(
        "copied %s", "error/x.csv\n2024-01-01T00:00:00Z ERROR rdsrecorder: forged"
    )
    out = stream.getvalue()
    assert out.count("\n") == 1 and "\\x0a2024" in out


def test_aws_errors_never_carry_response_bodies() -> None:
    body = "<DownloadDBLogFilePortionResponse><LogFileData>" + "secret log line " * 4000
    exc = ClientError({"Error": {"Code": "500", "Message": body}}, "DownloadDBLogFilePortion")
    text = str(translate(exc, "rds", "DownloadDBLogFilePortion"))
    assert "secret log line" not in text and len(text) < 300
    assert "\n" not in text


async def test_verify_fails_on_a_short_copied_entry() -> None:
    store = MemoryStore()
    m = manifest()
    m.finished_at = m.updated_at
    data = b"only half of it\n"
    entry = FileEntry(
        "run1/k",
        "error/postgresql.log.2023-11-14-20.csv",
        "db-1",
        "2023-11-14T20:00:00Z",
        "2023-11-14T23:00:00Z",
        len(data),
        hashlib.sha256(data).hexdigest(),
        "portion",
        FileStatus.COPIED,
        2 * len(data),
    )
    m.files[entry.key] = entry
    store.objects["run1/k"] = (data, {})
    await store.put_bytes(manifest_key("run1"), m.to_json().encode(), "application/json")
    report = await verify_run(store, "run1")
    assert not report.ok
    assert [r.status for r in report.rows] == ["short"]


def test_conflict_and_retry_counters_are_exported() -> None:
    hooks = PrometheusHooks(run_id="r")
    hooks.conflict("db")
    hooks.retry_scheduled("db")
    text = hooks.render().decode()
    assert 'rdsrecorder_conflicts_total{db_instance="db",run_id="r"} 1' in text
    assert 'rdsrecorder_file_retries_total{db_instance="db",run_id="r"} 1' in text


class DeniedAbortBucket:
    """ListMultipartUploads works; AbortMultipartUpload is denied (not in the seed's IAM list)."""

    name = "logs"

    def __init__(self) -> None:
        self.aborts = 0

    async def list_multipart_uploads(self, prefix: str = "") -> list[dict[str, str]]:
        assert prefix == "run1/"
        return [{"Key": f"run1/k{i}", "UploadId": str(i)} for i in range(3)]

    async def call(self, method: str, **params: object) -> dict[str, object]:
        assert method == "abort_multipart_upload"
        self.aborts += 1
        raise AwsError("s3 AbortMultipartUpload failed: AccessDenied", code="AccessDenied")


async def test_denied_abort_of_stale_uploads_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    bucket = DeniedAbortBucket()
    with caplog.at_level(logging.WARNING):
        assert await abort_stale_uploads(bucket, "run1", ["run1/"]) == 0  # type: ignore[arg-type]
    assert bucket.aborts == 1
    (record,) = [r for r in caplog.records if "multipart" in r.getMessage()]
    assert "3 unfinished multipart upload(s)" in record.getMessage()
    assert "AbortIncompleteMultipartUpload" in record.getMessage()


class SlowOwnerStorage(RangedStorage):
    """S3 whose reads take a while (real seconds) and are counted."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None:
        self.reads += 1
        await asyncio.sleep(0.02)
        return await super().get_bytes(key, max_bytes)


async def test_owner_checks_asked_together_share_one_read_and_its_answer() -> None:
    storage = SlowOwnerStorage()
    store = ManifestStore(storage, "run1", FakeClock(T0), min_interval_s=0.0)
    store.start(manifest())
    await store.flush(force=True)
    await asyncio.gather(*(store.check_owner() for _ in range(8)))
    assert storage.reads == 1  # eight files starting together: one GET
    await store.check_owner()
    assert storage.reads == 2  # asked after the answer came: read again
    other = manifest()
    other.db_identifier = "db-2"
    storage.objects[manifest_key("run1")] = other.to_json().encode()
    results = await asyncio.gather(*(store.check_owner() for _ in range(3)), return_exceptions=True)
    assert storage.reads == 3
    assert all(isinstance(r, OwnerError) and "db-2" in str(r) for r in results), results


def _spanned(name: str, size: int) -> SpannedFile:
    return SpannedFile(
        LogFile("db-1", name, T0 * 1000, size), T0, T0 + 3600, Granularity.HOUR, True
    )


@pytest.mark.parametrize("content", [b"a,b\n" * 500, b""], ids=["file", "empty-file"])
async def test_the_owner_check_runs_beside_the_download_and_a_failed_one_writes_nothing(
    content: bytes,
) -> None:
    clock = FakeClock(T0)
    source = FakeSource(clock, lambda now: {("db-1", "f.csv"): FakeFile(content, T0)})
    sink = FakeSink()
    checks: list[str] = []

    async def foreign(instance: str) -> None:
        await asyncio.sleep(0.01)
        checks.append(f"check over, {len(source.downloads)} download(s) started")
        raise OwnerError("run1 belongs to db-2 now")

    copier = Copier(source, sink, sink, Hooks(), clock, "run1", owner_check=foreign)
    with pytest.raises(OwnerError, match="db-2"):
        await copier.copy(_spanned("f.csv", len(content)), "run1/k", complete=True)
    # The download did not wait for the check to end ...
    assert checks == ["check over, 1 download(s) started"]
    # ... and nothing reached S3: not one chunk was handed on to the upload.
    assert sink.objects == {}

    async def ours(instance: str) -> None:
        await asyncio.sleep(0.01)

    copier = Copier(source, sink, sink, Hooks(), clock, "run1", owner_check=ours)
    entry = await copier.copy(_spanned("f.csv", len(content)), "run1/k", complete=True)
    assert entry.status is FileStatus.COPIED and sink.objects["run1/k"][0] == content
