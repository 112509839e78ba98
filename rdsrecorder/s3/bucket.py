"""The bucket: every S3 call goes through it (``call``), with the expected owner on every request.
It reads (the manifest, verify, ls, get) and writes small documents (the manifest); log objects
are written by ``rdsrecorder.s3.upload.Uploader``."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import aiohttp

from rdsrecorder.aws import Aws
from rdsrecorder.config import Sse
from rdsrecorder.errors import AwsError, BucketError
from rdsrecorder.models import MIB, ObjectInfo
from rdsrecorder.s3.spool import PartBody

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = MIB  # GetObject streaming: memory per object being read
NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})
DENIED = frozenset({"403", "AccessDenied", "Forbidden", "AllAccessDisabled"})


class Document(NamedTuple):
    data: bytes
    etag: str


class Bucket:
    def __init__(
        self,
        aws: Aws,
        name: str,
        *,
        expected_bucket_owner: str | None = None,
        sse: Sse | str | None = None,
        sse_kms_key_id: str | None = None,
    ) -> None:
        self.aws = aws
        self.name = name
        self.owner: dict[str, str] = (
            {"ExpectedBucketOwner": expected_bucket_owner} if expected_bucket_owner else {}
        )
        # SSE goes on every call that writes object data.
        self.sse: dict[str, str] = {}
        if sse:
            self.sse["ServerSideEncryption"] = str(sse)
            if sse_kms_key_id:
                self.sse["SSEKMSKeyId"] = sse_kms_key_id

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.aws.call("s3", method, Bucket=self.name, **self.owner, **params)

    async def call_with_body(self, method: str, body: PartBody, **params: Any) -> dict[str, Any]:
        """``call`` of a request that sends ``body``: every attempt of the retry policy sends it
        from its start (``PartBody.open``)."""
        client = self.aws.s3

        async def once() -> dict[str, Any]:
            result: dict[str, Any] = await getattr(client, method)(
                Bucket=self.name, **self.owner, Body=body.open(), **params
            )
            return result

        return await self.aws.run("s3", self.aws.operation_name(client, method), once)

    # -- reading and listing ---------------------------------------------------------------------
    async def check_bucket(self) -> None:
        try:
            await self.call("head_bucket")
        except AwsError as exc:
            if exc.code in NOT_FOUND:
                raise BucketError(f"bucket {self.name!r} does not exist") from exc
            if exc.code in DENIED:
                raise BucketError(
                    f"access denied to bucket {self.name!r} (or it belongs to another account)"
                ) from exc
            raise BucketError(f"bucket {self.name!r} is not reachable: {exc}") from exc

    async def _call_unless_missing(
        self, method: str, key: str, **params: Any
    ) -> dict[str, Any] | None:
        try:
            return await self.call(method, Key=key, **params)
        except AwsError as exc:
            if exc.code in NOT_FOUND:
                return None
            raise

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size, metadata, storage class and the checksum S3 stores for it (asked
        with ``ChecksumMode=ENABLED``); None if it does not exist."""
        resp = await self._call_unless_missing("head_object", key, ChecksumMode="ENABLED")
        if resp is None:
            return None
        stored = ""
        for algorithm in ("SHA256", "CRC32", "CRC32C", "CRC64NVME", "SHA1"):
            value = resp.get(f"Checksum{algorithm}")
            if value:
                stored = f"{algorithm}:{value}"
                break
        return ObjectInfo(
            key,
            int(resp.get("ContentLength", 0)),
            dict(resp.get("Metadata", {})),
            checksum=stored,
            storage_class=str(resp.get("StorageClass") or "STANDARD"),
        )

    async def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None:
        """The whole object (for small ones: the manifest), or its first ``max_bytes``; None if
        it does not exist."""
        if max_bytes is None:
            resp = await self._call_unless_missing("get_object", key)
        else:
            try:
                resp = await self.call("get_object", Key=key, Range=f"bytes=0-{max_bytes - 1}")
            except AwsError as exc:
                if exc.code in NOT_FOUND:
                    return None
                raise
        if resp is None:
            return None
        return await self._read_body(resp, key)

    async def _read_body(self, resp: dict[str, Any], key: str) -> bytes:
        """A GetObject answer's whole body; a connection that breaks off is an ``AwsError``."""
        try:
            async with resp["Body"] as body:
                data: bytes = await body.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AwsError(
                f"s3 GetObject of {self.url(key)} broke off: {type(exc).__name__}: {exc}",
                code="ReadError",
                operation="GetObject",
            ) from exc
        return data

    async def iter_object(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes, streamed in chunks of at most ``READ_CHUNK_BYTES``."""
        resp = await self.call("get_object", Key=key)
        body = resp["Body"]
        try:
            async for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AwsError(
                f"s3 GetObject of {self.url(key)} broke off: {type(exc).__name__}: {exc}",
                code="ReadError",
                operation="GetObject",
            ) from exc
        finally:
            body.close()

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object under ``prefix`` (ListObjectsV2 pages); ``metadata`` is empty."""
        params: dict[str, Any] = {"Prefix": prefix}
        while True:
            resp = await self.call("list_objects_v2", **params)
            for item in resp.get("Contents", []):
                yield ObjectInfo(str(item["Key"]), int(item.get("Size", 0)), {})
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token

    async def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> list[str]:
        out: list[str] = []
        params: dict[str, Any] = {"Prefix": prefix, "Delimiter": delimiter}
        while True:
            resp = await self.call("list_objects_v2", **params)
            out.extend(str(p["Prefix"]) for p in resp.get("CommonPrefixes", []))
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return out
            params["ContinuationToken"] = token

    async def list_multipart_uploads(
        self, prefix: str = "", *, page_size: int = 1000
    ) -> list[dict[str, str]]:
        """Multipart uploads in progress under ``prefix``: ``[{"Key": ..., "UploadId": ...}]``."""
        out: list[dict[str, str]] = []
        params: dict[str, Any] = {"Prefix": prefix, "MaxUploads": page_size}
        while True:
            resp = await self.call("list_multipart_uploads", **params)
            out.extend(
                {"Key": str(u["Key"]), "UploadId": str(u["UploadId"])}
                for u in resp.get("Uploads", [])
            )
            if not resp.get("IsTruncated"):
                return out
            params["KeyMarker"] = resp.get("NextKeyMarker", "")
            params["UploadIdMarker"] = resp.get("NextUploadIdMarker", "")

    # -- small documents (the manifest) ----------------------------------------------------------
    async def get_document(self, key: str) -> Document | None:
        """A small object and its ETag (what ``put_bytes(if_match=...)`` compares); None if it
        does not exist."""
        resp = await self._call_unless_missing("get_object", key)
        if resp is None:
            return None
        return Document(await self._read_body(resp, key), str(resp.get("ETag", "")))

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """A small document, with its SHA-256 for S3 to check (and Object Lock to accept); its
        ETag. ``if_match``: written only over the object of that ETag; ``if_none_match``: only
        where there is no object. Otherwise ``AwsError`` with ``code`` ``PreconditionFailed``
        (``NoSuchKey`` from some stores when ``if_match`` finds no object,
        ``ConditionalRequestConflict`` when another conditional write raced it)."""
        conditions: dict[str, str] = {}
        if if_match is not None:
            conditions["IfMatch"] = if_match
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        resp = await self.call(
            "put_object",
            Key=key,
            Body=data,
            ContentType=content_type,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
            **conditions,
            **self.sse,
        )
        return str(resp.get("ETag", ""))
