"""The fleet on the account's API budget (``python benchmarks/budget.py``): N replicas
(``--shard i/N``, in one process, each with its own clients and limiter) back up a set of DBs
through the lab, whose account token bucket (burst, refill) every RDS call draws from, while a
neighbour (another tool of the account) calls ``DescribeDBInstances`` at a steady rate without
retries. Reports, for each N: every file byte-exact, the neighbour's throttled share, the
replicas' own Throttling share, and the fleet's time against its calls divided by the rate the
neighbour leaves (docs/api-budget.md).

    python benchmarks/budget.py                     # N = 1, 2, 4; 24 DBs x 3 files of 2.5 MB
    python benchmarks/budget.py --dbs 8 --files 2 --size-mb 1.2 --replicas 1 4
    python benchmarks/budget.py --fleet-rps 16      # a fleet budget above what the neighbour leaves

The done-means test (tests/test_fleet_budget.py) runs ``run_fleet`` at a smaller size."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aioboto3
import pendulum
from botocore.config import Config
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rdsrecorder.budget import DEFAULT_FLEET_API_BURST, DEFAULT_FLEET_API_RPS
from rdsrecorder.commands import run_sync
from rdsrecorder.config import AwsSettings, ObservabilitySettings, Shard, SyncSettings
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import DownloadMethod
from rdsrecorder_lab import LAB_REGION, Faults, Lab
from rdsrecorder_lab.generate import generate_fleet

BUCKET = "rdsrecorder-lab"
TAG = ("budget", "yes")


@dataclass
class FleetFigures:
    replicas: int
    files: int
    byte_exact: int
    exit_codes: list[int]
    elapsed_s: float
    fleet_calls: int  # RDS answers the replicas got (each attempt counts)
    fleet_throttled: int
    neighbour_calls: int
    neighbour_throttled: int
    left_rps: float  # the account's refill minus the neighbour's rate

    @property
    def fleet_throttled_share(self) -> float:
        return self.fleet_throttled / max(1, self.fleet_calls)

    @property
    def neighbour_throttled_share(self) -> float:
        return self.neighbour_throttled / max(1, self.neighbour_calls)

    @property
    def bound_s(self) -> float:
        """The fleet's calls at the rate the neighbour leaves: what no fleet can beat."""
        return self.fleet_calls / self.left_rps

    @property
    def ratio(self) -> float:
        return self.elapsed_s / self.bound_s

    def line(self) -> str:
        return (
            f"N={self.replicas}: {self.byte_exact}/{self.files} files byte-exact, exit "
            f"{sorted(set(self.exit_codes))}, {self.elapsed_s:.1f} s for {self.fleet_calls} RDS "
            f"calls ({self.ratio:.2f}x calls / {self.left_rps:g} per s), replicas throttled "
            f"{self.fleet_throttled} ({self.fleet_throttled_share:.1%}), neighbour throttled "
            f"{self.neighbour_throttled}/{self.neighbour_calls} "
            f"({self.neighbour_throttled_share:.1%})"
        )


class RdsAnswers(Hooks):
    """The RDS answers one replica got, and how many said Throttling."""

    def __init__(self) -> None:
        self.calls = 0
        self.throttled = 0

    def aws_call(self, service: str, operation: str, outcome: str) -> None:
        if service == "rds":
            self.calls += 1
            self.throttled += outcome == "throttled"


async def neighbour(rds_url: str, rate_per_s: float, stop: asyncio.Event) -> tuple[int, int]:
    """Another tool of the account: DescribeDBInstances at a steady rate, no retries. Returns
    (calls, throttled)."""
    calls = throttled = 0
    config = Config(retries={"mode": "standard", "total_max_attempts": 1})
    session = aioboto3.Session()
    async with session.client(
        "rds", endpoint_url=rds_url, region_name=LAB_REGION, config=config
    ) as rds:
        start = time.monotonic()
        while not stop.is_set():
            calls += 1
            try:
                await rds.describe_db_instances(MaxRecords=20)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "Throttling":
                    raise
                throttled += 1
            delay = start + calls / rate_per_s - time.monotonic()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass
    return calls, throttled


def settings(
    run_id: str,
    replica: int,
    replicas: int,
    start: pendulum.DateTime,
    finish: pendulum.DateTime,
    **aws: Any,
) -> SyncSettings:
    return SyncSettings(
        db_identifier="",
        bucket=BUCKET,
        start=start,
        finish=finish,
        run_id=run_id,
        concurrency=4,
        snapshot=False,
        download_method=DownloadMethod.PORTION,
        spool_dir="memory",
        discover_tags=(TAG,),
        shard=Shard(replica, replicas),
        retention_hours=72,
        aws=AwsSettings(region=LAB_REGION, **aws),
        obs=ObservabilitySettings(metrics_port=0, progress=False),
    )


