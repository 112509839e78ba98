"""Parts sent while they fill: a multipart upload's ``UploadPart`` streams the part's bytes as the
download brings them, with the part's SHA-256 in an aws-chunked trailer that S3 checks, so that
the end of a file leaves only its last bytes to send. Against SeaweedFS (which checks trailing
checksums), moto, and the gateway (which shows the requests as they reach S3)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import AsyncIterator

import pytest

from rdsrecorder.aws import Aws
from rdsrecorder.compression import Compression
from rdsrecorder.config import AwsSettings
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import META_COMPLETE, META_SOURCE
from rdsrecorder.s3.upload import _LivePlan
from tests.s3_servers import MIB, BucketSink, S3Gateway, S3Server, blob, chunked

PART = 5 * MIB
ROTATED = {META_SOURCE: "error/postgresql.log.2024-03-04-19.csv", META_COMPLETE: "true"}
CURRENT = {META_SOURCE: "error/postgresql.log.2024-03-04-20.csv", META_COMPLETE: "false"}


class PartHooks(Hooks):
    def __init__(self) -> None:
        self.uploaded: list[int] = []

    def bytes_uploaded(self, instance: str, count: int) -> None:
        self.uploaded.append(count)


def aws(hooks: Hooks | None = None) -> Aws:
    return Aws(AwsSettings(region="us-east-1", max_attempts=2), hooks or Hooks())


def composite(data: bytes) -> str:
    digests = b"".join(
        hashlib.sha256(data[i : i + PART]).digest() for i in range(0, len(data), PART)
    )
    parts = -(-len(data) // PART)
    return f"{base64.b64encode(hashlib.sha256(digests).digest()).decode()}-{parts}"


def test_the_plan_streams_parts_whose_size_is_known_before_their_first_byte() -> None:
    rotated = _LivePlan(12 * MIB, Compression.NONE, ROTATED)
    assert rotated.multipart_at_once(PART)
    # full parts, then the last part of a rotated file: its listed size is final
    assert [rotated.live_part_bytes(sent, PART) for sent in (0, PART, 2 * PART)] == [
        PART,
        PART,
        2 * MIB,
    ]
    assert rotated.live_part_bytes(12 * MIB, PART) == 0  # past the listed size: unknown
    current = _LivePlan(12 * MIB, Compression.NONE, CURRENT)
    # the current file grows: its last part's size is known only at its end
    assert [current.live_part_bytes(sent, PART) for sent in (0, PART, 2 * PART)] == [
        PART,
        PART,
        0,
    ]
    # compressed bytes have no size before they are made; nor has a file listed at 0
    gzipped = _LivePlan(12 * MIB, Compression.GZIP, ROTATED)
    assert not gzipped.multipart_at_once(PART)
    assert gzipped.live_part_bytes(0, PART) == 0
    assert _LivePlan(None, Compression.NONE, ROTATED).live_part_bytes(0, PART) == 0
    # listed within one PutObject: gathered first, as before
    assert not _LivePlan(PART, Compression.NONE, ROTATED).multipart_at_once(PART)


async def test_a_part_is_sent_while_it_fills(seaweed: S3Server, spool_dir: str | None) -> None:
    """The source gives the first part's bytes, then waits until S3 lists that part: a part
    sent only once filled (and the next chunk looked at) would wait for ever."""
    bucket = seaweed.new_bucket("live")
    data = blob(12 * MIB + 333)
    hooks = PartHooks()
    c = seaweed.client()

    def parts_in_s3() -> int:
        uploads = c.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return sum(
            len(c.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []))
            for u in uploads
        )

    async def source() -> AsyncIterator[bytes]:
        async for chunk in chunked(data[:PART], 256 * 1024):
            yield chunk
        async with asyncio.timeout(20):  # part 1 is in S3 before the rest of the file comes
            while await asyncio.to_thread(parts_in_s3) < 1:
                await asyncio.sleep(0.05)
        async for chunk in chunked(data[PART:], 256 * 1024):
            yield chunk

    async with aws(hooks) as client:
        sink = BucketSink(client, bucket, hooks, part_size_bytes=PART, spool_dir=spool_dir)
        result = await sink.upload(
            "run/live",
            source(),
            metadata=ROTATED,
            instance="db",
            size_hint_bytes=len(data),
        )
        assert await sink.list_multipart_uploads() == []
    assert hooks.uploaded == [PART, PART, 2 * MIB + 333]
    assert (result.size, result.parts) == (len(data), 3)
    assert result.checksum == f"SHA256:{composite(data)}"
    assert c.get_object(Bucket=bucket, Key="run/live")["Body"].read() == data
    # SeaweedFS checked each trailing checksum and keeps the composite of the parts
    head = c.head_object(Bucket=bucket, Key="run/live", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == composite(data)


async def test_streamed_parts_carry_a_trailing_checksum_and_the_rest_a_header(
    gateway: S3Gateway, moto_server: S3Server
) -> None:
    """Every request that carries object bytes carries their checksum (S3 Object Lock asks for
    it): in the trailer of a part sent as it fills, in a header otherwise."""
    bucket = moto_server.new_bucket("trailer")
    data = blob(11 * MIB)
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=PART)
        # current file: its last part (1 MiB) is not streamed, it may still grow
        await sink.upload(
            "run/current",
            chunked(data),
            metadata=CURRENT,
            instance="db",
            size_hint_bytes=len(data),
        )
    parts = [s for s in gateway.seen if s.operation == "UploadPart"]
    assert len(parts) == 3
    for seen in parts[:2]:
        assert seen.headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        assert seen.headers["content-encoding"] == "aws-chunked"
        assert seen.headers["x-amz-trailer"] == "x-amz-checksum-sha256"
        assert seen.headers["x-amz-decoded-content-length"] == str(PART)
        assert seen.headers["x-amz-sdk-checksum-algorithm"] == "SHA256"
        assert "x-amz-checksum-sha256" not in seen.headers
    assert (
        parts[2].headers["x-amz-checksum-sha256"]
        == base64.b64encode(hashlib.sha256(data[2 * PART :]).digest()).decode()
    )
    assert "x-amz-trailer" not in parts[2].headers
    got = moto_server.client().get_object(Bucket=bucket, Key="run/current")["Body"].read()
    assert got == data


@pytest.mark.parametrize(
    ("listed", "arrives"),
    [
        (14 * MIB, 12 * MIB + 5),  # the file shrank: part 3 ends short of its listed size
        (12 * MIB, 13 * MIB + 7),  # it grew: part 3 goes on past its listed size
        (12 * MIB, 7 * MIB),  # it shrank by more than a part: part 2 ends short
    ],
)
async def test_a_part_whose_size_was_mispredicted_is_sent_again_from_the_spool(
    s3: S3Server,
    spool_dir: str | None,
    listed: int,
    arrives: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bucket = s3.new_bucket("mispredicted")
    data = blob(arrives)
    hooks = PartHooks()
    async with aws(hooks) as client:
        sink = BucketSink(client, bucket, hooks, part_size_bytes=PART, spool_dir=spool_dir)
        with caplog.at_level(logging.INFO, logger="rdsrecorder.s3.upload"):
            result = await sink.upload(
                "run/changed",
                chunked(data, 256 * 1024),
                metadata=ROTATED,
                instance="db",
                size_hint_bytes=listed,
            )
        assert await sink.list_multipart_uploads() == []
    assert result.size == arrives
    assert result.checksum == f"SHA256:{composite(data)}"
    assert sorted(hooks.uploaded) == sorted(min(PART, arrives - i) for i in range(0, arrives, PART))
    assert s3.client().get_object(Bucket=bucket, Key="run/changed")["Body"].read() == data
    again = [r.getMessage() for r in caplog.records if "sent again" in r.getMessage()]
    assert len(again) == 1, again


async def test_a_streamed_part_s3_refuses_is_sent_again_whole(
    gateway: S3Gateway, moto_server: S3Server, spool_dir: str | None
) -> None:
    bucket = moto_server.new_bucket("refused")
    data = blob(11 * MIB)
    gateway.fail("UploadPart", status=500, code="InternalError", times=1)
    async with aws() as client:
        sink = BucketSink(client, bucket, Hooks(), part_size_bytes=PART, spool_dir=spool_dir)
        result = await sink.upload(
            "run/refused",
            chunked(data),
            metadata=ROTATED,
            instance="db",
            size_hint_bytes=len(data),
        )
    assert result.checksum == f"SHA256:{composite(data)}"
    parts = [s for s in gateway.seen if s.operation == "UploadPart"]
    # part 1 streamed and refused, then sent whole with its checksum header; parts 2, 3 streamed
    assert len(parts) == 4
    streamed = ["x-amz-trailer" in s.headers for s in parts]
    assert streamed.count(False) == 1
    whole = parts[streamed.index(False)]
    assert (
        whole.headers["x-amz-checksum-sha256"]
        == base64.b64encode(hashlib.sha256(data[:PART]).digest()).decode()
    )
    assert moto_server.client().get_object(Bucket=bucket, Key="run/refused")["Body"].read() == data
