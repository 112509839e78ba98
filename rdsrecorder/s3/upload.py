"""The uploader: streams a log file's chunks into one S3 object, **written once** and only where
nothing is yet (docs/design-uploads.md has the whole design).

Two paths, each step named after the S3 call it makes:

* **PutObject**: a stream that ends within ``single_put_max_bytes`` (with ``--spool-dir memory``
  within one part) goes in one ``PutObject``.
* **Multipart**: ``CreateMultipartUpload``, then ``UploadPart`` x n, then
  ``CompleteMultipartUpload``. Part k+1 fills from the download while part k uploads, and is sent
  once part k is: a file holds at most two parts (``upload_config`` has the memory formula). From
  the create's answer on, any failure or cancellation runs ``AbortMultipartUpload`` (shielded from
  cancellation, bounded by ``ABORT_TIMEOUT_S``).

Every write carries the SHA-256 of its bytes (``ChecksumSHA256``): S3 refuses bytes that differ
(``BadDigest``), and S3 Object Lock requires a checksum. The object's own write (PutObject,
CompleteMultipartUpload) carries ``If-None-Match: *``: S3 makes the object only if the key is
free, so nothing is ever overwritten. A taken key raises ``KeyTakenError`` (412) with what this
upload would have stored, a write that raced another one ``WriteConflictError`` (409); the caller
decides (``rdsrecorder.transfer``).

A request is retried by the one retry policy (``Aws.run``); each attempt sends the part's body
from its start (``Bucket.call_with_body``).

Errors: a failing S3 call becomes ``UploadError`` (one line naming the object); a chunk stream
that raises an ``RdsRecorderError`` (``LogFileGoneError``, ``DownloadError`` ...) has it
re-raised unchanged, so the caller can tell "the source file is gone" from "S3 failed"; any other
exception of the stream becomes ``UploadError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from rdsrecorder.compression import (
    Compression,
    Gzipper,
    checksum,
    composite_sha256_b64,
    sha256_b64,
)
from rdsrecorder.errors import (
    AwsError,
    ConfigError,
    KeyTakenError,
    RdsRecorderError,
    UploadError,
    WriteConflictError,
)
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import META_SHA256, META_SIZE, META_SOURCE, UploadResult
from rdsrecorder.s3.bucket import DENIED, Bucket
from rdsrecorder.s3.spool import (
    SPOOL_IN_MEMORY,
    PartBody,
    SpoolPart,
    default_spool_dir,
    spool_dir_usable,
)
from rdsrecorder.s3.upload_config import (
    MAX_PARTS,
    StorageClass,
    UploadConfig,
    grown_part_size,
    part_size_for,
)

log = logging.getLogger(__name__)

ABORT_TIMEOUT_S = 60.0  # a stop (SIGTERM) waits at most this long for an abort
KEY_TAKEN = frozenset({"PreconditionFailed", "412"})
WRITE_CONFLICT = frozenset({"ConditionalRequestConflict"})
IF_NONE_MATCH = {"IfNoneMatch": "*"}  # the object is made only where nothing is


def resolve_spool_dir(setting: str | None) -> str | None:
    """The directory parts are spooled to, or None to keep them in memory. The default (the temp
    dir) falls back to memory with a warning when it is not writable (a read-only root file
    system); an explicit ``--spool-dir`` was checked by the config."""
    if setting == SPOOL_IN_MEMORY:
        log.info("parts are kept in memory: + 2 x part size per file in flight")
        return None
    directory = setting or default_spool_dir()
    problem = spool_dir_usable(directory)
    if problem is None:
        log.debug("parts are spooled to %s", directory)
        return directory
    if setting:
        raise ConfigError(f"--spool-dir is not usable: {problem}")
    log.warning(
        "cannot spool parts to the temp dir (%s): keeping them in memory, + 2 x part size per "
        "file in flight (set --spool-dir to a writable directory)",
        problem,
    )
    return None


class _PartCutter:
    """Cuts a chunk stream into parts of exactly ``part_bytes`` (the last one shorter), compressing
    it first when asked. It hashes the log's bytes (``sha256``, ``size``) and, when compressed, the
    stored bytes as they pass (each part hashes its own bytes). Errors of the stream are turned
    into what ``upload`` promises."""

    def __init__(self, chunks: AsyncIterator[bytes], target: str, compression: Compression) -> None:
        self._chunks = aiter(chunks)
        self._target = target
        self._carry: bytes | memoryview = b""  # the tail of a chunk cut at a part boundary
        self._gzip = Gzipper() if compression is Compression.GZIP else None
        self._source_done = False
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._stored_sha256 = hashlib.sha256() if self._gzip is not None else None
        self.exhausted = False

    def stored_sha256_digest(self) -> bytes:
        return (self._stored_sha256 or self.sha256).digest()

    @property
    def done(self) -> bool:
        """Every byte of the stream has been handed to a part."""
        return self.exhausted and not self._carry

    async def read(self, part_bytes: int, part: SpoolPart) -> None:
        """Fills ``part`` with the next ``part_bytes`` of the stream (fewer at its end)."""
        while part.size < part_bytes and not self.done:
            chunk: bytes | memoryview
            if self._carry:
                chunk, self._carry = self._carry, b""
            else:
                chunk = await self._next_chunk()
                if self.exhausted:
                    break
            room = part_bytes - part.size
            if len(chunk) > room:
                view = memoryview(chunk)  # no copy of the chunk to cut it
                chunk, self._carry = view[:room], view[room:]
            try:
                part.add(chunk)
            except OSError as exc:
                raise UploadError(
                    f"upload of {self._target} failed: {exc.strerror or exc}"
                ) from exc
        if not self._carry and not self.exhausted and part.size == part_bytes:
            # Look one chunk ahead so that a stream ending exactly on a part boundary is known
            # to be over before the caller decides between PutObject and a multipart upload.
            chunk = await self._next_chunk()
            if not self.exhausted:
                self._carry = chunk

    async def _next_chunk(self) -> bytes:
        """The next non-empty chunk of stored bytes; b"" (and ``exhausted``) at the end."""
        while True:
            if self._source_done:
                if self._gzip is not None:
                    tail, self._gzip = self._gzip.flush(), None
                    if tail:
                        return self._stored(tail)
                self.exhausted = True
                return b""
            raw = await self._next_source_chunk()
            if not raw:
                continue
            self.sha256.update(raw)
            self.size += len(raw)
            if self._gzip is None:
                return self._stored(raw)
            # zlib releases the GIL: compressing in a worker thread keeps the event loop free.
            out = await asyncio.to_thread(self._gzip.compress, raw)
            if out:
                return self._stored(out)

    def _stored(self, data: bytes) -> bytes:
        if self._stored_sha256 is not None:
            self._stored_sha256.update(data)
        return data

    async def _next_source_chunk(self) -> bytes:
        try:
            return bytes(await anext(self._chunks))
        except StopAsyncIteration:
            self._source_done = True
            return b""
        except RdsRecorderError:
            raise
        except Exception as exc:
            raise UploadError(
                f"upload of {self._target} failed: reading the source: {type(exc).__name__}: {exc}"
            ) from exc

    async def close(self) -> None:
        # Releases the download (its HTTP connection) at once instead of at garbage collection.
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception as exc:
                log.debug("closing the source of %s: %s", self._target, exc)


async def _to_completion(step: Awaitable[None]) -> None:
    """Runs ``step`` to its end even if the caller is cancelled meanwhile (then re-raises the
    cancellation): cleanup that saves money must not be cut short by a shutdown."""
    task = asyncio.ensure_future(step)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            cancelled = exc
    if not task.cancelled() and task.exception() is not None:
        log.warning("cleanup failed: %s", task.exception())
    if cancelled is not None:
        raise cancelled


class Uploader:
    """Writes log objects into ``bucket`` (the module docstring has the contract)."""

    def __init__(
        self,
        bucket: Bucket,
        hooks: Hooks,
        config: UploadConfig | None = None,
        *,
        spool_dir: str | None = None,
    ) -> None:
        self._bucket = bucket
        self._hooks = hooks
        self.config = config or UploadConfig()
        self.spool_dir = spool_dir  # None: parts are held in memory
        # STANDARD is what S3 applies when none is given (and all S3-compatible servers know).
        self._class: dict[str, str] = (
            {"StorageClass": self.config.storage_class.value}
            if self.config.storage_class is not StorageClass.STANDARD
            else {}
        )
        self._url = bucket.url
        self.abort_denied = 0  # aborts S3 refused (AccessDenied), said once at error level

    def _failed(self, key: str, exc: AwsError, result: UploadResult | None = None) -> UploadError:
        """One ``UploadError`` line for a failed S3 call of an upload (a 412 and a 409 have their
        own kinds: the caller acts on them)."""
        message = f"upload of {self._url(key)} failed: {exc}"
        if exc.code in KEY_TAKEN:
            return KeyTakenError(f"{self._url(key)} is taken: {exc}", result)
        if exc.code in WRITE_CONFLICT:
            return WriteConflictError(message)
        return UploadError(message)

    async def _call(self, key: str, method: str, **params: Any) -> dict[str, Any]:
        try:
            return await self._bucket.call(method, Key=key, **params)
        except AwsError as exc:
            raise self._failed(key, exc) from exc

    def _content_type(self, key: str, metadata: dict[str, str], compression: Compression) -> str:
        if compression is Compression.GZIP:
            return "application/gzip"  # and no Content-Encoding: clients keep it compressed
        source = metadata.get(META_SOURCE) or key
        return "text/csv" if source.endswith(".csv") else "text/plain"

    async def upload(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        metadata: dict[str, str],
        instance: str,
        size_hint_bytes: int | None = None,
        compression: Compression = Compression.NONE,
    ) -> UploadResult:
        """Streams ``chunks`` into ``key`` (the module docstring has the contract)."""
        part_bytes = part_size_for(size_hint_bytes, self.config.part_size_bytes)
        cutter = _PartCutter(chunks, self._url(key), compression)
        # In memory never more than one part per file; spooled, up to the single-PUT threshold.
        first_bytes = (
            part_bytes
            if self.spool_dir is None
            else max(part_bytes, self.config.single_put_max_bytes)
        )
        first = SpoolPart(self.spool_dir, self._url(key))
        try:
            await cutter.read(first_bytes, first)
            body = first.body()
            if cutter.done:
                return await self._put_object(key, body, cutter, metadata, instance, compression)
            return await self._multipart(
                key, cutter, body, part_bytes, metadata, instance, compression
            )
        finally:
            first.close()
            await cutter.close()

    async def _put_object(
        self,
        key: str,
        body: PartBody,
        cutter: _PartCutter,
        metadata: dict[str, str],
        instance: str,
        compression: Compression,
    ) -> UploadResult:
        sha_hex = cutter.sha256.hexdigest()
        stored_sha = sha256_b64(cutter.stored_sha256_digest())
        result = UploadResult(
            key,
            cutter.size,
            sha_hex,
            "",
            0,
            stored_size=body.size,
            checksum=checksum("SHA256", stored_sha),
            compression=compression.value,
        )
        try:
            resp = await self._bucket.call_with_body(
                "put_object",
                body,
                Key=key,
                ContentLength=body.size,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=stored_sha,
                Metadata={**metadata, META_SHA256: sha_hex, META_SIZE: str(cutter.size)},
                ContentType=self._content_type(key, metadata, compression),
                **IF_NONE_MATCH,
                **self._class,
                **self._bucket.sse,
            )
        except AwsError as exc:
            raise self._failed(key, exc, result) from exc
        finally:
            body.close()
        self._hooks.bytes_uploaded(instance, body.size)
        return UploadResult(
            key,
            result.size,
            result.sha256,
            str(resp.get("ETag", "")),
            0,
            stored_size=result.stored_size,
            checksum=result.checksum,
            compression=result.compression,
        )

    async def _multipart(
        self,
        key: str,
        cutter: _PartCutter,
        first: PartBody,
        part_bytes: int,
        metadata: dict[str, str],
        instance: str,
        compression: Compression,
    ) -> UploadResult:
        """``first``: the part read before PutObject was ruled out; this call owns it."""
        try:
            upload_id = await self._create_multipart_upload(key, metadata, compression)
        except BaseException:
            first.close()
            raise
        uploading: asyncio.Task[dict[str, Any]] | None = None
        parts: list[dict[str, Any]] = []
        body: PartBody | None = first
        filling: SpoolPart | None = None
        stored_bytes = 0
        try:
            number = 0
            while body is not None:
                number += 1
                if number > MAX_PARTS:
                    raise UploadError(
                        f"upload of {self._url(key)} failed: more than {MAX_PARTS} parts needed "
                        f"({stored_bytes} bytes so far); raise the part size"
                    )
                stored_bytes += body.size
                uploading = asyncio.create_task(
                    self._upload_part(key, upload_id, number, body, instance),
                    name=f"UploadPart {key} #{number}",
                )
                body = None  # the task owns (and closes) it
                if cutter.done:
                    break
                # Part k+1 fills while part k uploads ...
                part_bytes = grown_part_size(part_bytes, number)
                filling = SpoolPart(self.spool_dir, self._url(key))
                await cutter.read(part_bytes, filling)
                # ... and is sent once part k is: a file holds at most two parts.
                parts.append(await uploading)
                uploading = None
                body = filling.body()
                filling.close()
                filling = None
                if not body.size:  # the stream ended on the previous part's last byte
                    body.close()
                    body = None
            if uploading is not None:
                parts.append(await uploading)
            composite = composite_sha256_b64([p["ChecksumSHA256"] for p in parts])
            result = UploadResult(
                key,
                cutter.size,
                cutter.sha256.hexdigest(),
                "",
                len(parts),
                stored_size=stored_bytes,
                checksum=checksum("SHA256", composite),
                compression=compression.value,
            )
            resp = await self._complete_multipart_upload(key, upload_id, parts, result)
        except BaseException as exc:
            why = "cancelled" if isinstance(exc, asyncio.CancelledError) else str(exc)
            await _to_completion(self._abort_multipart_upload(key, upload_id, uploading, why))
            if isinstance(exc, Exception) and not isinstance(exc, RdsRecorderError):
                raise UploadError(
                    f"upload of {self._url(key)} failed: {type(exc).__name__}: {exc}"
                ) from exc
            raise
        finally:
            if body is not None:
                body.close()
            if filling is not None:
                filling.close()
        return UploadResult(
            key,
            result.size,
            result.sha256,
            str(resp.get("ETag", "")),
            result.parts,
            stored_size=result.stored_size,
            checksum=result.checksum,
            compression=result.compression,
        )

    async def _create_multipart_upload(
        self, key: str, metadata: dict[str, str], compression: Compression
    ) -> str:
        create = asyncio.ensure_future(
            self._call(
                key,
                "create_multipart_upload",
                Metadata=metadata,
                ContentType=self._content_type(key, metadata, compression),
                ChecksumAlgorithm="SHA256",
                ChecksumType="COMPOSITE",
                **self._class,
                **self._bucket.sse,
            )
        )
        try:
            created = await asyncio.shield(create)
        except asyncio.CancelledError:
            # The request may already have reached S3: wait for its answer and abort what it made.
            await _to_completion(self._abort_created(key, create))
            raise
        return str(created["UploadId"])

    async def _abort_created(self, key: str, create: asyncio.Future[dict[str, Any]]) -> None:
        try:
            async with asyncio.timeout(ABORT_TIMEOUT_S):
                created = await create
        except (Exception, asyncio.CancelledError) as exc:
            log.debug("CreateMultipartUpload of %s did not finish: %s", self._url(key), exc)
            return
        await self._abort_multipart_upload(
            key, str(created["UploadId"]), None, "cancelled while it was created"
        )

    async def _upload_part(
        self, key: str, upload_id: str, number: int, body: PartBody, instance: str
    ) -> dict[str, Any]:
        digest = sha256_b64(body.sha256)
        try:
            resp = await self._bucket.call_with_body(
                "upload_part",
                body,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                ContentLength=body.size,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=digest,
            )
        except AwsError as exc:
            raise self._failed(key, exc) from exc
        finally:
            body.close()
        self._hooks.bytes_uploaded(instance, body.size)
        return {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": digest}

    async def _complete_multipart_upload(
        self, key: str, upload_id: str, parts: list[dict[str, Any]], result: UploadResult
    ) -> dict[str, Any]:
        try:
            return await self._bucket.call(
                "complete_multipart_upload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **IF_NONE_MATCH,
            )
        except AwsError as exc:
            raise self._failed(key, exc, result) from exc

    async def _abort_multipart_upload(
        self,
        key: str,
        upload_id: str,
        uploading: asyncio.Task[dict[str, Any]] | None,
        why: str,
    ) -> None:
        # A part still uploading while the abort runs may survive it: stop it first.
        if uploading is not None:
            uploading.cancel()
            await asyncio.wait([uploading])
            if not uploading.cancelled():
                uploading.exception()  # retrieved: the caller reports the failure
        try:
            async with asyncio.timeout(ABORT_TIMEOUT_S):
                await self._bucket.call("abort_multipart_upload", Key=key, UploadId=upload_id)
        except AwsError as exc:
            if exc.code in ("NoSuchUpload", "404"):
                # Already gone: completed after all, or aborted by an earlier attempt.
                log.info("multipart upload of %s no longer exists (%s)", self._url(key), why)
                return
            if exc.code in DENIED:
                self._abort_was_denied(key)
                return
            self._log_abort_failed(key, exc.code or "AwsError")
            return
        except TimeoutError:
            self._log_abort_failed(key, f"no answer in {ABORT_TIMEOUT_S:.0f} s")
            return
        log.info("aborted the multipart upload of %s (%s)", self._url(key), why)

    def _abort_was_denied(self, key: str) -> None:
        self.abort_denied += 1
        self._hooks.multipart_abort_denied()
        if self.abort_denied == 1:
            log.error(
                "s3:AbortMultipartUpload is denied: multipart uploads cut short (like that of %s) "
                "stay open and billed until the bucket's AbortIncompleteMultipartUpload lifecycle "
                "rule removes them (docs/iam.md); said once, counted in "
                "rdsrecorder_multipart_abort_denied_total",
                self._url(key),
            )
        else:
            log.info("abort of the multipart upload of %s denied too", self._url(key))

    def _log_abort_failed(self, key: str, reason: str) -> None:
        log.error(
            "could not abort the multipart upload of %s (%s): its parts stay billed until "
            "aborted; allow s3:AbortMultipartUpload or add an AbortIncompleteMultipartUpload "
            "lifecycle rule",
            self._url(key),
            reason,
        )
