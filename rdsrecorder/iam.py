"""The least-privilege IAM policy for the options given (``rdsrecorder iam-policy``).

Each ``Grant`` is one policy statement: its IAM actions, a ``Sid`` that says what they buy, the AWS
operations of the code they authorise, and when the options need it. ``policy`` keeps the grants
the options need, for the identity that makes the calls (the process, or the role it assumes for
RDS or S3). ``tests/test_iam.py`` walks every AWS operation the code can call and checks that
``GRANTS`` covers each and names nothing else; docs/iam.md says what each action buys.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rdsrecorder.models import DownloadMethod

POLICY_VERSION = "2012-10-17"


class Command(enum.StrEnum):
    """The command whose calls the policy allows."""

    SYNC = "sync"
    SNAPSHOT = "snapshot"
    VERIFY = "verify"
    GET = "get"
    LS = "ls"
    QUERY = "query"  # reads the copies as get does
    ATHENA_DDL = "athena-ddl"  # reads a run's manifests


class Principal(enum.StrEnum):
    """Who the policy is for: the process's own identity, or a role it assumes."""

    IDENTITY = "identity"
    RDS_ROLE = "rds-role"  # --assume-role: every RDS call
    S3_ROLE = "s3-role"  # --s3-assume-role: every S3 call


class Side(enum.Enum):
    """Whose credentials make a grant's calls."""

    RDS = "rds"
    S3 = "s3"
    PROCESS = "process"  # always the process's own (sts:AssumeRole)


@dataclass(frozen=True, slots=True)
class IamPolicySettings:
    bucket: str | None  # None only for the snapshot command, which touches no bucket
    command: Command = Command.SYNC
    download_method: DownloadMethod = DownloadMethod.AUTO
    snapshot: bool = True  # sync: the snapshot of Wait & Sync mode
    retention_known: bool = False  # sync --retention-hours: DescribeDBParameters is not called
    wait: bool = False  # snapshot --wait
    assume_role: str | None = None
    s3_assume_role: str | None = None
    kms_key: str | None = None  # --sse aws:kms --sse-kms-key-id: a customer managed key
    principal: Principal = Principal.IDENTITY


_READERS = (Command.VERIFY, Command.GET, Command.LS, Command.QUERY, Command.ATHENA_DDL)


def _sync(s: IamPolicySettings) -> bool:
    return s.command is Command.SYNC


def _bucket_arn(s: IamPolicySettings) -> str:
    return f"arn:aws:s3:::{s.bucket}"


def _objects_arn(s: IamPolicySettings) -> str:
    return f"arn:aws:s3:::{s.bucket}/*"


def _any(_s: IamPolicySettings) -> str:
    return "*"


def _kms_arn(s: IamPolicySettings) -> str:
    key = s.kms_key or ""
    if key.startswith("arn:"):
        return key
    # An alias cannot be a KMS resource: the key behind it is matched by the condition below.
    return "*" if key.startswith("alias/") else f"arn:aws:kms:*:*:key/{key}"


def _kms_condition(s: IamPolicySettings) -> dict[str, Any] | None:
    key = s.kms_key or ""
    if key.startswith("alias/"):
        return {"ForAnyValue:StringEquals": {"kms:ResourceAliases": key}}
    return None


@dataclass(frozen=True, slots=True)
class Grant:
    sid: str  # what the statement buys
    actions: tuple[str, ...]
    operations: tuple[str, ...]  # "service:Operation" of the code's calls these actions allow
    side: Side
    needed: Callable[[IamPolicySettings], bool]
    resource: Callable[[IamPolicySettings], str] = _any
    condition: Callable[[IamPolicySettings], dict[str, Any] | None] = lambda _s: None


_WRITES = (
    "s3:PutObject",
    "s3:CreateMultipartUpload",
    "s3:UploadPart",
    "s3:CompleteMultipartUpload",
)

