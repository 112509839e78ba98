"""`rdsrecorder iam-policy` against the code: every AWS operation the package can call is allowed
by a statement, no statement allows anything the code does not call, each option adds or drops
exactly the statements it should, the original tool's list still covers what is required, and real
runs against the lab call nothing the policy for their options leaves out."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import botocore.session
import pendulum
import pytest
import typer
from botocore import xform_name

from rdsrecorder.cli import cli
from rdsrecorder.commands import run_get, run_ls, run_sync, run_verify
from rdsrecorder.config import AwsSettings, GetSettings, LsSettings, VerifySettings
from rdsrecorder.hooks import Hooks
from rdsrecorder.iam import (
    GRANTS,
    UNAUTHORISED_OPERATIONS,
    Command,
    IamPolicySettings,
    Principal,
    grants,
    policy,
    render,
)
from rdsrecorder.models import DownloadMethod
from rdsrecorder_lab import LabThread
from tests.e2e import Written, s3_client, sync_settings, write_hourly
from tests.e2e import objects as s3_objects
from tests.s3_servers import S3Gateway

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rdsrecorder"
SERVICES = ("rds", "s3", "sts")
# The whole-file download is a REST endpoint no SDK knows: its path names it in the code.
COMPLETE_PATH_SUFFIX = "/downloadCompleteLogFile"
COMPLETE_OPERATION = "rds:DownloadCompleteLogFile"

# What each operation needs, from AWS's Service Authorization Reference: the S3 calls map to the
# actions AWS authorises them as, not to actions of the same name.
REQUIRED: dict[str, set[str]] = {
    "rds:DescribeDBInstances": {"rds:DescribeDBInstances"},
    "rds:DescribeDBClusters": {"rds:DescribeDBClusters"},
    "rds:DescribeDBLogFiles": {"rds:DescribeDBLogFiles"},
    "rds:DescribeDBParameters": {"rds:DescribeDBParameters"},
    "rds:DownloadDBLogFilePortion": {"rds:DownloadDBLogFilePortion"},
    COMPLETE_OPERATION: {"rds:DownloadCompleteDBLogFile"},
    # created with Tags=..., which AWS authorises as AddTagsToResource as well
    "rds:CreateDBSnapshot": {"rds:CreateDBSnapshot", "rds:AddTagsToResource"},
    "rds:CreateDBClusterSnapshot": {"rds:CreateDBClusterSnapshot", "rds:AddTagsToResource"},
    "rds:DescribeDBSnapshots": {"rds:DescribeDBSnapshots"},
    "rds:DescribeDBClusterSnapshots": {"rds:DescribeDBClusterSnapshots"},
    "s3:HeadBucket": {"s3:ListBucket"},
    "s3:ListObjectsV2": {"s3:ListBucket"},
    "s3:ListMultipartUploads": {"s3:ListBucketMultipartUploads"},
    "s3:HeadObject": {"s3:GetObject"},
    "s3:GetObject": {"s3:GetObject"},
    "s3:PutObject": {"s3:PutObject"},
    "s3:CreateMultipartUpload": {"s3:PutObject"},
    "s3:UploadPart": {"s3:PutObject"},
    "s3:CompleteMultipartUpload": {"s3:PutObject"},
    "s3:AbortMultipartUpload": {"s3:AbortMultipartUpload"},
    "sts:AssumeRole": {"sts:AssumeRole"},
}
# What S3 asks KMS on the caller's behalf when the objects use a customer managed key.
REQUIRED_WITH_KMS_KEY: dict[str, set[str]] = {
    "s3:PutObject": {"kms:GenerateDataKey"},
    "s3:CreateMultipartUpload": {"kms:GenerateDataKey"},
    "s3:UploadPart": {"kms:Decrypt"},
    "s3:CompleteMultipartUpload": {"kms:Decrypt"},
    "s3:GetObject": {"kms:Decrypt"},
}
ORIGINAL_LIST = {
    "rds:Describe*",
    "rds:CreateDBSnapshot",
    "rds:CreateDBClusterSnapshot",
    "rds:AddTagsToResource",
    "rds:DownloadDBLogFilePortion",
    "s3:ListBucket",
    "s3:PutObject",
    "s3:GetObject",
    "s3:DeleteObject",
    "s3:ListAllMyBuckets",
}
# Allowed beyond the original list, each optional (docs/iam.md): without it the run goes on.
OPTIONAL = {
    "rds:DownloadCompleteDBLogFile",
    "s3:ListBucketMultipartUploads",
    "s3:AbortMultipartUpload",
}
BUCKET = "my-test-bucket"
ROLE = "arn:aws:iam::111122223333:role/logs-reader"
S3_ROLE = "arn:aws:iam::444455556666:role/archive-writer"


def _operation_names() -> dict[str, str]:
    """snake_case method name -> "service:Operation", from botocore's own service models."""
    session = botocore.session.get_session()
    out: dict[str, str] = {}
    for service in SERVICES:
        for op in session.get_service_model(service).operation_names:
            name = xform_name(op)
            assert name not in out, f"{name} names an operation of two services"
            out[name] = f"{service}:{op}"
    return out


