"""``rdsrecorder query`` against the lab: realistic csvlog in the three layouts RDS writes (23, 24
and 26 columns), copied by two runs (one raw, one gzip, overlapping on one file) into moto, then SQL
over a window whose rows must be exactly what Python's csv module reads from the original files."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pendulum
import pytest

from rdsrecorder.aws import Aws
from rdsrecorder.commands import run_sync
from rdsrecorder.compression import Compression
from rdsrecorder.config import AwsSettings, ConfigError, LogFormat, build_query
from rdsrecorder.csvlog import COLUMNS, NAMES
from rdsrecorder.hooks import Hooks
from rdsrecorder.query import Engine, QueryError, query_window
from rdsrecorder.s3.bucket import Bucket
from rdsrecorder_lab import LabThread
from rdsrecorder_lab.generate import generate
from tests.e2e import s3_client, sync_settings

DB = "query-db"
HOURS = 5
# Layouts by file: PostgreSQL 15 (26), an hour of PostgreSQL 12 (23), one of 13 (24).
LAYOUT_BY_HOUR = {0: 26, 1: 26, 2: 23, 3: 24, 4: 26}
NON_ASCII_USER = "rapportør_ミナ"


def rewrite_layout(path: Path, fields: int) -> None:
    """The file as an older PostgreSQL would have written it: the trailing columns dropped."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(r[:fields] for r in rows)


@pytest.fixture(scope="module")
def lab_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], float]:
    root = tmp_path_factory.mktemp("querylab")
    end = pendulum.now("UTC").start_of("hour").subtract(minutes=30)
    files = generate(root, DB, hours=HOURS, end=end, size_mb=(0.15, 0.3), seed=7)
    assert len(files) == HOURS
    for hour, f in enumerate(files):
        data = f.path.read_bytes().replace(b'"reporting"', f'"{NON_ASCII_USER}"'.encode())
        f.path.write_bytes(data)
        if LAYOUT_BY_HOUR[hour] != 26:
            rewrite_layout(f.path, LAYOUT_BY_HOUR[hour])
        os.utime(f.path, (f.last_written_s, f.last_written_s))
    return root, [f.path for f in files], files[0].start_s


@pytest.fixture(scope="module")
def lab(lab_files: tuple[Path, list[Path], float]) -> Iterator[LabThread]:
    with LabThread(lab_files[0], s3="moto") as lab:
        yield lab


@pytest.fixture(scope="module")
def synced(lab: LabThread, lab_files: tuple[Path, list[Path], float]) -> str:
    """Hours 0..2 in a raw run, 2..4 in a gzip run (hour 2 in both)."""
    first = pendulum.from_timestamp(lab_files[2], tz="UTC")
    bucket = lab.env["AWS_S3_BUCKET_NAME"]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in lab.env.items():
            mp.setenv(k, v)
        raw = sync_settings(
            db=DB, bucket=bucket, start=first, finish=first.add(hours=3), run_id="q-raw"
        )
        packed = sync_settings(
            db=DB,
            bucket=bucket,
            start=first.add(hours=2),
            finish=first.add(hours=HOURS),
            run_id="q-gz",
            compress=Compression.GZIP,
            finish_grace_s=0.0,
        )
        assert asyncio.run(run_sync(raw)).exit_code == 0
        assert asyncio.run(run_sync(packed)).exit_code == 0
    return bucket


