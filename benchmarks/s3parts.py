"""What the lab's S3 costs this machine (``python benchmarks/s3parts.py``): N parts of 5 MiB of
csvlog sent to SeaweedFS at once, as the N files of a steady-state wave send their first part at
the same moment, against one part alone; each part's time, the wall time, and the CPU the S3
server and this client spent. The client is configured as rdsrecorder's (aioboto3, no payload
signing, the part's SHA-256 sent with it).

On AWS the S3 side runs elsewhere; in the lab it shares this machine's cores with the copier
and the RDS emulation, which is what the steady-state benchmark's upload tail measures
(docs/benchmarks.md, "Steady state").

    python benchmarks/s3parts.py            # 8 parts at once, then 1, 4 rounds each
    python benchmarks/s3parts.py --parts 4 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig
from common import MIB, machine, proc_cpu_s

from rdsrecorder_lab import LAB_REGION, generate
from rdsrecorder_lab.s3local import SeaweedS3, create_bucket

PART_BYTES = 5 * MIB
ACCESS_KEY, SECRET_KEY = "s3parts", "s3parts-secret"
BUCKET = "s3parts-bench"


def csvlog_parts(n: int, tmp: Path) -> list[bytes]:
    """``n`` different 5 MiB runs of the lab's csvlog."""
    end = dt.datetime(2024, 2, 4, 19, tzinfo=dt.UTC)
    files = generate(tmp, "s3parts-db", files=1, end=end, size_mb=(12.0, 12.0), seed=3)
    data = files[0].path.read_bytes()
    step = max(1, (len(data) - PART_BYTES) // max(1, n))
    return [data[i * step : i * step + PART_BYTES] for i in range(n)]


async def put_part(s3: Any, key: str, upload_id: str, body: bytes, digest: str) -> float:
    """Seconds one UploadPart took."""
    t0 = time.perf_counter()
    await s3.upload_part(
        Bucket=BUCKET,
        Key=key,
        UploadId=upload_id,
        PartNumber=1,
        Body=body,
        ContentLength=len(body),
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=digest,
    )
    return time.perf_counter() - t0


async def rounds(url: str, weed_pid: int | None, parts: list[bytes], count: int) -> list[str]:
    config = AioConfig(
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        max_pool_connections=max(10, len(parts)),
    )
    session = aioboto3.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=LAB_REGION
    )
    digests = [base64.b64encode(hashlib.sha256(p).digest()).decode() for p in parts]
    out: list[str] = []
    async with session.client("s3", endpoint_url=url, config=config) as s3:
        for r in range(count):
            keys = [f"r{r}-{len(parts)}-{i}" for i in range(len(parts))]
            ids = [
                (await s3.create_multipart_upload(Bucket=BUCKET, Key=k, ContentType="text/csv"))[
                    "UploadId"
                ]
                for k in keys
            ]

            cpu0, weed0, t0 = time.process_time(), proc_cpu_s(weed_pid), time.perf_counter()
            times = await asyncio.gather(
                *(put_part(s3, keys[i], ids[i], parts[i], digests[i]) for i in range(len(parts)))
            )
            wall = time.perf_counter() - t0
            client = time.process_time() - cpu0
            weed = proc_cpu_s(weed_pid) - weed0
            await asyncio.gather(
                *(
                    s3.abort_multipart_upload(Bucket=BUCKET, Key=k, UploadId=u)
                    for k, u in zip(keys, ids, strict=True)
                )
            )
            if r == 0:
                continue  # the first round warms the server up (volumes are created)
            out.append(
                f"| {len(parts)} | {wall * 1000:.0f} | {min(times) * 1000:.0f}-"
                f"{max(times) * 1000:.0f} (median {statistics.median(times) * 1000:.0f}) | "
                f"{weed * 1000:.0f} | {client * 1000:.0f} |"
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    server = SeaweedS3(ACCESS_KEY, SECRET_KEY)
    lines = [
        f"## The lab's S3 under a wave of parts\n\nMachine: {machine()}.\n",
        "| parts at once | wall ms | each part ms | S3 server CPU ms | client CPU ms |",
        "|---|---|---|---|---|",
    ]
    url = server.start()
    try:
        create_bucket(url, BUCKET, ACCESS_KEY, SECRET_KEY, LAB_REGION)
        with tempfile.TemporaryDirectory(prefix="rdsbench-s3parts-") as tmp:
            parts = csvlog_parts(args.parts, Path(tmp))
        for n in (args.parts, 1):
            lines += asyncio.run(rounds(url, server.pid, parts[:n], args.rounds + 1))
    finally:
        server.stop()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
