"""What the uploader may do: S3's limits (defined here and nowhere else), the defaults, and the
part size a file gets (``part_size_for``, ``grown_part_size``). ``rdsrecorder.config`` only fills
an ``UploadConfig`` from the options; the design: docs/design-uploads.md."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rdsrecorder.models import MIB

# -- S3's limits ----------------------------------------------------------------------------------
MIN_PART_BYTES = 5 * MIB  # every part but the last
MAX_PART_BYTES = 5 * 1024 * MIB
MAX_PARTS = 10_000
MAX_PUT_BYTES = 5 * 1024 * MIB  # the largest object one PutObject takes

# -- defaults -------------------------------------------------------------------------------------
# Memory per file in flight: a part fills while the one before it uploads, so a file holds at
# most two parts:
#   parts in memory (--spool-dir memory):  2 x part_size_bytes
#   spooled (the default):                 one download chunk; on disk (page cache)
#                                          max(part_size_bytes, single_put_max_bytes)
#                                          + part_size_bytes
# and the run holds --concurrency files in flight (docs/design-uploads.md, "Memory").
DEFAULT_PART_SIZE_BYTES = MIN_PART_BYTES
# A file that ends within this many bytes goes in one PutObject, a larger one multipart.
DEFAULT_SINGLE_PUT_MAX_BYTES = MIN_PART_BYTES
# The current file keeps growing after it was listed: its part size leaves it this much room.
GROWTH_HEADROOM = 1.25
GROW_AFTER_PARTS = 4_000  # a file past this many parts outgrew its estimate ...
GROW_EVERY_PARTS = 500  # ... and from then on its part size doubles this often


class StorageClass(enum.StrEnum):
    """The S3 storage classes a log object may go to (minimums and costs: docs/bucket.md)."""

    STANDARD = "STANDARD"
    STANDARD_IA = "STANDARD_IA"
    INTELLIGENT_TIERING = "INTELLIGENT_TIERING"
    GLACIER_IR = "GLACIER_IR"


@dataclass(frozen=True, slots=True)
class UploadConfig:
    """The uploader's settings, checked by ``rdsrecorder.config`` against the limits above."""

    part_size_bytes: int = DEFAULT_PART_SIZE_BYTES
    single_put_max_bytes: int = DEFAULT_SINGLE_PUT_MAX_BYTES
    storage_class: StorageClass = StorageClass.STANDARD


def _round_up_mib(n: int) -> int:
    return -(-n // MIB) * MIB


def part_size_for(size_hint_bytes: int | None, part_size_bytes: int) -> int:
    """The part size of a file listed at ``size_hint_bytes`` (None or 0: unknown): the configured
    one kept within S3's 5 MiB - 5 GiB, grown to whole MiB so that the listed size plus its
    growth headroom fits in 10,000 parts."""
    part = max(MIN_PART_BYTES, part_size_bytes)
    if size_hint_bytes:
        needed = -(-int(size_hint_bytes * GROWTH_HEADROOM) // MAX_PARTS)
        part = max(part, _round_up_mib(needed))
    return min(part, MAX_PART_BYTES)


def grown_part_size(part_bytes: int, parts_done: int) -> int:
    """The size of part ``parts_done + 1`` of a file that outgrew its estimate: doubled after part
    4,000, 4,500, 5,000 ... (at most 5 GiB). From 5 MiB parts, 10,000 parts then hold over
    9 TiB, more than the 5 TiB S3 keeps in one object."""
    since = parts_done - GROW_AFTER_PARTS
    if since >= 0 and since % GROW_EVERY_PARTS == 0:
        return min(MAX_PART_BYTES, part_bytes * 2)
    return part_bytes
