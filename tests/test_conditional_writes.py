"""Written once by S3's own guarantee (issue 23): the copier in front of real S3 servers (moto and
SeaweedFS, each behind the fault gateway), with a source in memory.

* A HEAD that fails (403, a 5xx storm) is never read as "nothing there": the archived copy keeps
  its bytes, the file is reported failed, and once S3 answers it goes beside the archived copy.
* A key taken between the check and the write (another process): S3 refuses the conditional
  write (412); the same bytes are recorded with nothing written, another file goes to ``_v2``.
* ``--compress`` switched on an existing run: nothing is stored twice, said once.
* 409 ConditionalRequestConflict: the upload is done again.
* What a file costs in S3 calls on each path."""

from __future__ import annotations

import gzip
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from rdsrecorder.aws import Aws
from rdsrecorder.clock import Clock
from rdsrecorder.compression import Compression
from rdsrecorder.config import AwsSettings
from rdsrecorder.hooks import Hooks
from rdsrecorder.logfiles import Granularity, SpannedFile
from rdsrecorder.manifest import FileEntry
from rdsrecorder.models import DownloadStats, FileStatus, LogFile
from rdsrecorder.transfer import Copier
from tests.s3_servers import MIB, BucketSink, S3Gateway, S3Server, blob

KEY = "run/db/rds_log_run_1707040800"
NAME = "error/postgresql.log.2024-02-04-10.csv"
T0 = 1_707_040_800


class Hooked(Hooks):
    def __init__(self) -> None:
        self.conflicts = 0

    def conflict(self, instance: str) -> None:
        self.conflicts += 1


