"""The uploader: streams byte chunks into S3, one object per log file, **written once**: every
object is made by exactly one request sequence (a PutObject, or one multipart upload) and never
rewritten, so a versioned bucket holds one version per key and S3 Object Lock sees one write.

Upload (``Uploader.upload``), with tasks named after the S3 calls they make:

* The chunk stream (compressed first with ``--compress gzip``: ``rdsrecorder.compression``) is
  spooled up to ``single_put_max_bytes`` (``--single-put-max-mib``, by default 5 MiB: one part;
  with ``--spool-dir memory`` only up to one part). If it ends there, the object goes in one
  ``PutObject`` carrying ``ChecksumSHA256`` (S3 refuses the write with ``BadDigest`` if the bytes
  it got differ) and the ``sha256`` and ``size`` metadata of the log's bytes. A file listed larger
  than the threshold (and not compressed) goes straight to multipart.
* Otherwise ``CreateMultipartUpload`` with SHA-256 part checksums (``ChecksumAlgorithm=SHA256``,
  ``ChecksumType=COMPOSITE``): every ``UploadPart`` carries the SHA-256 of its part, computed here
  while the part fills, and S3 refuses a part whose bytes differ (``BadDigest``).
  ``CompleteMultipartUpload`` lists them, and S3 keeps the composite checksum: the SHA-256 of the
  parts' digests, suffixed ``-<parts>`` (``composite_sha256_b64``). The metadata is fixed at
  creation, before the hash is known: the sha256 of a multipart object is in the run's manifest
  (``rdsrecorder.transfer.already_copied`` trusts an object by its metadata and the manifest entry,
  never by a later rewrite). From the create request on, any failure or cancellation runs
  ``AbortMultipartUpload`` (shielded from cancellation, bounded by ``ABORT_TIMEOUT_S``); a
  cancellation that arrives while the create request is in flight waits for its answer and aborts
  the upload it created. An abort S3 denies (the seed's IAM list lacks ``s3:AbortMultipartUpload``)
  is said once per uploader at error level, counted (``Hooks.multipart_abort_denied``), and left to
  the bucket's ``AbortIncompleteMultipartUpload`` lifecycle rule.
* **Parts sent while they fill** (``_LivePlan``, ``_LiveBody``): a file listed larger than
  ``single_put_max_bytes`` (not compressed) starts its multipart upload at its first byte, and a
  part whose size is known before its first byte (a full part while the listed size has a part's
  worth left; the last part of a rotated file, whose size is final) is sent while it fills: its
  ``UploadPart`` streams the bytes as the download brings them, framed ``aws-chunked`` with the
  part's SHA-256 in the trailer (``STREAMING-UNSIGNED-PAYLOAD-TRAILER``, what botocore does by
  itself over HTTPS), which S3 checks as it checks a header. The end of a file then leaves only
  its last chunk and ``CompleteMultipartUpload`` to send. The part is still spooled: if it ends at
  another size than predicted (the file shrank or grew), if S3 refuses the request, or if S3
  reads nothing of it for ``LIVE_STALL_S``, the request is broken off before its last chunk
  (S3 stores nothing of it) and the part goes again whole, with a checksum header and the
  retry policy. A stream is sent once (no retry of its own). The download waits while S3 has
  not read ``LIVE_MAX_QUEUED_BYTES`` of a part (back-pressure, not memory).
* Other parts: while part k uploads (one ``UploadPart`` task), part k+1 fills from the download,
  and is sent once part k is: at most one whole part on its way per file, so a file has at most
  two parts (plus, for a part sent while it fills, up to ``LIVE_MAX_QUEUED_BYTES`` not yet read
  by S3).
* Where parts wait (``spool_dir``, see ``_Part``): spooled to an anonymous temporary file
  (unlinked at once) as chunks arrive, or, with ``--spool-dir memory``, in memory, joined once per
  part into a ``BytesIO`` that is the only owner of its bytes (aiohttp copies a ``BytesIO`` whose
  buffer is shared, and a whole ``bytearray`` body). What each costs: the README, "Speed and
  memory". botocore reads a file-like body from where it stands, so every attempt rewinds it
  first (``_rewind_part_body``).
* Every write carries its checksum (``x-amz-sdk-checksum-algorithm`` with an
  ``x-amz-checksum-*`` header, or its trailer for a part sent while it fills), which S3 Object
  Lock requires. Header values are computed here: the client's
  ``request_checksum_calculation="when_required"`` only stops botocore from adding checksums of
  its own elsewhere (trailers are asked for explicitly, ``_stream_live_parts``; SeaweedFS 4.48 and
  moto 5.2.5 decode and check them: ``tests/test_live_parts.py``).

Part size (``part_size_for`` and ``grown_part_size``): S3 allows parts of 5 MiB to 5 GiB (the last
may be smaller, and parts need not be equal) and at most 10,000 parts. The part size is the
configured one (at least 5 MiB), grown to whole MiB so that the listed size plus 25 % headroom
(the current file keeps growing) fits in 10,000 parts. A file that outgrows that estimate, or
whose size is unknown, is handled on the fly: **past part 4,000 the part size doubles every 500
parts, up to 5 GiB**. Even from 5 MiB parts, 10,000 parts then hold over 9 TiB, more than the
5 TiB S3 stores in one object, while the memory per file grows only for files past ~20 GiB. A
stream that would still need a 10,001st part fails with a clear ``UploadError``.

Errors: a failing S3 call becomes ``UploadError`` (one line naming the object); a chunk stream that
raises an ``RdsRecorderError`` (``LogFileGoneError``, ``DownloadError`` ...) has it re-raised
unchanged, so the caller can tell "the source file is gone" from "S3 failed"; any other exception
of the stream becomes ``UploadError``. Each time, the multipart upload is aborted first.

SSE (``ServerSideEncryption``, ``SSEKMSKeyId``) and the storage class go on every call that
creates an object (PutObject, CreateMultipartUpload); ``ExpectedBucketOwner`` on every call.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import logging
import os
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from rdsrecorder.compression import (
    Compression,
    Gzipper,
    checksum,
    composite_sha256_b64,
    sha256_b64,
)
from rdsrecorder.concurrency import cancelled
from rdsrecorder.config import (
    DEFAULT_PART_SIZE_BYTES,
    DEFAULT_SINGLE_PUT_MAX_BYTES,
    SPOOL_IN_MEMORY,
    StorageClass,
    default_spool_dir,
)
from rdsrecorder.errors import AwsError, ConfigError, RdsRecorderError, UploadError
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import (
    META_COMPLETE,
    META_SHA256,
    META_SIZE,
    META_SOURCE,
    MIB,
    UploadResult,
)
from rdsrecorder.s3.bucket import DENIED, Bucket

log = logging.getLogger(__name__)

MIN_PART_BYTES = 5 * MIB
MAX_PART_BYTES = 5 * 1024 * MIB
MAX_PARTS = 10_000
MAX_PUT_BYTES = 5 * 1024 * MIB  # the largest object a single PutObject accepts
GROWTH_HEADROOM = 1.25  # the current file keeps growing after it was listed
GROW_AFTER_PARTS = 4_000  # a file past this many parts outgrew its estimate ...
GROW_EVERY_PARTS = 500  # ... and from then on its part size doubles this often
ABORT_TIMEOUT_S = 60.0  # a stop (SIGTERM) waits at most this long for an abort
# A part sent while it fills holds the bytes S3 has not read yet: past this, the download waits
# for S3 (memory: concurrency x this at most) ...
LIVE_MAX_QUEUED_BYTES = 2 * MIB
# ... but not for ever: a request that reads nothing this long is given up, and the part is sent
# once filled, from the spool.
LIVE_STALL_S = 10.0


def _round_up_mib(n: int) -> int:
    return -(-n // MIB) * MIB


def part_size_for(size_hint_bytes: int | None, min_part_size_bytes: int) -> int:
    """Part size for a file of ``size_hint_bytes`` (None or 0: unknown): the configured size (at
    least 5 MiB), grown to whole MiB so that the hint plus 25 % fits in 10,000 parts, at most
    5 GiB."""
    part = max(MIN_PART_BYTES, min_part_size_bytes)
    if size_hint_bytes:
        needed = -(-int(size_hint_bytes * GROWTH_HEADROOM) // MAX_PARTS)
        part = max(part, _round_up_mib(needed))
    return min(part, MAX_PART_BYTES)


def grown_part_size(part_bytes: int, parts_done: int) -> int:
    """Part size for part ``parts_done + 1``, given the size of part ``parts_done``: doubled after
    part 4,000, 4,500, 5,000 ... (at most 5 GiB)."""
    since = parts_done - GROW_AFTER_PARTS
    if since >= 0 and since % GROW_EVERY_PARTS == 0:
        return min(MAX_PART_BYTES, part_bytes * 2)
    return part_bytes


class _PartBody(io.BytesIO):
    """One part (or a small object) in memory, owning its bytes alone: see the module docstring."""

    def __init__(self, data: bytes, sha256: bytes) -> None:
        super().__init__(data)
        self.size = len(data)
        self.sha256 = sha256  # digest of ``data``, computed as it arrived


class _SpoolBody(io.FileIO):
    """One part (or a small object) in an anonymous temporary file (unlinked at creation, so
    nothing is left behind on any exit). botocore and aiohttp read it like any file."""

    size = 0
    sha256 = b""  # SHA-256 digest of the part, set by ``_Part.body``


class _LiveAbort(Exception):
    """Raised into a part's streaming request to break it off (the part is sent again)."""


