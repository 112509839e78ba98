"""`rdsrecorder snapshot` against moto's RDS control plane (a real server on loopback): a plain
instance gets a DB snapshot, an Aurora member or cluster gets a cluster snapshot, tagged, at start.
A FakeClock makes the wait instant; one real-time wait is covered by the live-mode test."""

from __future__ import annotations

from typing import Any

import boto3
import pendulum
import pytest

from rdsrecorder.clock import FakeClock
from rdsrecorder.commands import run_snapshot
from rdsrecorder.config import AwsSettings, LogFormat, SnapshotSettings, build_snapshot
from rdsrecorder.errors import ConfigError, DbNotFoundError
from rdsrecorder.snapshots import snapshot_id, valid_snapshot_id
from tests.s3_servers import S3Server


@pytest.fixture
def rds(moto_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Any:
    # The session's moto server (conftest.py) also serves RDS: its S3 tests never look at RDS.
    moto_url = moto_server.url
    monkeypatch.setenv("AWS_ENDPOINT_URL_RDS", moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_url)
    client = boto3.client("rds", endpoint_url=moto_url, region_name="us-east-1")
    existing = {d["DBInstanceIdentifier"] for d in client.describe_db_instances()["DBInstances"]}
    if "plain-db" not in existing:
        client.create_db_instance(
            DBInstanceIdentifier="plain-db",
            DBInstanceClass="db.t3.micro",
            Engine="postgres",
            MasterUsername="u",
            MasterUserPassword="password123",
            AllocatedStorage=20,
        )
        client.create_db_cluster(
            DBClusterIdentifier="aurora-cl",
            Engine="aurora-postgresql",
            MasterUsername="u",
            MasterUserPassword="password123",
        )
        client.create_db_instance(
            DBInstanceIdentifier="aurora-cl-1",
            DBInstanceClass="db.r6g.large",
            Engine="aurora-postgresql",
            DBClusterIdentifier="aurora-cl",
        )
    return client


def settings(db: str, start: pendulum.DateTime, wait: bool = False) -> SnapshotSettings:
    return SnapshotSettings(
        db_identifier=db,
        start=start,
        run_id="snap-run",
        wait=wait,
        aws=AwsSettings(region="us-east-1"),
    )


NOW = pendulum.now("UTC").start_of("minute")


@pytest.mark.parametrize(
    ("db", "kind", "source"),
    [
        ("plain-db", "instance", "plain-db"),
        ("aurora-cl-1", "cluster", "aurora-cl"),
        ("aurora-cl", "cluster", "aurora-cl"),
    ],
)
async def test_snapshot_at_start(rds: Any, db: str, kind: str, source: str) -> None:
    clock = FakeClock(NOW.timestamp())
    start = NOW.add(minutes=10)
    result = await run_snapshot(settings(db, start, wait=True), clock=clock)
    assert result is not None
    assert clock.now() >= start.timestamp()  # fired at start, not before
    assert result.kind == kind and result.status == "available"
    assert valid_snapshot_id(result.snapshot_id, cluster=kind == "cluster")
    assert result.snapshot_id.startswith(f"rdsrecorder-{source}-{start.format('YYYYMMDD-HHmm')}")
    if kind == "cluster":
        snap = rds.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier=result.snapshot_id)[
            "DBClusterSnapshots"
        ][0]
        assert snap["DBClusterIdentifier"] == source
        arn = snap["DBClusterSnapshotArn"]
    else:
        snap = rds.describe_db_snapshots(DBSnapshotIdentifier=result.snapshot_id)["DBSnapshots"][0]
        assert snap["DBInstanceIdentifier"] == source
        arn = snap["DBSnapshotArn"]
    assert result.arn == arn
    tags = {t["Key"]: t["Value"] for t in rds.list_tags_for_resource(ResourceName=arn)["TagList"]}
    assert tags["app"] == "rdsrecorder" and tags["run-id"] == "snap-run"


async def test_second_snapshot_same_minute_gets_suffix(rds: Any) -> None:
    clock = FakeClock(NOW.timestamp())
    start = NOW.add(hours=2)
    first = await run_snapshot(settings("plain-db", start), clock=FakeClock(NOW.timestamp()))
    second = await run_snapshot(settings("plain-db", start), clock=clock)
    assert first is not None and second is not None
    assert second.snapshot_id == first.snapshot_id + "-2"


async def test_snapshot_refuses_past_and_unknown(rds: Any) -> None:
    with pytest.raises(ConfigError, match="in the past"):
        build_snapshot(
            now=NOW,
            start=NOW.subtract(minutes=1).to_iso8601_string(),
            db_identifier="plain-db",
            run_id=None,
            region=None,
            wait=False,
            metrics_address="127.0.0.1",
            metrics_port=0,
            log_format=LogFormat.TEXT,
            debug=False,
        )
    with pytest.raises(DbNotFoundError, match="nope"):
        await run_snapshot(settings("nope", NOW.add(minutes=1)), clock=FakeClock(NOW.timestamp()))


@pytest.mark.parametrize(
    "name",
    [
        "db",
        "my-test-db",
        "a" * 300,
        "9starts-with-digit",
        "under_score.dots",
        "--x--",
        "UPPER-case-",
    ],
)
@pytest.mark.parametrize("cluster", [False, True])
def test_snapshot_ids_always_valid(name: str, cluster: bool) -> None:
    at = pendulum.datetime(2024, 2, 4, 13, tz="UTC")
    for suffix in (1, 2, 17):
        sid = snapshot_id(name, at, cluster, suffix)
        assert valid_snapshot_id(sid, cluster), sid
    assert snapshot_id("my-test-db", at, False) == "rdsrecorder-my-test-db-20240204-1300"
    long_a = snapshot_id("a" * 300, at, cluster)
    assert long_a == snapshot_id("a" * 300, at, cluster)  # deterministic