@pytest.fixture
def env(lab: LabThread, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in lab.env.items():
        monkeypatch.setenv(k, v)
    return dict(lab.env)


# -- what Python's csv module reads --------------------------------------------------------------
def parse_time(text: str) -> dt.datetime:
    stamp = text.removesuffix(" UTC")
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in stamp else "%Y-%m-%d %H:%M:%S"
    return dt.datetime.strptime(stamp, fmt).replace(tzinfo=dt.UTC)


def typed(raw: list[str]) -> tuple[Any, ...]:
    """A csv row as the engine types it; empty text and NULL alike (csv cannot tell them)."""
    out: list[Any] = []
    for (_, kind), value in zip(COLUMNS, raw + [""] * (len(COLUMNS) - len(raw)), strict=True):
        if value == "":
            out.append(None)
        elif kind == "TIMESTAMPTZ":
            out.append(parse_time(value))
        elif kind in ("INTEGER", "BIGINT"):
            out.append(int(value))
        else:
            out.append(value)
    return tuple(out)


def python_rows(paths: list[Path], start_s: float, finish_s: float) -> list[tuple[Any, ...]]:
    csv.field_size_limit(sys.maxsize)
    rows = []
    for path in paths:
        with path.open(encoding="utf-8", newline="") as f:
            for raw in csv.reader(f):
                row = typed(raw)
                if start_s <= row[0].timestamp() < finish_s:
                    rows.append(row)
    return rows


def engine_row(doc: dict[str, Any]) -> tuple[Any, ...]:
    out: list[Any] = []
    for name, kind in COLUMNS:
        value = doc[name]
        if value == "":
            value = None
        elif value is not None and kind == "TIMESTAMPTZ":
            value = dt.datetime.fromisoformat(value)
        out.append(value)
    return tuple(out)


def settings(bucket: str, start_s: float, finish_s: float, sql: str, **kw: Any) -> Any:
    args: dict[str, Any] = dict(
        now=pendulum.now("UTC"),
        bucket=bucket,
        db_identifier=DB,
        start=pendulum.from_timestamp(start_s, tz="UTC").to_iso8601_string(),
        finish=pendulum.from_timestamp(finish_s, tz="UTC").to_iso8601_string(),
        sql=sql,
        json_rows=True,
        csv_rows=False,
        memory_limit_mib=512,
        work_dir=None,
        concurrency=3,
        region="us-east-1",
        expected_bucket_owner=None,
        log_format=LogFormat.TEXT,
        debug=False,
    )
    args.update(kw)
    return build_query(**args)


async def run_json(bucket: str, start_s: float, finish_s: float, sql: str) -> list[Any]:
    out = io.StringIO()
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        report = await query_window(
            Bucket(aws, bucket), settings(bucket, start_s, finish_s, sql), out=out
        )
    assert report.exit_code == 0, report
    rows: list[Any] = json.loads(out.getvalue())
    return rows


# -- the tests ---------------------------------------------------------------------------------
async def test_a_window_across_raw_and_gzip_runs_is_exactly_the_csv_rows(
    env: dict[str, str], synced: str, lab_files: tuple[Path, list[Path], float]
) -> None:
    _, paths, first_s = lab_files
    # From the middle of hour 1 (raw run) to the middle of hour 4 (gzip run): hour 2 in both
    # runs, 23- and 24-column files inside.
    start_s, finish_s = first_s + 1.5 * 3600, first_s + 4.5 * 3600
    expected = python_rows(paths, start_s, finish_s)
    docs = await run_json(synced, start_s, finish_s, "SELECT * FROM logs")
    assert list(docs[0]) == [*NAMES, "instance"]
    assert {d["instance"] for d in docs} == {DB}
    got = [engine_row(d) for d in docs]
    assert Counter(got) == Counter(expected)
    assert len(got) == len(expected) > 1000

    # Only the files of the window were fetched: hours 1 to 4, hour 2 once (from one run).
    class Fetched(Hooks):
        downloaded = 0

        def bytes_downloaded(self, instance: str, n: int) -> None:
            Fetched.downloaded += n

    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        report = await query_window(
            Bucket(aws, synced),
            settings(synced, start_s, finish_s, "SELECT 1"),
            out=io.StringIO(),
            hooks=Fetched(),
        )
    assert (report.files, report.runs, report.holes) == (4, 2, [])
    assert report.bytes == sum(p.stat().st_size for p in paths[1:5])
    assert 0 < Fetched.downloaded <= report.bytes  # gzip objects arrive smaller

    # The figures people ask for, each against the csv module's.
    by_severity = await run_json(
        synced,
        start_s,
        finish_s,
        "SELECT error_severity, count(*) AS n FROM logs GROUP BY 1 ORDER BY 1",
    )
    assert {d["error_severity"]: d["n"] for d in by_severity} == dict(
        Counter(r[NAMES.index("error_severity")] for r in expected)
    )
    assert {"LOG", "ERROR", "WARNING"} <= {d["error_severity"] for d in by_severity}

    multi = await run_json(
        synced,
        start_s,
        finish_s,
        "SELECT message, query, detail FROM logs "
        "WHERE contains(message, chr(10)) OR contains(query, chr(10)) "
        "OR contains(detail, chr(10))",
    )
    expected_multi = [
        (r[13], r[19], r[14])
        for r in expected
        if any(v and "\n" in v for v in (r[13], r[19], r[14]))
    ]
    assert Counter((d["message"], d["query"], d["detail"]) for d in multi) == Counter(
        expected_multi
    )
    assert any("\r\n" in d["message"] for d in multi)  # \r\n inside a statement kept as is
    assert any(d["message"].startswith("automatic vacuum") for d in multi)

    users = await run_json(
        synced, start_s, finish_s, "SELECT user_name, count(*) AS n FROM logs GROUP BY 1"
    )
    assert {d["user_name"]: d["n"] for d in users} == dict(Counter(r[1] for r in expected))
    assert NON_ASCII_USER in {d["user_name"] for d in users}

    span = await run_json(
        synced,
        start_s,
        finish_s,
        "SELECT min(log_time) AS lo, max(log_time) AS hi, count(DISTINCT query_id) AS q, "
        "count(backend_type) AS b FROM logs",
    )
    times = [r[0] for r in expected]
    assert dt.datetime.fromisoformat(span[0]["lo"]) == min(times)
    assert dt.datetime.fromisoformat(span[0]["hi"]) == max(times)
    # Rows of the PostgreSQL 12 file have neither backend_type nor query_id (NULL).
    assert span[0]["b"] == sum(r[NAMES.index("backend_type")] is not None for r in expected)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "rdsrecorder", "query", *args],
        env={**os.environ, **env, "PYTHONPATH": os.getcwd()},
        capture_output=True,
        timeout=60,
        check=False,
    )
    # Decoded by hand: text mode would turn the \r\n inside fields into \n.
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def window_args(bucket: str, start_s: float, finish_s: float) -> list[str]:
    return [
        "--bucket",
        bucket,
        "-d",
        DB,
        "--start",
        pendulum.from_timestamp(start_s, tz="UTC").to_iso8601_string(),
        "--finish",
        pendulum.from_timestamp(finish_s, tz="UTC").to_iso8601_string(),
    ]


