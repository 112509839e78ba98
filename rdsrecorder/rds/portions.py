"""What a DownloadDBLogFilePortion answer says, and how many lines to ask for next: pure logic,
no I/O (``rds.download`` makes the calls). The design is in docs/design-portions.md.

* **Cuts.** RDS cuts an answer whose lines exceed its cap and appends the notice on its own line
  (``"\\n [Your log message was truncated]\\n"``), and its marker still moves past every line asked
  for. So an answer is cut only when it ends with that notice *and* its markers span more bytes
  than it carries (the skipped rest); the same text anywhere else, or at the end of an answer
  whose markers span exactly its bytes, is a logged statement: data. When the markers are not
  byte offsets, an answer is cut only when it ends with the notice at the cap's length.
* **The cap** is learnt, never assumed: a cut answer is as long as the cap (a UTF-8 character
  may shorten it by up to 3 bytes), and a full answer proves the cap is at least its length.
  Until a cut has been seen, the plan assumes the larger of the caps reported (1 MiB): if the
  API's cap is smaller, the first cut says so at the cost of one call.
* **Sizing.** The bytes left by the listed size are spread evenly over the fewest calls that
  stay ``margin`` under the cap (the last one may go up to the cap: it cannot carry more than
  the rest); the lines asked for are those bytes divided by the bytes per line of the file's
  previous portion. The margin follows how well those predictions have held (``LineModel``). A
  cut is asked again from the same marker for exactly the complete lines it carried, which fit
  by construction: a cut costs one call, never a series of shrinking ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TRUNCATION_NOTICE = "[Your log message was truncated]"
NOTICE_SUFFIX = b"\n " + TRUNCATION_NOTICE.encode() + b"\n"
MAX_LINES = 10_000  # the API's limit (and default) for NumberOfLines
# The caps reported for the API: AWS documents "up to 1 MB", users observe 1 MiB.
DOCUMENTED_CAP_BYTES = 1_000_000
OBSERVED_CAP_BYTES = 1_048_576
CUT_SHORTFALL_BYTES = 4  # a cut answer may end up to a UTF-8 character short of the cap
# The room kept under the cap: MARGIN_SIGMAS x the RMS of recent prediction errors, within
# [MIN_MARGIN, MAX_MARGIN]; lines within a file predict its next portion to about 1 %, a file's
# first call (other files' lines) to a few per cent.
MARGIN_SIGMAS = 3.0
MIN_MARGIN = 0.01
MAX_MARGIN = 0.12
INITIAL_WITHIN_ERROR = 0.01
INITIAL_ACROSS_ERROR = 0.04
ERROR_DECAY = 0.9
LAST_CALL_FACTOR = 1.25  # the last call asks for more lines than the rest needs
LAST_CALL_ROOM_BYTES = 4096  # what the last call leaves under the cap (a UTF-8 char, a line)
WHOLE_FILE_HINT = (
    "the whole-file download recovers it when IAM allows rds:DownloadCompleteDBLogFile"
)
# The guard against an API that stops making progress: calls a file may cost, by its size.
GUARD_BYTES_PER_CALL = 64 * 1024
GUARD_EXTRA_CALLS = 8


def marker_offset(marker: str) -> int | None:
    """The byte offset a portion marker points at (``"0"`` or ``"<n>:<offset>"``), if readable."""
    if marker == "0":
        return 0
    head, sep, tail = marker.rpartition(":")
    if not sep or not head or not tail.isdigit():
        return None
    return int(tail)


def span_of(marker: str, next_marker: str) -> int | None:
    """The bytes of the file between two markers, when both are byte offsets."""
    start, end = marker_offset(marker), marker_offset(next_marker)
    if start is None or end is None or end < start:
        return None
    return end - start


def max_calls_for(size_bytes: int) -> int:
    """The most calls one file may cost: a call that is not cut brings at least its lines (at
    least ``GUARD_BYTES_PER_CALL`` unless lines are under 7 bytes on average), and a cut is asked
    again once; so no content, and no stuck API, makes a file cost more than this."""
    return 2 * (size_bytes // GUARD_BYTES_PER_CALL) + GUARD_EXTRA_CALLS


class PortionCap:
    """The API's cap on the bytes of one answer, learnt from the answers (one per process: the
    cap is the API's, not a DB's)."""

    def __init__(self) -> None:
        self.cut_bytes = 0  # the longest cut answer seen (0: none yet)
        self.full_bytes = 0  # the longest answer that was not cut

    @property
    def known(self) -> bool:
        return self.cut_bytes > 0

    @property
    def bytes(self) -> int:
        """The cap as far as the answers tell."""
        if self.cut_bytes:
            return max(self.cut_bytes + CUT_SHORTFALL_BYTES - 1, self.full_bytes)
        return max(OBSERVED_CAP_BYTES, self.full_bytes)

    def at_cap(self, length: int) -> bool:
        """An answer this long stopped at the cap (used only when the markers say nothing)."""
        floor = self.cut_bytes if self.cut_bytes else DOCUMENTED_CAP_BYTES
        return length >= floor - CUT_SHORTFALL_BYTES

    def answered(self, length: int, cut: bool) -> None:
        if cut:
            self.cut_bytes = max(self.cut_bytes, length)
        else:
            self.full_bytes = max(self.full_bytes, length)


def is_cut(data: bytes, span: int | None, cap: PortionCap) -> bool:
    """Whether RDS cut this answer (see the module doc). ``span``: the bytes between the markers
    it was asked from and returned (None when they are not byte offsets)."""
    if not data.endswith(NOTICE_SUFFIX):
        return False
    if span is not None and span > len(data):
        return True  # the marker skipped bytes it did not return: cut
    if span is not None and span == len(data):
        return False  # every byte came: a statement that quotes the notice
    # Markers that say nothing, or a page that repeats the previous one's end (aws-cli #10319).
    return cap.at_cap(len(data))


def complete_lines(cut_data: bytes) -> int:
    """The lines a cut answer carried whole: asked again for exactly these, it is not cut."""
    return cut_data[: len(cut_data) - len(NOTICE_SUFFIX)].count(b"\n")


@dataclass(slots=True)
class LineModel:
    """How well "lines x bytes per line" predicts an answer's bytes on one DB instance, kept
    apart for the two kinds of prediction: within a file (from the file's previous portion: close)
    and a file's first call (from other files' lines: files differ more). Each keeps a decaying
    RMS of its relative errors; the margin under the cap is ``MARGIN_SIGMAS`` of it, so uniform
    logs are read close to the cap and uneven ones keep more room instead of being cut."""

    within: float = INITIAL_WITHIN_ERROR
    across: float = INITIAL_ACROSS_ERROR
    # Bytes and lines of recent portions (decaying), weighted by bytes: small pages, as at a
    # file's end, count little.
    _bytes: float = 0.0
    _lines: float = 0.0

    @property
    def bytes_per_line(self) -> float:
        """0.0 while nothing is known."""
        return self._bytes / self._lines if self._lines else 0.0

    @property
    def margin(self) -> float:
        """The room kept under the cap by a call sized from the file's own lines."""
        return _margin(self.within)

    @property
    def first_margin(self) -> float:
        """The room a file's first call would want (sized from other files' lines)."""
        return _margin(self.across)

    def predicted(self, predicted_bytes: float, actual_bytes: int, *, first: bool = False) -> None:
        """An answer of every line asked for (or a cut one, with the bytes its markers span)."""
        if predicted_bytes <= 0:
            return
        error = min(abs(actual_bytes / predicted_bytes - 1), 1.0)
        if first:
            self.across = _decayed_rms(self.across, error)
        else:
            self.within = _decayed_rms(self.within, error)

    def seen(self, size: int, newlines: int) -> None:
        if newlines:
            self._bytes = 0.7 * self._bytes + size
            self._lines = 0.7 * self._lines + newlines