def called_operations() -> set[str]:
    """Every AWS operation the package names: its calls go through ``Aws.call(service, method)``
    and the like, so each operation appears as a string literal of its method name."""
    names = _operation_names()
    found: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "iam.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in names:
                    found.add(names[node.value])
                elif node.value.endswith(COMPLETE_PATH_SUFFIX):
                    found.add(COMPLETE_OPERATION)
    return found


@pytest.fixture(scope="module")
def called() -> set[str]:
    ops = called_operations()
    # The scan must see the calls it is meant to check, or the tests below prove nothing.
    assert {"rds:DescribeDBLogFiles", "s3:PutObject", COMPLETE_OPERATION} <= ops
    return ops


def granted_operations() -> set[str]:
    return {op for g in GRANTS for op in g.operations}


def test_every_operation_the_code_calls_is_granted(called: set[str]) -> None:
    missing = called - granted_operations() - UNAUTHORISED_OPERATIONS
    assert not missing, f"called but in no statement of rdsrecorder/iam.py: {sorted(missing)}"


def test_no_statement_names_an_operation_the_code_does_not_call(called: set[str]) -> None:
    unused = (granted_operations() | UNAUTHORISED_OPERATIONS) - called
    assert not unused, f"in rdsrecorder/iam.py but never called: {sorted(unused)}"


def test_each_statement_allows_what_its_operations_need_and_nothing_else() -> None:
    for g in GRANTS:
        table = REQUIRED_WITH_KMS_KEY if g.actions[0].startswith("kms:") else REQUIRED
        needed = set().union(*(table[op] for op in g.operations))
        assert set(g.actions) == needed, g.sid
        assert re.fullmatch(r"[A-Za-z0-9]+", g.sid), g.sid  # what IAM accepts as a Sid
    assert len({g.sid for g in GRANTS}) == len(GRANTS)


def settings(**kw: object) -> IamPolicySettings:
    return IamPolicySettings(bucket=BUCKET, **kw)  # type: ignore[arg-type]


def actions(s: IamPolicySettings) -> set[str]:
    return {a for st in policy(s)["Statement"] for a in st["Action"]}


def test_default_sync_policy() -> None:
    assert actions(settings()) == {
        "rds:DescribeDBInstances",
        "rds:DescribeDBClusters",
        "rds:DescribeDBLogFiles",
        "rds:DescribeDBParameters",
        "rds:DownloadCompleteDBLogFile",
        "rds:DownloadDBLogFilePortion",
        "rds:CreateDBSnapshot",
        "rds:CreateDBClusterSnapshot",
        "rds:AddTagsToResource",
        "s3:ListBucket",
        "s3:GetObject",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:ListBucketMultipartUploads",
    }
    resources = {st["Sid"]: st["Resource"] for st in policy(settings())["Statement"]}
    assert resources["CheckTheBucketAndListRuns"] == f"arn:aws:s3:::{BUCKET}"
    assert resources["WriteLogObjectsAndManifests"] == f"arn:aws:s3:::{BUCKET}/*"


