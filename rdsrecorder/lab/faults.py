"""Fault knobs of the lab's RDS emulator.

A ``Faults`` value is immutable; the emulator swaps the whole value when it changes (at start, with
``Lab.set_faults(...)``, or ``POST /_lab/faults``), so a request always sees one consistent set.

Knobs (what they apply to in brackets; "RDS calls" = RDS query calls + complete-file requests):

latency_ms          Sleep this long before answering. [every RDS/STS call]
throttle_every_n    Every Nth RDS call answers HTTP 400 ``Throttling`` "Rate exceeded" (0: never).
                    [RDS calls]
error_rate          This fraction of calls answers HTTP 500 ``InternalFailure``. [RDS calls]
reset_rate          This fraction of responses is cut: part of the body is sent, then the TCP
                    connection is closed. [DownloadDBLogFilePortion, complete-file streams]
stuck_marker_files  Files whose marker stops advancing after the first portion: every later call
                    returns the Marker it was given (and that portion's data again) with
                    AdditionalDataPending=true. [DownloadDBLogFilePortion]
binary_files        Files for which the portion API answers HTTP 400 ``InvalidParameterValue``
                    "This file contains binary data and should be downloaded instead of viewed.",
                    which is what RDS answers for such files; the complete-file endpoint still
                    serves them. [DownloadDBLogFilePortion]
complete_endpoint   False: the complete-file endpoint answers 403 ``AccessDenied``, as when the
                    IAM policy lacks ``rds:DownloadCompleteDBLogFile``. [complete-file requests]
bandwidth_mbps      Cap on log-data throughput in megabits per second, shared by all connections
                    (None: no cap). [portion and complete-file bodies]
gzip_level          zlib level of the complete-file endpoint's gzip (1-9; 1 by default, the fast
                    level servers use to compress on the fly). The real server compresses on AWS's
                    machines; the lab does it on yours, so a higher level mostly measures the lab.
                    [complete-file responses, when the client accepts gzip]
seed                Seed of the RNG behind error_rate and reset_rate. The RNG and the throttle
                    counter restart whenever the faults are set, so a run is reproducible from
                    that point.

A file in ``stuck_marker_files`` / ``binary_files`` is named by its LogFileName
(``error/postgresql.log.2024-03-04-19.csv``) or by ``<instance>/<LogFileName>``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Faults:
    latency_ms: float = 0.0
    throttle_every_n: int = 0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    stuck_marker_files: tuple[str, ...] = ()
    binary_files: tuple[str, ...] = ()
    complete_endpoint: bool = True
    bandwidth_mbps: float | None = None
    gzip_level: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        # Lists are accepted (JSON has no tuples); stored as tuples so that Faults stays hashable.
        object.__setattr__(self, "stuck_marker_files", _names(self.stuck_marker_files))
        object.__setattr__(self, "binary_files", _names(self.binary_files))
        if not _finite(self.latency_ms) or self.latency_ms < 0:
            raise ValueError("latency_ms must be a number >= 0")
        if isinstance(self.throttle_every_n, bool) or not isinstance(self.throttle_every_n, int):
            raise ValueError("throttle_every_n must be an integer")
        if self.throttle_every_n < 0:
            raise ValueError("throttle_every_n must be >= 0")
        for name in ("error_rate", "reset_rate"):
            value = getattr(self, name)
            if not _finite(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number between 0 and 1")
        if not isinstance(self.complete_endpoint, bool):
            raise ValueError("complete_endpoint must be true or false")
        if self.bandwidth_mbps is not None and (
            not _finite(self.bandwidth_mbps) or self.bandwidth_mbps <= 0
        ):
            raise ValueError("bandwidth_mbps must be a number > 0 (or null for no cap)")
        if (
            isinstance(self.gzip_level, bool)
            or not isinstance(self.gzip_level, int)
            or not 1 <= self.gzip_level <= 9
        ):
            raise ValueError("gzip_level must be an integer from 1 to 9")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError("seed must be an integer")

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
        out["stuck_marker_files"] = list(self.stuck_marker_files)
        out["binary_files"] = list(self.binary_files)
        return out

    def names_file(self, names: tuple[str, ...], instance: str, log_file_name: str) -> bool:
        return log_file_name in names or f"{instance}/{log_file_name}" in names


def _names(value: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError("file lists must be lists of names, not a single string")
    names = tuple(value)
    if not all(isinstance(n, str) and n for n in names):
        raise ValueError("file lists must hold non-empty strings")
    return names


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
