"""Real-time end-to-end tests of the live modes against a real PostgreSQL writing minute-rotated
csvlog files into the lab: Download interval & Sync and Wait & Sync (with its snapshot at start)
run side by side for ~3 minutes, so the suite pays for the minutes once."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pendulum
import pytest

from rdsrecorder.commands import run_sync
from rdsrecorder.logfiles import assign_spans, select
from rdsrecorder.models import LogFile
from rdsrecorder.window import Mode
from rdsrecorder_lab import LabThread
from tests.e2e import multipart_uploads, objects, s3_client, sync_settings

pytestmark = [pytest.mark.realtime, pytest.mark.postgres]

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))


@pytest.fixture(scope="module")
def pg_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabThread]:
    if not PG_BIN or shutil.which("runuser") is None:
        pytest.skip("Debian postgresql is not installed (make test installs it)")
    root = tmp_path_factory.mktemp("pglab")
    with LabThread(root, s3="moto", postgres_instance="pg-db", snapshot_delay_s=1.0) as lab:
        yield lab


def rds_client(env: dict[str, str]) -> Any:
    return boto3.client(
        "rds",
        endpoint_url=env["AWS_ENDPOINT_URL_RDS"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


@pytest.mark.timeout(420)
async def test_sync_and_wait_modes_follow_real_postgres(
    pg_lab: LabThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = dict(pg_lab.env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    bucket = env["AWS_S3_BUCKET_NAME"]
    logdir = pg_lab.root / "pg-db" / "error"
    now = pendulum.now("UTC")
    sync_finish = now.add(seconds=110)
    wait_start, wait_finish = now.add(seconds=25), now.add(seconds=100)
    common = dict(db="pg-db", bucket=bucket, poll_interval_s=5.0)
    sync_task = run_sync(
        sync_settings(
            start=now.subtract(minutes=1), finish=sync_finish, run_id="live-sync", **common
        )  # type: ignore[arg-type]
    )
    wait_task = run_sync(
        sync_settings(start=wait_start, finish=wait_finish, run_id="live-wait", **common)  # type: ignore[arg-type]
    )
    sync_report, wait_report = await asyncio.wait_for(asyncio.gather(sync_task, wait_task), 330)
    ended = pendulum.now("UTC")

    assert sync_report.mode is Mode.DOWNLOAD_AND_SYNC
    assert wait_report.mode is Mode.WAIT_AND_SYNC
    # Both exit by themselves (the gather above ended), and not before finish: they waited for
    # the file current at finish to rotate.
    assert ended >= sync_finish

    client = s3_client(env)
    final = {f"error/{p.name}": p.read_bytes() for p in logdir.glob("postgresql.log.*.csv")}
    listed = [LogFile("pg-db", name, 0, len(data)) for name, data in final.items()]
    spans = assign_spans(listed)
    for report, start, finish, run_id in (
        (sync_report, now.subtract(minutes=1), sync_finish, "live-sync"),
        (wait_report, wait_start, wait_finish, "live-wait"),
    ):
        assert report.exit_code == 0, (run_id, report.totals)
        expected = [
            s for s in select(spans, start.timestamp(), finish.timestamp()) if s.has_successor
        ]
        assert len(expected) >= 2, run_id
        got = objects(client, bucket, f"{run_id}/rds_log_")
        assert report.totals.partial == 0
        for sf in expected:
            key = f"{run_id}/rds_log_{run_id}_{sf.timestamp_s}"
            assert key in got, (run_id, sf.name)
            # byte-identical to the file's final content: copied only after it rotated
            assert hashlib.sha256(got[key]).digest() == hashlib.sha256(final[sf.name]).digest()
        assert len(got) == len(expected)
    assert multipart_uploads(client, bucket) == []

    # Wait & Sync took exactly one snapshot, at start; Download interval & Sync took none.
    snaps = rds_client(env).describe_db_snapshots(DBInstanceIdentifier="pg-db")["DBSnapshots"]
    assert len(snaps) == 1
    created = pendulum.instance(snaps[0]["SnapshotCreateTime"]).in_timezone("UTC")
    # At start (give or take the clocks' rounding), not later in the run.
    assert wait_start.subtract(seconds=1) <= created < wait_finish
    tags = {t["Key"]: t["Value"] for t in snaps[0].get("TagList", [])}
    assert tags.get("app") == "rdsrecorder"
    assert wait_report.snapshot is not None
    assert wait_report.snapshot.snapshot_id == snaps[0]["DBSnapshotIdentifier"]