class _LiveBody:
    """The body of an ``UploadPart`` sent while its part fills: the bytes as they arrive, framed
    by botocore as ``aws-chunked`` with the part's SHA-256 in the trailer, so that S3 verifies it
    as it verifies a checksum header (``BadDigest``). ``len()`` is the part's size as predicted
    from the listed size (``x-amz-decoded-content-length``). The request ends well only if the
    part filled to exactly that size; any other end (more bytes, fewer, an error) breaks the
    request off before its last chunk, so S3 stores nothing of it, and the part goes again from
    the spool, whole, with a checksum header (``Uploader._send_part``)."""

    def __init__(self, declared: int) -> None:
        self.declared = declared
        self._chunks: deque[bytes | memoryview] = deque()
        self._queued = 0  # bytes fed and not read by the request yet
        self._fed = 0
        self._filled = False
        self.whole = False  # every byte of the part was handed to the request, then its end
        self.failure = ""  # why the part is no longer sent while it fills
        self._wake = asyncio.Event()  # for the request: bytes, the part's end, or a failure
        self._room = asyncio.Event()  # for the download: S3 has read enough of the queue
        self._room.set()

    def __len__(self) -> int:
        return self.declared

    @property
    def active(self) -> bool:
        return not self.failure

    def feed(self, chunk: bytes | memoryview) -> None:
        if self.failure:
            return
        self._fed += len(chunk)
        if self._fed > self.declared:
            self.fail(f"the part outgrew the {self.declared} bytes it was listed at")
            return
        self._chunks.append(chunk)
        self._queued += len(chunk)
        if self._queued > LIVE_MAX_QUEUED_BYTES:
            self._room.clear()
        # Whole once its listed size is in: the request ends now, not after the look-ahead at
        # the next chunk (on the portion path, the next call's latency).
        self._filled = self._fed == self.declared
        self._wake.set()

    async def room(self) -> None:
        """Waits until S3 has read the queue down to ``LIVE_MAX_QUEUED_BYTES`` (the download's
        back-pressure), at most ``LIVE_STALL_S``: then the part is sent once filled."""
        if self._room.is_set():
            return
        try:
            async with asyncio.timeout(LIVE_STALL_S):
                await self._room.wait()
        except TimeoutError:
            self.fail(f"S3 read nothing of it for {LIVE_STALL_S:.0f} s")

    def filled(self, size: int) -> None:
        """The part is complete at ``size`` bytes."""
        if size != self.declared:
            self.fail(f"the part ended at {size} bytes, not {self.declared}")
        self._filled = True
        self._wake.set()

    def fail(self, why: str) -> None:
        if not self.failure:
            self.failure = why
            self._chunks.clear()
            self._queued = 0
        self._wake.set()
        self._room.set()

    async def read(self, size: int = -1) -> bytes:
        while not self._chunks:
            if self.failure:
                raise _LiveAbort(self.failure)
            if self._filled:
                self.whole = True
                return b""  # the part is whole: botocore sends the trailer
            self._wake.clear()
            await self._wake.wait()
        chunk = self._chunks.popleft()
        if 0 < size < len(chunk):
            self._chunks.appendleft(memoryview(chunk)[size:])
            chunk = memoryview(chunk)[:size]
        self._queued -= len(chunk)
        if self._queued <= LIVE_MAX_QUEUED_BYTES:
            self._room.set()
        return bytes(chunk)