GRANTS: tuple[Grant, ...] = (
    # RDS. Resource "*": discovery, Aurora members that join later and the listing calls name
    # DBs nobody knows in advance.
    Grant(
        "FindTheDBsAndTheirClusters",
        ("rds:DescribeDBInstances", "rds:DescribeDBClusters"),
        ("rds:DescribeDBInstances", "rds:DescribeDBClusters"),
        Side.RDS,
        lambda s: s.command in (Command.SYNC, Command.SNAPSHOT),
    ),
    Grant(
        "ListTheLogFiles",
        ("rds:DescribeDBLogFiles",),
        ("rds:DescribeDBLogFiles",),
        Side.RDS,
        _sync,
    ),
    Grant(
        "ReadTheLogRetentionForTheHeadroomMetric",
        ("rds:DescribeDBParameters",),
        ("rds:DescribeDBParameters",),
        Side.RDS,
        lambda s: _sync(s) and not s.retention_known,
    ),
    Grant(
        "DownloadWholeLogFilesFastWithoutLineCuts",
        ("rds:DownloadCompleteDBLogFile",),
        ("rds:DownloadCompleteLogFile",),  # the REST endpoint, in no SDK
        Side.RDS,
        lambda s: _sync(s) and s.download_method is not DownloadMethod.PORTION,
    ),
    Grant(
        "DownloadLogFilesInPortions",
        ("rds:DownloadDBLogFilePortion",),
        ("rds:DownloadDBLogFilePortion",),
        Side.RDS,
        lambda s: _sync(s) and s.download_method is not DownloadMethod.COMPLETE,
    ),
    Grant(
        # Snapshots are created with their tags, which AWS authorises as AddTagsToResource.
        "TakeTaggedSnapshots",
        ("rds:CreateDBSnapshot", "rds:CreateDBClusterSnapshot", "rds:AddTagsToResource"),
        ("rds:CreateDBSnapshot", "rds:CreateDBClusterSnapshot"),
        Side.RDS,
        lambda s: (_sync(s) and s.snapshot) or s.command is Command.SNAPSHOT,
    ),
    Grant(
        "WaitUntilTheSnapshotIsAvailable",
        ("rds:DescribeDBSnapshots", "rds:DescribeDBClusterSnapshots"),
        ("rds:DescribeDBSnapshots", "rds:DescribeDBClusterSnapshots"),
        Side.RDS,
        lambda s: s.command is Command.SNAPSHOT and s.wait,
    ),
    # S3.
    Grant(
        "CheckTheBucketAndListRuns",
        ("s3:ListBucket",),
        ("s3:HeadBucket", "s3:ListObjectsV2"),
        Side.S3,
        lambda s: s.command is not Command.SNAPSHOT,
        _bucket_arn,
    ),
    Grant(
        "ReadManifestsAndCheckObjects",
        ("s3:GetObject",),
        ("s3:HeadObject", "s3:GetObject"),
        Side.S3,
        lambda s: s.command is not Command.SNAPSHOT,
        _objects_arn,
    ),
    Grant(
        "WriteLogObjectsAndManifests",
        ("s3:PutObject",),
        _WRITES,
        Side.S3,
        _sync,
        _objects_arn,
    ),
    Grant(
        "AbortUploadsCutShort",
        ("s3:AbortMultipartUpload",),
        ("s3:AbortMultipartUpload",),
        Side.S3,
        _sync,
        _objects_arn,
    ),
    Grant(
        "FindUploadsAKilledProcessLeft",
        ("s3:ListBucketMultipartUploads",),
        ("s3:ListMultipartUploads",),
        Side.S3,
        _sync,
        _bucket_arn,
    ),
    Grant(
        "EncryptAndUploadWithTheKmsKey",
        ("kms:GenerateDataKey", "kms:Decrypt"),
        (*_WRITES, "s3:GetObject"),  # S3 asks KMS on the caller's behalf
        Side.S3,
        lambda s: _sync(s) and s.kms_key is not None,
        _kms_arn,
        _kms_condition,
    ),
    Grant(
        "DecryptWithTheKmsKey",
        ("kms:Decrypt",),
        ("s3:GetObject",),
        Side.S3,
        lambda s: s.command in _READERS and s.kms_key is not None,
        _kms_arn,
        _kms_condition,
    ),
    # STS: the process's own identity assumes the roles.
    Grant(
        "AssumeTheRoleForRds",
        ("sts:AssumeRole",),
        ("sts:AssumeRole",),
        Side.PROCESS,
        lambda s: _sync(s) and s.assume_role is not None,
        lambda s: str(s.assume_role),
    ),
    Grant(
        "AssumeTheRoleForS3",
        ("sts:AssumeRole",),
        ("sts:AssumeRole",),
        Side.PROCESS,
        lambda s: _sync(s) and s.s3_assume_role is not None,
        lambda s: str(s.s3_assume_role),
    ),
)

# Operations that need no permission: the credentials check at start.
UNAUTHORISED_OPERATIONS = frozenset({"sts:GetCallerIdentity"})


def _for_principal(grant: Grant, s: IamPolicySettings) -> bool:
    rds_elsewhere = _sync(s) and s.assume_role is not None
    s3_elsewhere = _sync(s) and s.s3_assume_role is not None
    if s.principal is Principal.RDS_ROLE:
        return grant.side is Side.RDS
    if s.principal is Principal.S3_ROLE:
        return grant.side is Side.S3
    if grant.side is Side.RDS:
        return not rds_elsewhere
    if grant.side is Side.S3:
        return not s3_elsewhere
    return True


def grants(s: IamPolicySettings) -> list[Grant]:
    """The grants these settings need, for the principal they name."""
    return [g for g in GRANTS if g.needed(s) and _for_principal(g, s)]


def policy(s: IamPolicySettings) -> dict[str, Any]:
    statements: list[dict[str, Any]] = []
    for g in grants(s):
        statement: dict[str, Any] = {
            "Sid": g.sid,
            "Effect": "Allow",
            "Action": list(g.actions),
            "Resource": g.resource(s),
        }
        condition = g.condition(s)
        if condition is not None:
            statement["Condition"] = condition
        statements.append(statement)
    return {"Version": POLICY_VERSION, "Statement": statements}


def render(document: dict[str, Any]) -> str:
    """The policy as JSON, a statement on three or four lines: short enough to read whole."""
    lines = ["{", f'  "Version": {json.dumps(document["Version"])},', '  "Statement": [']
    statements: list[dict[str, Any]] = document["Statement"]
    for i, st in enumerate(statements):
        parts = [
            f'{{"Sid": {json.dumps(st["Sid"])}, "Effect": {json.dumps(st["Effect"])}',
            f' "Action": {json.dumps(st["Action"])}',
            f' "Resource": {json.dumps(st["Resource"])}',
        ]
        if "Condition" in st:
            parts.append(f' "Condition": {json.dumps(st["Condition"])}')
        end = "}," if i < len(statements) - 1 else "}"
        lines += [f"    {part}," for part in parts[:-1]] + [f"    {parts[-1]}{end}"]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"
