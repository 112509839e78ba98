"""The RDS control plane: resolve an instance or an Aurora cluster into the instances that hold
logs, and list an instance's log files (paged; the caller never sees markers)."""

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
            return Target(
                identifier=identifier,
                kind="instance",
                instances=(db["DBInstanceIdentifier"],),
                cluster_id=db.get("DBClusterIdentifier"),
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