def _stream_live_parts(params: dict[str, Any], **_: Any) -> None:
    # botocore handler, before an UploadPart is made: a live body carries its checksum in an
    # aws-chunked trailer (what botocore does on its own over HTTPS; here over HTTP too).
    if isinstance(params.get("body"), _LiveBody):
        checksum = params["context"].setdefault("checksum", {})
        checksum["request_algorithm"] = {
            "algorithm": "sha256",
            "in": "trailer",
            "name": "x-amz-checksum-sha256",
        }
        checksum["request_algorithm_header"] = {
            "name": "x-amz-sdk-checksum-algorithm",
            "value": "SHA256",
        }


PartBody = _PartBody | _SpoolBody


def _rewind_part_body(params: dict[str, Any], **_: Any) -> None:
    # botocore handler, before each attempt (Aws.call retries reuse the same params).
    body = params.get("Body")
    if isinstance(body, (_PartBody, _SpoolBody)):
        body.seek(0)


def spool_dir_usable(spool_dir: str) -> str | None:
    """None if anonymous part files can be made in ``spool_dir``, else why not (one line)."""
    try:
        with _new_spool_file(spool_dir) as probe:
            probe.write(b"rdsrecorder")
    except OSError as exc:
        return f"{spool_dir}: {exc.strerror or exc}"
    return None


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


