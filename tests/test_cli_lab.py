"""The read-side commands as a user runs them, against the lab: sync, then ls and verify."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pendulum

from rdsrecorder_lab import LabThread, generate


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rdsrecorder", *args],
        env={**os.environ, **env, "RDSRECORDER_METRICS_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_sync_ls_verify_and_a_corrupted_object(tmp_path: Path) -> None:
    files = generate(tmp_path, "cli-db", hours=3, size_mb=(0.05, 0.2), seed=2)
    with LabThread(tmp_path, s3="moto") as lab:
        env = dict(lab.env)
        start = pendulum.from_timestamp(files[0].start_s, tz="UTC").to_iso8601_string()
        finish = pendulum.from_timestamp(files[-1].start_s, tz="UTC").to_iso8601_string()
        proc = cli(
            env, "sync", "-d", "cli-db", "--start", start, "--finish", finish, "--run-id", "r1"
        )
        assert proc.returncode == 0, proc.stderr
        assert "run id: r1" in proc.stderr
        assert "copied" in proc.stdout  # the summary table

        proc = cli(env, "ls")
        assert proc.returncode == 0, proc.stderr
        assert "r1" in proc.stdout and "cli-db" in proc.stdout and "complete" in proc.stdout

        proc = cli(env, "verify", "--run-id", "r1")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "OK" in proc.stdout

        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL_S3"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        key = f"r1/rds_log_r1_{int(files[0].start_s)}"
        s3.put_object(Bucket=lab.bucket, Key=key, Body=b"tampered\n")
        proc = cli(env, "verify", "--run-id", "r1")
        assert proc.returncode == 6
        assert "PROBLEMS" in proc.stdout

        proc = cli(env, "verify", "--run-id", "nope")
        assert proc.returncode == 6
        assert "error: no manifest for run 'nope'" in proc.stderr

        proc = cli(env, "sync", "-d", "cli-db", "--start", start, "--bucket", "missing-bucket")
        assert proc.returncode == 3
        assert "error: bucket 'missing-bucket' does not exist" in proc.stderr
