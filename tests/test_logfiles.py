from __future__ import annotations

import pendulum
import pytest

from rdsrecorder.logfiles import (
    Granularity,
    assign_spans,
    is_complete,
    object_key,
    parse_name,
    rotation_period_s,
    select,
)
from rdsrecorder.models import LogFile


def ts(text: str) -> int:
    return int(pendulum.parse(text, tz="UTC").timestamp())  # type: ignore[union-attr]


def lf(name: str, written: str | None = None, size: int = 10, instance: str = "db") -> LogFile:
    ms = ts(written) * 1000 if written else 0
    return LogFile(instance=instance, name=name, last_written_ms=ms, size=size)


@pytest.mark.parametrize(
    ("name", "expected", "granularity", "is_csv"),
    [
        ("error/postgresql.log.2024-03-04-19.csv", "2024-03-04T19:00:00", Granularity.HOUR, True),
        ("error/postgresql.log.2024-03-04-19", "2024-03-04T19:00:00", Granularity.HOUR, False),
        (
            "error/postgresql.log.2024-03-04-1937.csv",
            "2024-03-04T19:37:00",
            Granularity.MINUTE,
            True,
        ),
        ("error/postgresql.log.2024-03-04.csv", "2024-03-04T00:00:00", Granularity.DAY, True),
        ("postgresql.log.2024-12-31-23.csv", "2024-12-31T23:00:00", Granularity.HOUR, True),
    ],
)
def test_parse_name(name: str, expected: str, granularity: Granularity, is_csv: bool) -> None:
    parsed = parse_name(name)
    assert parsed is not None
    assert parsed.timestamp_s == ts(expected)
    assert parsed.granularity is granularity
    assert parsed.is_csv is is_csv


def test_seed_example_key() -> None:
    parsed = parse_name("error/postgresql.log.2024-03-04-19.csv")
    assert parsed is not None and parsed.timestamp_s == 1709578800
    assert object_key("RUN", parsed.timestamp_s) == "RUN/rds_log_RUN_1709578800"
    assert object_key("RUN", 1709578800, "db-2") == "RUN/db-2/rds_log_RUN_1709578800"


@pytest.mark.parametrize(
    "name",
    [
        "error/postgres.log",
        "error/postgresql.log.2024-13-04-19.csv",
        "error/postgresql.log.2024-03-04-25.csv",
        "error/postgresql.log.2024-03-04-1961.csv",
        "error/postgresql.log.2024-03-04-19.csv.gz",
        "error/trace",
    ],
)
def test_unparseable_names_are_ignored(name: str) -> None:
    assert parse_name(name) is None


def test_hourly_spans_and_twins_ignored() -> None:
    files = [
        lf("error/postgresql.log.2024-02-04-14.csv"),
        lf("error/postgresql.log.2024-02-04-12.csv"),
        lf("error/postgresql.log.2024-02-04-13"),
        lf("error/postgresql.log.2024-02-04-13.csv"),
        lf("error/postgres.log"),
    ]
    spans = assign_spans(files)
    assert [s.name for s in spans] == [
        "error/postgresql.log.2024-02-04-12.csv",
        "error/postgresql.log.2024-02-04-13.csv",
        "error/postgresql.log.2024-02-04-14.csv",
    ]
    assert spans[0].end_s == ts("2024-02-04T13:00:00")
    # The newest hourly file still ends at the end of its hour.
    assert spans[-1].end_s == ts("2024-02-04T15:00:00")
    assert [s.has_successor for s in spans] == [True, True, False]
    with_plain = assign_spans(files, include_plain=True)
    assert len(with_plain) == 4
    # a plain twin is never the successor of a csv file
    csv13 = next(s for s in with_plain if s.name.endswith("13.csv"))
    assert csv13.has_successor


