"""One process following many DBs (``python benchmarks/scale.py``); not a test.

The real ``Recorder`` and ``Copier`` follow N fake DBs on a FakeClock (copies take no time, no
network): 80 % rotate hourly, 10 % every 10 minutes (minute names), 10 % daily, each listing
three days of files as RDS keeps them. The process also holds real aiobotocore clients for RDS,
S3 and STS (no call is made), so that its memory starts where a real ``sync`` starts.

Prints the peak RSS (the process's ru_maxrss), the RSS before the first listing, and the CPU
(process time) per listing while following, after the backfill::

    python benchmarks/scale.py                 # 1,000 DBs, 4 simulated hours
    python benchmarks/scale.py --dbs 100 --hours 2

``--lab`` runs a real ``rdsrecorder sync --discover-tag`` process instead, against the lab (moto
S3) with N DBs of two small minute-named files each, until every file is copied and then
``--follow-s`` seconds more, then SIGTERM; it prints the process's RSS and VmHWM every 15 s
(needs the ``[lab]`` extra)::

    python benchmarks/scale.py --lab --dbs 1000 --follow-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiobotocore.session import get_session

from rdsrecorder.clock import FakeClock
from rdsrecorder.compression import Compression
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import DownloadStats, LogFile, ObjectInfo, UploadResult
from rdsrecorder.recorder import Recorder, RecorderSettings
from rdsrecorder.transfer import Copier
from rdsrecorder.window import Mode, Window

HOUR = 3600
RETENTION_S = 3 * 24 * HOUR
T0 = 1_707_040_800  # 2024-02-04 10:00 UTC


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class InstantClock(FakeClock):
    """Copies take no time: other tasks run until they wait before time jumps."""

    async def sleep_until(self, deadline_s: float, stop: asyncio.Event | None = None) -> bool:
        for _ in range(20):
            await asyncio.sleep(0)
        return await super().sleep_until(deadline_s, stop)


class Fleet:
    """N DBs as RDS lists them; a listing looks at its own DB only. Names are made once."""

    def __init__(self, clock: FakeClock, dbs: int) -> None:
        self.clock = clock
        self.period: dict[str, int] = {}
        for i in range(dbs):
            kind = i % 10
            period = 600 if kind == 8 else 24 * HOUR if kind == 9 else HOUR
            self.period[f"db-{i:04d}"] = period
        self.names = tuple(sorted(self.period))
        self._stamps: dict[tuple[int, int], str] = {}

    def _name(self, period: int, ts: int) -> str:
        stamp = self._stamps.get((period, ts))
        if stamp is None:
            fmt = (
                "%Y-%m-%d-%H%M"
                if period < HOUR
                else "%Y-%m-%d-%H"
                if period == HOUR
                else "%Y-%m-%d"
            )
            stamp = dt.datetime.fromtimestamp(ts, dt.UTC).strftime(fmt)
            self._stamps[(period, ts)] = stamp
        return f"error/postgresql.log.{stamp}.csv"

    async def list_log_files(
        self, instance: str, since_ms: int | None = None
    ) -> AsyncIterator[LogFile]:
        now = int(self.clock.now())
        period = self.period[instance]
        ts = (now - RETENTION_S) // period * period
        while ts <= now:
            written_ms = min(now, ts + period - 1) * 1000
            if since_ms is None or written_ms >= since_ms:
                yield LogFile(instance, self._name(period, ts), written_ms, 1000)
            ts += period

    async def download(self, f: LogFile, stats: DownloadStats) -> AsyncIterator[bytes]:
        stats.bytes += f.size
        yield b"x" * f.size

    async def instances(self) -> tuple[str, ...]:
        return self.names


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
        size = sum([len(c) async for c in chunks])
        return UploadResult(key, size, "0" * 64, "etag", 0)


class NullManifest:
    def record(self, entry: Any) -> None:
        pass

    def add_gap(self, instance: str, start: str, end: str, reason: str) -> None:
        pass

    async def flush(self, force: bool = False) -> None:
        pass


class Phases(Hooks):
    """Notes the CPU and the listings when the backfill is over (the first copies ended)."""

    def __init__(self, clock: FakeClock, follow_from_s: float) -> None:
        self.clock = clock
        self.follow_from_s = follow_from_s
        self.recorder: Recorder | None = None
        self.mark: tuple[float, int, float] | None = None

    def lag(self, instance: str, seconds: float) -> None:
        if self.mark is None and self.clock.now() >= self.follow_from_s:
            assert self.recorder is not None
            self.mark = (time.process_time(), self.recorder.listing_calls, rss_mb())


async def run(dbs: int, hours: float, concurrency: int) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        session = get_session()
        for service in ("rds", "s3", "sts"):
            await stack.enter_async_context(
                session.create_client(
                    service,
                    region_name="us-east-1",
                    aws_access_key_id="benchmark",
                    aws_secret_access_key="benchmark",
                )
            )
        base_mb = rss_mb()
        clock = InstantClock(T0 + 60)
        fleet = Fleet(clock, dbs)
        sink = NullSink()
        hooks = Phases(clock, T0 + 30 * 60)
        recorder = Recorder(
            RecorderSettings(
                window=Window(T0 - HOUR, T0 + hours * HOUR, Mode.DOWNLOAD_AND_SYNC),
                run_id="scale",
                per_instance_keys=True,
                concurrency=concurrency,
                poll_interval_s=30.0,
                finish_grace_s=600.0,
                shutdown_grace_s=1.0,
                fleet=True,
            ),
            lister=fleet,
            resolver=fleet,
            copier=Copier(fleet, sink, sink, hooks, clock, "scale"),
            manifest=NullManifest(),
            hooks=hooks,
            clock=clock,
            stop=asyncio.Event(),
        )
        hooks.recorder = recorder
        started = time.process_time()
        totals = await recorder.run()
        ended = time.process_time()
    assert hooks.mark is not None
    mark_cpu, mark_listings, follow_rss = hooks.mark
    files = sum((RETENTION_S // p + 1) for p in fleet.period.values())  # listed and held per DB
    follow_listings = recorder.listing_calls - mark_listings
    return {
        "dbs": dbs,
        "files_listed": files,
        "hours": hours,
        "copied": totals.copied,
        "ok": totals.ok,
        "base_mb": base_mb,
        "follow_rss_mb": follow_rss,
        "peak_mb": peak_rss_mb(),
        "backfill_cpu_s": mark_cpu - started,
        "backfill_listings": mark_listings,
        "follow_cpu_s": ended - mark_cpu,
        "follow_listings": follow_listings,
        "cpu_ms_per_listing": 1000 * (ended - mark_cpu) / max(1, follow_listings),
    }


def proc_status_mb(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) / 1024
    return out


def lab(dbs: int, follow_s: float, concurrency: int) -> None:
    from rdsrecorder_lab import LabThread
    from rdsrecorder_lab.generate import generate_fleet

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fleet = generate_fleet(
            root, dbs, prefix="big", files=2, size_mb=(0.002, 0.005), tags={"team": "big"}
        )
        files = sum(len(f) for f in fleet.values())
        with LabThread(root, s3="moto") as running:
            env = {**os.environ, **running.env, "RDSRECORDER_METRICS_PORT": "0"}
            env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
            args = [
                *(sys.executable, "-m", "rdsrecorder", "sync", "--discover-tag", "team=big"),
                *("--start", "now-30m", "--run-id", "big", "--concurrency", str(concurrency)),
                *("--max-api-rps", "200", "--max-api-burst", "300", "--no-progress"),
            ]
            log_path = root / "sync.log"
            with open(log_path, "w") as log_file:
                started = time.monotonic()
                proc = subprocess.Popen(args, env=env, stdout=log_file, stderr=subprocess.STDOUT)
                done_at: float | None = None
                said = 0.0
                while proc.poll() is None:
                    time.sleep(1)
                    elapsed = time.monotonic() - started
                    copied = log_path.read_text().count(" copied big-")
                    if done_at is None and copied >= files:
                        done_at = elapsed
                    if elapsed - said >= 15 or done_at == elapsed:
                        said = elapsed
                        mb = proc_status_mb(proc.pid)
                        ticks = open(f"/proc/{proc.pid}/stat").read().split()[13:15]
                        cpu_s = sum(int(t) for t in ticks) / os.sysconf("SC_CLK_TCK")
                        print(
                            f"{elapsed:5.0f} s: {copied}/{files} copied, RSS {mb['VmRSS']:.0f} "
                            f"MB, VmHWM {mb['VmHWM']:.0f} MB, CPU {cpu_s:.1f} s",
                            flush=True,
                        )
                    if done_at is not None and elapsed - done_at >= follow_s:
                        proc.send_signal(signal.SIGTERM)
                        break
                proc.wait(60)
            calls = running.stats()["calls"]
        print(
            f"exit {proc.returncode}; DescribeDBLogFiles calls: {calls.get('DescribeDBLogFiles')}"
        )


def main() -> None:
    logging.disable(logging.WARNING)  # a line per file and DB would be most of the CPU measured
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dbs", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--lab", action="store_true", help="a real process against the lab")
    parser.add_argument("--follow-s", type=float, default=60.0)
    args = parser.parse_args()
    if args.lab:
        lab(args.dbs, args.follow_s, args.concurrency)
        return
    r = asyncio.run(run(args.dbs, args.hours, args.concurrency))
    print(
        "| DBs | files listed | simulated h | copied | RSS before listing | RSS following | "
        "peak RSS | backfill: listings, CPU | following: listings, CPU | CPU per listing |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {r['dbs']} | {r['files_listed']} | {r['hours']:g} | {r['copied']} | "
        f"{r['base_mb']:.0f} MB | {r['follow_rss_mb']:.0f} MB | {r['peak_mb']:.0f} MB | "
        f"{r['backfill_listings']}, {r['backfill_cpu_s']:.1f} s | "
        f"{r['follow_listings']}, {r['follow_cpu_s']:.1f} s | "
        f"{r['cpu_ms_per_listing']:.2f} ms |"
    )
    if not r["ok"]:
        raise SystemExit("the run did not end ok")


if __name__ == "__main__":
    main()