async def objects(s3_url: str, run_id: str) -> dict[str, str]:
    """sha256 of every log object of the run."""
    out: dict[str, str] = {}
    session = aioboto3.Session()
    async with session.client("s3", endpoint_url=s3_url, region_name=LAB_REGION) as s3:
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=BUCKET, Prefix=f"{run_id}/"):
            for obj in page.get("Contents", []):
                if "/rds_log_" not in obj["Key"]:
                    continue
                body = await (await s3.get_object(Bucket=BUCKET, Key=obj["Key"]))["Body"].read()
                out[obj["Key"]] = hashlib.sha256(body).hexdigest()
    return out


async def run_fleet(
    root: Path,
    replicas: int,
    *,
    dbs: int = 24,
    files: int = 3,
    size_mb: float = 2.5,
    account_burst: int = 30,
    account_refill_per_s: float = 12.0,
    neighbour_rps: float = 3.0,
    latency_ms: float = 50.0,
    fleet_rps: float = DEFAULT_FLEET_API_RPS,
    fleet_burst: int = DEFAULT_FLEET_API_BURST,
) -> FleetFigures:
    """One fleet run (the lab in this process, replicas as tasks). The lab's credentials and
    endpoints are put in the environment for the run, and taken out after it."""
    end = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(hours=1)
    fleet = generate_fleet(
        root,
        dbs,
        prefix="bud",
        files=files,
        size_mb=(size_mb, size_mb),
        end=end,
        tags=dict([TAG]),
    )
    sources = sorted(g.sha256 for gen in fleet.values() for g in gen)
    faults = Faults(
        latency_ms=latency_ms,
        account_burst=account_burst,
        account_refill_per_s=account_refill_per_s,
    )
    async with Lab(root, s3="moto", faults=faults) as lab:
        saved = {key: os.environ.get(key) for key in lab.env}
        os.environ.update(lab.env)
        try:
            lab.set_faults(faults)  # the account's bucket starts full now
            figures = await _fleet(
                lab,
                replicas,
                start=pendulum.instance(end) - pendulum.duration(hours=2),
                neighbour_rps=neighbour_rps,
                fleet_rps=fleet_rps,
                fleet_burst=fleet_burst,
            )
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    landed = sorted(figures.pop("landed"))
    exact = sum(1 for a, b in zip(landed, sources, strict=False) if a == b)
    return FleetFigures(
        replicas=replicas,
        files=len(sources),
        byte_exact=exact if len(landed) == len(sources) else 0,
        left_rps=account_refill_per_s - neighbour_rps,
        **figures,
    )


async def _fleet(
    lab: Lab,
    replicas: int,
    *,
    start: pendulum.DateTime,
    neighbour_rps: float,
    fleet_rps: float,
    fleet_burst: int,
) -> dict[str, Any]:
    run_id = f"budget-{replicas}-{uuid.uuid4().hex[:8]}"  # moto's objects outlive its server
    per_replica = [RdsAnswers() for _ in range(replicas)]
    stop = asyncio.Event()
    other = asyncio.ensure_future(neighbour(lab.rds_url, neighbour_rps, stop))
    t0 = time.monotonic()
    now = pendulum.now("UTC")
    try:
        reports = await asyncio.gather(
            *(
                run_sync(
                    settings(
                        run_id,
                        i,
                        replicas,
                        start,
                        now,
                        fleet_max_api_rps=fleet_rps,
                        max_api_rps=fleet_rps / replicas,
                        max_api_burst=max(1, fleet_burst // replicas),
                    ),
                    hooks=per_replica[i],
                )
                for i in range(replicas)
            )
        )
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        neighbour_calls, neighbour_throttled = await other
    return {
        "landed": list((await objects(lab.s3_url, run_id)).values()),
        "exit_codes": [r.exit_code for r in reports],
        "elapsed_s": elapsed,
        "fleet_calls": sum(h.calls for h in per_replica),
        "fleet_throttled": sum(h.throttled for h in per_replica),
        "neighbour_calls": neighbour_calls,
        "neighbour_throttled": neighbour_throttled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--dbs", type=int, default=24)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--size-mb", type=float, default=2.5)
    parser.add_argument("--burst", type=int, default=30, help="the account bucket's burst")
    parser.add_argument("--refill", type=float, default=12.0, help="its refill per second")
    parser.add_argument("--neighbour-rps", type=float, default=3.0)
    parser.add_argument("--fleet-rps", type=float, default=DEFAULT_FLEET_API_RPS)
    parser.add_argument("--fleet-burst", type=int, default=DEFAULT_FLEET_API_BURST)
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    args = parser.parse_args()
    for n in args.replicas:
        with tempfile.TemporaryDirectory() as tmp:
            figures = asyncio.run(
                run_fleet(
                    Path(tmp),
                    n,
                    dbs=args.dbs,
                    files=args.files,
                    size_mb=args.size_mb,
                    account_burst=args.burst,
                    account_refill_per_s=args.refill,
                    neighbour_rps=args.neighbour_rps,
                    fleet_rps=args.fleet_rps,
                    fleet_burst=args.fleet_burst,
                )
            )
        if args.json:
            print(json.dumps({**asdict(figures), "ratio": round(figures.ratio, 3)}))
        else:
            print(figures.line(), flush=True)


if __name__ == "__main__":
    main()