async def test_the_command_prints_csv_a_table_and_says_what_is_wrong(
    env: dict[str, str], synced: str, lab_files: tuple[Path, list[Path], float]
) -> None:
    _, paths, first_s = lab_files
    window = window_args(synced, first_s + 3600, first_s + 2 * 3600)
    expected = python_rows(paths, first_s + 3600, first_s + 2 * 3600)

    done = cli(env, *window, "--csv", "SELECT log_time, user_name, message FROM logs")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout, newline="")))
    assert rows[0] == ["log_time", "user_name", "message"]
    assert Counter(r[2] for r in rows[1:]) == Counter(r[13] for r in expected)

    # Not a query: its rows through the Python writer, the same JSON shape.
    described = cli(env, *window, "--json", "DESCRIBE logs")
    assert described.returncode == 0, described.stderr
    assert [r["column_name"] for r in json.loads(described.stdout)] == [*NAMES, "instance"]

    table = cli(env, *window, "SELECT error_severity, count(*) FROM logs GROUP BY 1")
    assert table.returncode == 0, table.stderr
    assert "error_severity" in table.stdout and "LOG" in table.stdout

    # A bad statement: one line with DuckDB's message, exit 2, before any download.
    bad = cli(env, *window, "SELECT no_such_column FROM logs")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: the statement failed: Binder Error")
    assert "no_such_column" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stdout == ""
    syntax = cli(env, *window, "SELEC 1")
    assert syntax.returncode == 2 and syntax.stderr.startswith("error: the statement failed: ")

    # A window no run covers: the statement runs on an empty table, exit 0, the hole named.
    empty = cli(
        env, *window_args(synced, first_s - 86400, first_s - 3600), "--json",
        "SELECT count(*) AS n FROM logs",
    )  # fmt: skip
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout) == [{"n": 0}]
    assert f"hole: {DB}: nothing covers" in empty.stderr


async def test_a_bad_statement_fetches_nothing(
    env: dict[str, str], synced: str, lab_files: tuple[Path, list[Path], float], tmp_path: Path
) -> None:
    first_s = lab_files[2]

    class Counting(Hooks):
        downloaded = 0

        def bytes_downloaded(self, instance: str, n: int) -> None:
            Counting.downloaded += n

    work = tmp_path / "work"
    work.mkdir()
    for sql in ("SELECT nope FROM logs", "SELECT 1; SELECT 2", "SELECT * FROM other_table"):
        async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
            with pytest.raises(QueryError) as raised:
                await query_window(
                    Bucket(aws, synced),
                    settings(synced, first_s, first_s + 3600, sql, work_dir=str(work)),
                    out=io.StringIO(),
                    hooks=Counting(),
                )
        assert raised.value.exit_code == 2
    assert Counting.downloaded == 0
    assert list(work.iterdir()) == []  # the work directory is gone


