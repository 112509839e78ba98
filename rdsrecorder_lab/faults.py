"""Fault knobs of the lab's RDS emulator.

A ``Faults`` value is immutable; the emulator swaps the whole value when it changes (at start, with
``Lab.set_faults(...)``, or ``POST /_lab/faults``), so a request always sees one consistent set.

Knobs (what they apply to in brackets; "RDS calls" = RDS query calls + complete-file requests):

latency_ms          Sleep this long before answering. [every RDS/STS call]
throttle_every_n    Every Nth RDS call answers HTTP 400 ``Throttling`` "Rate exceeded" (0: never).
                    [RDS calls]
account_burst       Size of the account's token bucket (0: no bucket). Real AWS: 300. Each RDS
                    call takes a token; with none left it answers HTTP 400 ``Throttling`` "Rate
                    exceeded" (the call is not served). The bucket starts full whenever the
                    faults are set. [RDS calls]
account_refill_per_s  Tokens added back per second, up to ``account_burst``. Real AWS: ~12.
expired_access_keys  Access keys whose credentials have expired: a request signed with one answers
                    HTTP 403 ``ExpiredToken``, as AWS does when temporary credentials run out
                    or a rotated key is still in use. [every RDS/STS call]
error_rate          This fraction of calls answers HTTP 500 ``InternalFailure``. [RDS calls]
reset_rate          This fraction of responses is cut: part of the body is sent, then the TCP
                    connection is closed. [DownloadDBLogFilePortion, complete-file streams]
list_error          ``DescribeDBLogFiles`` fails: "AccessDenied" (HTTP 403, as without
                    ``rds:DescribeDBLogFiles``), "InternalFailure" (HTTP 500, on every call) or
                    "DBInstanceNotFound" (HTTP 404). None: no error. [DescribeDBLogFiles]
list_error_instances  Instances ``list_error`` applies to (empty: all).
stuck_marker_files  Files whose marker stops advancing after the first portion: every later call
                    returns the Marker it was given (and that portion's data again) with
                    AdditionalDataPending=true. [DownloadDBLogFilePortion]
binary_files        Files for which the portion API answers HTTP 400 ``InvalidParameterValue``
                    "This file contains binary data and should be downloaded instead of viewed.",
                    which is what RDS answers for such files; the complete-file endpoint still
                    serves them. [DownloadDBLogFilePortion]
early_eof_files     Files whose portion answers say ``AdditionalDataPending=false`` in the middle
                    of the file (aws-cli #2268, #3079): the portion that carries the byte at
                    offset ``early_eof_after_bytes`` says false although the file goes on. Its
                    Marker is right: asking again from it returns the rest, as on RDS. Every
                    download that passes that offset sees it. [DownloadDBLogFilePortion]
early_eof_after_bytes  Offset of the false end (0: the first portion). With ``early_eof_files``
                    empty and this > 0, it applies to every file.
overlap_bytes       Each portion asked for with a Marker other than "0" starts this many bytes
                    before the marker's offset (moved forward to a UTF-8 character boundary),
                    so pages repeat content at their boundaries (aws-cli #10319); the returned
                    Marker is unchanged. [DownloadDBLogFilePortion]
portion_max_bytes   The most LogFileData one portion carries (default 1,048,576: 1 MiB, as users
                    observe; AWS documents "up to 1 MB", so 1,000,000 is the other cap to try).
                    Longer answers are cut there and end with the truncation notice. At least
                    4096. [DownloadDBLogFilePortion]
portion_ms_per_mb   Added latency per megabyte (10^6 bytes) of LogFileData returned, on top of
                    ``latency_ms``: a 1 MB portion takes that much longer than an empty one, as
                    on RDS. [DownloadDBLogFilePortion]
complete_endpoint   False: the complete-file endpoint answers 403 ``AccessDenied``, as when the
                    IAM policy lacks ``rds:DownloadCompleteDBLogFile``. [complete-file requests]
short_body_files    Files whose complete-file stream ends cleanly (a valid chunked, and gzip,
                    end) after ``short_body_fraction`` of the file: a proxy or server closing
                    early; nothing in the HTTP exchange says that data is missing.
                    [complete-file streams]
short_body_fraction  Fraction of the file sent before that clean end (0 to 1; default 0.5).
bandwidth_mbps      Cap on log-data throughput in megabits per second, shared by all connections
                    (None: no cap). [portion and complete-file bodies]
stream_mbps         Cap on each complete-file stream's throughput, in megabits per second, on
                    its own: two streams each get this rate (None: no cap). Applies on top of
                    ``bandwidth_mbps``. [complete-file bodies]
gzip_level          zlib level of the complete-file endpoint's gzip (1-9; 1 by default, the fast
                    level servers use to compress on the fly). The real server compresses on AWS's
                    machines; the lab does it on yours, so a higher level mostly measures the lab.
                    [complete-file responses, when the client accepts gzip]
clock_offset_s      How far the lab's AWS clock is ahead of the host's, in seconds (negative:
                    behind; AWS accepts signatures up to 15 minutes off, so a host that far off
                    still works). The ``Date`` header of every answer, each ``LastWritten``
                    (the file's mtime plus the offset; ``FileLastWritten`` compares with that),
                    snapshot times and the SigV4 check are on the lab's clock. Log file names
                    are whatever the files are called: a DB on the lab's clock names them on it.
                    The lab's S3 server keeps the host's clock. [every RDS/STS answer]
seed                Seed of the RNG behind error_rate and reset_rate. The RNG, the throttle
                    counter and the token bucket restart whenever the faults are set, so a run
                    is reproducible from that point.

A file in ``stuck_marker_files`` / ``binary_files`` / ``early_eof_files`` / ``short_body_files``
is named by its LogFileName (``error/postgresql.log.2024-03-04-19.csv``) or by
``<instance>/<LogFileName>``. An instance in ``list_error_instances`` is named by its identifier
(case-insensitive).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MIN_PORTION_MAX_BYTES = 4096
LIST_ERRORS = ("AccessDenied", "InternalFailure", "DBInstanceNotFound")
_NAME_LISTS = (
    "stuck_marker_files",
    "binary_files",
    "early_eof_files",
    "short_body_files",
    "list_error_instances",
    "expired_access_keys",
)


@dataclass(frozen=True, slots=True)
class Faults:
    latency_ms: float = 0.0
    throttle_every_n: int = 0
    account_burst: int = 0
    account_refill_per_s: float = 12.0
    expired_access_keys: tuple[str, ...] = ()
    error_rate: float = 0.0
    reset_rate: float = 0.0
    list_error: str | None = None
    list_error_instances: tuple[str, ...] = ()
    stuck_marker_files: tuple[str, ...] = ()
    binary_files: tuple[str, ...] = ()
    early_eof_files: tuple[str, ...] = ()
    early_eof_after_bytes: int = 0
    overlap_bytes: int = 0
    portion_max_bytes: int = 1 << 20
    portion_ms_per_mb: float = 0.0
    complete_endpoint: bool = True
    short_body_files: tuple[str, ...] = ()
    short_body_fraction: float = 0.5
    bandwidth_mbps: float | None = None
    stream_mbps: float | None = None
    gzip_level: int = 1
    clock_offset_s: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        # Lists are accepted (JSON has no tuples); stored as tuples so that Faults stays hashable.
        for name in _NAME_LISTS:
            object.__setattr__(self, name, _names(getattr(self, name)))
        self._check_numbers()
        if self.list_error is not None and self.list_error not in LIST_ERRORS:
            raise ValueError(f"list_error must be one of {', '.join(LIST_ERRORS)} (or null)")
        if not isinstance(self.complete_endpoint, bool):
            raise ValueError("complete_endpoint must be true or false")
        if (
            isinstance(self.gzip_level, bool)
            or not isinstance(self.gzip_level, int)
            or not 1 <= self.gzip_level <= 9
        ):
            raise ValueError("gzip_level must be an integer from 1 to 9")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError("seed must be an integer")

    def _check_numbers(self) -> None:
        if not _finite(self.clock_offset_s):
            raise ValueError("clock_offset_s must be a number")
        for name in ("latency_ms", "portion_ms_per_mb"):
            if not _finite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a number >= 0")
        for name in ("throttle_every_n", "account_burst", "early_eof_after_bytes", "overlap_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer")
            if value < 0:
                raise ValueError(f"{name} must be >= 0")
        self._check_cap()
        if not _finite(self.account_refill_per_s) or self.account_refill_per_s <= 0:
            raise ValueError("account_refill_per_s must be a number > 0")
        for name in ("error_rate", "reset_rate", "short_body_fraction"):
            value = getattr(self, name)
            if not _finite(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number between 0 and 1")
        for name in ("bandwidth_mbps", "stream_mbps"):
            value = getattr(self, name)
            if value is not None and (not _finite(value) or value <= 0):
                raise ValueError(f"{name} must be a number > 0 (or null for no cap)")

    def _check_cap(self) -> None:
        cap = self.portion_max_bytes
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < MIN_PORTION_MAX_BYTES:
            raise ValueError(f"portion_max_bytes must be an integer >= {MIN_PORTION_MAX_BYTES}")
        if self.overlap_bytes >= cap:
            raise ValueError("overlap_bytes must be smaller than portion_max_bytes")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Faults:
        """Build from JSON-like data; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault knob(s): {', '.join(unknown)}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    def replace(self, **changes: Any) -> Faults:
        return self.from_mapping({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in _NAME_LISTS:
            out[name] = list(getattr(self, name))
        return out

    def names_file(self, names: tuple[str, ...], instance: str, log_file_name: str) -> bool:
        return log_file_name in names or f"{instance}/{log_file_name}" in names

    def early_eof_at(self, instance: str, log_file_name: str) -> int | None:
        """Offset of the false end of this file, or None when it has none."""
        if self.early_eof_files:
            named = self.names_file(self.early_eof_files, instance, log_file_name)
            return self.early_eof_after_bytes if named else None
        return self.early_eof_after_bytes or None

    def list_fails(self, instance: str) -> bool:
        if self.list_error is None:
            return False
        wanted = {i.lower() for i in self.list_error_instances}
        return not wanted or instance.lower() in wanted


def _names(value: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError("file lists must be lists of names, not a single string")
    names = tuple(value)
    if not all(isinstance(n, str) and n for n in names):
        raise ValueError("file lists must hold non-empty strings")
    return names


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
