"""--assume-role: every RDS call, the whole-file download included, made as the role (STS
AssumeRole against the lab's STS, which then accepts those temporary credentials and counts who
signed each call), S3 with the process's own credentials; the role renewed before it expires."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pendulum
import pytest

from rdsrecorder import aws as aws_module
from rdsrecorder.commands import run_sync
from rdsrecorder.config import RoleSettings
from rdsrecorder_lab import LabThread
from rdsrecorder_lab.catalog import ACCOUNT_ID
from tests.e2e import objects, s3_client, sync_settings, write_hourly

ROLE = f"arn:aws:iam::{ACCOUNT_ID}:role/logs-reader"
ASSUMED = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/logs-reader/rdsrecorder"
LAB_USER = f"arn:aws:iam::{ACCOUNT_ID}:user/rdsrecorder-lab"


@pytest.mark.parametrize("method", ["complete", "portion"])
async def test_rds_calls_are_made_as_the_role_and_s3_as_the_process(
    tmp_path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:  # type: ignore[no-untyped-def]
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=2)
    written = write_hourly(tmp_path, "other-account-db", first, [300_000, 200_000, 500], now)
    with LabThread(tmp_path, s3="moto") as lab:
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)
        report = await run_sync(
            sync_settings(
                db="other-account-db",
                bucket=lab.bucket,
                start=first,
                finish=first.add(hours=2),
                run_id=f"role-{method}",  # moto's S3 state is shared by the servers of a process
                download_method=method,
                assume_role=RoleSettings(arn=ROLE),
            )
        )
        by_caller = lab.stats()["calls_by_caller"]
        got = objects(s3_client(lab.env), lab.bucket, f"role-{method}/")
    assert report.exit_code == 0
    for f in written[:2]:
        key = f"role-{method}/rds_log_role-{method}_{f.timestamp_s}"
        assert hashlib.sha256(got[key]).hexdigest() == f.sha256
    download = "DownloadCompleteLogFile" if method == "complete" else "DownloadDBLogFilePortion"
    as_role = by_caller[ASSUMED]
    assert as_role["DescribeDBInstances"] >= 1 and as_role["DescribeDBLogFiles"] >= 1
    assert as_role[download] >= 2
    # The process's own identity only checked itself and asked for the role.
    assert set(by_caller[LAB_USER]) == {"GetCallerIdentity", "AssumeRole"}


async def test_the_role_is_renewed_before_it_expires(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # 15 minutes is AssumeRole's shortest session and botocore's advisory refresh margin: the
    # credentials are due for renewal at once, so every use renews them through AssumeRole.
    monkeypatch.setattr(aws_module, "ROLE_DURATION_S", 900)
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=2)
    write_hourly(tmp_path, "db", first, [50_000, 50_000, 500], now)
    with LabThread(tmp_path, s3="moto") as lab:
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)
        report = await run_sync(
            sync_settings(
                db="db",
                bucket=lab.bucket,
                start=first,
                finish=first.add(hours=2),
                run_id="renew",
                assume_role=RoleSettings(arn=ROLE),
            )
        )
        by_caller = lab.stats()["calls_by_caller"]
    assert report.exit_code == 0
    assert by_caller[LAB_USER]["AssumeRole"] >= 2
    assert by_caller[ASSUMED]["DownloadCompleteLogFile"] == 2


def test_a_role_that_cannot_be_assumed_is_one_line_and_exit_3(tmp_path) -> None:  # type: ignore[no-untyped-def]
    now = pendulum.now("UTC")
    write_hourly(tmp_path, "db", now.start_of("hour").subtract(hours=1), [1000, 500], now)
    with LabThread(tmp_path, s3="moto") as lab:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "rdsrecorder",
                "sync",
                "-d",
                "db",
                "--bucket",
                lab.bucket,
                "--start",
                "now-1h",
                "--finish",
                "now",
                "--metrics-port",
                "0",
                # the lab's trust policy for *-external roles asks for an external id
                "--assume-role",
                f"arn:aws:iam::{ACCOUNT_ID}:role/partner-external",
            ],
            env={**lab.env, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 3, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot assume role" in errors[0] and "AccessDenied" in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--assume-role", "role/logs-reader"], "invalid --assume-role"),
        (["--assume-role-external-id", "xyz"], "--assume-role-external-id needs --assume-role"),
        (["--s3-assume-role", "arn:aws:iam::12:role/x"], "invalid --s3-assume-role"),
        (["--assume-role", ROLE, "--assume-role-session-name", "a b"], "session-name"),
    ],
)
def test_bad_role_options_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "rdsrecorder", "sync", "-d", "db", "--bucket", "my-bucket"),
            *("--start", "now-1h", "--metrics-port", "0", *args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
