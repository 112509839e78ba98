"""``query`` and ``get --pgbadger`` over what a real PostgreSQL wrote: the lab's server runs its
workload (plus statements of a non-ASCII user), rdsrecorder copies the csvlog files (gzip) into
S3, then ``query`` must return exactly the rows Python's csv module reads from the server's own
files, and ``get --pgbadger`` must leave pgbadger's report of the workload."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pendulum
import pytest

from rdsrecorder.aws import Aws
from rdsrecorder.commands import run_get, run_sync
from rdsrecorder.compression import Compression
from rdsrecorder.config import AwsSettings, LogFormat, build_get, build_query
from rdsrecorder.csvlog import NAMES
from rdsrecorder.hooks import Hooks
from rdsrecorder.query import query_window
from rdsrecorder.s3.bucket import Bucket
from rdsrecorder_lab import Lab
from rdsrecorder_lab.postgres import missing_reason
from tests.e2e import sync_settings
from tests.test_query import engine_row, python_rows

pytestmark = pytest.mark.postgres
PG_REASON = missing_reason()
PGBADGER = shutil.which("pgbadger")
WORKLOAD_S = 6  # the lab's workload runs statements every second, errors every 5 and 7
USER = "zoë_ミナ"


async def psql(socket_dir: Path, user: str, sql: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "psql", "-X", "-q", "-h", str(socket_dir), "-p", "5432", "-U", user, "-d", "postgres",
        "-c", sql,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PGAPPNAME": "naïve-app"},
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 0, err


@pytest.mark.skipif(PG_REASON is not None, reason=f"cannot run PostgreSQL here: {PG_REASON}")
@pytest.mark.skipif(PGBADGER is None, reason="pgbadger is not installed (scripts/system-deps.sh)")
@pytest.mark.timeout(90)
async def test_query_and_pgbadger_over_a_real_postgres_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = pendulum.now("UTC").start_of("minute")
    async with Lab(tmp_path / "lab", s3="moto", postgres_instance="pg-db") as lab:
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)
        assert lab.postgres is not None
        socket_dir = lab.postgres.socket_dir
        await psql(socket_dir, "postgres", f'CREATE ROLE "{USER}" LOGIN')
        await psql(socket_dir, USER, "SELECT 'crème brûlée ☃',\n       2 AS \"deux\"")
        await asyncio.sleep(WORKLOAD_S)
        finish = pendulum.now("UTC")
        settings = sync_settings(
            db="pg-db",
            bucket=lab.bucket,
            start=start,
            finish=finish,
            run_id="query-pg",
            finish_grace_s=0.0,
            compress=Compression.GZIP,
        )
        assert (await run_sync(settings)).exit_code == 0
        query = build_query(
            now=pendulum.now("UTC"),
            bucket=lab.bucket,
            db_identifier="pg-db",
            start=start.to_iso8601_string(),
            finish=finish.to_iso8601_string(),
            sql="SELECT * FROM logs",
            json_rows=True,
            csv_rows=False,
            memory_limit_mib=512,
            work_dir=None,
            concurrency=2,
            region="us-east-1",
            expected_bucket_owner=None,
            log_format=LogFormat.TEXT,
            debug=False,
        )
        out = io.StringIO()
        async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
            report = await query_window(Bucket(aws, lab.bucket), query, out=out)
        assert report.exit_code == 0 and report.files >= 1

        html = tmp_path / "incident.html"
        got = await run_get(
            build_get(
                now=pendulum.now("UTC"),
                bucket=lab.bucket,
                db_identifier="pg-db",
                start=start.to_iso8601_string(),
                finish=finish.to_iso8601_string(),
                output_dir=str(tmp_path / "incident"),
                stdout=False,
                concurrency=2,
                region=None,
                expected_bucket_owner=None,
                log_format=LogFormat.TEXT,
                debug=False,
                pgbadger=str(html),
            )
        )
    assert got.files and not got.failures

    # The server's own files, read by the csv module, after the server stopped.
    originals = sorted((tmp_path / "lab" / "pg-db" / "error").glob("postgresql.log.*.csv"))
    expected = python_rows(originals, start.timestamp(), finish.timestamp())
    rows = [engine_row(d) for d in json.loads(out.getvalue())]
    assert Counter(rows) == Counter(expected)
    severity = NAMES.index("error_severity")
    assert {"LOG", "ERROR", "WARNING"} <= {r[severity] for r in rows}
    assert any(r[1] == USER and "crème brûlée ☃',\n" in r[13] for r in rows)
    assert any("\n" in (r[13] or "") and "lab_orders" in r[13] for r in rows)

    text = html.read_text(encoding="utf-8", errors="replace")
    assert "pgBadger" in text and "lab_orders" in text