def _new_spool_file(spool_dir: str) -> _SpoolBody:
    fd, path = tempfile.mkstemp(prefix="rdsrecorder-part-", dir=spool_dir)
    try:
        os.unlink(path)
        return _SpoolBody(fd, "r+b", closefd=True)
    except BaseException:
        os.close(fd)
        raise


class _Part:
    """The bytes of one part while it fills. In memory: the chunks, joined once when the part is
    sent. Spooled (``spool_dir``): written to an anonymous temporary file as they arrive, so the
    process holds no part at all; the kernel's page cache does, and the file is gone once the
    part is uploaded. A spool that fails (disk full, directory gone) does not fail the upload:
    the part goes on in memory, with a warning."""

    def __init__(self, spool_dir: str | None, target: str) -> None:
        self._pieces: list[bytes | memoryview] = []
        self._file: _SpoolBody | None = None
        self._target = target
        self.size = 0
        self._sha256 = hashlib.sha256()  # of the bytes added so far (the part's checksum)
        self.live: _LiveBody | None = None  # the part's request, when it is sent as it fills
        if spool_dir is not None:
            try:
                self._file = _new_spool_file(spool_dir)
            except OSError as exc:
                self._spool_failed(exc)

    def add(self, chunk: bytes | memoryview) -> None:
        if self._file is not None:
            try:
                view = memoryview(chunk)
                while view:  # a regular file takes it all at once; loop in case it does not
                    written = self._file.write(view)
                    if not written:
                        raise OSError(errno.EIO, "the spool file took no bytes")
                    view = view[written:]
            except OSError as exc:
                self._to_memory(exc)
                self._pieces.append(chunk)
        else:
            self._pieces.append(chunk)
        self.size += len(chunk)
        self._sha256.update(chunk)
        if self.live is not None:
            self.live.feed(chunk)

    def _to_memory(self, exc: OSError) -> None:
        """Moves what the spool file holds so far into memory."""
        spool, self._file = self._file, None
        assert spool is not None
        try:
            spool.seek(0)
            data = spool.read(self.size) if self.size else b""
        finally:
            spool.close()
        if len(data) != self.size:  # the bytes written cannot be read back: give up
            raise UploadError(
                f"upload of {self._target} failed: the spool lost bytes ({exc.strerror or exc})"
            ) from exc
        if data:
            self._pieces.append(data)
        self._spool_failed(exc)

    def _spool_failed(self, exc: OSError) -> None:
        log.warning(
            "cannot spool a part of %s to disk (%s): keeping it in memory",
            self._target,
            exc.strerror or exc,
        )

    def body(self) -> PartBody:
        """The part, ready to send; the caller owns it (and closes it) from now on."""
        if self._file is not None:
            body, self._file = self._file, None
            body.size = self.size
            body.sha256 = self._sha256.digest()
            body.seek(0)
            return body
        data = b"".join(self._pieces)
        self._pieces.clear()
        return _PartBody(data, self._sha256.digest())

    def close(self) -> None:
        self._pieces.clear()
        if self._file is not None:
            self._file.close()
            self._file = None