def test_engine_reads_each_layout_with_missing_columns_null(tmp_path: Path) -> None:
    rows = {
        23: '2024-02-04 13:00:00.001 UTC,"zoë","shop",42,"10.0.0.1:5432",65c0.2a,1,"SELECT",'
        '2024-02-04 12:59:00 UTC,3/7,0,LOG,00000,"line one\nline ""two""",,,,,,,,,"psql"\n',
        24: "2024-02-04 13:00:00.002 UTC,,,43,,65c0.2b,1,,2024-02-04 12:00:00 UTC,,0,LOG,00000,"
        '"checkpoint starting: time",,,,,,,,,"","checkpointer"\n',
        26: '2024-02-04 13:00:00.003 UTC,"app","shop",44,,65c0.2c,9,"SELECT",'
        '2024-02-04 12:58:00 UTC,4/1,0,ERROR,42P01,"relation ""x"" does not exist",,,,,,'
        '"SELECT * FROM x",15,,"web-api","client backend",,-1234567890123\n',
    }
    for fields, text in rows.items():
        (tmp_path / f"{fields}.csv").write_text(text, encoding="utf-8")
    engine = Engine(tmp_path, 128)
    try:
        from rdsrecorder.query import LogFile

        engine.load(
            [LogFile("i", tmp_path / f"{n}.csv") for n in rows],
            pendulum.datetime(2024, 2, 4, 13).timestamp(),
            pendulum.datetime(2024, 2, 4, 14).timestamp(),
        )
        got = engine.con.execute(
            "SELECT user_name, message, backend_type, leader_pid, query_id, query_pos, "
            "application_name, session_start_time FROM logs ORDER BY log_time"
        ).fetchall()
    finally:
        engine.close()
    assert got[0][:5] == ("zoë", 'line one\nline "two"', None, None, None)
    assert got[1][:7] == (None, "checkpoint starting: time", "checkpointer", None, None, None, "")
    assert got[2][2:6] == ("client backend", None, -1234567890123, 15)
    assert got[0][7] == dt.datetime(2024, 2, 4, 12, 59, tzinfo=dt.UTC)


def test_a_file_that_starts_with_a_crlf_statement_is_read(tmp_path: Path) -> None:
    """PostgreSQL ends records with LF; a CR LF inside the first quoted statements must not make
    the reader take the file for a CR LF one."""
    record = (
        '2024-02-04 13:00:00.{ms:03d} UTC,"app","shop",42,,65c0.2a,{n},"SELECT",'
        '2024-02-04 12:59:00 UTC,3/7,0,LOG,00000,"{msg}",,,,,,,,,"psql","client backend",,0\n'
    )
    lines = [record.format(ms=n, n=n, msg="statement: SELECT id\r\n  FROM invoices") for n in
             range(3)]  # fmt: skip
    lines += [record.format(ms=n % 1000, n=n, msg=f"statement: SELECT {n}") for n in range(3, 3000)]
    (tmp_path / "crlf.csv").write_text("".join(lines), encoding="utf-8", newline="")
    engine = Engine(tmp_path, 512)
    try:
        from rdsrecorder.query import LogFile

        engine.load([LogFile("i", tmp_path / "crlf.csv")], 0.0, 1e10)
        got = engine.con.execute(
            "SELECT count(*), count(*) FILTER (WHERE contains(message, chr(13))) FROM logs"
        ).fetchone()
    finally:
        engine.close()
    assert got == (3000, 3)


def test_a_file_in_no_csvlog_layout_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "odd.csv").write_text("a,b,c\n", encoding="utf-8")
    engine = Engine(tmp_path, 128)
    try:
        from rdsrecorder.query import LogFile

        with pytest.raises(QueryError, match=r"odd\.csv: its first record has 3 fields"):
            engine.load([LogFile("i", tmp_path / "odd.csv")], 0.0, 1e10)
    finally:
        engine.close()


