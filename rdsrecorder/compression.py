"""Compression of log objects (``--compress``) and the checksums S3 verifies on arrival.

* ``gzip``: an object is one gzip member (RFC 1952) holding the exact bytes of the log file, with
  a fixed header (no name, mtime 0), so the same log always compresses to the same bytes. Its key
  ends in ``.gz``, its ``Content-Type`` is ``application/gzip`` and it has no
  ``Content-Encoding``: a client never decompresses it behind the user's back, and what
  ``aws s3 cp`` brings down is what pgbadger reads (``pgbadger -f csv x.csv.gz``).
* ``none`` (the default): the object holds the log's bytes as they are.

Checksums: S3 computes a checksum of the bytes it receives and refuses the write (``BadDigest``)
when it differs from the one the request carries. A single PutObject carries the SHA-256 of the
object; a multipart upload carries the SHA-256 of every part, and S3 keeps their composite
(``ChecksumType=COMPOSITE``: the SHA-256 of the parts' digests, ``-<parts>``; S3 offers no
full-object SHA-256 for multipart). Manifests written before 2026-12-04 may hold a full-object
``CRC32`` of a multipart object instead: it is compared the same way. The checksum S3 stored
comes back from ``HeadObject(ChecksumMode=ENABLED)`` as ``<ALGO>:<base64>``.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import zlib
from collections.abc import AsyncIterator, Iterator

from rdsrecorder.models import MIB

GZIP_LEVEL = 6  # zlib's default: see docs/benchmarks.md, "Compression", for the measured trade-off
GZIP_WBITS = 31  # a gzip header and trailer around the deflate stream
DECOMPRESS_CHUNK_BYTES = MIB  # bounds the memory of reading back an object whatever its ratio


class Compression(enum.StrEnum):
    NONE = "none"
    GZIP = "gzip"

    @property
    def suffix(self) -> str:
        """What the object's key gets appended."""
        return ".gz" if self is Compression.GZIP else ""


def compression_of(name: str) -> Compression:
    """The compression a stored object (or a manifest's ``compression`` field) names."""
    return Compression.GZIP if name in ("gzip", "gz") or name.endswith(".gz") else Compression.NONE


class Gzipper:
    """Compresses a stream chunk by chunk; ``flush`` ends it."""

    def __init__(self, level: int = GZIP_LEVEL) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, GZIP_WBITS)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush()


class Gunzipper:
    """Decompresses one gzip stream in bounded pieces; raises ``ValueError`` on bad data."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(GZIP_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            out = self._z.decompress(data, DECOMPRESS_CHUNK_BYTES)
            while True:
                if out:
                    yield out
                if not self._z.unconsumed_tail:
                    return
                out = self._z.decompress(self._z.unconsumed_tail, DECOMPRESS_CHUNK_BYTES)
        except zlib.error as exc:
            raise ValueError(f"not a valid gzip stream: {exc}") from exc

    def end(self) -> bytes:
        try:
            rest = self._z.flush()
        except zlib.error as exc:
            raise ValueError(f"not a valid gzip stream: {exc}") from exc
        if not self._z.eof:
            raise ValueError("the gzip stream is cut short")
        if self._z.unused_data:
            raise ValueError("bytes after the end of the gzip stream")
        return rest


async def decompressed(
    chunks: AsyncIterator[bytes], compression: Compression
) -> AsyncIterator[bytes]:
    """The original bytes of a stored object's chunks."""
    if compression is Compression.NONE:
        async for chunk in chunks:
            yield chunk
        return
    gunzip = Gunzipper()
    async for chunk in chunks:
        for out in gunzip.feed(chunk):
            yield out
    rest = gunzip.end()
    if rest:
        yield rest


def composite_sha256_b64(part_digests_b64: list[str]) -> str:
    """The checksum S3 keeps for a multipart upload with SHA-256 part checksums
    (``ChecksumType=COMPOSITE``): the SHA-256 of the parts' digests, then ``-<number of parts>``."""
    joined = b"".join(base64.b64decode(d) for d in part_digests_b64)
    return f"{sha256_b64(hashlib.sha256(joined).digest())}-{len(part_digests_b64)}"


def sha256_b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def checksum(algorithm: str, b64: str) -> str:
    """The one form checksums take in the manifest and in reports: ``SHA256:<base64>``."""
    return f"{algorithm}:{b64}"


def same_checksum(a: str, b: str) -> bool:
    """Whether two checksums in that form are the same. A composite one may come without its
    ``-<parts>`` suffix (moto's HEAD): the digest covers every part's, so the count adds nothing."""

    def digest(value: str) -> str:
        head, dash, count = value.rpartition("-")
        return head if dash and count.isdigit() else value

    return digest(a) == digest(b)
