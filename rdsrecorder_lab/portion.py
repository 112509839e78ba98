"""How the lab's DownloadDBLogFilePortion cuts a log file into portions (file reading, no HTTP).

What is emulated, and the choices made where AWS documents nothing precise:

* ``Marker="0"`` starts at the beginning of the file. Later markers look like ``"<n>:<offset>"``
  (as observed on RDS): ``offset`` is the byte offset just past the returned lines; ``n`` is opaque
  (the lab puts a per-file number there and ignores it on input).
* ``NumberOfLines`` defaults to, and may not exceed, 10,000 (``MAX_LINES_PER_PORTION``). A "line"
  ends with ``\\n``: a csvlog record holding a multi-line statement counts as several lines, and a
  portion boundary can split a record.
* At most ``MAX_PORTION_BYTES`` = 1,048,576 bytes (1 MiB) of LogFileData per call (AWS says
  "1 MB"; observed markers and Content-Length point to 1 MiB). When the requested lines are
  longer, the data is cut (at a UTF-8 character boundary) and ``"\\n [Your log message was
  truncated]\\n"`` is appended (the notice on its own line), the whole staying within the limit.
  The returned marker still moves past *all* requested lines, so the rest of the line at the cut,
  and the lines after it, are lost unless the caller asks again from the same marker with fewer
  lines. A single line longer than the limit is always cut and its tail is lost.
* The file is read live: a file that grows is read up to its current end, and
  ``AdditionalDataPending`` is true while the file is longer than the returned marker's offset.
  A last line without its ``\\n`` (a record being written) is returned as is; an incomplete UTF-8
  sequence at the very end is held back until the rest of it is written.
* Without a Marker, the *last* ``NumberOfLines`` lines are returned (the tail), with a marker at
  their end and ``AdditionalDataPending`` false.
* LogFileData travels as XML text, so it must be UTF-8 without the control characters XML 1.0
  forbids. A portion that is not (NUL bytes, invalid UTF-8 ...) is answered the way RDS answers
  binary files: ``InvalidParameterValue`` "This file contains binary data and should be
  downloaded instead of viewed." (``BinaryDataError`` here). ``\\r`` is sent as ``&#13;`` because
  XML parsers turn a bare ``\\r`` into ``\\n``; with that, text round-trips byte-exact through
  botocore's parser.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

MAX_LINES_PER_PORTION = 10_000
MAX_PORTION_BYTES = 1 << 20
TRUNCATION_NOTICE = "[Your log message was truncated]"
TRUNCATION_SUFFIX = b"\n " + TRUNCATION_NOTICE.encode() + b"\n"
BINARY_DATA_MESSAGE = "This file contains binary data and should be downloaded instead of viewed."

# Memory per portion call: the requested lines (normally <= ~1 MB) plus one read chunk; a single
# huge line is read whole, because the marker has to move past it.
_READ_CHUNK_BYTES = 1 << 20
_MARKER_RE = re.compile(r"^(\d{1,9}):(\d{1,19})$")
# The control characters XML 1.0 cannot carry (U+FFFE and U+FFFF are looked for apart).
_XML_INVALID_BYTES = bytes(range(0x09)) + b"\x0b\x0c" + bytes(range(0x0E, 0x20))
_XML_ESCAPES = ((b"&", b"&amp;"), (b"<", b"&lt;"), (b">", b"&gt;"), (b"\r", b"&#13;"))


class MarkerError(ValueError):
    """The Marker parameter is not "0" nor "<n>:<offset>"."""


class BinaryDataError(Exception):
    """The data cannot travel as XML text: RDS calls such files binary."""


@dataclass(frozen=True, slots=True)
class Portion:
    data: bytes  # LogFileData as UTF-8 bytes (truncation notice included)
    start_offset: int
    next_offset: int  # byte offset the returned marker points at
    pending: bool  # AdditionalDataPending
    truncated: bool  # the requested lines did not fit and were cut


def parse_marker(marker: str) -> int:
    """Byte offset a marker points at."""
    if marker == "0":
        return 0
    match = _MARKER_RE.match(marker)
    if match is None:
        raise MarkerError(f"Invalid marker: {marker!r}")
    return int(match.group(2))


def format_marker(log_file_name: str, offset: int) -> str:
    return f"{file_number(log_file_name)}:{offset}"


def file_number(log_file_name: str) -> int:
    """The opaque first half of a marker: stable per file name, small like the real ones."""
    return zlib.crc32(log_file_name.encode()) % 100


def read_portion(
    path: Path, offset: int, lines: int, *, limit_bytes: int = MAX_PORTION_BYTES
) -> Portion:
    """Up to ``lines`` lines from ``offset``, cut to ``limit_bytes`` like RDS does."""
    with path.open("rb") as f:
        f.seek(offset)
        chunks: list[bytes] = []
        found = 0
        while found < lines:
            chunk = f.read(_READ_CHUNK_BYTES)
            if not chunk:
                break
            need = lines - found
            if chunk.count(b"\n") >= need:
                pos = -1
                for _ in range(need):
                    pos = chunk.index(b"\n", pos + 1)
                chunks.append(chunk[: pos + 1])
                found = lines
                break
            chunks.append(chunk)
            found += chunk.count(b"\n")
        block = b"".join(chunks)
        if found < lines:
            block = block[: _complete_utf8_length(block)]
        size_now = os.fstat(f.fileno()).st_size
    end = offset + len(block)
    data, truncated = _cut(block, limit_bytes)
    return Portion(data, offset, end, end < size_now, truncated)


def read_tail(path: Path, lines: int, *, limit_bytes: int = MAX_PORTION_BYTES) -> Portion:
    """The last ``lines`` lines of the file (the API's answer when no Marker is given)."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = size
        buf = b""
        # Enough newlines before the final byte (which may end the last line) mark the start.
        while pos > 0 and buf.count(b"\n", 0, max(len(buf) - 1, 0)) < lines:
            step = min(_READ_CHUNK_BYTES, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
    start = 0
    search_end = max(len(buf) - 1, 0)
    for _ in range(lines):
        newline = buf.rfind(b"\n", 0, search_end)
        if newline < 0:
            start = 0
            break
        start = newline + 1
        search_end = newline
    block = buf[start:]
    block = block[: _complete_utf8_length(block)]
    offset = pos + start
    end = offset + len(block)
    data, truncated = _cut(block, limit_bytes)
    return Portion(data, offset, end, False, truncated)


def to_xml_text(data: bytes) -> str:
    """LogFileData as escaped XML text; BinaryDataError if XML cannot carry it (not UTF-8, or a
    character XML 1.0 forbids). Done on bytes, where each step is one C pass over a megabyte
    (about 2 ms a MB here, against 12 ms on a str): the lab answers many portions at once and
    its own work must not be what a copier waits for."""
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BinaryDataError(BINARY_DATA_MESSAGE) from exc
        if _has_noncharacter(data):
            raise BinaryDataError(BINARY_DATA_MESSAGE)
    if len(data.translate(None, _XML_INVALID_BYTES)) != len(data):
        raise BinaryDataError(BINARY_DATA_MESSAGE)
    return xml_escape(data).decode("utf-8")


def xml_escape(data: bytes) -> bytes:
    for char, entity in _XML_ESCAPES:
        if char in data:
            data = data.replace(char, entity)
    return data


def _has_noncharacter(data: bytes) -> bool:
    """U+FFFE or U+FFFF (UTF-8 EF BF BE / EF BF BF) in valid UTF-8."""
    pos = data.find(b"\xef\xbf")
    while pos >= 0:
        if data[pos + 2 : pos + 3] in (b"\xbe", b"\xbf"):
            return True
        pos = data.find(b"\xef\xbf", pos + 1)
    return False


def _cut(block: bytes, limit_bytes: int) -> tuple[bytes, bool]:
    if len(block) <= limit_bytes:
        return block, False
    cut = max(limit_bytes - len(TRUNCATION_SUFFIX), 0)
    while cut > 0 and block[cut] & 0xC0 == 0x80:
        cut -= 1
    return block[:cut] + TRUNCATION_SUFFIX, True


def _complete_utf8_length(data: bytes) -> int:
    """Length of ``data`` without an incomplete UTF-8 sequence at its end."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte & 0xC0 == 0x80:
            continue  # continuation byte: keep looking for the lead byte
        if byte < 0xC0 or byte >= 0xF8:
            return n  # ASCII or not UTF-8 at all: nothing to hold back
        width = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return n if back >= width else n - back
    return n


def read_overlap(path: Path, offset: int, nbytes: int) -> bytes:
    """The ``nbytes`` before ``offset`` (fewer at the start of the file), from a character
    boundary: what a page that overlaps the previous one repeats."""
    start = max(0, offset - nbytes)
    with path.open("rb") as f:
        f.seek(start)
        data = f.read(offset - start)
    skip = 0
    while skip < len(data) and data[skip] & 0xC0 == 0x80:
        skip += 1
    return data[skip:]
