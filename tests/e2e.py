"""Helpers for the end-to-end tests: csvlog files written into a lab directory, S3 inspection
with a plain boto3 client, and settings for in-process runs."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pendulum

from rdsrecorder.config import AwsSettings, ObservabilitySettings, SyncSettings

HOUR = 3600


@dataclass
class Written:
    name: str
    path: Path
    timestamp_s: int
    sha256: str
    size: int


def csv_block(ts: pendulum.DateTime, target_bytes: int, seed: int) -> bytes:
    """csvlog-looking records (quoted multi-line statements included) of about target_bytes."""
    rng = random.Random(seed)
    lines: list[str] = []
    total = 0
    n = 0
    while total < target_bytes:
        n += 1
        stamp = ts.add(microseconds=n * 1000).format("YYYY-MM-DD HH:mm:ss.SSS") + " UTC"
        if n % 7 == 0:
            msg = f'"statement: SELECT *\nFROM orders\nWHERE id = {rng.randint(1, 10**6)};"'
        else:
            msg = f'"duration: {rng.random() * 100:.3f} ms  statement: SELECT {n}"'
        line = (
            f'{stamp},"app","shop",{4000 + n % 50},"10.0.0.{n % 255}:5{n % 1000:03d}",'
            f'65c0a1b2.{n:x},{n},"SELECT",{stamp},3/{n},0,LOG,00000,{msg},,,,,,,,,"psql",'
            '"client backend",,0\n'
        )
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def write_hourly(
    root: Path, instance: str, first: pendulum.DateTime, sizes: list[int], now: pendulum.DateTime
) -> list[Written]:
    """One hourly .csv file per size (plus its plain twin), the last one still current."""
    out: list[Written] = []
    errdir = root / instance / "error"
    errdir.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        ts = first.add(hours=i)
        stamp = ts.format("YYYY-MM-DD-HH")
        data = csv_block(ts, size, seed=i)
        path = errdir / f"postgresql.log.{stamp}.csv"
        path.write_bytes(data)
        (errdir / f"postgresql.log.{stamp}").write_bytes(b"plain twin\n")
        written = min(now.timestamp(), ts.add(hours=1).timestamp() - 1)
        os.utime(path, (written, written))
        os.utime(errdir / f"postgresql.log.{stamp}", (written, written))
        out.append(
            Written(
                name=f"error/postgresql.log.{stamp}.csv",
                path=path,
                timestamp_s=int(ts.timestamp()),
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
            )
        )
    return out


def s3_client(env: dict[str, str]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


def objects(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def multipart_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def sync_settings(
    *,
    db: str,
    bucket: str,
    start: pendulum.DateTime,
    finish: pendulum.DateTime | None,
    run_id: str,
    **kw: Any,
) -> SyncSettings:
    aws_kw = {
        k: kw.pop(k)
        for k in list(kw)
        if k in ("max_api_rps", "max_attempts", "assume_role", "s3_assume_role")
    }
    return SyncSettings(
        db_identifier=db,
        bucket=bucket,
        start=start,
        finish=finish,
        run_id=run_id,
        aws=AwsSettings(region="us-east-1", **aws_kw),
        obs=ObservabilitySettings(metrics_port=0, progress=False),
        **kw,
    )


def notice_quoting_csvlog(size: int) -> bytes:
    """csvlog whose statements quote RDS's notice: inline, and on a line of its own at the end
    of multi-line statements, so that many portions end with it as RDS ends a cut one."""
    records: list[str] = []
    n = total = 0
    while total < size:
        n += 1
        ts = f"2024-02-04 17:{n // 6000 % 60:02d}:{n // 100 % 60:02d}.{n % 1000:03d} UTC"
        text = (
            f"SELECT {n} AS id, 'see [Your log message was truncated] here' AS note\n"
            + "  FROM t\n" * (n % 7)
            + " [Your log message was truncated]"
        )
        quoted = '"' + text.replace('"', '""') + '"'
        records.append(
            f'{ts},"app","shop",{400 + n % 50},"10.0.0.1:5432","s{n % 50}",{n},"SELECT",'
            f'{ts},3/{n},0,LOG,00000,"statement: x",,,,,,{quoted},,,"psql","client backend",,0\n'
        )
        total += len(records[-1])
    return "".join(records).encode()
