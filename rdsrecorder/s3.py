"""The S3 sink: streams byte chunks into S3, one object per log file.

* A file smaller than one part goes in a single PutObject.
* Otherwise: CreateMultipartUpload, and from that moment any failure or cancellation aborts the
  upload (shielded from cancellation), so no orphaned parts are left to cost money.
* Overlapped pipeline: while part k uploads, part k+1 fills from the download. At most one part
  upload is in flight per file, so a file holds at most two part buffers:

      peak memory ~= base (~50 MiB) + concurrency x 2 x part size (+ one download chunk per file)

* The sha256 of the bytes is computed while streaming. A multipart upload's metadata is fixed at
  CreateMultipartUpload, before the hash is known, so after CompleteMultipartUpload an in-place
  CopyObject (MetadataDirective=REPLACE) adds it. An object without ``sha256`` metadata is an
  unfinished copy: resume copies it again. Objects over 5 GiB keep the hash in the manifest only.
* Part size: at least the configured one (>= 5 MiB), grown so that the listed size plus growth
  headroom fits in 10,000 parts; if a file still outgrows that, later parts grow on the fly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from rdsrecorder.aws import Aws
from rdsrecorder.errors import AwsError, BucketError, RdsRecorderError, UploadError
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import META_SHA256, ObjectInfo, UploadResult

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_PART_BYTES = 5 * MIB
MAX_PART_BYTES = 5 * 1024 * MIB
MAX_PARTS = 10_000
MAX_COPY_BYTES = 5 * 1024 * MIB  # single CopyObject limit
GROWTH_HEADROOM = 1.25  # the current file keeps growing after it was listed


def part_size_for(size_hint_bytes: int | None, min_part_size_bytes: int) -> int:
    part = max(MIN_PART_BYTES, min_part_size_bytes)
    if size_hint_bytes:
        needed = -(-int(size_hint_bytes * GROWTH_HEADROOM) // MAX_PARTS)
        part = max(part, needed)
    return min(part, MAX_PART_BYTES)


def grown_part_size(part_bytes: int, parts_done: int, bytes_done: int) -> int:
    """Past half the part budget with data still coming: double the part size (capped), so an
    unexpectedly large file never hits the 10,000-part limit."""
    if parts_done >= MAX_PARTS // 2 and part_bytes < MAX_PART_BYTES:
        return min(MAX_PART_BYTES, max(part_bytes * 2, bytes_done // parts_done * 2))
    return part_bytes


class S3Sink:
    def __init__(
        self,
        aws: Aws,
        bucket: str,
        hooks: Hooks,
        *,
        part_size_bytes: int,
        expected_bucket_owner: str | None = None,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
    ) -> None:
        self._aws = aws
        self.bucket = bucket
        self._hooks = hooks
        self._part_size_bytes = max(MIN_PART_BYTES, part_size_bytes)
        self._owner = (
            {"ExpectedBucketOwner": expected_bucket_owner} if expected_bucket_owner else {}
        )
        self._sse: dict[str, str] = {}
        if sse:
            self._sse["ServerSideEncryption"] = sse
            if sse_kms_key_id:
                self._sse["SSEKMSKeyId"] = sse_kms_key_id

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:
        return await self._aws.call("s3", method, Bucket=self.bucket, **self._owner, **params)

    async def check_bucket(self) -> None:
        try:
            await self._call("head_bucket")
        except AwsError as exc:
            if exc.code in ("404", "NoSuchBucket", "NotFound"):
                raise BucketError(f"bucket {self.bucket!r} does not exist") from exc
            if exc.code in ("403", "AccessDenied", "Forbidden"):
                raise BucketError(
                    f"access denied to bucket {self.bucket!r} (or it belongs to another account)"
                ) from exc
            raise BucketError(f"bucket {self.bucket!r} is not reachable: {exc}") from exc

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = await self._call("head_object", Key=key)
        except AwsError as exc:
            if exc.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(key, int(resp.get("ContentLength", 0)), dict(resp.get("Metadata", {})))

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        await self._call("put_object", Key=key, Body=data, ContentType=content_type, **self._sse)

    async def get_bytes(self, key: str) -> bytes | None:
        try:
            resp = await self._call("get_object", Key=key)
        except AwsError as exc:
            if exc.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        async with resp["Body"] as body:
            data: bytes = await body.read()
        return data

    async def iter_object(self, key: str) -> AsyncIterator[bytes]:
        resp = await self._call("get_object", Key=key)
        body = resp["Body"]
        try:
            async for chunk in body.iter_chunks(1 << 20):
                yield chunk
        finally:
            body.close()

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        params: dict[str, Any] = {"Prefix": prefix}
        while True:
            resp = await self._call("list_objects_v2", **params)
            for item in resp.get("Contents", []):
                yield ObjectInfo(item["Key"], int(item.get("Size", 0)), {})
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token

    async def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> list[str]:
        out: list[str] = []
        params: dict[str, Any] = {"Prefix": prefix, "Delimiter": delimiter}
        while True:
            resp = await self._call("list_objects_v2", **params)
            out.extend(p["Prefix"] for p in resp.get("CommonPrefixes", []))
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return out
            params["ContinuationToken"] = token

    async def list_multipart_uploads(self, prefix: str = "") -> list[dict[str, str]]:
        resp = await self._call("list_multipart_uploads", Prefix=prefix)
        return [{"Key": u["Key"], "UploadId": u["UploadId"]} for u in resp.get("Uploads", [])]

    # -- upload ------------------------------------------------------------------------------------
    async def upload(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        metadata: dict[str, str],
        instance: str,
        size_hint_bytes: int | None = None,
    ) -> UploadResult:
        part_bytes = part_size_for(size_hint_bytes, self._part_size_bytes)
        sha = hashlib.sha256()
        buf: list[bytes] = []
        buffered = 0
        iterator = aiter(chunks)
        try:
            async for chunk in iterator:
                sha.update(chunk)
                buf.append(chunk)
                buffered += len(chunk)
                if buffered >= part_bytes:
                    break
            else:
                data = b"".join(buf)
                return await self._put_small(key, data, sha.hexdigest(), metadata, instance)
        except RdsRecorderError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise UploadError(f"s3://{self.bucket}/{key}: {type(exc).__name__}: {exc}") from exc
        return await self._multipart(key, iterator, sha, buf, part_bytes, metadata, instance)

    def _content_type(self, metadata: dict[str, str]) -> str:
        source = next((v for k, v in metadata.items() if k == "source-file"), "")
        return "text/csv" if source.endswith(".csv") else "text/plain"

    async def _put_small(
        self, key: str, data: bytes, sha_hex: str, metadata: dict[str, str], instance: str
    ) -> UploadResult:
        try:
            resp = await self._call(
                "put_object",
                Key=key,
                Body=data,
                Metadata={**metadata, META_SHA256: sha_hex},
                ContentType=self._content_type(metadata),
                **self._sse,
            )
        except AwsError as exc:
            raise UploadError(f"s3://{self.bucket}/{key}: {exc}") from exc
        self._hooks.bytes_uploaded(instance, len(data))
        return UploadResult(key, len(data), sha_hex, str(resp.get("ETag", "")), 0)

    async def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes, instance: str
    ) -> dict[str, Any]:
        resp = await self._call(
            "upload_part", Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        self._hooks.bytes_uploaded(instance, len(data))
        return {"PartNumber": number, "ETag": resp["ETag"]}

    async def _multipart(
        self,
        key: str,
        iterator: AsyncIterator[bytes],
        sha: Any,
        first: list[bytes],
        part_bytes: int,
        metadata: dict[str, str],
        instance: str,
    ) -> UploadResult:
        try:
            created = await self._call(
                "create_multipart_upload",
                Key=key,
                Metadata=metadata,
                ContentType=self._content_type(metadata),
                **self._sse,
            )
        except AwsError as exc:
            raise UploadError(f"s3://{self.bucket}/{key}: {exc}") from exc
        upload_id = str(created["UploadId"])
        parts: list[dict[str, Any]] = []
        in_flight: asyncio.Task[dict[str, Any]] | None = None
        total = 0
        try:
            pending = first
            pending_bytes = sum(len(c) for c in pending)
            number = 0

            async def send(buf: list[bytes]) -> None:
                nonlocal in_flight, number, total
                data = b"".join(buf)
                buf.clear()
                if in_flight is not None:
                    parts.append(await in_flight)
                number += 1
                total += len(data)
                in_flight = asyncio.ensure_future(
                    self._upload_part(key, upload_id, number, data, instance)
                )

            await send(pending)
            pending_bytes = 0
            async for chunk in iterator:
                sha.update(chunk)
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= part_bytes:
                    await send(pending)
                    pending_bytes = 0
                    part_bytes = grown_part_size(part_bytes, number, total)
            if pending:
                await send(pending)
            if in_flight is not None:
                parts.append(await in_flight)
                in_flight = None
            resp = await self._call(
                "complete_multipart_upload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException as exc:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()
                with contextlib.suppress(BaseException):
                    await in_flight
            await asyncio.shield(self._abort(key, upload_id))
            if isinstance(exc, asyncio.CancelledError | RdsRecorderError):
                raise
            if isinstance(exc, Exception):
                raise UploadError(f"s3://{self.bucket}/{key}: {type(exc).__name__}: {exc}") from exc
            raise
        sha_hex = sha.hexdigest()
        await self._add_sha256(key, sha_hex, metadata, total)
        return UploadResult(key, total, sha_hex, str(resp.get("ETag", "")), len(parts))

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._call("abort_multipart_upload", Key=key, UploadId=upload_id)
            log.info("aborted multipart upload of s3://%s/%s", self.bucket, key)
        except AwsError as exc:
            log.warning(
                "could not abort the multipart upload of s3://%s/%s (%s): allow "
                "s3:AbortMultipartUpload, or add an AbortIncompleteMultipartUpload lifecycle rule",
                self.bucket,
                key,
                exc.code or exc,
            )

    async def _add_sha256(
        self, key: str, sha_hex: str, metadata: dict[str, str], size: int
    ) -> None:
        if size > MAX_COPY_BYTES:
            log.info(
                "s3://%s/%s is over 5 GiB: its sha256 is kept in the manifest", self.bucket, key
            )
            return
        try:
            await self._call(
                "copy_object",
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
                Metadata={**metadata, META_SHA256: sha_hex},
                ContentType=self._content_type(metadata),
                **self._sse,
            )
        except AwsError as exc:
            raise UploadError(
                f"s3://{self.bucket}/{key}: adding the sha256 metadata: {exc}"
            ) from exc