def test_minute_spans_end_at_next_file_and_newest_is_open() -> None:
    files = [
        lf("error/postgresql.log.2024-02-04-1300.csv"),
        lf("error/postgresql.log.2024-02-04-1301.csv"),
        lf("error/postgresql.log.2024-02-04-1310.csv"),  # idle DB: nothing for 9 minutes
    ]
    spans = assign_spans(files)
    assert [s.end_s for s in spans] == [ts("2024-02-04T13:01"), ts("2024-02-04T13:10"), None]
    assert rotation_period_s(spans) == 300  # median of 60 and 540


def test_rotation_period_defaults() -> None:
    assert rotation_period_s([]) == 3600
    hourly = assign_spans([lf("error/postgresql.log.2024-02-04-13.csv")])
    assert rotation_period_s(hourly) == 3600
    daily = assign_spans([lf("error/postgresql.log.2024-02-04.csv")])
    assert rotation_period_s(daily) == 86400
    one_minute_file = assign_spans([lf("error/postgresql.log.2024-02-04-1300.csv")])
    assert rotation_period_s(one_minute_file) == 3600


# Window [13:00, 14:00) against hourly files 12, 13, 14 at every edge.
@pytest.mark.parametrize(
    ("start", "finish", "expected"),
    [
        ("13:00", "14:00", ["13"]),
        ("13:30", "14:00", ["13"]),  # the original Go tool lost the 13:00 file here
        ("12:59", "14:00", ["12", "13"]),
        ("13:00", "14:01", ["13", "14"]),
        ("13:59", "13:59:30", ["13"]),
        ("12:00", "15:00", ["12", "13", "14"]),
        ("15:00", "16:00", []),
        ("10:00", "12:00", []),
    ],
)
def test_hourly_window_edges(start: str, finish: str, expected: list[str]) -> None:
    files = [lf(f"error/postgresql.log.2024-02-04-{h}.csv") for h in ("12", "13", "14")]
    spans = assign_spans(files)
    chosen = select(spans, ts(f"2024-02-04T{start}"), ts(f"2024-02-04T{finish}"))
    assert [s.name[-6:-4] for s in chosen] == expected


def test_open_window_and_open_newest_minute_file() -> None:
    files = [lf(f"error/postgresql.log.2024-02-04-13{m}.csv") for m in ("00", "01", "02")]
    spans = assign_spans(files)
    assert len(select(spans, ts("2024-02-04T13:01:30"), None)) == 2
    # The newest minute file (open span) overlaps any window that finishes after it starts.
    assert [s.name for s in select(spans, ts("2024-02-04T18:00"), ts("2024-02-04T19:00"))] == [
        "error/postgresql.log.2024-02-04-1302.csv"
    ]


def test_instances_are_separate_series() -> None:
    files = [
        lf("error/postgresql.log.2024-02-04-1300.csv", instance="a"),
        lf("error/postgresql.log.2024-02-04-1301.csv", instance="b"),
    ]
    spans = assign_spans(files)
    assert all(not s.has_successor for s in spans)
    assert all(s.end_s is None for s in spans)


def test_completeness() -> None:
    files = [
        lf("error/postgresql.log.2024-02-04-13.csv", written="2024-02-04T13:59:59"),
        lf("error/postgresql.log.2024-02-04-14.csv", written="2024-02-04T14:20:00"),
    ]
    older, newest = assign_spans(files)
    now = ts("2024-02-04T14:20:30")
    assert is_complete(older, now, 3600)  # it rotated
    assert not is_complete(newest, now, 3600)
    # idle: its hour is over and nothing was written for more than a minute
    assert is_complete(newest, ts("2024-02-04T15:01:01"), 3600)
    assert not is_complete(newest, ts("2024-02-04T15:00:30"), 3600)
    minute = assign_spans(
        [lf("error/postgresql.log.2024-02-04-1400.csv", written="2024-02-04T14:00:50")]
    )[0]
    assert not is_complete(minute, ts("2024-02-04T14:02:00"), 60)
    assert is_complete(minute, ts("2024-02-04T14:03:00"), 60)
