"""The S3 sink against real S3 servers: moto's server and SeaweedFS (``weed mini``), plus a
gateway in front of moto for what only AWS enforces (expected bucket owner) and for faults."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rdsrecorder.aws import Aws
from rdsrecorder.compression import Compression
from rdsrecorder.config import AwsSettings
from rdsrecorder.errors import (
    BucketError,
    KeyTakenError,
    LogFileGoneError,
    UploadError,
    WriteConflictError,
)
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import META_SHA256, META_SIZE, META_SOURCE, UploadResult
from rdsrecorder.s3 import spool as spool_module
from rdsrecorder.s3 import upload as s3_module
from rdsrecorder.s3 import upload_config
from rdsrecorder.s3.upload_config import (
    MAX_PART_BYTES,
    MAX_PARTS,
    MIN_PART_BYTES,
    StorageClass,
    grown_part_size,
    part_size_for,
)
from tests.s3_servers import (
    MIB,
    MOTO_ACCOUNT,
    BucketSink,
    Fault,
    S3Gateway,
    S3Server,
    blob,
    chunked,
)
from tests.waits import until

GIB = 1024 * MIB


class RecordingHooks(Hooks):
    def __init__(self) -> None:
        self.uploaded: list[tuple[str, int]] = []
        self.retries: list[tuple[str, str]] = []
        self.part_done = asyncio.Event()

    def bytes_uploaded(self, instance: str, count: int) -> None:
        self.uploaded.append((instance, count))
        self.part_done.set()

    def retry(self, service: str, operation: str, reason: str) -> None:
        self.retries.append((operation, reason))


def aws(hooks: Hooks | None = None, max_attempts: int = 3) -> Aws:
    return Aws(AwsSettings(region="us-east-1", max_attempts=max_attempts), hooks or Hooks())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64_sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def b64_composite(data: bytes, first: int, part: int) -> str:
    """The composite SHA-256 S3 keeps for ``data`` sent as a first part of ``first`` bytes, then
    parts of ``part`` bytes: the SHA-256 of the parts' digests, ``-<parts>``."""
    cuts = [data[:first]] + [data[i : i + part] for i in range(first, len(data), part)]
    digests = b"".join(hashlib.sha256(c).digest() for c in cuts)
    return f"{base64.b64encode(hashlib.sha256(digests).digest()).decode()}-{len(cuts)}"


# -- part sizes ------------------------------------------------------------------------------------
def test_part_size_for_edges() -> None:
    # tiny files and a configured size below the S3 minimum: 5 MiB
    assert part_size_for(1, 1) == MIN_PART_BYTES
    assert part_size_for(1, 8 * MIB) == 8 * MIB
    assert part_size_for(5 * MIB, 5 * MIB) == 5 * MIB
    # unknown size: the configured size
    assert part_size_for(None, 8 * MIB) == 8 * MIB
    assert part_size_for(0, 8 * MIB) == 8 * MIB
    # the 10,000-part boundary: hint x 1.25 == 10,000 x 5 MiB still fits 5 MiB parts ...
    at_limit = 40_000 * MIB
    assert part_size_for(at_limit, 5 * MIB) == 5 * MIB
    # ... one byte more needs the next whole MiB
    assert part_size_for(at_limit + 1, 5 * MIB) == 6 * MIB
    for hint in (at_limit + 1, 100 * GIB, 3 * 1024 * GIB, 7 * 1024 * GIB):
        part = part_size_for(hint, 5 * MIB)
        assert part % MIB == 0
        assert part * MAX_PARTS >= hint * 1.25
        assert (part - MIB) * MAX_PARTS < hint * 1.25  # no larger than needed
    # the 5 GiB cap, for huge hints and for a configured size above it
    assert part_size_for(10**15, 5 * MIB) == MAX_PART_BYTES
    assert part_size_for(None, 6 * GIB) == MAX_PART_BYTES


def simulate_unknown_size(total_bytes: int, part_bytes: int) -> list[int]:
    """The part sizes ``upload`` would use for a stream of unknown size."""
    sizes: list[int] = []
    sent = 0
    while sent < total_bytes:
        this = min(part_bytes, total_bytes - sent)
        sizes.append(this)
        sent += this
        part_bytes = grown_part_size(part_bytes, len(sizes))
    return sizes


