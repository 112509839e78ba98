"""The RDS control plane: resolve an instance or an Aurora cluster into the instances that hold
logs, list every instance and cluster of the region (for discovery), read a parameter group's
``rds.log_retention_period``, and list an instance's log files. Paging is always an async
generator: the caller never sees markers. Only ``rds:Describe*`` actions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from rdsrecorder.aws import Aws
from rdsrecorder.errors import AwsError, DbNotFoundError, PreflightError
from rdsrecorder.models import LogFile

INSTANCE_NOT_FOUND = frozenset({"DBInstanceNotFound", "DBInstanceNotFoundFault"})
CLUSTER_NOT_FOUND = frozenset({"DBClusterNotFoundFault", "DBClusterNotFound"})
ACCESS_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})


class ListingDeniedError(PreflightError):
    """DescribeDBLogFiles is not allowed: nothing can be copied (exit 3, at once in every mode)."""


@dataclass(frozen=True, slots=True)
class Target:
    identifier: str
    kind: Literal["instance", "cluster"]
    instances: tuple[str, ...]  # the instances whose logs are read (a cluster's members)
    cluster_id: str | None  # the Aurora cluster (of an instance, or the target itself)
    parameter_group: str | None = None  # an instance's DB parameter group
    resource_id: str = ""  # an instance's DbiResourceId: which incarnation of the name it is


POSTGRES_ENGINES = frozenset({"postgres", "aurora-postgresql"})
RETENTION_PARAMETER = "rds.log_retention_period"  # minutes


@dataclass(frozen=True, slots=True)
class DbInstance:
    """One instance as DescribeDBInstances shows it (what discovery needs)."""

    identifier: str
    engine: str
    cluster_id: str | None
    tags: dict[str, str]
    parameter_group: str | None
    resource_id: str = ""  # DbiResourceId: a name deleted and recreated gets a new one


def _db_instance(db: dict[str, Any]) -> DbInstance:
    """A DBInstances entry of DescribeDBInstances."""
    groups = db.get("DBParameterGroups") or [{}]
    return DbInstance(
        identifier=db["DBInstanceIdentifier"],
        engine=str(db.get("Engine", "")),
        cluster_id=db.get("DBClusterIdentifier") or None,
        tags=_tags(db.get("TagList")),
        parameter_group=groups[0].get("DBParameterGroupName"),
        resource_id=str(db.get("DbiResourceId") or ""),
    )


def _tags(items: list[dict[str, Any]] | None) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in items or [] if "Key" in t}


class RdsControl:
    def __init__(self, aws: Aws) -> None:
        self._aws = aws

    async def resolve(self, identifier: str) -> Target:
        try:
            resp = await self._aws.call(
                "rds", "describe_db_instances", DBInstanceIdentifier=identifier
            )
        except AwsError as exc:
            if exc.code not in INSTANCE_NOT_FOUND:
                raise
        else:
            db = resp["DBInstances"][0]
            groups = db.get("DBParameterGroups") or [{}]
            return Target(
                identifier=identifier,
                kind="instance",
                instances=(db["DBInstanceIdentifier"],),
                cluster_id=db.get("DBClusterIdentifier"),
                parameter_group=groups[0].get("DBParameterGroupName"),
                resource_id=str(db.get("DbiResourceId") or ""),
            )
        try:
            resp = await self._aws.call(
                "rds", "describe_db_clusters", DBClusterIdentifier=identifier
            )
        except AwsError as exc:
            if exc.code in CLUSTER_NOT_FOUND:
                raise DbNotFoundError(
                    f"DB instance or cluster {identifier!r} not found in region {self._aws.region}"
                ) from exc
            raise
        members = resp["DBClusters"][0].get("DBClusterMembers", [])
        return Target(
            identifier=identifier,
            kind="cluster",
            instances=tuple(sorted(m["DBInstanceIdentifier"] for m in members)),
            cluster_id=identifier,
        )

    async def _pages(self, method: str, field: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        seen_markers: set[str] = set()
        while True:
            resp = await self._aws.call("rds", method, **params)
            for item in resp.get(field, []):
                yield item
            marker = resp.get("Marker")
            if not marker or marker in seen_markers:
                return
            seen_markers.add(marker)
            params["Marker"] = marker

    async def all_instances(self) -> AsyncIterator[DbInstance]:
        """Every DB instance of the region (100 per call)."""
        async for db in self._pages("describe_db_instances", "DBInstances", MaxRecords=100):
            yield _db_instance(db)

    async def cluster_tags(self) -> dict[str, dict[str, str]]:
        """The tags of every DB cluster of the region, by cluster id."""
        out: dict[str, dict[str, str]] = {}
        async for c in self._pages("describe_db_clusters", "DBClusters", MaxRecords=100):
            out[c["DBClusterIdentifier"]] = _tags(c.get("TagList"))
        return out

    async def instance(self, identifier: str) -> DbInstance:
        resp = await self._aws.call("rds", "describe_db_instances", DBInstanceIdentifier=identifier)
        return _db_instance(resp["DBInstances"][0])

    async def log_retention_s(self, parameter_group: str) -> float | None:
        """``rds.log_retention_period`` of a parameter group, in seconds; None when not set."""
        async for p in self._pages(
            "describe_db_parameters", "Parameters", DBParameterGroupName=parameter_group
        ):
            if p.get("ParameterName") == RETENTION_PARAMETER and p.get("ParameterValue"):
                try:
                    return float(p["ParameterValue"]) * 60
                except ValueError:
                    return None
        return None

    async def list_log_files(
        self, instance: str, since_ms: int | None = None
    ) -> AsyncIterator[LogFile]:
        params: dict[str, Any] = {"DBInstanceIdentifier": instance}
        if since_ms is not None:
            params["FileLastWritten"] = int(since_ms)
        seen_markers: set[str] = set()
        while True:
            try:
                resp = await self._aws.call("rds", "describe_db_log_files", **params)
            except AwsError as exc:
                if exc.code in ACCESS_DENIED:
                    raise ListingDeniedError(
                        f"{exc} (allow rds:DescribeDBLogFiles on {instance})"
                    ) from exc
                raise
            for item in resp.get("DescribeDBLogFiles", []):
                yield LogFile(
                    instance=instance,
                    name=item["LogFileName"],
                    last_written_ms=int(item.get("LastWritten", 0)),
                    size=int(item.get("Size", 0)),
                )
            marker = resp.get("Marker")
            if not marker or marker in seen_markers:
                return
            seen_markers.add(marker)
            params["Marker"] = marker

    async def describe_file(self, instance: str, name: str) -> LogFile | None:
        """How RDS lists one file now (one DescribeDBLogFiles call, ``FilenameContains``); None
        when it is not listed any more."""
        resp = await self._aws.call(
            "rds", "describe_db_log_files", DBInstanceIdentifier=instance, FilenameContains=name
        )
        for item in resp.get("DescribeDBLogFiles", []):
            if item.get("LogFileName") == name:
                return LogFile(
                    instance=instance,
                    name=name,
                    last_written_ms=int(item.get("LastWritten", 0)),
                    size=int(item.get("Size", 0)),
                )
        return None
