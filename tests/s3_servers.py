"""Helpers of the tests against real S3 servers (the fixtures that start them are in
``conftest.py``): ``S3Server``, what a test needs to reach one; ``S3Gateway``, a loopback proxy in
front of moto that does what AWS does and the local servers do not (it refuses a wrong
``x-amz-expected-bucket-owner``), records the headers of every request, injects errors and
delays, and forces small list pages; ``BucketSink``; test data (``blob``, ``chunked``)."""

from __future__ import annotations

import asyncio
import io
import random
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import boto3
import pytest
import yarl
from aiohttp import web

from rdsrecorder_lab.s3local import create_bucket

REGION = "us-east-1"
MOTO_ACCOUNT = "123456789012"  # the account moto's buckets belong to
SEAWEED_KEY_ID = "weedtestkey"
SEAWEED_SECRET = "weedtestsecret"  # a throwaway identity of the local server
MIB = 1024 * 1024


@dataclass
class S3Server:
    kind: str  # "moto" or "seaweed"
    url: str
    key_id: str
    secret: str

    def client(self) -> Any:
        """A boto3 client for checks made from the test's side, independent of the code tested."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
            region_name=REGION,
        )

    def new_bucket(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        create_bucket(self.url, name, self.key_id, self.secret, REGION)
        return name

    def use(self, monkeypatch: pytest.MonkeyPatch, url: str | None = None) -> None:
        """Point the test's AWS environment (read by the code under test) at this server."""
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url or self.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", self.key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", self.secret)
        monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


# -- data ------------------------------------------------------------------------------------------
def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + size).randbytes(size)


async def chunked(
    data: bytes,
    chunk_bytes: int = 300_000,
    *,
    fail_at: int | None = None,
    error: BaseException | None = None,
    delay_s: float = 0.0,
) -> AsyncIterator[bytes]:
    """``data`` in chunks, like a download; raises ``error`` once ``fail_at`` bytes were sent."""
    for offset in range(0, len(data), chunk_bytes):
        if fail_at is not None and offset >= fail_at:
            raise error or ConnectionResetError("source broke")
        await asyncio.sleep(delay_s)
        yield data[offset : offset + chunk_bytes]


# -- the gateway -----------------------------------------------------------------------------------
_HOP_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "expect", "keep-alive"}
)


def s3_operation(method: str, path: str, query: dict[str, str], headers: Any) -> str:
    """The S3 operation of a path-style request."""
    has_key = "/" in path.strip("/")
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "GET":
        if not has_key:
            return "ListMultipartUploads" if "uploads" in query else "ListObjectsV2"
        return "ListParts" if "uploadId" in query else "GetObject"
    if method == "PUT":
        if not has_key:
            return "CreateBucket"
        if "partNumber" in query:
            return "UploadPartCopy" if "x-amz-copy-source" in headers else "UploadPart"
        return "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
    if method == "POST":
        return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    return method


_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/")


@dataclass
class Seen:
    operation: str
    path: str
    headers: dict[str, str]  # lower-case names


@dataclass
class Fault:
    status: int
    code: str
    times: int  # how many requests get the error (then they pass)
    after: int = 0  # let this many matching requests pass first


