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
from rdsrecorder.query import CsvSink, Engine, LogFile, OutputFormat

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=1000)
    parser.add_argument("--dir", default="/tmp/rdsrecorder-query-bench")
    parser.add_argument("--memory-limit-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=8)
    args = parser.parse_args()
    root = Path(args.dir)
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
