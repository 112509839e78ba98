"""Log file names → timestamps, spans, completeness and S3 keys. Pure: no I/O, no clock reads.

RDS names PostgreSQL logs after ``log_filename``: ``postgresql.log.%Y-%m-%d-%H`` (hourly, the RDS
default), ``%Y-%m-%d-%H%M`` (minute precision: Aurora's default, any rotation age) or ``%Y-%m-%d``
(daily). With csvlog every file has a ``.csv`` twin. Timestamps in names are UTC.

A file's span is [timestamp in its name, next rotation). For hourly and daily names the next
rotation is at most one hour / day later. For minute names the rotation age is not in the name, so
the span ends where the next file of the same instance starts; the newest file has an open span
(it is still being written).
"""

from __future__ import annotations

import enum
import functools
import itertools
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

import pendulum

from rdsrecorder.models import LogFile

HOUR_S = 3600
DAY_S = 86400
DEFAULT_ROTATION_S = HOUR_S  # Aurora's and RDS's default log_rotation_age

# Slack before an idle file counts as complete: RDS updates LastWritten lazily, and the DB host's
# clock, AWS's API clock and this process's estimate of it (``clock.AwsClock``, within a second or
# so) differ a little.
IDLE_SLACK_S = 60

_NAME_RE = re.compile(
    r"^(?P<base>(?:.*/)?[^/]+?)\."
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:-(?P<hour>\d{2})(?P<minute>\d{2})?)?"
    r"(?P<csv>\.csv)?$"
)


class Granularity(enum.StrEnum):
    DAY = "day"
    HOUR = "hour"
    MINUTE = "minute"


NOMINAL_PERIOD_S: dict[Granularity, int | None] = {
    Granularity.DAY: DAY_S,
    Granularity.HOUR: HOUR_S,
    Granularity.MINUTE: None,  # rotation age not encoded in the name
}


@dataclass(frozen=True, slots=True)
class ParsedName:
    base: str  # "error/postgresql.log": files of one series share it
    timestamp_s: int  # epoch seconds, UTC
    granularity: Granularity
    is_csv: bool


@functools.lru_cache(maxsize=16384)  # every listing parses its DB's names; DBs share names
def parse_name(name: str) -> ParsedName | None:
    """Parse a log file name; None when it has no timestamp (``error/postgres.log``)."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    hour, minute = m.group("hour"), m.group("minute")
    granularity = (
        Granularity.DAY
        if hour is None
        else Granularity.HOUR
        if minute is None
        else Granularity.MINUTE
    )
    try:
        day = pendulum.from_format(m.group("date"), "YYYY-MM-DD", tz="UTC")
    except ValueError:
        return None
    h, mi = int(hour or 0), int(minute or 0)
    if h > 23 or mi > 59:
        return None
    ts = day.add(hours=h, minutes=mi)
    return ParsedName(
        base=m.group("base"),
        timestamp_s=int(ts.timestamp()),
        granularity=granularity,
        is_csv=m.group("csv") is not None,
    )


@dataclass(frozen=True, slots=True)
class SpannedFile:
    file: LogFile
    timestamp_s: int
    end_s: int | None  # exclusive; None = newest file of an open-ended series (still current)
    granularity: Granularity
    has_successor: bool  # a newer file of the same series exists: this one has rotated

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def instance(self) -> str:
        return self.file.instance

    def overlaps(self, start_s: float, finish_s: float | None) -> bool:
        """True when [timestamp, end) intersects [start, finish) (finish None = open)."""
        if finish_s is not None and self.timestamp_s >= finish_s:
            return False
        return self.end_s is None or self.end_s > start_s


def rotation_period_s(files: Iterable[SpannedFile]) -> int:
    """The rotation period of a series: nominal for hourly/daily names; for minute names the median
    gap between consecutive files (the DB may be idle for a while, so the median, not the mean)."""
    items = sorted(files, key=lambda f: f.timestamp_s)
    if not items:
        return DEFAULT_ROTATION_S
    nominal = NOMINAL_PERIOD_S[items[-1].granularity]
    if nominal is not None:
        return nominal
    gaps = [b.timestamp_s - a.timestamp_s for a, b in itertools.pairwise(items)]
    gaps = [g for g in gaps if g > 0]
    if not gaps:
        return DEFAULT_ROTATION_S
    return max(60, int(statistics.median(gaps)))


def assign_spans(files: Iterable[LogFile], *, include_plain: bool = False) -> list[SpannedFile]:
    """Spans for every parseable file, oldest first (they expire first).

    Files are grouped in series by (instance, base name, csv or not): the plain twin of a csv file
    never counts as its successor."""
    series: dict[tuple[str, str, bool], list[tuple[ParsedName, LogFile]]] = {}
    for f in files:
        parsed = parse_name(f.name)
        if parsed is None or (not parsed.is_csv and not include_plain):
            continue
        series.setdefault((f.instance, parsed.base, parsed.is_csv), []).append((parsed, f))
    out: list[SpannedFile] = []
    for items in series.values():
        items.sort(key=lambda pf: pf[0].timestamp_s)
        for i, (parsed, f) in enumerate(items):
            next_ts = items[i + 1][0].timestamp_s if i + 1 < len(items) else None
            nominal = NOMINAL_PERIOD_S[parsed.granularity]
            candidates = [
                t
                for t in (next_ts, parsed.timestamp_s + nominal if nominal else None)
                if t is not None
            ]
            out.append(
                SpannedFile(
                    file=f,
                    timestamp_s=parsed.timestamp_s,
                    end_s=min(candidates) if candidates else None,
                    granularity=parsed.granularity,
                    has_successor=next_ts is not None,
                )
            )
    out.sort(key=lambda s: (s.timestamp_s, s.instance, s.name))
    return out


def is_complete(sf: SpannedFile, now_s: float, period_s: int) -> bool:
    """A file is complete once a newer file of its series exists (it rotated), or, for an idle DB,
    once it has not been written for longer than the rotation period. ``now_s`` is AWS's time
    (``clock.AwsClock``), never the host's: ``LastWritten`` and the names are on RDS's clock."""
    if sf.has_successor:
        return True
    idle_s = now_s - sf.file.last_written_ms / 1000.0
    if sf.end_s is not None and now_s >= sf.end_s + IDLE_SLACK_S and idle_s > IDLE_SLACK_S:
        # Its hour/day is over and nothing was written since: PostgreSQL will not append to it.
        return True
    return idle_s > period_s + IDLE_SLACK_S


def select(
    spanned: Iterable[SpannedFile], start_s: float, finish_s: float | None
) -> list[SpannedFile]:
    """Files whose span overlaps [start, finish), oldest first."""
    return [s for s in spanned if s.overlaps(start_s, finish_s)]


def object_key(run_id: str, timestamp_s: int, instance: str | None = None) -> str:
    """``<RUNID>/rds_log_<RUNID>_<unix>``; with an instance (Aurora clusters) the instance id is a
    folder: ``<RUNID>/<instance>/rds_log_<RUNID>_<unix>``."""
    leaf = f"rds_log_{run_id}_{timestamp_s}"
    return f"{run_id}/{instance}/{leaf}" if instance else f"{run_id}/{leaf}"
