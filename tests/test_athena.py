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


async def test_a_twin_that_cannot_be_made_is_a_warning_and_the_copy_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from rdsrecorder.athena import ParquetTwins
    from rdsrecorder.manifest import FileEntry
    from rdsrecorder.models import FileStatus

    class Sink:
        def __init__(self) -> None:
            self.recorded: list[FileEntry] = []

        def record(self, entry: FileEntry) -> None:
            self.recorded.append(entry)

        def add_gap(self, instance: str, start: str, end: str, reason: str) -> None: ...

        async def flush(self, force: bool = False) -> None: ...

    async def broken(store: Any, run_id: str, entry: FileEntry) -> list[str]:
        raise duckdb.InvalidInputException("Invalid Input Error: not csv")

    def entry(key: str, status: FileStatus, complete: bool = True) -> FileEntry:
        return FileEntry(
            key=key, source="error/postgresql.log.2024-02-04-13.csv", instance=DB,
            span_start="2024-02-04T13:00:00Z", span_end="2024-02-04T14:00:00Z", size=1,
            sha256="0" * 64, method="complete", status=status, source_size=1, complete=complete,
        )  # fmt: skip

    inner = Sink()
    twins = ParquetTwins(inner, store=None, run_id=RUN, write=broken)  # type: ignore[arg-type]
    twins.record(entry("a", FileStatus.COPIED))
    twins.record(entry("b", FileStatus.COPIED, complete=False))  # copied while being written
    twins.record(entry("c", FileStatus.FAILED))
    await twins.drain()
    assert [e.key for e in inner.recorded] == ["a", "b", "c"]  # the manifest sees every entry
    assert twins.failed == ["a"] and twins.written == []
    assert "parquet twin of s3 a not written: InvalidInputException" in caplog.text


def test_parquet_twins_without_duckdb_is_one_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import rdsrecorder.config as config
    from rdsrecorder.config import ConfigError, LogFormat, build_sync

    monkeypatch.setattr(config, "duckdb_missing", lambda: "query needs DuckDB, the [query] extra")
    with pytest.raises(ConfigError, match=r"^--parquet-twins: query needs DuckDB"):
        build_sync(
            now=pendulum.now("UTC"), start="now-1h", finish="now", bucket="b-bucket",
            db_identifier=["db"], discover_tag=None, discover_interval_s=300.0, shard_spec=None,
            retention_hours=None, assume_role=None, assume_role_external_id=None,
            assume_role_session_name=None, s3_assume_role=None, concurrency=4, run_id="r",
            region=None, poll_interval_s=30.0, finish_grace_s=None, snapshot=False,
            download_method=config.DownloadMethod.AUTO, part_size_mib=8, max_api_rps=None,
            max_api_burst=None, fleet_max_api_rps=12.0, fleet_max_api_burst=300,
            expected_bucket_owner=None, sse=None, sse_kms_key_id=None, shutdown_grace_s=5.0,
            include_plain=False, include_series=None, spool_dir=None,
            compress=Compression.NONE, storage_class=config.StorageClass.STANDARD,
            single_put_max_mib=64, metrics_address="0.0.0.0", metrics_port=0,
            log_format=LogFormat.TEXT, progress=False, debug=False, parquet_twins=True,
        )  # fmt: skip