class _PartCutter:
    """Cuts a chunk stream into parts of exactly ``part_bytes`` (the last one shorter), compressing
    it first when asked. It hashes the log's bytes (``sha256``, ``size``) and, when compressed, the
    stored bytes (``stored_sha256``) as they pass (each part hashes its own bytes). Errors of the
    stream are turned into what ``upload`` promises."""

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

    async def prime(self) -> None:
        """Waits for the stream's first bytes (kept for the first part), or its end: a source
        hands over its first bytes only once it may be written (the run's owner check)."""
        if not self._carry and not self.exhausted:
            chunk = await self._next_chunk()
            if not self.exhausted:
                self._carry = chunk

    async def read(self, part_bytes: int, part: _Part) -> None:
        """Fills ``part`` with the next ``part_bytes`` of the stream (fewer at its end)."""
        while part.size < part_bytes and not (self.exhausted and not self._carry):
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
            if chunk:
                part.add(chunk)
                if part.live is not None:
                    await part.live.room()
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


class _LivePlan:
    """Which parts of a file are sent while they fill (``_LiveBody``): those whose size is known
    before their first byte. From the listed size: a full part while the file has at least a
    part's worth left (unless it shrinks), and the last part of a rotated file (its size no longer
    changes). The last part of the current file (it grows) and compressed bytes (their size is
    known only at the end) are sent once filled."""

    def __init__(
        self, size_hint_bytes: int | None, compression: Compression, metadata: dict[str, str]
    ) -> None:
        self.listed = (size_hint_bytes or 0) if compression is Compression.NONE else 0
        self.final = metadata.get(META_COMPLETE) == "true"

    def multipart_at_once(self, single_put_max_bytes: int) -> bool:
        """Listed larger than one PutObject: a multipart upload from the first byte."""
        return self.listed > single_put_max_bytes

    def live_part_bytes(self, sent_bytes: int, part_bytes: int) -> int:
        """The size of the next part if it can be sent while it fills, else 0."""
        left = self.listed - sent_bytes
        if left >= part_bytes:
            return part_bytes
        return left if self.final and left > 0 else 0


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
    """Writes log objects into ``bucket`` (see the module docstring for the whole contract)."""

    def __init__(
        self,
        bucket: Bucket,
        hooks: Hooks,
        *,
        part_size_bytes: int = DEFAULT_PART_SIZE_BYTES,
        spool_dir: str | None = None,
        single_put_max_bytes: int = DEFAULT_SINGLE_PUT_MAX_BYTES,
        storage_class: StorageClass = StorageClass.STANDARD,
    ) -> None:
        self._bucket = bucket
        self.spool_dir = spool_dir  # None: parts are held in memory
        self._hooks = hooks
        self.part_size_bytes = min(MAX_PART_BYTES, max(MIN_PART_BYTES, part_size_bytes))
        self.single_put_max_bytes = min(MAX_PUT_BYTES, max(MIN_PART_BYTES, single_put_max_bytes))
        # STANDARD is what S3 applies when none is given (and all S3-compatible servers know).
        self._class: dict[str, str] = (
            {"StorageClass": storage_class.value}
            if storage_class is not StorageClass.STANDARD
            else {}
        )
        self._sse = bucket.sse
        self._url = bucket.url
        self._call = bucket.call
        self.bucket = bucket.name
        self.abort_denied = 0  # aborts S3 refused (AccessDenied), said once at error level

    def _register_handlers(self) -> None:
        events = self._bucket.aws.s3.meta.events
        for operation in ("PutObject", "UploadPart"):
            events.register(
                f"before-parameter-build.s3.{operation}",
                _rewind_part_body,
                unique_id=f"rdsrecorder-rewind-{operation}",
            )
        events.register(
            "before-call.s3.UploadPart", _stream_live_parts, unique_id="rdsrecorder-live-parts"
        )

    async def _write(self, key: str, method: str, **params: Any) -> dict[str, Any]:
        """An S3 call of an upload: a failure becomes one ``UploadError`` line."""
        try:
            return await self._call(method, Key=key, **params)
        except AwsError as exc:
            raise UploadError(f"upload of {self._url(key)} failed: {exc}") from exc

    def _first_read_bytes(
        self, size_hint_bytes: int | None, part_bytes: int, compression: Compression
    ) -> int:
        """How much of the stream is gathered before choosing PutObject or multipart."""
        if self.spool_dir is None:
            return part_bytes  # in memory: never more than one part per file
        return max(part_bytes, self.single_put_max_bytes)

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
        """Streams ``chunks`` into ``key`` (see the module docstring for the whole contract)."""
        part_bytes = part_size_for(size_hint_bytes, self.part_size_bytes)
        cutter = _PartCutter(chunks, self._url(key), compression)
        self._register_handlers()
        plan = _LivePlan(size_hint_bytes, compression, metadata)
        first = self._new_part(key)
        try:
            if plan.multipart_at_once(self.single_put_max_bytes):
                # Listed larger than one PutObject: multipart from the first byte, so that the
                # first part is sent while it fills.
                await cutter.prime()
                if not cutter.done:
                    return await self._multipart(
                        key, cutter, None, part_bytes, metadata, instance, compression, plan
                    )
            await cutter.read(
                self._first_read_bytes(size_hint_bytes, part_bytes, compression), first
            )
            if cutter.exhausted:
                return await self._put_object(
                    key, first.body(), cutter, metadata, instance, compression
                )
            return await self._multipart(
                key, cutter, first, part_bytes, metadata, instance, compression, plan
            )
        finally:
            first.close()
            await cutter.close()

    def _new_part(self, key: str) -> _Part:
        return _Part(self.spool_dir, self._url(key))

    def _content_type(self, key: str, metadata: dict[str, str], compression: Compression) -> str:
        if compression is Compression.GZIP:
            return "application/gzip"  # and no Content-Encoding: clients keep it compressed
        source = metadata.get(META_SOURCE) or key
        return "text/csv" if source.endswith(".csv") else "text/plain"

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
        size = body.size
        try:
            resp = await self._write(
                key,
                "put_object",
                Body=body,
                ContentLength=size,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=stored_sha,
                Metadata={**metadata, META_SHA256: sha_hex, META_SIZE: str(cutter.size)},
                ContentType=self._content_type(key, metadata, compression),
                **self._class,
                **self._sse,
            )
        finally:
            body.close()
        self._hooks.bytes_uploaded(instance, size)
        return UploadResult(
            key,
            cutter.size,
            sha_hex,
            str(resp.get("ETag", "")),
            0,
            stored_size=size,
            checksum=checksum("SHA256", stored_sha),
            compression=compression.value,
        )

    async def _multipart(
        self,
        key: str,
        cutter: _PartCutter,
        first: _Part | None,
        part_bytes: int,
        metadata: dict[str, str],
        instance: str,
        compression: Compression,
        plan: _LivePlan,
    ) -> UploadResult:
        """``first``: a part already filled (read before PutObject was ruled out), or None."""
        upload_id = await self._create_multipart_upload(key, metadata, compression)
        sending: list[asyncio.Task[dict[str, Any]]] = []
        parts: list[dict[str, Any]] = []
        part = first
        try:
            sent_bytes = 0
            while part is not None or not cutter.done:
                number = len(sending) + 1
                if number > MAX_PARTS:
                    raise UploadError(
                        f"upload of {self._url(key)} failed: more than {MAX_PARTS} parts needed "
                        f"({sent_bytes} bytes so far); raise the part size"
                    )
                if part is None:
                    body = await self._fill_part(
                        key,
                        upload_id,
                        number,
                        cutter,
                        part_bytes,
                        sent_bytes,
                        plan,
                        sending,
                        instance,
                    )
                    if body is None:
                        break
                else:
                    # body() hands the part over: the upload task owns (and closes) it.
                    body = part.body()
                    part.close()
                    part = None
                    sending.append(
                        asyncio.create_task(
                            self._upload_part(key, upload_id, number, body, instance),
                            name=f"UploadPart {key} #{number}",
                        )
                    )
                sent_bytes += body.size
                del body
                part_bytes = grown_part_size(part_bytes, number)
                # The part before this one is sent before the next one fills: a file holds at
                # most two parts (the one filling, and the one on its way).
                if len(sending) >= 2:
                    parts.append(await sending[-2])
            if sending and len(parts) < len(sending):
                parts.append(await sending[-1])
            composite = composite_sha256_b64([p["ChecksumSHA256"] for p in parts])
            resp = await self._write(
                key,
                "complete_multipart_upload",
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException as exc:
            why = "cancelled" if isinstance(exc, asyncio.CancelledError) else str(exc)
            await _to_completion(self._abort(key, upload_id, sending, why))
            if isinstance(exc, Exception) and not isinstance(exc, RdsRecorderError):
                raise UploadError(
                    f"upload of {self._url(key)} failed: {type(exc).__name__}: {exc}"
                ) from exc
            raise
        finally:
            if part is not None:
                part.close()
        return UploadResult(
            key,
            cutter.size,
            cutter.sha256.hexdigest(),
            str(resp.get("ETag", "")),
            len(parts),
            stored_size=sent_bytes,
            checksum=checksum("SHA256", composite),
            compression=compression.value,
        )

    async def _fill_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        cutter: _PartCutter,
        part_bytes: int,
        sent_bytes: int,
        plan: _LivePlan,
        sending: list[asyncio.Task[dict[str, Any]]],
        instance: str,
    ) -> PartBody | None:
        """Fills part ``number`` from the stream, its upload task (in ``sending``) started first
        when its size can be predicted, so that it is sent while it fills; the filled part (None
        if the stream had nothing more)."""
        part = self._new_part(key)
        filled: asyncio.Future[PartBody] = asyncio.get_running_loop().create_future()
        declared = plan.live_part_bytes(sent_bytes, part_bytes)
        part.live = _LiveBody(declared) if declared else None
        previous = sending[-1] if sending else None
        sending.append(
            asyncio.create_task(
                self._send_part(key, upload_id, number, part.live, filled, previous, instance),
                name=f"UploadPart {key} #{number}",
            )
        )
        try:
            await cutter.read(part_bytes, part)
            if part.live is not None:
                part.live.filled(part.size)
            if previous is not None:
                # In memory, a part is joined only once the one before it is sent: a file holds
                # at most two parts.
                await asyncio.wait([previous])
            body = part.body()
        except BaseException as exc:
            if part.live is not None:
                part.live.fail(f"the stream failed: {type(exc).__name__}")
            raise
        finally:
            part.close()
        if not body.size:  # the stream ended exactly at the previous part's end
            body.close()
            await cancelled(sending.pop())
            return None
        filled.set_result(body)
        return body

    async def _send_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        live: _LiveBody | None,
        filled: asyncio.Future[PartBody],
        previous: asyncio.Task[dict[str, Any]] | None,
        instance: str,
    ) -> dict[str, Any]:
        """Sends a part: while it fills when it can (``live``), else (or if that failed) once
        it is filled, from the spool, after the part before it (``previous``) is sent: one
        whole part on its way at a time (with parts in memory, a second would be a third part
        held)."""
        try:
            if live is not None:
                sent = await self._upload_live_part(key, upload_id, number, live, filled, instance)
                if sent is not None:
                    return sent
            body = await filled
            if previous is not None:
                await asyncio.wait([previous])  # its outcome is the caller's
            return await self._upload_part(key, upload_id, number, body, instance)
        finally:
            if filled.done():  # the part is this task's: closed however it ends
                filled.result().close()

    async def _upload_live_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        live: _LiveBody,
        filled: asyncio.Future[PartBody],
        instance: str,
    ) -> dict[str, Any] | None:
        """One attempt (a stream cannot be sent twice): its answer, or None when it failed."""
        resp: dict[str, Any] | None = None
        try:
            resp = await self._bucket.call_once(
                "upload_part",
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=live,
                ChecksumAlgorithm="SHA256",
            )
        except (AwsError, _LiveAbort) as exc:
            live.fail(str(exc))
        if resp is None or not live.whole:
            live.fail("the request ended before the part was whole")  # no bytes kept for it
            log.info(
                "part %d of %s is sent again once filled: %s", number, self._url(key), live.failure
            )
            return None
        body = await filled  # the spool's copy: set once the part before it is sent
        digest = sha256_b64(body.sha256)
        stored = resp.get("ChecksumSHA256")
        if body.size != live.declared:
            log.info(
                "part %d of %s went on past the %d bytes it was listed at: sent again",
                number,
                self._url(key),
                live.declared,
            )
            return None
        if stored and stored != digest:
            log.warning(
                "part %d of %s: S3 stored checksum %s, not %s; sending it again",
                number,
                self._url(key),
                stored,
                digest,
            )
            return None
        body.close()
        self._hooks.bytes_uploaded(instance, body.size)
        return {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": digest}

    async def _create_multipart_upload(
        self, key: str, metadata: dict[str, str], compression: Compression
    ) -> str:
        create = asyncio.ensure_future(
            self._write(
                key,
                "create_multipart_upload",
                Metadata=metadata,
                ContentType=self._content_type(key, metadata, compression),
                ChecksumAlgorithm="SHA256",
                ChecksumType="COMPOSITE",
                **self._class,
                **self._sse,
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
        await self._abort(key, str(created["UploadId"]), [], "cancelled while it was created")

    async def _upload_part(
        self, key: str, upload_id: str, number: int, body: PartBody, instance: str
    ) -> dict[str, Any]:
        size = body.size
        digest = sha256_b64(body.sha256)
        try:
            resp = await self._write(
                key,
                "upload_part",
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ContentLength=size,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=digest,
            )
        finally:
            body.close()
        self._hooks.bytes_uploaded(instance, size)
        return {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": digest}

    async def _abort(
        self,
        key: str,
        upload_id: str,
        sending: list[asyncio.Task[dict[str, Any]]],
        why: str,
    ) -> None:
        # A part still uploading while the abort runs may survive it: stop those parts first.
        for task in sending:
            task.cancel()
        if sending:
            await asyncio.wait(sending)
        for task in sending:
            if not task.cancelled():
                task.exception()  # retrieved: the caller reports the failure
        try:
            async with asyncio.timeout(ABORT_TIMEOUT_S):
                await self._call("abort_multipart_upload", Key=key, UploadId=upload_id)
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
                "rule removes them (README, IAM policy); said once, counted in "
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
