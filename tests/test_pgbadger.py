"""The tool people run on the archive: a real PostgreSQL writes csvlog while a workload runs,
rdsrecorder copies the logs (gzip) out of the lab, ``get`` brings the window back, and Debian's
pgbadger reads the files and reports the workload's statements."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pendulum
import pytest

from rdsrecorder.commands import run_get, run_sync
from rdsrecorder.compression import Compression
from rdsrecorder.config import LogFormat, build_get
from rdsrecorder_lab import Lab
from rdsrecorder_lab.postgres import missing_reason
from tests.e2e import sync_settings

pytestmark = pytest.mark.postgres
PG_REASON = missing_reason()
PGBADGER = shutil.which("pgbadger")
WORKLOAD_S = 8  # the lab's workload runs its statements every 1, 3, 5 and 11 seconds


@pytest.mark.skipif(PG_REASON is not None, reason=f"cannot run PostgreSQL here: {PG_REASON}")
@pytest.mark.skipif(PGBADGER is None, reason="pgbadger is not installed (scripts/system-deps.sh)")
@pytest.mark.timeout(90)
async def test_pgbadger_reports_the_workload_of_a_window_got_back_from_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert PGBADGER is not None
    start = pendulum.now("UTC").start_of("minute")
    async with Lab(tmp_path / "lab", s3="moto", postgres_instance="pg-db") as lab:
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)
        await asyncio.sleep(WORKLOAD_S)
        finish = pendulum.now("UTC")
        settings = sync_settings(
            db="pg-db",
            bucket=lab.bucket,
            start=start,
            finish=finish,
            run_id="pgbadger",
            finish_grace_s=0.0,  # the current file is copied as it is now
            compress=Compression.GZIP,
        )
        report = await run_sync(settings)
        assert report.exit_code == 0, report.totals
        out = tmp_path / "incident"
        got = await run_get(
            build_get(
                now=pendulum.now("UTC"),
                bucket=lab.bucket,
                db_identifier="pg-db",
                start=start.to_iso8601_string(),
                finish=finish.to_iso8601_string(),
                output_dir=str(out),
                stdout=False,
                concurrency=4,
                region=None,
                expected_bucket_owner=None,
                log_format=LogFormat.TEXT,
                debug=False,
            )
        )
    assert got.files and not got.failures
    paths = sorted(out.glob("pg-db/error/postgresql.log.*.csv"))
    assert [p.name for p in paths] == sorted(Path(f.source).name for f in got.files)
    result = subprocess.run(
        [PGBADGER, "-f", "csv", "--quiet", "-o", str(tmp_path / "report.txt"), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "report.txt").read_text(encoding="utf-8", errors="replace")
    assert "SELECT count(*), sum(amount) FROM lab_orders" in text.replace("\n", " ")
    assert "lab_missing_table" in text or "division by zero" in text  # its errors, too
