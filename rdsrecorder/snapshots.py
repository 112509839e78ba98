"""DB snapshots: a DB snapshot of an instance, or a cluster snapshot when the instance belongs to an
Aurora cluster (or the identifier is a cluster), tagged ``app=rdsrecorder`` and the run id.

Snapshot ids say what and when (``rdsrecorder-<db>-20240204-1300``) and follow the RDS rules:
letters, digits and hyphens, a letter first, no trailing hyphen, no two hyphens in a row, at most
63 characters for cluster snapshots (255 for DB snapshots)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass, replace

import pendulum

from rdsrecorder.aws import Aws
from rdsrecorder.errors import AwsError, SnapshotError
from rdsrecorder.hooks import Hooks
from rdsrecorder.rds.control import RdsControl

log = logging.getLogger(__name__)

PREFIX = "rdsrecorder"
MAX_CLUSTER_ID = 63
MAX_INSTANCE_ID = 255
EXISTS_CODES = frozenset(
    {
        "DBSnapshotAlreadyExists",
        "DBSnapshotAlreadyExistsFault",
        "DBClusterSnapshotAlreadyExistsFault",
    }
)


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    snapshot_id: str
    arn: str
    kind: str  # "instance" or "cluster"
    status: str
    source: str = ""  # the instance or cluster the snapshot is of


def _clean(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9-]+", "-", text)
    return re.sub(r"-{2,}", "-", text).strip("-")


def snapshot_id(db_identifier: str, at: pendulum.DateTime, cluster: bool, suffix: int = 1) -> str:
    limit = MAX_CLUSTER_ID if cluster else MAX_INSTANCE_ID
    stamp = at.in_timezone("UTC").format("YYYYMMDD-HHmm")
    tail = f"-{stamp}" + (f"-{suffix}" if suffix > 1 else "")
    db = _clean(db_identifier) or "db"
    room = limit - len(PREFIX) - 1 - len(tail)
    if len(db) > room:
        # Deterministic shortening: keep the start, add a hash of the full name.
        digest = hashlib.sha256(db_identifier.encode()).hexdigest()[:6]
        db = db[: room - 7].rstrip("-") + "-" + digest
    return f"{PREFIX}-{db}{tail}"


def valid_snapshot_id(value: str, cluster: bool) -> bool:
    limit = MAX_CLUSTER_ID if cluster else MAX_INSTANCE_ID
    return (
        0 < len(value) <= limit
        and re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", value) is not None
        and not value.endswith("-")
        and "--" not in value
    )


async def create_snapshot(
    aws: Aws, rds: RdsControl, identifier: str, at: pendulum.DateTime, run_id: str, hooks: Hooks
) -> SnapshotResult:
    try:
        target = await rds.resolve(identifier)
    except AwsError as exc:
        hooks.snapshot(identifier, "failed")
        raise SnapshotError(f"snapshot of {identifier}: {exc}") from exc
    cluster_id = target.cluster_id if target.kind == "instance" else target.identifier
    is_cluster = cluster_id is not None
    source = cluster_id or target.instances[0]
    tags = [{"Key": "app", "Value": "rdsrecorder"}, {"Key": "run-id", "Value": run_id}]
    for suffix in range(1, 50):
        sid = snapshot_id(source, at, is_cluster, suffix)
        try:
            if is_cluster:
                resp = await aws.call(
                    "rds",
                    "create_db_cluster_snapshot",
                    DBClusterSnapshotIdentifier=sid,
                    DBClusterIdentifier=source,
                    Tags=tags,
                )
                snap = resp["DBClusterSnapshot"]
                arn = str(snap.get("DBClusterSnapshotArn", ""))
            else:
                resp = await aws.call(
                    "rds",
                    "create_db_snapshot",
                    DBSnapshotIdentifier=sid,
                    DBInstanceIdentifier=source,
                    Tags=tags,
                )
                snap = resp["DBSnapshot"]
                arn = str(snap.get("DBSnapshotArn", ""))
        except AwsError as exc:
            if exc.code in EXISTS_CODES:
                continue
            hooks.snapshot(identifier, "failed")
            raise SnapshotError(f"snapshot of {source} failed: {exc}") from exc
        hooks.snapshot(identifier, "created")
        return SnapshotResult(
            snapshot_id=sid,
            arn=arn,
            kind="cluster" if is_cluster else "instance",
            status=str(snap.get("Status", "creating")),
            source=source,
        )
    hooks.snapshot(identifier, "failed")
    raise SnapshotError(f"snapshot of {source}: 49 snapshots with this time already exist")


async def wait_available(
    aws: Aws,
    result: SnapshotResult,
    timeout_s: float,
    poll_s: float = 30.0,
    hooks: Hooks | None = None,
) -> SnapshotResult:
    deadline = time.monotonic() + timeout_s
    while True:
        if result.kind == "cluster":
            resp = await aws.call(
                "rds",
                "describe_db_cluster_snapshots",
                DBClusterSnapshotIdentifier=result.snapshot_id,
            )
            status = str(resp["DBClusterSnapshots"][0].get("Status", ""))
        else:
            resp = await aws.call(
                "rds", "describe_db_snapshots", DBSnapshotIdentifier=result.snapshot_id
            )
            status = str(resp["DBSnapshots"][0].get("Status", ""))
        result = replace(result, status=status)
        if status == "available":
            if hooks is not None:
                hooks.snapshot(result.source, "available")
            return result
        if status in ("failed", "error", "incompatible-restore", "deleted"):
            if hooks is not None:
                hooks.snapshot(result.source, "failed")
            raise SnapshotError(f"snapshot {result.snapshot_id} ended as {status}")
        if time.monotonic() >= deadline:
            raise SnapshotError(
                f"snapshot {result.snapshot_id} still {status} after {timeout_s:.0f} s"
            )
        log.info("snapshot %s is %s; checking again in %.0f s", result.snapshot_id, status, poll_s)
        await asyncio.sleep(poll_s)