def test_each_option_adds_or_drops_its_statements() -> None:
    base = actions(settings())
    assert base - actions(settings(download_method=DownloadMethod.PORTION)) == {
        "rds:DownloadCompleteDBLogFile"
    }
    assert base - actions(settings(download_method=DownloadMethod.COMPLETE)) == {
        "rds:DownloadDBLogFilePortion"
    }
    assert base - actions(settings(snapshot=False)) == {
        "rds:CreateDBSnapshot",
        "rds:CreateDBClusterSnapshot",
        "rds:AddTagsToResource",
    }
    assert base - actions(settings(retention_known=True)) == {"rds:DescribeDBParameters"}
    kms = policy(settings(kms_key="arn:aws:kms:eu-west-1:111122223333:key/k1"))["Statement"]
    assert [(st["Action"], st["Resource"]) for st in kms if st["Action"][0].startswith("kms:")] == [
        (["kms:GenerateDataKey", "kms:Decrypt"], "arn:aws:kms:eu-west-1:111122223333:key/k1")
    ]
    alias = policy(settings(kms_key="alias/logs"))["Statement"][-1]
    assert alias["Condition"] == {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/logs"}}


def test_readers_and_snapshot_need_only_their_calls() -> None:
    for command in (
        Command.VERIFY,
        Command.GET,
        Command.LS,
        Command.QUERY,
        Command.ATHENA_DDL,
    ):
        assert actions(settings(command=command)) == {"s3:ListBucket", "s3:GetObject"}
        assert actions(settings(command=command, kms_key="k1")) == {
            "s3:ListBucket",
            "s3:GetObject",
            "kms:Decrypt",
        }
    snapshot = IamPolicySettings(bucket=None, command=Command.SNAPSHOT)
    assert actions(snapshot) == {
        "rds:DescribeDBInstances",
        "rds:DescribeDBClusters",
        "rds:CreateDBSnapshot",
        "rds:CreateDBClusterSnapshot",
        "rds:AddTagsToResource",
    }
    assert actions(replace(snapshot, wait=True)) - actions(snapshot) == {
        "rds:DescribeDBSnapshots",
        "rds:DescribeDBClusterSnapshots",
    }


def test_roles_split_the_policy_between_the_process_and_the_roles() -> None:
    both = settings(assume_role=ROLE, s3_assume_role=S3_ROLE)
    process = policy(both)["Statement"]
    assert [(st["Action"], st["Resource"]) for st in process] == [
        (["sts:AssumeRole"], ROLE),
        (["sts:AssumeRole"], S3_ROLE),
    ]
    rds_role = actions(replace(both, principal=Principal.RDS_ROLE))
    s3_role = actions(replace(both, principal=Principal.S3_ROLE))
    assert rds_role | s3_role == actions(settings())
    assert all(a.startswith("rds:") for a in rds_role)
    assert all(a.startswith("s3:") for a in s3_role)
    # Only the RDS side moves with --assume-role alone.
    assert actions(settings(assume_role=ROLE)) == s3_role | {"sts:AssumeRole"}


def _allowed_by(action: str, listed: set[str]) -> bool:
    return any(re.fullmatch(re.escape(p).replace(r"\*", ".*"), action) for p in listed)


def test_the_original_list_covers_everything_but_the_optional_actions() -> None:
    for command in Command:
        for method in DownloadMethod:
            s = IamPolicySettings(
                bucket=None if command is Command.SNAPSHOT else BUCKET,
                command=command,
                download_method=method,
                wait=True,
            )
            beyond = {a for a in actions(s) if not _allowed_by(a, ORIGINAL_LIST)}
            assert beyond <= OPTIONAL, (command, method, beyond)
    every = {a for g in GRANTS for a in g.actions}
    assert not {"s3:DeleteObject", "s3:ListAllMyBuckets"} & every  # nothing calls them


def test_render_is_the_policy_as_json() -> None:
    for s in (settings(), settings(kms_key="alias/logs", assume_role=ROLE)):
        assert json.loads(render(policy(s))) == policy(s)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rdsrecorder", "iam-policy", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def test_cli_prints_the_policy_the_readme_shows() -> None:
    done = _cli("--bucket", BUCKET)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == policy(settings())
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"iam-policy --bucket my-test-bucket\n```\n\n```json\n(.*?)```", readme, re.S)
    assert shown is not None, "the README shows `rdsrecorder iam-policy --bucket my-test-bucket`"
    assert shown.group(1) == done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "missing --bucket"),
        (("--bucket", "Bad_Bucket"), "invalid --bucket"),
        (("--bucket", BUCKET, "--assume-role", "not-an-arn"), "invalid --assume-role"),
        (("--bucket", BUCKET, "--for", "rds-role"), "--for rds-role needs --assume-role"),
        (("--bucket", BUCKET, "--sse-kms-key-id", "k1"), "--sse-kms-key-id needs --sse aws:kms"),
        (("--bucket", BUCKET, "--retention-hours", "500"), "--retention-hours must be"),
        (("--command", "verify", "--bucket", BUCKET, "--assume-role", ROLE), "--command sync"),
        (("--bucket", BUCKET, "--command", "nope"), "error:"),
    ],
)
def test_cli_bad_input_is_one_error_line(args: tuple[str, ...], message: str) -> None:
    done = _cli(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


# -- real runs against the lab: what they call is in the policy for their options -----------------
class Lab(NamedTuple):
    thread: LabThread
    first: pendulum.DateTime  # the first hour of the files
    copied: list[Written]  # the files a window of the first two hours copies


class Recorder(Hooks):
    def __init__(self) -> None:
        self.operations: set[str] = set()

    def aws_call(self, service: str, operation: str, outcome: str) -> None:
        self.operations.add(f"{service}:{operation}")


def allowed_operations(s: IamPolicySettings) -> set[str]:
    return {op for g in grants(s) for op in g.operations} | UNAUTHORISED_OPERATIONS


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab")
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=3)
    # a small file (one PutObject), one over a part (multipart), the current one
    files = write_hourly(root, "lab-db", first, [40_000, 7_000_000, 10_000], now)
    with LabThread(root, s3="moto") as thread:
        yield Lab(thread, first, files[:2])


