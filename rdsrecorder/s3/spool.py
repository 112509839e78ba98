"""Where a part waits while it fills and while it uploads: an anonymous temporary file in a spool
directory (unlinked at creation, so nothing is left behind on any exit; the kernel's page cache
holds the bytes, not the process), or, with no directory, memory.

Standard library only: the config probes a ``--spool-dir`` with ``spool_dir_usable`` without
importing the uploader.

A filled part is a ``PartBody``: its size, its SHA-256, and ``open()``, which gives its bytes from
the start for each attempt of the request that sends it (a retry resends the whole part; nothing
depends on where the previous attempt stopped reading)."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import tempfile

log = logging.getLogger(__name__)

SPOOL_IN_MEMORY = "memory"  # the ``--spool-dir`` value that keeps parts in memory


def default_spool_dir() -> str:
    return tempfile.gettempdir()


def _new_spool_file(spool_dir: str) -> io.FileIO:
    fd, path = tempfile.mkstemp(prefix="rdsrecorder-part-", dir=spool_dir)
    try:
        os.unlink(path)
        return io.FileIO(fd, "r+b", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def spool_dir_usable(spool_dir: str) -> str | None:
    """None if anonymous part files can be made in ``spool_dir``, else why not (one line)."""
    try:
        with _new_spool_file(spool_dir) as probe:
            probe.write(b"rdsrecorder")
    except OSError as exc:
        return f"{spool_dir}: {exc.strerror or exc}"
    return None


class PartBody:
    """A filled part, owned by the request that sends it (which closes it)."""

    def __init__(self, size: int, sha256: bytes) -> None:
        self.size = size
        self.sha256 = sha256  # digest of the part's bytes, computed as they arrived

    def open(self) -> io.BytesIO | io.FileIO:
        """The part's bytes from their start: called once per attempt."""
        raise NotImplementedError

    def close(self) -> None:
        """Releases the bytes (idempotent)."""


class MemoryBody(PartBody):
    """A part in memory, in a ``BytesIO`` that is the only owner of its bytes: ``close`` frees
    them at once, even while the HTTP layer still holds a reference to the body (and aiohttp
    sends a ``BytesIO`` without copying it, unlike a ``bytearray``)."""

    def __init__(self, data: bytes, sha256: bytes) -> None:
        super().__init__(len(data), sha256)
        self._buffer = io.BytesIO(data)

    def open(self) -> io.BytesIO:
        self._buffer.seek(0)
        return self._buffer

    def close(self) -> None:
        self._buffer.close()


class FileBody(PartBody):
    def __init__(self, file: io.FileIO, size: int, sha256: bytes) -> None:
        super().__init__(size, sha256)
        self._file = file

    def open(self) -> io.FileIO:
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        self._file.close()


class SpoolPart:
    """The bytes of one part while it fills: written to an anonymous file as they arrive
    (``spool_dir``), or kept as chunks and joined once when the part is filled (None). A spool
    that fails (disk full, directory gone) does not fail the upload: the part goes on in memory,
    with a warning. ``OSError`` only when bytes already written cannot be read back."""

    def __init__(self, spool_dir: str | None, target: str) -> None:
        self._pieces: list[bytes | memoryview] = []
        self._file: io.FileIO | None = None
        self._target = target
        self.size = 0
        self._sha256 = hashlib.sha256()
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

    def _to_memory(self, exc: OSError) -> None:
        """Moves what the spool file holds so far into memory."""
        spool, self._file = self._file, None
        assert spool is not None
        try:
            spool.seek(0)
            data = spool.read(self.size) if self.size else b""
        finally:
            spool.close()
        if data is None or len(data) != self.size:
            raise OSError(errno.EIO, f"the spool lost bytes ({exc.strerror or exc})") from exc
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
        """The filled part; the caller owns (and closes) it from now on."""
        digest = self._sha256.digest()
        if self._file is not None:
            file, self._file = self._file, None
            return FileBody(file, self.size, digest)
        data = b"".join(self._pieces)
        self._pieces.clear()
        return MemoryBody(data, digest)

    def close(self) -> None:
        self._pieces.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
