"""The lab's csvlog generator: PostgreSQL 15 csvlog records, RDS file names, sizes and times."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import sys
from pathlib import Path

import pytest

from rdsrecorder_lab import Rotation, generate, generate_main
from rdsrecorder_lab.generate import MB, parse_size_range

END = dt.datetime(2024, 3, 4, 19, 25, 30, 123000, tzinfo=dt.UTC)
LOG_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC$")
CSVLOG_COLUMNS = 26  # PostgreSQL 15: ... application_name, backend_type, leader_pid, query_id


def records(path: Path) -> list[list[str]]:
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_hourly_files_parse_as_csvlog(tmp_path: Path) -> None:
    files = generate(tmp_path, "db", hours=4, end=END, size_mb=(0.05, 0.5), seed=7)
    assert [f.name for f in files] == [
        f"error/postgresql.log.2024-03-04-{h}.csv" for h in ("16", "17", "18", "19")
    ]
    for f in files:
        rows = records(f.path)
        assert len(rows) == f.records
        assert {len(r) for r in rows} == {CSVLOG_COLUMNS}
        times = [r[0] for r in rows]
        assert all(LOG_TIME_RE.match(t) for t in times)
        assert times == sorted(times), f.name  # never decreasing within a file
        assert times[0].startswith(
            dt.datetime.fromtimestamp(f.start_s, dt.UTC).strftime("%Y-%m-%d %H")
        )
        assert 0.05 * MB <= f.size <= 0.5 * MB + 2000
        assert f.path.stat().st_size == f.size
        assert (f.path.parent / f.path.name.removesuffix(".csv")).stat().st_size > 0  # plain twin
        # Session line numbers count up per session (column 7, keyed by session id).
        last: dict[str, int] = {}
        for row in rows:
            line = int(row[6])
            assert line > last.get(row[5], 0)
            last[row[5]] = line
    # mtimes: the last record of each file; the newest file ends at END (it is current).
    assert files[-1].path.stat().st_mtime == pytest.approx(END.timestamp(), abs=0.001)
    for f in files[:-1]:
        assert f.end_s - 2.5 < f.path.stat().st_mtime < f.end_s
    assert records(files[-1].path)[-1][0] <= "2024-03-04 19:25:30.123 UTC"


def test_records_look_like_postgresql(tmp_path: Path) -> None:
    (f,) = generate(tmp_path, "db", files=1, end=END, size_mb=(3, 3), seed=2)
    rows = records(f.path)
    severities = {r[11] for r in rows}
    assert {"LOG", "ERROR", "WARNING"} <= severities
    errors = [r for r in rows if r[11] == "ERROR"]
    assert any(r[14] for r in errors)  # DETAIL
    assert any(r[15] for r in rows)  # HINT
    assert any(r[18] for r in rows)  # CONTEXT
    assert any("\n" in r[13] for r in rows)  # multi-line statements / autovacuum reports
    assert any("\r\n" in r[13] for r in rows)
    assert any(r[13].startswith("duration: ") for r in rows)
    assert any(r[13].startswith("checkpoint complete: ") for r in rows)
    assert any(not r[1] and r[23] == "checkpointer" for r in rows)  # background: no user
    assert any('"' in r[13] for r in rows)  # quotes survive CSV quoting
    assert all(r[3].isdigit() and re.fullmatch(r"[0-9a-f]+\.[0-9a-f]+", r[5]) for r in rows)
    raw = f.path.read_text(encoding="utf-8")
    # Quoting as PostgreSQL does it: NULL columns empty, numbers bare, text quoted.
    assert ',"client backend",,' in raw and ',LOG,00000,"duration: ' in raw


@pytest.mark.parametrize(
    ("rotation", "minutes", "names"),
    [
        (Rotation.MINUTE, 5, ["2024-03-04-1915", "2024-03-04-1920", "2024-03-04-1925"]),
        (Rotation.MINUTE, 1, ["2024-03-04-1923", "2024-03-04-1924", "2024-03-04-1925"]),
        (Rotation.DAY, 1, ["2024-03-02", "2024-03-03", "2024-03-04"]),
    ],
)
def test_rotation_names(tmp_path: Path, rotation: Rotation, minutes: int, names: list[str]) -> None:
    files = generate(
        tmp_path, "db", files=3, end=END, rotation=rotation, rotation_minutes=minutes,
        size_mb=(0.01, 0.01),
    )  # fmt: skip
    assert [f.name for f in files] == [f"error/postgresql.log.{n}.csv" for n in names]
    on_disk = sorted(p.name for p in (tmp_path / "db" / "error").iterdir())
    assert on_disk == sorted(
        [f"postgresql.log.{n}" for n in names] + [f"postgresql.log.{n}.csv" for n in names]
    )
    assert all(
        f.end_s - f.start_s == (86400 if rotation is Rotation.DAY else minutes * 60) for f in files
    )


def test_one_line_over_1mb_when_asked(tmp_path: Path) -> None:
    files = generate(tmp_path, "db", files=3, end=END, size_mb=(0.2, 0.2), long_line=True)
    longest = [max(len(line) for line in f.path.read_bytes().split(b"\n")) for f in files]
    assert longest[1] > 1_000_000 and longest[0] < 10_000 and longest[2] < 10_000
    rows = records(files[1].path)
    assert {len(r) for r in rows} == {CSVLOG_COLUMNS}
    assert len(rows) == files[1].records


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", "db", files=3, end=END, seed=5, size_mb=(0.01, 1))
    b = generate(tmp_path / "b", "db", files=3, end=END, seed=5, size_mb=(0.01, 1))
    c = generate(tmp_path / "c", "db", files=3, end=END, seed=6, size_mb=(0.01, 1))
    assert [f.sha256 for f in a] == [f.sha256 for f in b]
    assert [f.sha256 for f in a] != [f.sha256 for f in c]


def test_large_files_have_the_size_asked(tmp_path: Path) -> None:
    files = generate(tmp_path, "db", files=2, end=END, size_mb=(25, 25))
    assert all(25 * MB <= f.size <= 26 * MB for f in files), [f.size for f in files]


def test_size_ranges() -> None:
    assert parse_size_range("0.01-30") == (0.01, 30.0)
    assert parse_size_range("5") == (5.0, 5.0)
    for bad in ("", "a-b", "3-1", "0-1", "-1", "1-inf"):
        with pytest.raises(ValueError):
            parse_size_range(bad)


def test_generate_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate_main(tmp_path, instance="cli-db", hours=2, size_mb="0.01-0.02") == 0
    out = capsys.readouterr().out
    assert "2 csvlog files" in out
    assert len(list((tmp_path / "cli-db" / "error").glob("*.csv"))) == 2
    assert generate_main(tmp_path, size_mb="big") == 2
    assert "size range" in capsys.readouterr().err
    assert generate_main(tmp_path, rotation="weekly") == 2


def test_csv_module_reads_what_we_write_with_odd_text(tmp_path: Path) -> None:
    (f,) = generate(tmp_path, "db", files=1, end=END, size_mb=(1, 1), seed=9)
    text = f.path.read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert any("Zoë" in r[13] or "ミナ" in r[13] for r in rows)