@pytest.mark.parametrize("method", [DownloadMethod.AUTO, DownloadMethod.PORTION])
async def test_a_backfill_and_the_readers_call_only_what_their_policy_allows(
    lab: Lab,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    method: DownloadMethod,
) -> None:
    thread, first, _ = lab
    for k, v in thread.env.items():
        monkeypatch.setenv(k, v)
    bucket = thread.env["AWS_S3_BUCKET_NAME"]
    run_id = f"iam-{method.value}"
    hooks = Recorder()
    report = await run_sync(
        sync_settings(
            db="lab-db",
            bucket=bucket,
            start=first,
            finish=first.add(hours=2),
            run_id=run_id,
            download_method=method,
        ),
        hooks=hooks,
    )
    assert report.exit_code == 0, report
    # the run made the calls this test is about: both kinds of upload, the method's download
    download = (
        COMPLETE_OPERATION if method is DownloadMethod.AUTO else "rds:DownloadDBLogFilePortion"
    )
    assert {"s3:PutObject", "s3:UploadPart", "rds:DescribeDBLogFiles", download} <= hooks.operations
    s = IamPolicySettings(bucket=bucket, download_method=method, snapshot=False)
    assert hooks.operations <= allowed_operations(s), hooks.operations - allowed_operations(s)

    readers = Recorder()
    aws = AwsSettings(region="us-east-1")
    assert (await run_verify(VerifySettings(bucket, run_id, aws=aws), readers)).ok
    assert await run_ls(LsSettings(bucket, aws=aws), readers)
    await run_get(
        GetSettings(
            bucket,
            "lab-db",
            first,
            first.add(hours=2),
            output_dir=str(tmp_path / "restored"),
            aws=aws,
        ),
        readers,
    )
    for command in (Command.VERIFY, Command.LS, Command.GET):
        allowed = allowed_operations(IamPolicySettings(bucket=bucket, command=command))
        assert readers.operations <= allowed, readers.operations - allowed


def _denied_by_original_list() -> set[str]:
    """The operations the original list does not authorise (each needs an optional action)."""
    return {
        op
        for op, needed in REQUIRED.items()
        if not all(_allowed_by(action, ORIGINAL_LIST) for action in needed)
    }


async def test_a_backfill_works_with_exactly_the_original_list(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every call the original list does not allow is refused as AWS refuses it (AccessDenied):
    the whole-file endpoint by the lab, the S3 ones by a gateway in front of its S3. The run still
    copies every file byte for byte and exits 0."""
    thread, first, copied = lab
    for k, v in thread.env.items():
        monkeypatch.setenv(k, v)
    denied = _denied_by_original_list()
    assert denied == {
        COMPLETE_OPERATION,
        "s3:ListMultipartUploads",
        "s3:AbortMultipartUpload",
        "sts:AssumeRole",  # only with --assume-role, which the original tool did not have
    }
    gateway = S3Gateway(thread.env["AWS_ENDPOINT_URL_S3"])
    await gateway.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", gateway.url)
    for op in denied:
        if op.startswith("s3:"):
            gateway.fail(op.removeprefix("s3:"), 403, "AccessDenied", times=10**6)
    thread.set_faults(complete_endpoint=False)
    bucket = thread.env["AWS_S3_BUCKET_NAME"]
    try:
        hooks = Recorder()
        report = await run_sync(
            sync_settings(
                db="lab-db",
                bucket=bucket,
                start=first,
                finish=first.add(hours=2),
                run_id="iam-original-list",
            ),
            hooks=hooks,
        )
    finally:
        thread.set_faults()
        await gateway.stop()
    assert report.exit_code == 0, report
    # the refused calls were made, and refused
    assert "ListMultipartUploads" in gateway.operations()
    assert {"rds:DownloadDBLogFilePortion", "s3:UploadPart"} <= hooks.operations
    stored = s3_objects(s3_client(thread.env), bucket, "iam-original-list/rds_log_")
    assert sorted(hashlib.sha256(body).hexdigest() for body in stored.values()) == sorted(
        f.sha256 for f in copied
    )


def test_every_command_that_calls_aws_has_a_policy() -> None:
    """A new command that reaches AWS must say what it calls (a value of iam.Command)."""
    root = typer.main.get_command(cli)
    commands = set(root.list_commands(typer.Context(root)))
    assert commands - {"iam-policy", "version", "lab"} == {c.value for c in Command}
