"""Fleet benchmark: one process over many DBs (``python benchmarks/fleet.py``); not a test.

1. **Backfill**: N lab instances (100 by default, 3 minute-rotated files each, a few MB per DB)
   tagged ``team=payments``; one ``rdsrecorder sync --discover-tag team=payments`` subprocess
   copies them into a local S3 (moto): wall time, peak RSS (the child's VmHWM, polled), RDS calls
   by kind (the lab's stats), and byte-exactness (sha256 of every object).
2. **Following**: the real ``Recorder`` over N DBs with minute rotation for R rotations, driven by
   a FakeClock against in-memory fakes (copies take no time): listing calls per DB per rotation
   and tail lag (copy start - rotation), compared with listing every DB every poll interval.

    python benchmarks/fleet.py                  # 100 DBs, 10 rotations
    python benchmarks/fleet.py --dbs 20 --quick
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rdsrecorder.clock import FakeClock
from rdsrecorder.compression import Compression
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import DownloadStats, LogFile, ObjectInfo, UploadResult
from rdsrecorder.recorder import Recorder, RecorderSettings
from rdsrecorder.transfer import Copier
from rdsrecorder.window import Mode, Window
from rdsrecorder_lab import LabThread
from rdsrecorder_lab.generate import generate_fleet


def vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def backfill(dbs: int, size_mb: tuple[float, float], concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        end = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        fleet = generate_fleet(
            root, dbs, prefix="bench", size_mb=size_mb, end=end, tags={"team": "payments"}
        )
        total_bytes = sum(f.size for files in fleet.values() for f in files)
        with LabThread(root, s3="moto") as lab:
            env = {**os.environ, **lab.env, "RDSRECORDER_METRICS_PORT": "0"}
            args = [
                sys.executable,
                "-m",
                "rdsrecorder",
                "sync",
                "--discover-tag",
                "team=payments",
                "--start",
                "earliest",
                "--finish",
                "now",
                "--run-id",
                "bench",
                "--concurrency",
                str(concurrency),
                "--no-progress",
            ]
            log_path = root / "sync.log"  # a file, not a pipe: 100 DBs' logs would fill a pipe
            with open(log_path, "w") as log_file:
                started = time.monotonic()
                proc = subprocess.Popen(
                    args, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True
                )
                peak = 0
                while proc.poll() is None:
                    peak = max(peak, vm_hwm_kib(proc.pid))
                    time.sleep(0.02)
                elapsed = time.monotonic() - started
            err = log_path.read_text()
            if proc.returncode != 0:
                raise SystemExit(f"rdsrecorder sync failed ({proc.returncode}):\n{err[-3000:]}")
            calls = dict(lab.stats()["calls"])
            s3 = boto3.client(
                "s3",
                endpoint_url=lab.env["AWS_ENDPOINT_URL_S3"],
                aws_access_key_id=lab.env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=lab.env["AWS_SECRET_ACCESS_KEY"],
                region_name="us-east-1",
            )
            exact = 0
            for instance, files in fleet.items():
                for f in files:
                    key = f"bench/{instance}/rds_log_bench_{int(f.start_s)}"
                    body = s3.get_object(Bucket=lab.bucket, Key=key)["Body"].read()
                    exact += hashlib.sha256(body).hexdigest() == f.sha256
    return {
        "dbs": dbs,
        "files": sum(len(v) for v in fleet.values()),
        "mb": total_bytes / 1e6,
        "seconds": elapsed,
        "peak_rss_mb": peak / 1024,
        "calls": calls,
        "exact": exact,
    }


# -- following, simulated ---------------------------------------------------------------------
class InstantClock(FakeClock):
    """Copies take no time: other tasks run until they wait before time jumps."""

    async def sleep_until(self, deadline_s: float, stop: asyncio.Event | None = None) -> bool:
        for _ in range(50):
            await asyncio.sleep(0)
        return await super().sleep_until(deadline_s, stop)


class MinuteFleet:
    """N DBs rotating every minute (each new file visible 0-9 s after the minute), as RDS lists
    them; downloads give a few bytes. Counts listings; remembers when each copy started."""

    def __init__(self, clock: FakeClock, dbs: int, t0: float) -> None:
        self.clock = clock
        self.t0 = t0
        self.names = [f"db-{i:03d}" for i in range(dbs)]
        self.delay = {name: i % 10 for i, name in enumerate(self.names)}
        self.listings = 0
        self.started: dict[tuple[str, int], float] = {}

    def _files(self, instance: str) -> list[tuple[int, float]]:
        now = self.clock.now()
        out = []
        minute = 0
        while self.t0 + minute * 60 + self.delay[instance] <= now:
            ts = int(self.t0 + minute * 60)
            written = min(now, ts + 59)
            out.append((ts, written))
            minute += 1
        return out

    async def list_log_files(
        self, instance: str, since_ms: int | None = None
    ) -> AsyncIterator[LogFile]:
        self.listings += 1
        for ts, written in self._files(instance):
            stamp = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d-%H%M")
            ms = int(written * 1000)
            if since_ms is None or ms >= since_ms:
                yield LogFile(instance, f"error/postgresql.log.{stamp}.csv", ms, 100)

    async def download(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]:
        stamp = f.name.split(".")[2]
        ts = int(dt.datetime.strptime(stamp, "%Y-%m-%d-%H%M").replace(tzinfo=dt.UTC).timestamp())
        self.started[(f.instance, ts)] = self.clock.now()
        stats.bytes += 100
        yield b"x" * 100

    async def instances(self) -> tuple[str, ...]:
        return tuple(self.names)


class NullSink:
    async def head(self, key: str) -> ObjectInfo | None:
        return None

    async def upload(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        metadata: dict[str, str],
        instance: str,
        size_hint_bytes: int | None = None,
        compression: Compression = Compression.NONE,
    ) -> UploadResult:
        data = b"".join([c async for c in chunks])
        return UploadResult(key, len(data), hashlib.sha256(data).hexdigest(), "etag", 0)


class NullManifest:
    def record(self, entry: Any) -> None:
        pass

    def add_gap(self, instance: str, start: str, end: str, reason: str) -> None:
        pass

    async def flush(self, force: bool = False) -> None:
        pass


async def follow(dbs: int, rotations: int, poll_interval_s: float) -> dict[str, Any]:
    t0 = 1_707_040_800.0  # a whole minute
    clock = InstantClock(t0 + 65)
    fleet = MinuteFleet(clock, dbs, t0)
    sink = NullSink()
    recorder = Recorder(
        RecorderSettings(
            window=Window(t0, t0 + (rotations + 1) * 60, Mode.DOWNLOAD_AND_SYNC),
            run_id="sim",
            per_instance_keys=True,
            concurrency=8,
            poll_interval_s=poll_interval_s,
            finish_grace_s=None,
            shutdown_grace_s=1.0,
            fleet=True,
        ),
        lister=fleet,
        resolver=fleet,
        copier=Copier(fleet, sink, sink, Hooks(), clock, "sim"),
        manifest=NullManifest(),
        hooks=Hooks(),
        clock=clock,
        stop=asyncio.Event(),
    )
    started = time.monotonic()
    totals = await recorder.run()
    lags = [
        start - (ts + 60 + fleet.delay[inst])
        for (inst, ts), start in fleet.started.items()
        if ts + 60 + fleet.delay[inst] <= t0 + 65 + (rotations - 1) * 60 and ts >= t0 + 60
    ]
    return {
        "dbs": dbs,
        "rotations": rotations,
        "listings_per_db_per_rotation": fleet.listings / (dbs * rotations),
        "naive_per_db_per_rotation": 60 / poll_interval_s,
        "lag_median_s": statistics.median(lags),
        "lag_max_s": max(lags),
        "copied": totals.copied,
        "sim_seconds": time.monotonic() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dbs", type=int, default=100)
    parser.add_argument("--rotations", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="smaller files")
    args = parser.parse_args()
    size = (0.1, 0.3) if args.quick else (0.5, 1.5)
    b = backfill(args.dbs, size, args.concurrency)
    rds_calls = ", ".join(
        f"{k} {v}" for k, v in sorted(b["calls"].items()) if k != "GetCallerIdentity"
    )
    print("### Backfill: one process, discovery by tag\n")
    print("| DBs | files | MB | time | MB/s | peak RSS | byte-exact | RDS calls |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {b['dbs']} | {b['files']} | {b['mb']:.0f} | {b['seconds']:.1f} s | "
        f"{b['mb'] / b['seconds']:.1f} | {b['peak_rss_mb']:.0f} MB | "
        f"{b['exact']}/{b['files']} | {rds_calls} |"
    )
    f = asyncio.run(follow(args.dbs, args.rotations, 30.0))
    print("\n### Following: minute rotation, simulated (FakeClock, instant copies)\n")
    print(
        "| DBs | rotations | listings / DB / rotation | every 30 s would be | tail lag median | max |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {f['dbs']} | {f['rotations']} | {f['listings_per_db_per_rotation']:.2f} | "
        f"{f['naive_per_db_per_rotation']:.0f} | {f['lag_median_s']:.0f} s | "
        f"{f['lag_max_s']:.0f} s |"
    )


if __name__ == "__main__":
    main()
