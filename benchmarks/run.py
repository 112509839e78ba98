"""rdsrecorder benchmark (`make bench`): prints markdown tables; not a test.

First the headline, the limits table (``limits.py``): both download methods and the AWS CLI on an
emulation of the API's limits, each against the lower bound any copier has under them. Then the
CPU-bound comparison below (no API limits, so it measures this machine more than AWS):

Against the lab (emulated RDS log API with a per-call latency) and a real S3 server (SeaweedFS;
moto when SeaweedFS is missing), in one run:

* a naive sequential baseline — what most scripts do: boto3, DownloadDBLogFilePortion paging with
  10,000 lines a call, the whole file in memory, one put_object per file;
* rdsrecorder (a real `rdsrecorder sync` subprocess) at several concurrencies, for both download
  methods, plus one run with parts kept in memory (`--spool-dir memory`): throughput, speed-up,
  peak RSS of the process (its VmHWM, polled), portion calls per MB (from the lab's stats),
  byte-exactness (sha256), and where the CPU went: rdsrecorder (wait4 rusage), the lab (this
  process's threads but the main one) and SeaweedFS (/proc/<pid>/stat) share the machine;
* the tailer's lag: minute-named files are rotated by this script while `rdsrecorder sync`
  follows them; lag = object visible in S3 - successor file created.

    python benchmarks/run.py            # 8 x 24 MB, concurrency 1 2 4 8 16, 40 ms latency
    python benchmarks/run.py --quick    # smaller, for a smoke run
    python benchmarks/run.py --big      # also 8 x 200 MB files (memory independent of size)
    python benchmarks/run.py --no-limits   # only the CPU-bound table
    python benchmarks/limits.py         # only the limits table (about a minute and a half)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import MB, CpuMeter, check_exact, clients, machine, run_sync
from limits import add_arguments, limits_table, limits_targets

from rdsrecorder_lab import LabThread, generate
from rdsrecorder_lab.s3local import find_weed


def baseline(env: dict[str, str], instance: str, names: list[str], bucket: str) -> float:
    """The naive script: sequential, whole file in memory, 10,000-line portions, put_object."""
    rds, s3 = clients(env)
    t0 = time.monotonic()
    for name in names:
        marker, parts = "0", []
        while True:
            resp = rds.download_db_log_file_portion(
                DBInstanceIdentifier=instance, LogFileName=name, Marker=marker, NumberOfLines=10000
            )
            parts.append(resp.get("LogFileData", ""))
            marker = resp.get("Marker", marker)
            if not resp.get("AdditionalDataPending"):
                break
        body = "".join(parts).encode()
        s3.put_object(Bucket=bucket, Key=f"baseline/{name}", Body=body)
    return time.monotonic() - t0


def throughput_table(args: argparse.Namespace, out: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rdsbench-") as tmp:
        root = Path(tmp)
        end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        files = generate(
            root,
            "bench-db",
            files=args.files + 1,
            end=end,
            size_mb=(args.size_mb, args.size_mb),
            seed=5,
        )
        files = files[: args.files]  # the newest file is "current": outside the window
        total_mb = sum(f.size for f in files) / MB
        s3_kind = "seaweed" if find_weed() else "moto"
        with LabThread(root, s3=s3_kind) as lab:
            env = dict(lab.env)
            lab.set_faults(latency_ms=args.latency_ms)
            _, s3 = clients(env)
            start = dt.datetime.fromtimestamp(files[0].start_s, dt.UTC).isoformat()
            finish = dt.datetime.fromtimestamp(files[-1].end_s, dt.UTC).isoformat()
            lab.reset_stats()
            meter = CpuMeter(lab.s3_pid)
            meter.start()
            main0 = time.thread_time()
            base_s = baseline(env, "bench-db", [f.name for f in files], lab.bucket)
            base_cpu = time.thread_time() - main0
            base_lab_cpu, base_s3_cpu = meter.stop()
            base_calls = lab.stats()["calls"].get("DownloadDBLogFilePortion", 0)
            base_exact = check_exact(s3, lab.bucket, "baseline", files, leaf="")
            out.append(
                f"Lab latency {args.latency_ms:.0f} ms per call, {args.files} files x "
                f"{args.size_mb:g} MB = {total_mb:.0f} MB, S3 server: {s3_kind}.\n"
            )
            out.append(
                "| run | method | concurrency | seconds | MB/s | speed-up | peak RSS MB | portion calls/MB | CPU s: rdsrecorder / lab / S3 | byte-exact |"
            )
            out.append("|---|---|---|---|---|---|---|---|---|---|")
            out.append(
                f"| naive script (boto3, sequential) | portion | 1 | {base_s:.1f} | {total_mb / base_s:.1f} "
                f"| 1.0x | - | {base_calls / total_mb:.2f} | {base_cpu:.1f} / {base_lab_cpu:.1f} / {base_s3_cpu:.1f} | "
                f"{'yes' if base_exact else 'NO: cut 10,000-line portions lost data'} |"
            )
            results["baseline_s"] = base_s
            empty = run_sync(
                env,
                [
                    "--db-identifier",
                    "bench-db",
                    "--start",
                    dt.datetime.fromtimestamp(files[0].start_s - 7200, dt.UTC).isoformat(),
                    "--finish",
                    dt.datetime.fromtimestamp(files[0].start_s - 3600, dt.UTC).isoformat(),
                    "--run-id",
                    f"startup-{int(time.time())}",
                ],
            )
            out.append(
                f"| rdsrecorder, empty window (start-up, checks, listing) | - | 1 | {empty.seconds:.1f} | - | - | {empty.peak_rss_mb:.0f} | - | {empty.cpu_s:.1f} / - / - | - |"
            )
            runs = [(m, c, "") for m in args.methods for c in args.concurrency]
            if args.memory_row and "complete" in args.methods:
                runs.append(("complete", 8, "memory"))
            for method, conc, spool in runs:
                run_id = f"bench-{method}-{conc}-{spool or 'disk'}-{int(time.time())}"
                lab.reset_stats()
                meter.start()
                run = run_sync(
                    env,
                    [
                        "--db-identifier",
                        "bench-db",
                        "--start",
                        start,
                        "--finish",
                        finish,
                        "--run-id",
                        run_id,
                        "--concurrency",
                        str(conc),
                        "--download-method",
                        method,
                        "--max-api-rps",
                        "1000",
                        *(["--spool-dir", spool] if spool else []),
                    ],
                )
                lab_cpu, s3_cpu = meter.stop()
                secs, rss, rc, cpu = run.seconds, run.peak_rss_mb, run.returncode, run.cpu_s
                tail = run.stderr_tail
                calls = lab.stats()["calls"].get("DownloadDBLogFilePortion", 0)
                exact = rc == 0 and check_exact(s3, lab.bucket, run_id, files)
                results[(method, conc, spool)] = (secs, rss, calls / total_mb, exact)
                label = "rdsrecorder, parts in memory" if spool else "rdsrecorder"
                out.append(
                    f"| {label} | {method} | {conc} | {secs:.1f} | {total_mb / secs:.1f} | "
                    f"{base_s / secs:.1f}x | {rss:.0f} | {calls / total_mb:.2f} | "
                    f"{cpu:.1f} / {lab_cpu:.1f} / {s3_cpu:.1f} | "
                    f"{'yes' if exact else 'NO (exit ' + str(rc) + ') ' + tail.strip()[-200:]} |"
                )
                print(out[-1], file=sys.stderr, flush=True)
    return results


def tail_lag(args: argparse.Namespace, out: list[str]) -> list[float]:
    """Rotate minute-named files by hand at each real minute boundary, as PostgreSQL does with
    `log_rotation_age=1min`; measure rotation -> object in S3. (Files written faster than their
    names say would mislead the recorder, which lists a DB just after its next expected rotation,
    learnt from the names.)"""
    poll_s = args.poll_s
    lags: list[float] = []
    with tempfile.TemporaryDirectory(prefix="rdsbench-tail-") as tmp:
        root = Path(tmp)
        errdir = root / "tail-db" / "error"
        errdir.mkdir(parents=True)
        with LabThread(root, s3="seaweed" if find_weed() else "moto") as lab:
            env = dict(lab.env)
            _, s3 = clients(env)
            now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
            # Names are a minute apart, each written when its minute begins.
            names = [now + dt.timedelta(minutes=i) for i in range(args.tail_files + 1)]
            block = (
                b'2024-01-01 00:00:00.000 UTC,u,d,1,,x,1,,,,0,LOG,00000,"tail line",,,,,,,,,,,0\n'
            ) * 20000

            def write(i: int) -> Path:
                p = errdir / f"postgresql.log.{names[i]:%Y-%m-%d-%H%M}.csv"
                p.write_bytes(block)
                return p

            write(0)
            run_id = f"tail-{int(time.time())}"
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rdsrecorder",
                    "sync",
                    "--db-identifier",
                    "tail-db",
                    "--start",
                    now.isoformat(),
                    "--run-id",
                    run_id,
                    "--poll-interval",
                    str(poll_s),
                    "--metrics-port",
                    "0",
                    "--no-progress",
                ],
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                for i in range(1, args.tail_files + 1):
                    time.sleep(max(0.0, names[i].timestamp() - time.time()))
                    write(i)
                    rotated_at = time.monotonic()
                    key = f"{run_id}/rds_log_{run_id}_{int(names[i - 1].timestamp())}"
                    deadline = rotated_at + 4 * poll_s + 60
                    while time.monotonic() < deadline:
                        try:
                            meta = s3.head_object(Bucket=lab.bucket, Key=key)["Metadata"]
                            if meta.get("sha256"):
                                lags.append(time.monotonic() - rotated_at)
                                break
                        except s3.exceptions.ClientError:
                            pass
                        time.sleep(0.1)
            finally:
                proc.terminate()
                proc.wait(30)
    if lags:
        out.append(
            f"\nTail lag (rotation -> object in S3), poll interval {poll_s:.0f} s, {len(lags)} files of "
            f"{len(block) / MB:.1f} MB: median {statistics.median(lags):.1f} s, max {max(lags):.1f} s "
            f"(target: <= poll interval + transfer time)."
        )
    return lags


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--big", action="store_true", help="also 8 x 200 MB files")
    parser.add_argument("--latency-ms", type=float, default=40.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size-mb", type=float, default=24.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--methods", nargs="+", default=["complete", "portion"])
    parser.add_argument("--poll-s", type=float, default=5.0)
    parser.add_argument("--tail-files", type=int, default=2, help="rotations (a minute each)")
    parser.add_argument(
        "--no-memory-row",
        dest="memory_row",
        action="store_false",
        help="skip the run with parts kept in memory (--spool-dir memory)",
    )
    parser.add_argument("--no-limits", dest="limits", action="store_false")
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.concurrency, args.tail_files = 4.0, [1, 8], 2
    out = [f"## rdsrecorder benchmark\n\nMachine: {machine()}.\n"]
    limits_ok = True
    if args.limits:
        out.append("### At the API's limits\n")
        limits_ok = limits_targets(limits_table(args, out), out)
        out.append("\n### CPU-bound (no API limits)\n")
    res = throughput_table(args, out)
    big: dict[str, Any] = {}
    if args.big:
        big_args = argparse.Namespace(**{**vars(args), "size_mb": 200.0, "concurrency": [8]})
        out.append("\nMemory with 8 x 200 MB files:\n")
        big = throughput_table(big_args, out)
    lags = tail_lag(args, out)
    # targets
    base = res["baseline_s"]
    out.append("\n| target | result | |")
    out.append("|---|---|---|")
    at8 = [res[(m, 8, "")][0] for m in args.methods if (m, 8, "") in res]
    if at8:
        best = min(at8)
        out.append(
            f"| concurrency 8 >= 6x baseline | {base / best:.1f}x | {'PASS' if base / best >= 6 else 'MISS'} |"
        )
    runs = {**res, **{("big", *k): v for k, v in big.items() if isinstance(k, tuple)}}
    rss = [v[1] for k, v in runs.items() if isinstance(k, tuple) and k[-1] == ""]
    if rss:
        out.append(
            f"| peak RSS <= 120 MB (default settings, every run{', 8 x 200 MB too' if big else ''}) "
            f"| max {max(rss):.0f} MB | {'PASS' if max(rss) <= 120 else 'MISS'} |"
        )
    in_memory = [v[1] for k, v in runs.items() if isinstance(k, tuple) and k[-1] == "memory"]
    if in_memory:
        out.append(
            f"| (for comparison) peak RSS with --spool-dir memory, concurrency 8 | max {max(in_memory):.0f} MB "
            f"| {'PASS' if max(in_memory) <= 120 else 'MISS'} |"
        )
    calls = [v[2] for k, v in res.items() if isinstance(k, tuple) and k[0] == "portion"]
    if calls:
        out.append(
            f"| <= 1.05 portion calls per MB | {max(calls):.2f} | {'PASS' if max(calls) <= 1.05 else 'MISS'} |"
        )
    if lags:
        out.append(
            f"| tail lag <= poll interval + transfer | max {max(lags):.1f} s vs {args.poll_s:.0f} s + transfer "
            f"| {'PASS' if max(lags) <= args.poll_s + 5 else 'MISS'} |"
        )
    exact = all(v[3] for k, v in runs.items() if isinstance(k, tuple))
    out.append(
        f"| every copy byte-exact | {'yes' if exact else 'NO'} | {'PASS' if exact else 'FAIL'} |"
    )
    text = "\n".join(out) + "\n"
    print(text)
    results_dir = Path(__file__).parent / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "latest.md").write_text(text)
    return 0 if exact and limits_ok else 1


if __name__ == "__main__":
    sys.exit(main())
