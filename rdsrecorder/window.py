"""Dates, the sync window and the three sync modes. Pure: the caller passes ``now``."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import pendulum

from rdsrecorder.errors import ConfigError
from rdsrecorder.times import human

RETENTION_MAX_S = 7 * 24 * 3600  # rds.log_retention_period at most
EARLIEST = "earliest"  # --start earliest: as far back as RDS can still keep logs

_RELATIVE_RE = re.compile(r"^now\s*(?:(?P<sign>[+-])\s*(?P<n>\d+)\s*(?P<unit>[smhd]))?$", re.I)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SEED_FORMATS = (
    "YYYY-MM-DD HH:mm:ss.SSS",
    "YYYY-MM-DD HH:mm:ss",
    "YYYY-MM-DD HH:mm",
)


class Mode(enum.StrEnum):
    DOWNLOAD_AND_FINISH = "download-interval-and-finish"  # finish <= now
    DOWNLOAD_AND_SYNC = "download-interval-and-sync"  # start <= now < finish (or no finish)
    WAIT_AND_SYNC = "wait-and-sync"  # start > now

    @property
    def label(self) -> str:
        return {
            Mode.DOWNLOAD_AND_FINISH: "Download interval & Finish",
            Mode.DOWNLOAD_AND_SYNC: "Download interval & Sync",
            Mode.WAIT_AND_SYNC: "Wait & Sync",
        }[self]


def parse_when(text: str, now: pendulum.DateTime, *, option: str = "date") -> pendulum.DateTime:
    """Parse a user date into UTC.

    Accepts ``now``, ``now-2h`` / ``now+30m`` (s, m, h, d), ``earliest`` (now minus the longest
    retention RDS allows: whatever RDS still keeps), the seed's ``2024-02-04 13:00:00.000 UTC``,
    and ISO-8601 (no offset means UTC)."""
    raw = text.strip()
    if not raw:
        raise ConfigError(f"{option}: empty date")
    if raw.lower() == EARLIEST:
        return now.in_timezone("UTC").subtract(seconds=RETENTION_MAX_S)
    rel = _RELATIVE_RE.fullmatch(raw)
    if rel:
        if rel.group("sign") is None:
            return now.in_timezone("UTC")
        delta_s = int(rel.group("n")) * _UNIT_S[rel.group("unit").lower()]
        sign = 1 if rel.group("sign") == "+" else -1
        try:
            return now.in_timezone("UTC").add(seconds=sign * delta_s)
        except (OverflowError, ValueError) as exc:
            raise ConfigError(f"{option}: {text!r} is out of range") from exc
    body = raw
    if body.upper().endswith(" UTC"):
        body = body[:-4].strip()
    for fmt in _SEED_FORMATS:
        try:
            return pendulum.from_format(body, fmt, tz="UTC")
        except ValueError:
            continue
    try:
        parsed = pendulum.parse(body, tz="UTC")
    except (ValueError, OverflowError, pendulum.parsing.exceptions.ParserError) as exc:
        raise ConfigError(
            f"{option}: cannot parse {text!r}; use e.g. '2024-02-04 13:00:00.000 UTC', "
            "'2024-02-04T13:00:00+01:00' or 'now-2h'"
        ) from exc
    if not isinstance(parsed, pendulum.DateTime):
        raise ConfigError(f"{option}: {text!r} is not a date and time")
    return parsed.in_timezone("UTC")


@dataclass(frozen=True, slots=True)
class Window:
    """The sync window in epoch seconds, and the mode it was classified in."""

    start_s: float
    finish_s: float | None  # None: follow forever
    mode: Mode


def classify(
    start: pendulum.DateTime, finish: pendulum.DateTime | None, now: pendulum.DateTime
) -> Mode:
    if start > now:
        return Mode.WAIT_AND_SYNC
    if finish is not None and finish <= now:
        return Mode.DOWNLOAD_AND_FINISH
    return Mode.DOWNLOAD_AND_SYNC


def validate_sync_window(
    start: pendulum.DateTime, finish: pendulum.DateTime | None, now: pendulum.DateTime
) -> None:
    if finish is not None and finish <= start:
        raise ConfigError(f"finish ({human(finish)}) must be after start ({human(start)})")
    age_s = (now - start).total_seconds()
    if age_s > RETENTION_MAX_S:
        raise ConfigError(
            f"start {start.to_iso8601_string()} is {age_s / 86400:.1f} days ago; RDS keeps logs "
            "for at most 7 days, so nothing older can be copied: choose a later --start"
        )


def validate_snapshot_start(start: pendulum.DateTime, now: pendulum.DateTime) -> None:
    if start <= now:
        raise ConfigError(
            f"snapshot start {start.to_iso8601_string()} is in the past; give a future time "
            "(e.g. --start now+1m)"
        )
