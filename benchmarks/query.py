"""``rdsrecorder query``'s engine over a big window: rows per second and peak RSS.

    python benchmarks/query.py --mb 1000 [--dir /tmp/qbench] [--memory-limit-mib 1024]

Generates ``--mb`` MB of the lab's csvlog (hourly files, PostgreSQL 15 layout) once, then runs each
statement in a fresh process (the engine as ``query`` builds it: ``logs`` over the files, the
window = all of them), its rows to /dev/null as ``--csv`` prints them, and reports wall time, rows
of ``logs`` per second and the process's peak RSS. The fetch from S3 is ``get``'s path (see
docs/benchmarks.md); this measures what ``query`` adds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MB = 1_000_000

STATEMENTS = {
    "count by severity": "SELECT error_severity, count(*) FROM logs GROUP BY 1",
    "group by user/db/app": "SELECT user_name, database_name, application_name, count(*), "
    "sum(length(message)) FROM logs GROUP BY ALL",
    "every row, --csv": "SELECT * FROM logs",
    "every row sorted, --csv": "SELECT * FROM logs ORDER BY log_time DESC, session_line_num",
}

CHILD = """
import json, os, resource, sys, time
from pathlib import Path
from rdsrecorder.query import CsvSink, Engine, LogFile
from rdsrecorder.query_options import OutputFormat

class Sink(CsvSink):
    first = None
    def rows(self, batch):
        if Sink.first is None:
            Sink.first = batch[0]
        super().rows(batch)

work, limit, sql, files = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
t0 = time.monotonic()
engine = Engine(work, limit)
engine.load([LogFile("bench-db", Path(f)) for f in files], 0.0, 4e9)
with open(os.devnull, "w") as out:
    if sql.startswith("SELECT *"):  # what query --csv does with a query
        rows = engine.export(sql, OutputFormat.CSV, out, work / "result")
    else:
        rows = engine.run(sql, Sink(out))
wall = time.monotonic() - t0
engine.close()
print(json.dumps({"wall_s": wall, "rows": rows, "first": str(Sink.first and Sink.first[0]),
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(work: Path, limit_mib: int, sql: str, files: list[Path]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(work), str(limit_mib), sql, *map(str, files)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(f"{sql}: {done.stderr.strip().splitlines()[-1]}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


def end_to_end(mb: float, files: int, root: Path, limit_mib: int) -> None:
    """The whole command against the lab: ``sync`` copies ``mb`` MB (gzip) into the lab's S3,
    then ``rdsrecorder query --csv`` fetches the window and runs, its peak RSS measured."""
    import asyncio
    import resource

    import pendulum

    from rdsrecorder.commands import run_sync
    from rdsrecorder.compression import Compression
    from rdsrecorder.config import AwsSettings, ObservabilitySettings, SyncSettings
    from rdsrecorder_lab import LabThread
    from rdsrecorder_lab.generate import generate

    end = pendulum.now("UTC").start_of("hour").subtract(minutes=30)
    generated = generate(root, "e2e-db", files=files + 1, end=end, size_mb=(mb / files,) * 2)
    first = pendulum.from_timestamp(generated[0].start_s, tz="UTC")
    finish = first.add(hours=files)
    with LabThread(root, s3="moto") as lab:
        os.environ.update(lab.env)
        settings = SyncSettings(
            db_identifier="e2e-db", bucket=lab.env["AWS_S3_BUCKET_NAME"], start=first,
            finish=finish, run_id="e2e", compress=Compression.GZIP,
            aws=AwsSettings(region="us-east-1"),
            obs=ObservabilitySettings(metrics_port=0, progress=False),
        )  # fmt: skip
        assert asyncio.run(run_sync(settings)).exit_code == 0
        total = sum(g.size for g in generated[:files])
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "rdsrecorder", "query", "--bucket", settings.bucket,
             "-d", "e2e-db", "--start", first.to_iso8601_string(), "--finish",
             finish.to_iso8601_string(), "--memory-limit-mib", str(limit_mib), "--csv",
             "SELECT * FROM logs"],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False,
        )  # fmt: skip
        wall_s = time.monotonic() - started
    rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rows = sum(g.records for g in generated[:files])
    print(
        f"end to end: {files} files, {total / MB:,.0f} MB (gzip objects in the lab's S3), "
        f"{rows:,} rows; rdsrecorder query --csv 'SELECT * FROM logs': exit {done.returncode}, "
        f"{wall_s:.1f} s, {rows / wall_s:,.0f} rows/s, peak RSS {rss_mib:,.0f} MiB"
    )
    if done.returncode:
        print(done.stderr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=1000)
    parser.add_argument("--dir", default="/tmp/rdsrecorder-query-bench")
    parser.add_argument("--memory-limit-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--e2e", action="store_true", help="the whole command, S3 included")
    args = parser.parse_args()
    root = Path(args.dir)
    if args.e2e:
        end_to_end(args.mb, args.files, root, args.memory_limit_mib)
        return
    log_dir = root / "bench-db" / "error"
    files = sorted(log_dir.glob("*.csv")) if log_dir.is_dir() else []
    if sum(f.stat().st_size for f in files) < args.mb * MB * 0.95:
        from rdsrecorder_lab.generate import generate

        each = args.mb / args.files
        generated = generate(root, "bench-db", files=args.files, size_mb=(each, each), seed=11)
        files = [g.path for g in generated]
    total = sum(f.stat().st_size for f in files)
    work = root / "work"
    (work / "spill").mkdir(parents=True, exist_ok=True)
    counted = run(
        work, args.memory_limit_mib, "SELECT count(*) FROM logs", files
    )  # warms the cache
    rows_in = int(counted["first"])
    print(
        f"window: {len(files)} files, {total / MB:,.0f} MB of csvlog, {rows_in:,} rows; "
        f"--memory-limit-mib {args.memory_limit_mib}; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    for name, sql in {"count(*)": "SELECT count(*) FROM logs", **STATEMENTS}.items():
        r = run(work, args.memory_limit_mib, sql, files)
        print(
            f"{name:26} {r['wall_s']:7.1f} s  {rows_in / r['wall_s']:11,.0f} rows/s  "
            f"{total / MB / r['wall_s']:6.1f} MB/s  peak RSS {r['rss_mib']:6.0f} MiB  "
            f"({int(r['rows']):,} rows out)"
        )


if __name__ == "__main__":
    main()