def _decayed_rms(rms: float, error: float) -> float:
    return math.sqrt(ERROR_DECAY * rms * rms + (1 - ERROR_DECAY) * error * error)


def _margin(rms: float) -> float:
    return min(MAX_MARGIN, max(MIN_MARGIN, MARGIN_SIGMAS * rms))


def plan_bytes(cap_bytes: int, margin: float) -> float:
    """The most one planned call aims at."""
    return cap_bytes * (1 - margin)


def target_bytes(
    remaining: int,
    cap_bytes: int,
    margin: float,
    bytes_per_line: float,
    *,
    first_margin: float | None = None,
) -> float:
    """The bytes the next call should carry for a file with ``remaining`` bytes left by its
    listed size: the rest spread evenly over the fewest calls that stay ``margin`` under the cap,
    but for the last one, which may carry up to the cap (it cannot carry more than the rest of
    the file, so it asks for more lines than the rest needs, to be sure the end comes in it).
    ``first_margin``: a file's first call, sized from other files' lines, wants this much room;
    it gets it as far as that costs the file no call (a cut costs one call, a call more one for
    sure)."""
    most = plan_bytes(cap_bytes, margin)
    if remaining <= 0:  # past the listed size: a file still being written
        return most
    last = cap_bytes - LAST_CALL_ROOM_BYTES
    if remaining <= last:
        # At most the rest comes (a growing file may have more: room for 2 margins of error).
        enough = remaining * (1 + 2 * margin) + 10 * bytes_per_line
        return min(remaining * LAST_CALL_FACTOR + 10 * bytes_per_line, max(most, enough))
    calls_left = 1 + math.ceil((remaining - last) / most)
    even = min(remaining / calls_left, most)
    if first_margin is None:
        return even
    needed = remaining - (calls_left - 2) * most - last  # less, and the file costs a call more
    return max(needed, min(even, plan_bytes(cap_bytes, first_margin)))


def lines_for(target: float, bytes_per_line: float) -> int:
    return max(1, min(MAX_LINES, int(target / max(bytes_per_line, 1.0))))