class BytesSource:
    """RDS in memory: ``files[name]`` is served in 256 KiB chunks; ``before_end`` runs before the
    last chunk (another process acting while this one downloads)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.downloads = 0
        self.before_end: Callable[[], Awaitable[None]] | None = None

    async def download(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]:
        self.downloads += 1
        stats.method = "complete"
        data = self.files[f.name]
        step = 256 * 1024
        for offset in range(0, max(len(data), 1), step):
            if offset + step >= len(data) and self.before_end is not None:
                act, self.before_end = self.before_end, None
                await act()
            chunk = data[offset : offset + step]
            stats.bytes += len(chunk)
            yield chunk


def spanned(data: bytes, instance: str = "db") -> SpannedFile:
    return SpannedFile(
        LogFile(instance, NAME, T0 * 1000 + 1, len(data)), T0, T0 + 3600, Granularity.HOUR, True
    )


def copier(
    source: BytesSource,
    sink: BucketSink,
    hooks: Hooks | None = None,
    compression: Compression = Compression.NONE,
    known: Callable[[str], FileEntry | None] | None = None,
) -> Copier:
    return Copier(
        source,
        sink.reader,
        sink.uploader,
        hooks or Hooks(),
        Clock(),
        "run",
        retry_delay_s=0.01,
        compression=compression,
        known=known,
    )


def aws(max_attempts: int = 2) -> Aws:
    return Aws(AwsSettings(region="us-east-1", max_attempts=max_attempts), Hooks())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions(server: S3Server, bucket: str) -> dict[str, int]:
    listed = server.client().list_object_versions(Bucket=bucket).get("Versions", [])
    out: dict[str, int] = {}
    for v in listed:
        out[v["Key"]] = out.get(v["Key"], 0) + 1
    return out


def stored(server: S3Server, bucket: str, key: str) -> bytes:
    body: bytes = server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


@pytest.mark.parametrize(
    ("status", "code", "times"), [(403, "AccessDenied", 2), (503, "ServiceUnavailable", 4)]
)
async def test_a_failed_head_never_overwrites_an_archived_copy(
    s3_gateway: tuple[S3Gateway, S3Server], status: int, code: str, times: int
) -> None:
    """A DB recreated under its name has another file of that name (180,104 bytes) than the
    archived copy (300,113 bytes). HEADs that fail (a credential rotation's 403, a 503 storm that
    outlasts the retries) fail the file: the archived bytes stay; then it goes beside them."""
    gateway, server = s3_gateway
    bucket = server.new_bucket("head-fails")
    server.client().put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    archived, recreated = blob(300_113, seed=1), blob(180_104, seed=2)
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        assert (
            await copier(BytesSource({NAME: archived}), sink).copy(
                spanned(archived), KEY, complete=True
            )
        ).status is FileStatus.COPIED
        source = BytesSource({NAME: recreated})
        gateway.fail("HeadObject", status=status, code=code, times=times)
        entry = await copier(source, sink).copy(spanned(recreated), KEY, complete=True)
        assert entry.status is FileStatus.FAILED
        assert f"cannot check s3 {KEY}" in entry.error and str(status) in entry.error
        assert source.downloads == 0
        assert gateway.operations().count("PutObject") == 1  # the archived copy's only
        # S3 answers again: the recreated file goes beside the archived copy.
        gateway.faults.clear()
        hooks = Hooked()
        entry = await copier(source, sink, hooks).copy(spanned(recreated), KEY, complete=True)
    assert (entry.status, entry.key, hooks.conflicts) == (FileStatus.COPIED, KEY + "_v2", 1)
    assert stored(server, bucket, KEY) == archived
    assert stored(server, bucket, KEY + "_v2") == recreated
    assert versions(server, bucket) == {KEY: 1, KEY + "_v2": 1}


@pytest.mark.parametrize("size", [300_113, 12 * MIB + 7])
async def test_a_key_taken_by_the_same_file_between_check_and_write_is_recorded_not_rewritten(
    s3_gateway: tuple[S3Gateway, S3Server], size: int
) -> None:
    """Another process copies the same file while this one downloads it (after this one's
    HEAD): S3 refuses this one's PutObject / CompleteMultipartUpload (412), the key holds the
    same bytes, and the copy is recorded with nothing written: one version."""
    gateway, server = s3_gateway
    bucket = server.new_bucket("race-same")
    server.client().put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    data = blob(size, seed=3)
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        other_sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        source = BytesSource({NAME: data})

        async def other_process() -> None:
            other = copier(BytesSource({NAME: data}), other_sink)
            assert (await other.copy(spanned(data), KEY, complete=True)).key == KEY

        source.before_end = other_process
        entry = await copier(source, sink).copy(spanned(data), KEY, complete=True)
        assert await sink.list_multipart_uploads() == []
    assert (entry.status, entry.key, entry.sha256, entry.size) == (
        FileStatus.COPIED,
        KEY,
        sha(data),
        size,
    )
    assert stored(server, bucket, KEY) == data
    assert versions(server, bucket) == {KEY: 1}
    refused = "PutObject" if size < 5 * MIB else "CompleteMultipartUpload"
    assert gateway.operations().count(refused) == 2  # the other's, and this one's (412)


@pytest.mark.parametrize("size", [180_104, 12 * MIB + 7])
async def test_a_key_taken_by_another_file_between_check_and_write_sends_it_to_v2(
    s3_gateway: tuple[S3Gateway, S3Server], size: int
) -> None:
    _, server = s3_gateway
    bucket = server.new_bucket("race-other")
    data, theirs = blob(size, seed=4), blob(300_113, seed=5)
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        source = BytesSource({NAME: data})

        async def other_process() -> None:
            other = copier(BytesSource({NAME: theirs}), sink)
            await other.copy(spanned(theirs), KEY, complete=True)

        source.before_end = other_process
        hooks = Hooked()
        entry = await copier(source, sink, hooks).copy(spanned(data), KEY, complete=True)
        assert await sink.list_multipart_uploads() == []
    assert (entry.status, entry.key, hooks.conflicts) == (FileStatus.COPIED, KEY + "_v2", 1)
    assert source.downloads == 2  # the stream was spent on the refused write
    assert stored(server, bucket, KEY) == theirs
    assert stored(server, bucket, KEY + "_v2") == data


async def test_compress_switched_on_an_existing_run_stores_nothing_twice(
    s3_gateway: tuple[S3Gateway, S3Server], caplog: pytest.LogCaptureFixture
) -> None:
    """Files archived raw are not stored again as gzip when --compress gzip is switched on (nor
    gzipped ones raw when it is switched off); said once per run."""
    _, server = s3_gateway
    bucket = server.new_bucket("forms")
    files = {
        f"error/postgresql.log.2024-02-04-1{i}.csv": blob(300_000 + i, seed=i) for i in range(3)
    }
    names = sorted(files)
    big = {"error/postgresql.log.2024-02-04-13.csv": blob(12 * MIB, seed=9)}

    def sf(name: str, data: bytes, hour: int) -> SpannedFile:
        ts = T0 + hour * 3600
        return SpannedFile(
            LogFile("db", name, ts * 1000, len(data)), ts, ts + 3600, Granularity.HOUR, True
        )

    entries: dict[str, FileEntry] = {}
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        raw = copier(BytesSource({**files, **big}), sink, known=entries.get)
        for hour, name in enumerate([*names, *big]):
            data = {**files, **big}[name]
            entry = await raw.copy(sf(name, data, hour), f"run/db/k{hour}", complete=True)
            entries[entry.key] = entry
        source = BytesSource({**files, **big})
        packed = copier(source, sink, compression=Compression.GZIP, known=entries.get)
        with caplog.at_level(logging.INFO, logger="rdsrecorder.transfer"):
            again = [
                await packed.copy(
                    sf(name, {**files, **big}[name], hour), f"run/db/k{hour}", complete=True
                )
                for hour, name in enumerate([*names, *big])
            ]
        # and the reverse: a gzipped run met raw
        gz_name = "error/postgresql.log.2024-02-04-14.csv"
        gz_data = blob(200_000, seed=7)
        gz_source = BytesSource({gz_name: gz_data})
        gz_entry = await copier(gz_source, sink, compression=Compression.GZIP).copy(
            sf(gz_name, gz_data, 4), "run/db/k4", complete=True
        )
        back = await copier(gz_source, sink).copy(
            sf(gz_name, gz_data, 4), "run/db/k4", complete=True
        )
    assert source.downloads == 0 and gz_source.downloads == 1
    assert [e.status for e in again] == [FileStatus.SKIPPED] * 4
    assert [e.key for e in again] == [f"run/db/k{h}" for h in range(4)]
    assert [e.compression for e in again] == ["none"] * 4
    assert all(e.sha256 == sha({**files, **big}[e.source]) for e in again)
    said = [r for r in caplog.records if "not stored again as gzip" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING] + [logging.INFO] * 3
    assert (gz_entry.key, back.status, back.key) == (
        "run/db/k4.gz",
        FileStatus.SKIPPED,
        "run/db/k4.gz",
    )
    keys = sorted(o["Key"] for o in server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["run/db/k0", "run/db/k1", "run/db/k2", "run/db/k3", "run/db/k4.gz"]
    assert gzip.decompress(stored(server, bucket, "run/db/k4.gz")) == gz_data


@pytest.mark.parametrize("size", [300_113, 12 * MIB + 7])
async def test_a_conditional_write_conflict_redoes_the_upload(
    s3_gateway: tuple[S3Gateway, S3Server], size: int
) -> None:
    gateway, server = s3_gateway
    bucket = server.new_bucket("conflict")
    data = blob(size, seed=6)
    operation = "PutObject" if size < 5 * MIB else "CompleteMultipartUpload"
    gateway.fail(operation, status=409, code="ConditionalRequestConflict")
    source = BytesSource({NAME: data})
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        entry = await copier(source, sink).copy(spanned(data), KEY, complete=True)
        assert await sink.list_multipart_uploads() == []
    assert (entry.status, entry.key, source.downloads) == (FileStatus.COPIED, KEY, 2)
    assert stored(server, bucket, KEY) == data


@pytest.mark.parametrize("size", [300_113, 12 * MIB + 7])
async def test_what_a_file_costs_in_s3_calls(
    s3_gateway: tuple[S3Gateway, S3Server], size: int
) -> None:
    """A new file: two HEADs (its key and its other form, at once) and its write; the condition
    rides on the write itself. A key taken by the same bytes meanwhile: one HEAD more (and the
    abort of the refused multipart upload)."""
    gateway, server = s3_gateway
    bucket = server.new_bucket("calls")
    data = blob(size, seed=8)
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        await copier(BytesSource({NAME: data}), sink).copy(spanned(data), KEY, complete=True)
        fresh = sorted(gateway.operations())
        gateway.seen.clear()
        server.client().delete_object(Bucket=bucket, Key=KEY)
        source = BytesSource({NAME: data})

        async def other_process() -> None:
            await copier(BytesSource({NAME: data}), sink).copy(spanned(data), KEY, complete=True)

        source.before_end = other_process
        await copier(source, sink).copy(spanned(data), KEY, complete=True)
        both = sorted(gateway.operations())  # the other process's calls are a new file's
    write = (
        ["PutObject"]
        if size < 5 * MIB
        else [
            "CompleteMultipartUpload",
            "CreateMultipartUpload",
            "UploadPart",
            "UploadPart",
            "UploadPart",
        ]
    )
    assert fresh == sorted(["HeadObject", "HeadObject", *write])
    abort = [] if size < 5 * MIB else ["AbortMultipartUpload"]
    assert both == sorted([*fresh, *fresh, *abort, "HeadObject"])


async def test_a_store_that_ignores_conditional_writes_is_said(
    gateway: S3Gateway, moto_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """An S3-compatible store without conditional writes (the gateway drops If-None-Match; moto
    then overwrites): the first write to a key that held an object a moment before is said at
    error level, once."""
    bucket = moto_server.new_bucket("no-conditions")
    data = blob(12 * MIB + 7, seed=10)
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        # multipart, and the manifest lost: nothing proves the object's bytes
        await copier(BytesSource({NAME: data}), sink).copy(spanned(data), KEY, complete=True)
        gateway.ignore_conditions = True
        with caplog.at_level(logging.INFO, logger="rdsrecorder.transfer"):
            entry = await copier(BytesSource({NAME: data}), sink).copy(
                spanned(data), KEY, complete=True
            )
    assert entry.status is FileStatus.COPIED
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "seems to ignore conditional writes" in errors[0]