@dataclass
class S3Gateway:
    upstream: str
    owner_account: str = MOTO_ACCOUNT
    seen: list[Seen] = field(default_factory=list)
    faults: dict[str, Fault] = field(default_factory=dict)
    delays_s: dict[str, float] = field(default_factory=dict)  # after the upstream answered
    page_size: int | None = None  # forces max-keys / max-uploads on list calls
    expired_keys: set[str] = field(default_factory=set)  # their requests answer ExpiredToken
    ignore_conditions: bool = False  # drops If-None-Match: a store without conditional writes
    url: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * MIB)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def fail(
        self, operation: str, status: int = 500, code: str = "InternalError", times: int = 1
    ) -> None:
        self.faults[operation] = Fault(status, code, times)

    def operations(self) -> list[str]:
        return [s.operation for s in self.seen]

    def _error(self, method: str, status: int, code: str, message: str) -> web.Response:
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        return web.Response(
            status=status,
            body=b"" if method == "HEAD" else body.encode(),
            content_type="application/xml",
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(parse_qsl(request.query_string, keep_blank_values=True))
        operation = s3_operation(request.method, request.path, query, request.headers)
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.seen.append(Seen(operation, request.path, headers))
        owner = headers.get("x-amz-expected-bucket-owner")
        if owner is not None and owner != self.owner_account:
            return self._error(request.method, 403, "AccessDenied", "Access Denied")
        signed_by = _CREDENTIAL_RE.search(headers.get("authorization", ""))
        if signed_by is not None and signed_by.group(1) in self.expired_keys:
            await request.read()
            return self._error(request.method, 400, "ExpiredToken", "The token has expired.")
        fault = self.faults.get(operation)
        if fault is not None and fault.times > 0:
            if fault.after > 0:
                fault.after -= 1
            else:
                fault.times -= 1
                await request.read()  # as S3 does: the client has sent the whole body
                return self._error(request.method, fault.status, fault.code, "injected")
        return await self._forward(request, operation)

    async def _forward(self, request: web.Request, operation: str) -> web.StreamResponse:
        assert self._session is not None
        target = f"{self.upstream}{request.raw_path}"
        if self.page_size is not None and operation in ("ListObjectsV2", "ListMultipartUploads"):
            name = "max-keys" if operation == "ListObjectsV2" else "max-uploads"
            params = [
                (k, v)
                for k, v in parse_qsl(request.query_string, keep_blank_values=True)
                if k != name
            ]
            query = urlencode([*params, (name, str(self.page_size))])
            target = f"{self.upstream}{request.raw_path.split('?', 1)[0]}?{query}"
        forward_headers = {
            k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS
        }
        # The host the client signed (SeaweedFS checks SigV4 signatures; moto does not).
        forward_headers["Host"] = request.host
        if self.ignore_conditions:
            forward_headers = {
                k: v for k, v in forward_headers.items() if k.lower() != "if-none-match"
            }
        async with self._session.request(
            request.method,
            yarl.URL(target, encoded=True),
            headers=forward_headers,
            data=io.BytesIO(await request.read()),
            allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            answer_headers = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in _HOP_HEADERS | {"content-encoding", "date", "server"}
            }
            if request.method == "HEAD" and "Content-Length" in upstream.headers:
                answer_headers["Content-Length"] = upstream.headers["Content-Length"]
        delay_s = self.delays_s.get(operation, 0.0)
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.Response(status=upstream.status, headers=answer_headers, body=body or None)


class BucketSink:
    """Both rooms of ``rdsrecorder.s3`` on one object, for tests that write log objects and read
    them back: reads and small documents go to the ``Bucket``, ``upload`` to the ``Uploader``."""

    def __init__(
        self,
        aws: Any,
        bucket: str,
        hooks: Any,
        *,
        part_size_bytes: int,
        spool_dir: str | None = None,
        expected_bucket_owner: str | None = None,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        single_put_max_bytes: int | None = None,
        storage_class: Any = None,
    ) -> None:
        from rdsrecorder.s3.bucket import Bucket
        from rdsrecorder.s3.upload import Uploader
        from rdsrecorder.s3.upload_config import StorageClass, UploadConfig

        self.reader = Bucket(
            aws,
            bucket,
            expected_bucket_owner=expected_bucket_owner,
            sse=sse,
            sse_kms_key_id=sse_kms_key_id,
        )
        # By default, as small a single-PutObject threshold as S3 allows (one part), so that tests
        # of multipart uploads need little data; tests of the threshold give it.
        config = UploadConfig(
            part_size_bytes=part_size_bytes,
            single_put_max_bytes=single_put_max_bytes or part_size_bytes,
            storage_class=storage_class or StorageClass.STANDARD,
        )
        self.uploader = Uploader(self.reader, hooks, config, spool_dir=spool_dir)
        self.upload = self.uploader.upload
        self.part_size_bytes = config.part_size_bytes
        self.check_bucket = self.reader.check_bucket
        self.head = self.reader.head
        self.get_bytes = self.reader.get_bytes
        self.put_bytes = self.reader.put_bytes
        self.get_document = self.reader.get_document
        self.iter_object = self.reader.iter_object
        self.list_objects = self.reader.list_objects
        self.list_prefixes = self.reader.list_prefixes
        self.list_multipart_uploads = self.reader.list_multipart_uploads
