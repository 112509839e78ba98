"""Helpers for the lab's own tests (their fixtures are in ``conftest.py``): a lab root with tricky
files, clients signed with the lab's credentials, and SigV4 signing of the whole-file endpoint the
way a client does it."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from rdsrecorder_lab import (
    LAB_ACCESS_KEY_ID,
    LAB_REGION,
    LAB_SECRET_ACCESS_KEY,
    GeneratedFile,
    generate,
)

NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})
INSTANCE = "lab-db"
# Hand-made files (names sort before the generated ones, which end now).
TRICKY = "error/postgresql.log.2020-01-01-00.csv"
LONG_LINE = "error/postgresql.log.2020-01-01-01.csv"
BINARY = "error/postgresql.log.2020-01-01-02.csv"
WIDE = "error/postgresql.log.2020-01-01-03.csv"  # 10,000 of its lines are more than 1 MB
WIDE_LINE_BYTES = 150
WIDE_LINES = 12_000
LONG_LINE_BYTES = 1_500_000


@dataclass(frozen=True)
class LabData:
    root: Path
    generated: list[GeneratedFile]

    def path(self, name: str, instance: str = INSTANCE) -> Path:
        return self.root / instance / name

    def bytes(self, name: str, instance: str = INSTANCE) -> bytes:
        return self.path(name, instance).read_bytes()


def tricky_bytes() -> bytes:
    """csvlog records with what XML and CSV make hard: \\r, markup, quotes, non-ASCII, tabs."""
    lines = [
        '2020-01-01 00:00:00.001 UTC,"app","shop",42,"10.0.0.1:5000",5e0be100.2a,1,"SELECT",'
        '2020-01-01 00:00:00 UTC,3/1,0,LOG,00000,"duration: 0.1 ms  statement: SELECT 1 < 2 AND'
        ' 3 > 2 AND \'a\' & \'b\'",,,,,,,,,"psql","client backend",,0\n',
        '2020-01-01 00:00:00.002 UTC,"app","shop",42,"10.0.0.1:5000",5e0be100.2a,2,"SELECT",'
        '2020-01-01 00:00:00 UTC,3/2,0,LOG,00000,"duration: 0.2 ms  statement: SELECT *\r\n'
        '  FROM t\r\n WHERE x = \'\tZoë ミナ 😀 ""quoted""\'",,,,,,,,,"psql","client backend",,0\n',
        '2020-01-01 00:00:00.003 UTC,"app","shop",42,"10.0.0.1:5000",5e0be100.2a,3,"SELECT",'
        '2020-01-01 00:00:00 UTC,3/3,0,ERROR,42601,"syntax error at or near ""]]>""",,,,,,'
        '"SELECT ]]> <![CDATA[ x ]]>\rlone CR",8,,"psql","client backend",,0\n',
        "   leading and trailing spaces   \n",
        "\n",
        "&amp; is not an entity here &#13; nor this\n",
    ]
    return "".join(lines).encode()


def make_lab_root(root: Path) -> LabData:
    generated = generate(root, INSTANCE, files=6, size_mb=(0.05, 0.3), seed=3)
    error_dir = root / INSTANCE / "error"
    (root / INSTANCE / TRICKY).write_bytes(tricky_bytes())
    line = b"x" * 100 + b"\n"
    long_line = b"L" * (LONG_LINE_BYTES - 1) + b"\n"
    (root / INSTANCE / LONG_LINE).write_bytes(line * 3 + long_line + line * 3)
    (root / INSTANCE / BINARY).write_bytes(b"text\n\x00\x01\x02 binary\n")
    wide = b"".join(b"%05d" % i + b"w" * (WIDE_LINE_BYTES - 6) + b"\n" for i in range(WIDE_LINES))
    (root / INSTANCE / WIDE).write_bytes(wide)
    for name in (TRICKY, LONG_LINE, BINARY, WIDE):
        stamp = dt.datetime(2020, 1, 1, 1, tzinfo=dt.UTC).timestamp()
        os.utime(root / INSTANCE / name, (stamp, stamp))
    (error_dir / ".hidden").write_text("not listed")
    for member in ("aur-1", "aur-2"):
        generate(root, member, files=2, size_mb=(0.01, 0.01), seed=5)
    clusters = {"clusters": {"aur": {"members": ["aur-1", "aur-2"], "writer": "aur-2"}}}
    (root / "lab.json").write_text(json.dumps(clusters))
    return LabData(root, generated)


@asynccontextmanager
async def rds_client(url: str, *, retries: bool = False, **kwargs: Any) -> AsyncIterator[Any]:
    params: dict[str, Any] = {
        "endpoint_url": url,
        "region_name": LAB_REGION,
        "aws_access_key_id": LAB_ACCESS_KEY_ID,
        "aws_secret_access_key": LAB_SECRET_ACCESS_KEY,
    }
    if not retries:
        params["config"] = NO_RETRIES
    params.update(kwargs)
    async with aioboto3.Session().client("rds", **params) as client:
        yield client


def signed_headers(
    url: str,
    *,
    access_key: str = LAB_ACCESS_KEY_ID,
    secret_key: str = LAB_SECRET_ACCESS_KEY,
    service: str = "rds",
    region: str = LAB_REGION,
) -> dict[str, str]:
    request = AWSRequest(method="GET", url=url)
    SigV4Auth(Credentials(access_key, secret_key), service, region).add_auth(request)
    return dict(request.headers.items())


def presigned(url: str, *, expires_s: int = 300, region: str = LAB_REGION) -> str:
    request = AWSRequest(method="GET", url=url)
    auth = SigV4QueryAuth(
        Credentials(LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY), "rds", region, expires_s
    )
    auth.add_auth(request)
    return str(request.url)


def complete_url(rds_url: str, instance: str, name: str, version: str = "v19") -> str:
    return f"{rds_url}/{version}/downloadCompleteLogFile/{instance}/{name}"


async def download_portions(
    client: Any, instance: str, name: str, lines: int = 1000
) -> tuple[bytes, list[dict[str, Any]]]:
    """Every portion from Marker "0" until AdditionalDataPending is false (no recovery)."""
    marker = "0"
    parts: list[str] = []
    responses: list[dict[str, Any]] = []
    for _ in range(10_000):
        response = await client.download_db_log_file_portion(
            DBInstanceIdentifier=instance, LogFileName=name, Marker=marker, NumberOfLines=lines
        )
        responses.append(response)
        parts.append(response.get("LogFileData", ""))
        marker = response["Marker"]
        if not response["AdditionalDataPending"]:
            return "".join(parts).encode(), responses
    raise AssertionError("the portion loop did not end")
