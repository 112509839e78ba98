"""``sync --parquet-twins`` and ``athena-ddl`` against the lab: hourly csvlog files across a UTC
midnight copied (gzip) with their Parquet twins; each twin, read back with DuckDB, holds exactly
its file's rows of its day, multi-line fields included; a resumed run makes a missing twin again;
the DDL names every column, its partitions and location, and parses as Athena SQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pendulum
import pytest
import sqlglot

from rdsrecorder.athena import twins_prefix
from rdsrecorder.commands import run_sync
from rdsrecorder.compression import Compression
from rdsrecorder.csvlog import NAMES
from rdsrecorder_lab import LabThread
from rdsrecorder_lab.generate import GeneratedFile, generate
from tests.e2e import s3_client, sync_settings
from tests.test_query import python_rows

DB = "twin-db"
RUN = "twins"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[GeneratedFile]]:
    root = tmp_path_factory.mktemp("twinlab")
    # Files at 22:00, 23:00, 00:00 and 01:00 (current) of yesterday: two UTC days.
    end = pendulum.now("UTC").start_of("day").subtract(hours=22, minutes=30)
    return root, generate(root, DB, files=4, end=end, size_mb=(0.1, 0.2), seed=3)


@pytest.fixture(scope="module")
def lab(files: tuple[Path, list[GeneratedFile]]) -> Iterator[LabThread]:
    with LabThread(files[0], s3="moto") as lab:
        yield lab


def sync(lab: LabThread, files: list[GeneratedFile]) -> None:
    first = pendulum.from_timestamp(files[0].start_s, tz="UTC")
    settings = sync_settings(
        db=DB,
        bucket=lab.env["AWS_S3_BUCKET_NAME"],
        start=first,
        finish=first.add(hours=3),
        run_id=RUN,
        compress=Compression.GZIP,
        parquet_twins=True,
    )
    with pytest.MonkeyPatch.context() as mp:
        for k, v in lab.env.items():
            mp.setenv(k, v)
        assert asyncio.run(run_sync(settings)).exit_code == 0


def twins(lab: LabThread) -> dict[str, bytes]:
    client = s3_client(lab.env)
    bucket = lab.env["AWS_S3_BUCKET_NAME"]
    listed = client.list_objects_v2(Bucket=bucket, Prefix=twins_prefix(RUN)).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def test_twins_hold_exactly_the_rows_of_their_objects(
    lab: LabThread, files: tuple[Path, list[GeneratedFile]], tmp_path: Path
) -> None:
    generated = files[1]
    sync(lab, generated)
    stored = twins(lab)
    copied = generated[:3]
    expected_keys = {
        f"{twins_prefix(RUN)}db={DB}/date={day(f.start_s)}/{Path(f.name).name}.parquet"
        for f in copied
    }
    assert set(stored) == expected_keys
    assert len({day(f.start_s) for f in copied}) == 2  # db=/date= partitions over two days

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    multi_line = 0
    for f in copied:
        key = next(k for k in stored if k.endswith(Path(f.name).name + ".parquet"))
        local = tmp_path / Path(key).name
        local.write_bytes(stored[key])
        cursor = con.execute(f"SELECT * FROM read_parquet('{local}')")
        assert [d[0] for d in cursor.description] == list(NAMES)
        got = [
            tuple(
                None if v == "" else v.replace(tzinfo=dt.UTC) if isinstance(v, dt.datetime) else v
                for v in row
            )
            for row in cursor.fetchall()
        ]
        want = python_rows([f.path], 0.0, 1e12)
        assert got == want  # the same rows, in file order
        assert len(got) == f.records
        multi_line += sum(1 for r in got if "\n" in (r[NAMES.index("message")] or ""))
    assert multi_line > 0


def test_a_resumed_run_makes_a_missing_twin_again(
    lab: LabThread, files: tuple[Path, list[GeneratedFile]]
) -> None:
    before = twins(lab)
    if not before:
        sync(lab, files[1])
        before = twins(lab)
    gone = sorted(before)[0]
    s3_client(lab.env).delete_object(Bucket=lab.env["AWS_S3_BUCKET_NAME"], Key=gone)
    sync(lab, files[1])  # every file skipped: its copy is there
    after = twins(lab)
    assert after == before


def test_athena_ddl_names_every_column_and_parses(
    lab: LabThread, files: tuple[Path, list[GeneratedFile]]
) -> None:
    if not twins(lab):
        sync(lab, files[1])
    bucket = lab.env["AWS_S3_BUCKET_NAME"]
    done = subprocess.run(
        [sys.executable, "-m", "rdsrecorder", "athena-ddl", "--bucket", bucket, "--run-id", RUN],
        env={**os.environ, **lab.env, "PYTHONPATH": os.getcwd()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    ddl = done.stdout
    parsed: Any = sqlglot.parse_one(ddl.strip().rstrip(";"), read="athena")
    assert isinstance(parsed, sqlglot.exp.Create)
    columns = [c.name for c in parsed.find_all(sqlglot.exp.ColumnDef)]
    assert columns == [*NAMES, "db", "date"]
    assert "`log_time` timestamp" in ddl and "`query_id` bigint" in ddl
    assert f"LOCATION 's3://{bucket}/{twins_prefix(RUN)}'" in ddl
    assert f"'projection.db.values' = '{DB}'" in ddl
    first_day = day(files[1][0].start_s)
    assert f"'projection.date.range' = '{first_day},NOW'" in ddl

    missing = subprocess.run(
        [sys.executable, "-m", "rdsrecorder", "athena-ddl", "--bucket", bucket, "--run-id", "nope"],
        env={**os.environ, **lab.env, "PYTHONPATH": os.getcwd()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 6 and missing.stderr.startswith("error: no manifest for run")