def test_unknown_size_grows_the_part_size_past_part_4000_and_fits_10000_parts() -> None:
    assert grown_part_size(5 * MIB, 3_999) == 5 * MIB
    assert grown_part_size(5 * MIB, 4_000) == 10 * MIB
    assert grown_part_size(10 * MIB, 4_001) == 10 * MIB
    assert grown_part_size(10 * MIB, 4_500) == 20 * MIB
    assert grown_part_size(MAX_PART_BYTES, 9_000) == MAX_PART_BYTES
    s3_max_object = 5 * 1024 * GIB
    for start in (5 * MIB, 8 * MIB, 100 * MIB):
        for total in (19 * GIB, 30 * GIB, 1024 * GIB, s3_max_object):
            sizes = simulate_unknown_size(total, start)
            assert len(sizes) <= MAX_PARTS and sum(sizes) == total
            assert set(sizes[: min(4_000, len(sizes) - 1)]) == {start}
            assert max(sizes) <= MAX_PART_BYTES
            # gradual: memory rises only as far as the file needs
            assert all(b <= a * 2 for a, b in itertools.pairwise(sizes[:-1]))
    assert simulate_unknown_size(19 * GIB, 5 * MIB) == [5 * MIB] * 3_891 + [1 * MIB]


async def test_upload_grows_parts_on_the_fly_and_refuses_a_part_past_the_limit(
    moto: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 4-part budget that doubles the part size after part 2, 3 ...: the 10,000-part rule,
    # testable with megabytes. 4 parts then hold 5 + 5 + 10 + 20 MiB.
    monkeypatch.setattr(s3_module, "MAX_PARTS", 4)
    monkeypatch.setattr(upload_config, "GROW_AFTER_PARTS", 2)
    monkeypatch.setattr(upload_config, "GROW_EVERY_PARTS", 1)
    bucket = moto.new_bucket("grow")
    hooks = RecordingHooks()
    fits = blob(38 * MIB)
    async with aws(hooks) as client:
        sink = BucketSink(client, bucket, hooks, part_size_bytes=5 * MIB)
        result = await sink.upload("fits", chunked(fits, MIB), metadata={}, instance="db")
        assert result.parts == 4
        assert [n for _, n in hooks.uploaded] == [5 * MIB, 5 * MIB, 10 * MIB, 18 * MIB]
        with pytest.raises(UploadError, match="more than 4 parts needed"):
            await sink.upload("too-big", chunked(blob(41 * MIB), MIB), metadata={}, instance="db")
        assert await sink.list_multipart_uploads() == []
    c = moto.client()
    assert c.get_object(Bucket=bucket, Key="fits")["Body"].read() == fits
    assert "Contents" not in c.list_objects_v2(Bucket=bucket, Prefix="too-big")


# -- uploads on both servers -----------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1000, 5 * MIB - 1, 5 * MIB])
async def test_small_file_is_one_put_object_with_sha256(
    s3: S3Server, size: int, spool_dir: str | None
) -> None:
    bucket = s3.new_bucket("small")
    data = blob(size)
    hooks = RecordingHooks()
    async with aws(hooks) as client:
        sink = BucketSink(client, bucket, hooks, part_size_bytes=5 * MIB, spool_dir=spool_dir)
        result = await sink.upload(
            "run/small",
            chunked(data),
            metadata={META_SOURCE: "error/postgresql.log.2024-03-04-19.csv", "run-id": "run"},
            instance="db-1",
            size_hint_bytes=size,
        )
    assert (result.size, result.sha256, result.parts) == (size, sha(data), 0)
    assert hooks.uploaded == [("db-1", size)]
    c = s3.client()
    got = c.get_object(Bucket=bucket, Key="run/small")
    assert got["Body"].read() == data
    assert got["ContentType"] == "text/csv"
    assert got["Metadata"] == {
        META_SHA256: sha(data),
        META_SIZE: str(size),
        META_SOURCE: "error/postgresql.log.2024-03-04-19.csv",
        "run-id": "run",
    }
    assert result.checksum == f"SHA256:{b64_sha(data)}"
    if s3.kind == "seaweed":  # SeaweedFS keeps (and checked) the checksum; moto may not
        head = c.head_object(Bucket=bucket, Key="run/small", ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == b64_sha(data)


@pytest.mark.parametrize("chunk_bytes", [300_000, 7 * MIB])
async def test_multipart_upload_is_byte_exact_with_sha256_metadata(
    s3: S3Server, chunk_bytes: int, spool_dir: str | None
) -> None:
    bucket = s3.new_bucket("multi")
    data = blob(23 * MIB + 17)
    hooks = RecordingHooks()
    async with aws(hooks) as client:
        sink = BucketSink(client, bucket, hooks, part_size_bytes=5 * MIB, spool_dir=spool_dir)
        result = await sink.upload(
            "run/multi",
            chunked(data, chunk_bytes),
            metadata={META_SOURCE: "error/postgresql.log.2024-03-04-19.csv"},
            instance="db-1",
            size_hint_bytes=len(data),
        )
        assert await sink.list_multipart_uploads() == []
    assert (result.size, result.sha256, result.parts) == (len(data), sha(data), 5)
    # parts of exactly the part size, whatever the chunk size, and one hook call per part
    assert hooks.uploaded == [("db-1", 5 * MIB)] * 4 + [("db-1", 3 * MIB + 17)]
    c = s3.client()
    got = c.get_object(Bucket=bucket, Key="run/multi")
    assert sha(got["Body"].read()) == sha(data)
    assert got["ContentType"] == "text/csv"
    # Written once: the metadata is what CreateMultipartUpload set (the sha256 is the manifest's).
    assert META_SHA256 not in got["Metadata"]
    assert got["Metadata"][META_SOURCE] == "error/postgresql.log.2024-03-04-19.csv"
    composite = b64_composite(data, 5 * MIB, 5 * MIB)
    assert result.checksum == f"SHA256:{composite}"
    head = c.head_object(Bucket=bucket, Key="run/multi", ChecksumMode="ENABLED")
    assert head["ChecksumType"] == "COMPOSITE"
    # S3 and SeaweedFS keep the "-<parts>" suffix; moto drops it.
    assert head["ChecksumSHA256"] == (
        composite if s3.kind == "seaweed" else composite.rpartition("-")[0]
    )


async def test_failing_source_aborts_and_raises_one_upload_error(
    s3: S3Server, spool_dir: str | None
) -> None:
    bucket = s3.new_bucket("broken")
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB, spool_dir=spool_dir)
        with pytest.raises(UploadError) as caught:
            await sink.upload(
                "run/broken", chunked(blob(17 * MIB), fail_at=12 * MIB), metadata={}, instance="db"
            )
        message = str(caught.value)
        assert "\n" not in message
        assert f"s3://{bucket}/run/broken" in message
        assert "reading the source: ConnectionResetError: source broke" in message
        # the source's own errors pass unchanged: the caller tells "file gone" from "S3 failed"
        gone = LogFileGoneError("the log file expired", code="DBLogFileNotFoundFault")
        with pytest.raises(LogFileGoneError):
            await sink.upload(
                "run/gone",
                chunked(blob(12 * MIB), fail_at=11 * MIB, error=gone),
                metadata={},
                instance="db",
            )
        assert await sink.list_multipart_uploads() == []
        assert await sink.head("run/broken") is None
        assert await sink.head("run/gone") is None


async def test_a_part_whose_bytes_differ_from_its_sha256_is_refused_by_s3(
    seaweed: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The part checksums are checked by the server (SeaweedFS, as S3; moto checks nothing): a
    part sent with another SHA-256 than its bytes' fails the upload, which is aborted."""
    bucket = seaweed.new_bucket("bad-part")
    real_body = spool_module.SpoolPart.body
    bodies = itertools.count(1)

    def body(part: spool_module.SpoolPart) -> spool_module.PartBody:
        sent = real_body(part)
        if next(bodies) == 2:
            sent.sha256 = hashlib.sha256(b"other bytes").digest()
        return sent

    monkeypatch.setattr(spool_module.SpoolPart, "body", body)
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        with pytest.raises(UploadError, match="BadDigest"):
            await sink.upload("run/bad", chunked(blob(12 * MIB)), metadata={}, instance="db")
        assert await sink.list_multipart_uploads() == []
        assert await sink.head("run/bad") is None


async def test_cancelled_upload_is_aborted(s3: S3Server, spool_dir: str | None) -> None:
    bucket = s3.new_bucket("cancel")
    hooks = RecordingHooks()
    async with aws(hooks) as client:
        sink = BucketSink(client, bucket, hooks, part_size_bytes=5 * MIB, spool_dir=spool_dir)
        task = asyncio.create_task(
            sink.upload(
                "run/cancelled",
                chunked(blob(40 * MIB), 256 * 1024, delay_s=0.002),
                metadata={},
                instance="db",
            )
        )
        await asyncio.wait_for(hooks.part_done.wait(), 10)  # a part has landed
        assert [u["Key"] for u in await sink.list_multipart_uploads()] == ["run/cancelled"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await sink.list_multipart_uploads() == []
        assert await sink.head("run/cancelled") is None


@pytest.mark.parametrize("fail", ["create", "write"])
async def test_a_failing_spool_keeps_the_part_in_memory(
    moto: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fail: str,
) -> None:
    """Disk full (or the spool directory gone): the upload goes on in memory, byte-exact."""
    real_new = spool_module._new_spool_file
    written = {"bytes": 0}

    class FullDisk(io.FileIO):
        def write(self, data: object) -> int:  # type: ignore[override]
            if written["bytes"] > 7 * MIB:
                raise OSError(28, "No space left on device")
            n = super().write(data)  # type: ignore[arg-type]
            written["bytes"] += n or 0
            return n or 0

    def new_spool_file(spool_dir: str) -> io.FileIO:
        if fail == "create" and written["bytes"] == 0:
            written["bytes"] = 1
            raise OSError(2, "No such file or directory")
        body = real_new(spool_dir)
        if fail == "create":
            return body
        fd = os.dup(body.fileno())
        body.close()
        return FullDisk(fd, "r+b", closefd=True)

    monkeypatch.setattr(spool_module, "_new_spool_file", new_spool_file)
    spool = tmp_path / "spool"
    spool.mkdir()
    bucket = moto.new_bucket("spool-fails")
    data = blob(23 * MIB + 5)
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB, spool_dir=str(spool))
        with caplog.at_level(logging.WARNING, logger="rdsrecorder.s3"):
            result = await sink.upload("run/spool", chunked(data), metadata={}, instance="db")
    assert result.sha256 == sha(data)
    assert sha(moto.client().get_object(Bucket=bucket, Key="run/spool")["Body"].read()) == sha(data)
    why = "No such file or directory" if fail == "create" else "No space left on device"
    assert (
        f"cannot spool a part of s3://{bucket}/run/spool to disk ({why}): keeping it in memory"
        in (caplog.text)
    )
    assert list(spool.iterdir()) == []


async def test_missing_bucket_is_a_clear_error(s3: S3Server) -> None:
    async with aws() as client:
        sink = BucketSink(client, "no-such-bucket-here", Hooks(), part_size_bytes=5 * MIB)
        with pytest.raises(BucketError, match=r"^bucket 'no-such-bucket-here' does not exist$"):
            await sink.check_bucket()


async def test_reads_and_lists(s3: S3Server) -> None:
    bucket = s3.new_bucket("reads")
    data = blob(3 * MIB + 5)
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        await sink.check_bucket()
        await sink.put_bytes("r1/manifest.json", b'{"a": 1}', "application/json")
        await sink.upload("r1/obj", chunked(data), metadata={}, instance="db")
        await sink.upload("r2/obj", chunked(b"x"), metadata={}, instance="db")
        assert await sink.get_bytes("r1/manifest.json") == b'{"a": 1}'
        assert await sink.get_bytes("r1/nothing") is None
        assert await sink.head("r1/nothing") is None
        info = await sink.head("r1/obj")
        assert info is not None and info.size == len(data)
        assert info.metadata[META_SHA256] == sha(data)
        pieces = [chunk async for chunk in sink.iter_object("r1/obj")]
        assert b"".join(pieces) == data and max(map(len, pieces)) <= MIB
        assert sorted([o.key async for o in sink.list_objects("r1/")]) == [
            "r1/manifest.json",
            "r1/obj",
        ]
        assert await sink.list_prefixes() == ["r1/", "r2/"]


# -- behaviour only AWS has: through the gateway ---------------------------------------------------
async def test_expected_owner_and_sse_go_on_every_call(
    gateway: S3Gateway, moto_server: S3Server
) -> None:
    bucket = moto_server.new_bucket("owner")
    data = blob(11 * MIB)
    async with aws() as client:
        sink = BucketSink(
            client,
            bucket,
            Hooks(),
            part_size_bytes=5 * MIB,
            expected_bucket_owner=MOTO_ACCOUNT,
            sse="aws:kms",
            sse_kms_key_id="alias/logs",
        )
        await sink.check_bucket()
        await sink.upload("o/big", chunked(data), metadata={}, instance="db")
        await sink.upload("o/small", chunked(b"tiny"), metadata={}, instance="db")
        await sink.put_bytes("o/manifest.json", b"{}", "application/json")
        assert await sink.get_bytes("o/manifest.json") == b"{}"
        assert [o.key async for o in sink.list_objects("o/")]
        assert b"".join([c async for c in sink.iter_object("o/big")]) == data
        assert await sink.head("o/small") is not None
        assert await sink.list_prefixes() == ["o/"]
        assert await sink.list_multipart_uploads() == []
    ops = set(gateway.operations())
    assert {"HeadBucket", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"} <= ops
    assert {"PutObject", "GetObject", "HeadObject", "ListObjectsV2"} <= ops
    assert "CopyObject" not in ops  # written once: nothing rewrites an object
    for seen in gateway.seen:
        assert seen.headers.get("x-amz-expected-bucket-owner") == MOTO_ACCOUNT, seen.operation
        writes_data = seen.operation in ("PutObject", "CreateMultipartUpload")
        sse = seen.headers.get("x-amz-server-side-encryption")
        kms_key = seen.headers.get("x-amz-server-side-encryption-aws-kms-key-id")
        assert (sse, kms_key) == (("aws:kms", "alias/logs") if writes_data else (None, None))
        # Object Lock: every request that carries object bytes carries their checksum.
        if seen.operation == "PutObject":
            assert seen.headers["x-amz-sdk-checksum-algorithm"] == "SHA256"
            assert seen.headers["x-amz-checksum-sha256"]
        if seen.operation == "UploadPart":
            assert seen.headers["x-amz-sdk-checksum-algorithm"] == "SHA256"
            assert seen.headers["x-amz-checksum-sha256"]
        if seen.operation == "CreateMultipartUpload":
            assert seen.headers["x-amz-checksum-algorithm"] == "SHA256"
            assert seen.headers["x-amz-checksum-type"] == "COMPOSITE"


async def test_wrong_expected_owner_is_refused(gateway: S3Gateway, moto_server: S3Server) -> None:
    bucket = moto_server.new_bucket("theirs")
    async with aws() as client:
        sink = BucketSink(
            client, bucket, Hooks(), part_size_bytes=5 * MIB, expected_bucket_owner="999999999999"
        )
        with pytest.raises(BucketError, match=r"access denied to bucket .* another account"):
            await sink.check_bucket()
        with pytest.raises(UploadError, match="AccessDenied"):
            await sink.upload("k", chunked(blob(6 * MIB)), metadata={}, instance="db")
        with pytest.raises(UploadError, match="AccessDenied"):
            await sink.upload("k", chunked(b"small"), metadata={}, instance="db")
    assert "Contents" not in moto_server.client().list_objects_v2(Bucket=bucket)


async def test_sse_aes256_reaches_the_server(moto: S3Server) -> None:
    bucket = moto.new_bucket("sse")
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB, sse="AES256")
        await sink.upload("single", chunked(blob(1000)), metadata={}, instance="db")
        await sink.upload("multi", chunked(blob(6 * MIB)), metadata={}, instance="db")
    c = moto.client()
    for key in ("single", "multi"):
        head = c.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256", key
    assert META_SHA256 in c.head_object(Bucket=bucket, Key="single")["Metadata"]


async def test_s3_errors_are_retried_then_reported_and_aborted(
    gateway: S3Gateway, moto_server: S3Server, spool_dir: str | None
) -> None:
    bucket = moto_server.new_bucket("faults")
    data = blob(16 * MIB)
    hooks = RecordingHooks()
    async with aws(hooks, max_attempts=2) as client:
        sink = BucketSink(client, bucket, hooks, part_size_bytes=5 * MIB, spool_dir=spool_dir)
        # A retried request sends its body again from the start (PutObject and UploadPart).
        gateway.fail("UploadPart", status=503, code="SlowDown", times=1)
        result = await sink.upload("flaky", chunked(data), metadata={}, instance="db")
        assert result.sha256 == sha(data)
        assert ("UploadPart", "SlowDown") in hooks.retries
        small = blob(3 * MIB)
        gateway.fail("PutObject", status=500, code="InternalError", times=1)
        await sink.upload("flaky-small", chunked(small), metadata={}, instance="db")
        assert ("PutObject", "InternalError") in hooks.retries
        # part 3 fails on both attempts
        fault = gateway.faults["UploadPart"] = Fault(500, "InternalError", times=2, after=2)
        with pytest.raises(UploadError) as caught:
            await sink.upload("broken", chunked(data), metadata={}, instance="db")
        assert fault.times == 0
        assert str(caught.value).startswith(f"upload of s3://{bucket}/broken failed: s3 UploadPart")
        assert await sink.list_multipart_uploads() == []
        assert gateway.operations().count("AbortMultipartUpload") == 1
    c = moto_server.client()
    assert c.get_object(Bucket=bucket, Key="flaky")["Body"].read() == data
    assert c.get_object(Bucket=bucket, Key="flaky-small")["Body"].read() == small
    assert "Contents" not in c.list_objects_v2(Bucket=bucket, Prefix="broken")


class AbortHooks(Hooks):
    def __init__(self) -> None:
        self.denied = 0

    def multipart_abort_denied(self) -> None:
        self.denied += 1


async def test_an_abort_denied_is_said_once_counted_and_the_error_still_raised(
    gateway: S3Gateway, moto_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """The seed's IAM list has no s3:AbortMultipartUpload: the upload stays for the lifecycle
    rule, said once per run at error level, counted every time."""
    bucket = moto_server.new_bucket("abort-denied")
    gateway.fail("AbortMultipartUpload", status=403, code="AccessDenied", times=2)
    hooks = AbortHooks()
    async with aws() as client:
        sink = BucketSink(client, bucket, hooks, part_size_bytes=5 * MIB)
        for key in ("left", "left-too"):
            with (
                caplog.at_level(logging.INFO, logger="rdsrecorder.s3"),
                pytest.raises(UploadError, match="source broke"),
            ):
                await sink.upload(
                    key, chunked(blob(12 * MIB), fail_at=6 * MIB), metadata={}, instance="db"
                )
        left = await sink.list_multipart_uploads()
        assert sorted(u["Key"] for u in left) == ["left", "left-too"]
        errors = [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.ERROR and r.name.startswith("rdsrecorder")
        ]
        assert len(errors) == 1
        assert errors[0].startswith("s3:AbortMultipartUpload is denied")
        assert "AbortIncompleteMultipartUpload lifecycle rule" in errors[0]
        assert hooks.denied == 2
        for upload in left:
            moto_server.client().abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )


async def test_an_abort_that_fails_otherwise_is_logged_per_upload(
    gateway: S3Gateway, moto_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = moto_server.new_bucket("abort-fails")
    gateway.fail("AbortMultipartUpload", status=400, code="InvalidRequest")
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        with (
            caplog.at_level(logging.INFO, logger="rdsrecorder.s3"),
            pytest.raises(UploadError, match="source broke"),
        ):
            await sink.upload(
                "left", chunked(blob(12 * MIB), fail_at=6 * MIB), metadata={}, instance="db"
            )
        left = await sink.list_multipart_uploads()
        assert f"could not abort the multipart upload of s3://{bucket}/left (InvalidRequest)" in (
            caplog.text
        )
        moto_server.client().abort_multipart_upload(
            Bucket=bucket, Key="left", UploadId=left[0]["UploadId"]
        )


async def test_cancel_while_create_multipart_upload_is_in_flight(
    gateway: S3Gateway, moto_server: S3Server
) -> None:
    bucket = moto_server.new_bucket("early-cancel")
    gateway.delays_s["CreateMultipartUpload"] = 0.5  # S3 has created it; the answer is late
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        task = asyncio.create_task(
            sink.upload("early", chunked(blob(6 * MIB)), metadata={}, instance="db")
        )
        await until(
            lambda: "CreateMultipartUpload" in gateway.operations(), "CreateMultipartUpload sent"
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert gateway.operations()[-1] == "AbortMultipartUpload"
    assert moto_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_listings_follow_every_page(gateway: S3Gateway, moto_server: S3Server) -> None:
    bucket = moto_server.new_bucket("pages")
    c = moto_server.client()
    for run in ("a", "b", "c"):
        for i in range(3):
            c.put_object(Bucket=bucket, Key=f"{run}/obj{i}", Body=b"x")
    gateway.page_size = 2
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        assert [o.key async for o in sink.list_objects("a/")] == ["a/obj0", "a/obj1", "a/obj2"]
        assert gateway.operations().count("ListObjectsV2") == 2
        assert await sink.list_prefixes() == ["a/", "b/", "c/"]
        assert gateway.operations().count("ListObjectsV2") == 4


async def test_multipart_upload_listing_pages(seaweed: S3Server) -> None:
    """SeaweedFS honours MaxUploads (moto does not): the listing follows its markers."""
    bucket = seaweed.new_bucket("upload-pages")
    c = seaweed.client()
    created = {c.create_multipart_upload(Bucket=bucket, Key=f"u{i}")["UploadId"] for i in range(5)}
    first = c.list_multipart_uploads(Bucket=bucket, MaxUploads=2)
    assert first["IsTruncated"] and len(first["Uploads"]) == 2  # the server does page
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        listed = await sink.list_multipart_uploads(page_size=2)
        assert [u["Key"] for u in await sink.list_multipart_uploads("u3")] == ["u3"]
    assert sorted(u["Key"] for u in listed) == [f"u{i}" for i in range(5)]
    assert {u["UploadId"] for u in listed} == created
    for u in listed:
        c.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])


# -- memory ----------------------------------------------------------------------------------------
MEMORY_PROBE = r"""
import asyncio, json, os, re, sys
from rdsrecorder.aws import Aws
from rdsrecorder.hooks import Hooks
from rdsrecorder.config import AwsSettings
from rdsrecorder.s3.bucket import Bucket
from rdsrecorder.s3.upload import Uploader
from rdsrecorder.s3.upload_config import UploadConfig

MIB = 1 << 20

def mib(field):
    status = open("/proc/self/status").read()
    return int(re.search(field + r":\s+(\d+)", status).group(1)) / 1024

async def source(total, chunk):
    block = os.urandom(chunk)
    for offset in range(0, total, chunk):
        # a new object per chunk, like a download
        yield (offset.to_bytes(8, "big") + block[8:])[: total - offset]

async def main(bucket, total, part, chunk, spool_dir):
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = Uploader(
            Bucket(aws, bucket), Hooks(), UploadConfig(part_size_bytes=part),
            spool_dir=spool_dir or None,
        )
        # loads botocore's models and opens the connection; a small object holds no part buffer
        await sink.upload("warm-up", source(1000, chunk), metadata={}, instance="db")
        base = mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        result = await sink.upload("big", source(total, chunk), metadata={}, instance="db")
        print(json.dumps({"base": base, "peak": mib("VmHWM"), "size": result.size}))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]))
"""


@pytest.mark.parametrize("chunk_bytes", [64 * 1024, MIB])
def test_upload_memory_stays_about_two_parts(
    seaweed_server: S3Server, chunk_bytes: int, spool_dir: str | None
) -> None:
    """200 MB through 8 MiB parts: in memory, the peak RSS rises by about two parts, not by the
    file; spooled, by about one download chunk and the HTTP buffers."""
    bucket = seaweed_server.new_bucket("memory")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL_S3=seaweed_server.url,
        AWS_ACCESS_KEY_ID=seaweed_server.key_id,
        AWS_SECRET_ACCESS_KEY=seaweed_server.secret,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    total, part = 200 * 10**6, 8 * MIB
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_PROBE,
            bucket,
            str(total),
            str(part),
            str(chunk_bytes),
            spool_dir or "",
        ],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    extra_mib = measured["peak"] - measured["base"]
    print(f"\npeak RSS +{extra_mib:.1f} MiB over {measured['base']:.0f} MiB uploading 200 MB")
    assert measured["size"] == total
    if spool_dir is None:
        # two parts (16 MiB) plus HTTP buffers; a third part (an extra copy of the part in
        # flight) would be +24, holding the file +190
        assert extra_mib < 2 * part / MIB + 6
    else:
        # no part in memory: one part would already be +8
        assert extra_mib < part / MIB


# -- written once, compressed, stored in a class ---------------------------------------------------
async def test_files_up_to_the_threshold_are_one_put_object_larger_ones_multipart(
    s3: S3Server, tmp_path: Path
) -> None:
    """Spooled: a file that ends within --single-put-max-mib goes in one PutObject (S3 checks its
    SHA-256), even when it was listed larger; a larger one goes multipart (S3 checks each part's
    SHA-256 and keeps their composite), its part size from its listed size."""
    bucket = s3.new_bucket("threshold")
    spool = tmp_path / "spool"
    spool.mkdir()
    small, large = blob(12 * MIB + 3), blob(17 * MIB)
    async with aws() as client:
        sink = BucketSink(
            client,
            bucket,
            Hooks(),
            part_size_bytes=5 * MIB,
            spool_dir=str(spool),
            single_put_max_bytes=16 * MIB,
        )
        one = await sink.upload("t/small", chunked(small), metadata={}, instance="db")
        many = await sink.upload("t/large", chunked(large), metadata={}, instance="db")
        listed = await sink.upload(
            "t/listed", chunked(small), metadata={}, instance="db", size_hint_bytes=20 * MIB
        )
    assert (one.parts, one.checksum) == (0, f"SHA256:{b64_sha(small)}")
    # 16 MiB + 1 MiB
    assert (many.parts, many.checksum) == (2, f"SHA256:{b64_composite(large, 16 * MIB, MIB)}")
    assert (listed.parts, listed.checksum) == (0, f"SHA256:{b64_sha(small)}")
    c = s3.client()
    for key, data in (("t/small", small), ("t/large", large), ("t/listed", small)):
        assert c.get_object(Bucket=bucket, Key=key)["Body"].read() == data


async def test_a_versioned_bucket_holds_one_version_per_key(
    s3: S3Server, spool_dir: str | None
) -> None:
    bucket = s3.new_bucket("versioned")
    c = s3.client()
    c.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB, spool_dir=spool_dir)
        await sink.upload("v/small", chunked(blob(1000)), metadata={}, instance="db")
        await sink.upload("v/multi", chunked(blob(12 * MIB)), metadata={}, instance="db")
        await sink.upload(
            "v/multi.gz",
            chunked(blob(12 * MIB)),
            metadata={},
            instance="db",
            compression=Compression.GZIP,
        )
    versions = c.list_object_versions(Bucket=bucket).get("Versions", [])
    assert sorted(v["Key"] for v in versions) == ["v/multi", "v/multi.gz", "v/small"]