def test_without_duckdb_one_hint_and_the_cli_never_imports_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rdsrecorder.config as config

    monkeypatch.setattr(config, "duckdb_missing", lambda: "query needs DuckDB, the [query] extra")
    with pytest.raises(ConfigError, match=r"\[query\] extra"):
        settings("b-bucket", 0.0, 3600.0, "SELECT 1")
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, rdsrecorder.cli, rdsrecorder.commands, rdsrecorder.runtime; "
            "print('duckdb' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert probe.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"sql": "  "}, "missing the SQL statement"),
        ({"json_rows": True, "csv_rows": True}, "either --json or --csv"),
        ({"memory_limit_mib": 256}, "--memory-limit-mib must be at least"),
        ({"work_dir": "/nonexistent/dir"}, "--work-dir '/nonexistent/dir' is not a directory"),
    ],
)
def test_query_bad_input_is_one_line(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings("b-bucket", 0.0, 3600.0, kw.pop("sql", "SELECT 1"), **kw)


# -- get --pgbadger (the report itself: tests/test_query_postgres.py, with Debian's pgbadger) ------
def get_kw(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        now=pendulum.now("UTC"),
        bucket="b-bucket",
        db_identifier="db",
        start="2024-02-04T13:00:00Z",
        finish="2024-02-04T15:00:00Z",
        output_dir=str(tmp_path / "out"),
        stdout=False,
        concurrency=4,
        region=None,
        expected_bucket_owner=None,
        log_format=LogFormat.TEXT,
        debug=False,
        pgbadger=str(tmp_path / "report.html"),
    )
    args.update(kw)
    return args


def test_pgbadger_option_is_checked_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rdsrecorder.config import build_get

    with pytest.raises(ConfigError, match="give --output-dir, not --stdout"):
        build_get(**get_kw(tmp_path, stdout=True, output_dir=None))
    with pytest.raises(ConfigError, match="give the report's file name"):
        build_get(**get_kw(tmp_path, pgbadger=str(tmp_path)))
    with pytest.raises(ConfigError, match="is not a directory"):
        build_get(**get_kw(tmp_path, pgbadger=str(tmp_path / "no" / "r.html")))
    monkeypatch.setenv("PATH", str(tmp_path))  # no pgbadger here
    with pytest.raises(ConfigError, match=r"pgbadger is not installed \(Debian"):
        build_get(**get_kw(tmp_path))


async def test_a_failing_pgbadger_is_one_error_naming_its_complaint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rdsrecorder.pgbadger import PgbadgerError, write_report

    fake = tmp_path / "pgbadger"
    fake.write_text("#!/bin/sh\necho 'FATAL: cannot parse line 3' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PgbadgerError, match=r"exited with 3: FATAL: cannot parse line 3"):
        await write_report([str(tmp_path / "a.csv")], str(tmp_path / "r.html"))


async def test_a_cancelled_query_interrupts_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second Ctrl-C cancels the command: the statement running in its thread is interrupted
    instead of running on, and the work directory goes."""
    import rdsrecorder.query as query

    async def no_files(*args: Any, **kw: Any) -> list[Any]:
        return []

    monkeypatch.setattr(query, "fetch_window", no_files)
    work = tmp_path / "work"
    work.mkdir()
    endless = "SELECT count(*) FROM range(10000000000) a, range(10) b WHERE a.range % 7 = b.range"
    task = asyncio.create_task(
        query_window(
            None,  # type: ignore[arg-type]
            settings("b-bucket", 0.0, 3600.0, endless, work_dir=str(work)),
            out=io.StringIO(),
        )
    )
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert list(work.iterdir()) == []


async def test_a_file_whose_only_copy_fails_its_check_is_missing_and_exit_6(
    env: dict[str, str], synced: str, lab_files: tuple[Path, list[Path], float]
) -> None:
    """Hour 0 is only in the raw run (no other test reads it): its object changed behind our
    back, its rows are missing, the result is still printed, exit 6 names it."""
    _, paths, first_s = lab_files
    client = s3_client(env)
    manifest = json.loads(
        client.get_object(Bucket=synced, Key="q-raw/manifest.json")["Body"].read()
    )
    key = next(k for k, e in manifest["files"].items() if e["source"].endswith(paths[0].name))
    changed = bytearray(paths[0].read_bytes())
    changed[200] ^= 1
    client.put_object(Bucket=synced, Key=key, Body=bytes(changed))
    out = io.StringIO()
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        report = await query_window(
            Bucket(aws, synced),
            settings(synced, first_s, first_s + 3600, "SELECT count(*) AS n FROM logs"),
            out=out,
        )
    assert report.exit_code == 6
    assert len(report.failures) == 1 and "sha256 does not match" in report.failures[0]
    assert json.loads(out.getvalue()) == [{"n": 0}]