@pytest.mark.parametrize("size", [1000, 12 * MIB])
async def test_gzip_objects_are_gzip_streams_of_the_exact_bytes(
    s3: S3Server, size: int, spool_dir: str | None
) -> None:
    bucket = s3.new_bucket("gzip")
    line = b'2024-03-04 19:00:00.123 UTC,"app","db",42,"10.0.0.1:5432",LOG,"duration: 1 ms"\n'
    data = (line * (size // len(line) + 1))[:size]
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB, spool_dir=spool_dir)
        result = await sink.upload(
            "g/obj.gz",
            chunked(data),
            metadata={META_SOURCE: "error/postgresql.log.2024-03-04-19.csv"},
            instance="db",
            compression=Compression.GZIP,
        )
    got = s3.client().get_object(Bucket=bucket, Key="g/obj.gz")
    stored = got["Body"].read()
    assert gzip.decompress(stored) == data
    assert got["ContentType"] == "application/gzip"
    assert "ContentEncoding" not in got
    assert (result.size, result.sha256, result.stored_size) == (size, sha(data), len(stored))
    assert result.compression == "gzip" and len(stored) < size / 5
    if result.parts == 0:
        assert result.checksum == f"SHA256:{b64_sha(stored)}"
        assert got["Metadata"][META_SHA256] == sha(data)  # of the log's bytes
        assert got["Metadata"][META_SIZE] == str(size)
    else:
        assert result.checksum == f"SHA256:{b64_composite(stored, 5 * MIB, 5 * MIB)}"


async def test_the_storage_class_reaches_the_server(s3: S3Server) -> None:
    bucket = s3.new_bucket("cold")
    async with aws() as client:
        sink = BucketSink(
            client,
            bucket,
            Hooks(),
            part_size_bytes=5 * MIB,
            storage_class=StorageClass.STANDARD_IA,
        )
        await sink.upload("c/single", chunked(blob(1000)), metadata={}, instance="db")
        await sink.upload("c/multi", chunked(blob(6 * MIB)), metadata={}, instance="db")
        infos = [await sink.head("c/single"), await sink.head("c/multi")]
    assert [i.storage_class for i in infos if i is not None] == ["STANDARD_IA"] * 2


# -- conditional writes ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1000, 12 * MIB])
async def test_a_taken_key_is_never_overwritten(
    s3: S3Server, size: int, spool_dir: str | None
) -> None:
    """PutObject and CompleteMultipartUpload carry If-None-Match: *: a key that holds an object
    is refused (412, KeyTakenError with what would have been stored), the object is unchanged
    and no multipart upload is left open."""
    bucket = s3.new_bucket("taken")
    archived, other = blob(size, seed=1), blob(size, seed=2)
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB, spool_dir=spool_dir)
        await sink.upload("k", chunked(archived), metadata={}, instance="db")
        with pytest.raises(KeyTakenError) as caught:
            await sink.upload("k", chunked(other), metadata={}, instance="db")
        would = caught.value.result
        assert isinstance(would, UploadResult)
        assert (would.sha256, would.size) == (sha(other), size)
        assert await sink.list_multipart_uploads() == []
    assert s3.client().get_object(Bucket=bucket, Key="k")["Body"].read() == archived


@pytest.mark.parametrize("operation", ["PutObject", "CompleteMultipartUpload"])
async def test_a_conditional_write_conflict_is_a_write_conflict_error(
    gateway: S3Gateway, moto_server: S3Server, operation: str
) -> None:
    """409 ConditionalRequestConflict (another write raced this one): nothing stored, the
    multipart upload aborted, and the caller told to do the upload again."""
    bucket = moto_server.new_bucket("conflict")
    gateway.fail(operation, status=409, code="ConditionalRequestConflict")
    size = 1000 if operation == "PutObject" else 12 * MIB
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=5 * MIB)
        with pytest.raises(WriteConflictError):
            await sink.upload("k", chunked(blob(size)), metadata={}, instance="db")
        assert await sink.list_multipart_uploads() == []
        assert await sink.head("k") is None
