"""The limits benchmark: how close to what AWS allows does rdsrecorder get?

The lab emulates the API's limits, with time scaled about 10x faster than real RDS: every request
takes `latency` (50 ms), a portion `per_mb` more per MB it carries (0.45 s), the whole-file endpoint
streams each file at `stream` (3 MB/s), and the account's token bucket holds `burst` calls (30)
refilled at `refill` a second (15), answering `Throttling` when empty. 16 hourly files of 6 MB.

rdsrecorder runs as a real process (start-up counts): `sync --concurrency 8 --max-api-rps 15
--max-api-burst 28` (the account's budget, less two calls of reserve), once
per download method. The AWS CLI runs the documented commands on the same emulation, one file after
another: `aws rds download-db-log-file-portion --starting-token 0 --output text > file`, then
`aws s3 cp file s3://...`.

The lower bound of any copier under these limits, per download method:

    bound = max(slowest file, sum of per-file times / concurrency, (calls - burst) / refill)

    portion path:    a file's time = calls x latency + MB x per_mb,  calls = ceil(size / 1 MB)
    whole-file path: a file's time = latency + MB / stream,          calls = 1

(1 MB = 10^6 bytes, the most one portion carries as AWS documents it.)

    python benchmarks/limits.py                  # both paths + the AWS CLI, about a minute
    python benchmarks/limits.py --no-aws-cli     # rdsrecorder only
    python benchmarks/limits.py --steady-state   # 64 files of 6 MB, each path, both portion
                                                 # caps, start-up on its own line; 2-3 minutes
    python benchmarks/limits.py --steady-state --methods complete --steady-files 32
                                                 # the whole-file path alone, about 15 s
    python benchmarks/limits.py --steady-state --time-scale 3
                                                 # RDS 3x slower (closer to AWS), S3 as is
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    MB,
    ProcessRun,
    clients,
    machine,
    object_hashes,
    run_process,
    run_sync,
    use_product,
)

from rdsrecorder_lab import LAB_REGION, LabThread, generate
from rdsrecorder_lab.s3local import find_weed

INSTANCE = "limits-db"
# rdsrecorder's own count, logged at the end of a run (rdsrecorder.aws).
THROTTLED_LINE = re.compile(r"AWS throttled (\d+) call")
# At the account's whole burst and refill, the account's bucket sits at zero and the jitter of
# request delivery alone gets Throttling answers (one a run at the 1,000,000-byte cap, then the
# rate halves and takes 30 s to climb back); a reserve of two calls absorbs it.
BURST_RESERVE = 2


@dataclass(frozen=True)
class Limits:
    """The emulated limits (the lab's knobs) and the copier's concurrency."""

    latency_s: float = 0.05
    portion_s_per_mb: float = 0.45
    stream_mb_per_s: float = 3.0
    burst: int = 30
    refill_per_s: float = 15.0
    concurrency: int = 8
    portion_max_mb: float = 1.0
    # The lab's portion cap, and the one the bound counts calls with (None: the lab's default,
    # 1 MiB, and the bound's 1 MB as AWS documents it).
    portion_cap_bytes: int | None = None

    def slower(self, scale: float) -> Limits:
        """Every RDS limit ``scale`` times slower (request latency, time per MB, stream rate, the
        bucket's refill); the burst and S3 unchanged. The lab runs RDS several times faster than
        AWS to keep runs short, but its S3 runs at loopback speed on the same cores: the upload
        a file still owes after its last byte weighs that many times more than on AWS."""
        return dataclasses.replace(
            self,
            latency_s=self.latency_s * scale,
            portion_s_per_mb=self.portion_s_per_mb * scale,
            stream_mb_per_s=self.stream_mb_per_s / scale,
            refill_per_s=self.refill_per_s / scale,
        )

    def faults(self) -> dict[str, Any]:
        knobs = {
            "latency_ms": self.latency_s * 1000,
            "portion_ms_per_mb": self.portion_s_per_mb * 1000,
            "stream_mbps": self.stream_mb_per_s * 8,
            "account_burst": self.burst,
            "account_refill_per_s": self.refill_per_s,
        }
        if self.portion_cap_bytes:
            knobs["portion_max_bytes"] = self.portion_cap_bytes
        return knobs

    def file_time_s(self, method: str, size: int) -> tuple[float, int]:
        """(seconds, calls) one file needs at least."""
        mb = size / MB
        if method == "portion":
            cap_mb = self.portion_cap_bytes / MB if self.portion_cap_bytes else self.portion_max_mb
            calls = max(1, math.ceil(mb / cap_mb))
            return calls * self.latency_s + mb * self.portion_s_per_mb, calls
        return self.latency_s + mb / self.stream_mb_per_s, 1

    def bound_s(self, method: str, sizes: Sequence[int]) -> float:
        times, calls = zip(*(self.file_time_s(method, s) for s in sizes), strict=True)
        return max(
            max(times),
            sum(times) / self.concurrency,
            (sum(calls) - self.burst) / self.refill_per_s,
        )


@dataclass(frozen=True)
class Row:
    who: str
    method: str
    seconds: float
    bound_s: float
    total_mb: float
    rss_mb: float | None
    cpu_s: float
    rds_calls: int
    download_calls: int
    throttled_lab: int
    throttled_own: int | None
    exact: str

    @property
    def ratio(self) -> float:
        return self.seconds / self.bound_s

    def markdown(self) -> str:
        rss = f"{self.rss_mb:.0f}" if self.rss_mb else "-"
        own = "-" if self.throttled_own is None else str(self.throttled_own)
        return (
            f"| {self.who} | {self.method} | {self.seconds:.1f} | {self.bound_s:.1f} | "
            f"**{self.ratio:.2f}x** | {self.total_mb / self.seconds:.1f} | {rss} | "
            f"{self.cpu_s / (self.total_mb / 1000):.0f} | "
            f"{self.rds_calls} ({self.download_calls / self.total_mb:.2f}) | "
            f"{self.throttled_lab} / {own} | {self.exact} |"
        )


HEADER = (
    "| copier | method | seconds | lower bound s | time / bound | MB/s | peak RSS MB "
    "| CPU s/GB | RDS calls (download calls/MB) | throttled: lab / own count | byte-exact |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def _rds_calls(stats: dict[str, Any]) -> int:
    return sum(n for action, n in stats["calls"].items() if action != "GetCallerIdentity")


def _download_calls(stats: dict[str, Any]) -> int:
    calls = stats["calls"]
    return int(calls.get("DownloadDBLogFilePortion", 0) + calls.get("DownloadCompleteLogFile", 0))


def _exactness(s3: Any, bucket: str, prefix: str, files: list[Any]) -> str:
    """'yes', or what differs: files whose copy is not the source, bytes missing or added."""
    got = object_hashes(s3, bucket, prefix)
    if sorted(h for h, _ in got.values()) == sorted(f.sha256 for f in files):
        return "yes"
    differ = len(files) - len({h for h, _ in got.values()} & {f.sha256 for f in files})
    delta = sum(n for _, n in got.values()) - sum(f.size for f in files)
    return f"NO: {differ} of {len(files)} files differ, {delta / MB:+.2f} MB"


def rdsrecorder_row(
    lab: LabThread, limits: Limits, method: str, files: list[Any], s3: Any, window: list[str]
) -> tuple[Row, ProcessRun]:
    lab.set_faults(**limits.faults())  # the account's bucket starts full
    lab.reset_stats()
    run_id = f"limits-{method}-{int(time.time())}"
    run = run_sync(
        dict(lab.env),
        [
            "--db-identifier",
            INSTANCE,
            *window,
            "--run-id",
            run_id,
            "--concurrency",
            str(limits.concurrency),
            # The account's budget as the bound counts it: its refill, and its burst less
            # BURST_RESERVE calls (the product's defaults keep to a share of both,
            # docs/api-budget.md).
            "--max-api-rps",
            f"{limits.refill_per_s:g}",
            "--max-api-burst",
            str(limits.burst - BURST_RESERVE),
            "--download-method",
            method,
        ],
    )
    stats = lab.stats()
    own = THROTTLED_LINE.search(run.stderr)
    exact = (
        _exactness(s3, lab.bucket, f"{run_id}/rds_log_", files)
        if run.returncode == 0
        else (f"NO (exit {run.returncode}) {run.stderr_tail.strip()[-200:]}")
    )
    total_mb = sum(f.size for f in files) / MB
    row = Row(
        who="rdsrecorder",
        method=method,
        seconds=run.seconds,
        bound_s=limits.bound_s(method, [f.size for f in files]),
        total_mb=total_mb,
        rss_mb=run.peak_rss_mb,
        cpu_s=run.cpu_s,
        rds_calls=_rds_calls(stats),
        download_calls=_download_calls(stats),
        throttled_lab=int(stats["throttled"]),
        throttled_own=int(own.group(1)) if own else 0,
        exact=exact,
    )
    return row, run


def aws_cli() -> str | None:
    beside = Path(sys.executable).parent / "aws"
    return str(beside) if beside.exists() else shutil.which("aws")


def aws_cli_row(
    lab: LabThread, limits: Limits, files: list[Any], s3: Any, work: Path, aws: str
) -> Row:
    """The AWS CLI as documented, one file after another: download the file, then copy it."""
    lab.set_faults(**limits.faults())
    lab.reset_stats()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=lab.env["AWS_ACCESS_KEY_ID"],
        AWS_SECRET_ACCESS_KEY=lab.env["AWS_SECRET_ACCESS_KEY"],
        AWS_DEFAULT_REGION=LAB_REGION,
        AWS_CONFIG_FILE=str(work / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(work / "aws-credentials"),
    )
    prefix = f"awscli-{int(time.time())}"
    t0 = time.monotonic()
    cpu_s = 0.0
    for f in files:
        local = work / Path(f.name).name
        with local.open("w") as out:
            got = run_process(
                [
                    aws,
                    "rds",
                    "download-db-log-file-portion",
                    "--endpoint-url",
                    lab.rds_url,
                    "--db-instance-identifier",
                    INSTANCE,
                    "--log-file-name",
                    f.name,
                    "--starting-token",
                    "0",
                    "--output",
                    "text",
                ],
                env,
                stdout=out,
            )
        cpu_s += got.cpu_s
        if got.returncode != 0:
            raise RuntimeError(f"aws rds download-db-log-file-portion failed: {got.stderr_tail}")
        put = run_process(
            [
                aws,
                "s3",
                "cp",
                "--endpoint-url",
                lab.s3_url,
                str(local),
                f"s3://{lab.bucket}/{prefix}/{local.name}",
            ],
            env,
        )
        cpu_s += put.cpu_s
        if put.returncode != 0:
            raise RuntimeError(f"aws s3 cp failed: {put.stderr_tail}")
    seconds = time.monotonic() - t0
    stats = lab.stats()
    return Row(
        who="AWS CLI (documented commands, sequential)",
        method="portion",
        seconds=seconds,
        bound_s=limits.bound_s("portion", [f.size for f in files]),
        total_mb=sum(f.size for f in files) / MB,
        rss_mb=None,
        cpu_s=cpu_s,
        rds_calls=_rds_calls(stats),
        download_calls=_download_calls(stats),
        throttled_lab=int(stats["throttled"]),
        throttled_own=None,
        exact=_exactness(s3, lab.bucket, f"{prefix}/", files),
    )


def limits_table(args: argparse.Namespace, out: list[str]) -> list[Row]:
    limits = Limits(concurrency=args.limits_concurrency)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rdsbench-limits-") as tmp:
        root = Path(tmp) / "lab"
        end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        files = generate(
            root,
            INSTANCE,
            files=args.limits_files + 1,
            end=end,
            size_mb=(args.limits_size_mb, args.limits_size_mb),
            seed=15,
        )[: args.limits_files]  # the newest file is the current one: outside the window
        total_mb = sum(f.size for f in files) / MB
        window = [
            "--start",
            dt.datetime.fromtimestamp(files[0].start_s, dt.UTC).isoformat(),
            "--finish",
            dt.datetime.fromtimestamp(files[-1].end_s, dt.UTC).isoformat(),
        ]
        s3_kind = "seaweed" if find_weed() else "moto"
        out.append(
            f"Emulated limits (time about 10x faster than RDS): {limits.latency_s * 1000:.0f} ms a "
            f"request, +{limits.portion_s_per_mb:g} s per MB a portion carries, "
            f"{limits.stream_mb_per_s:g} MB/s per whole-file stream, account bucket of "
            f"{limits.burst} calls refilled at {limits.refill_per_s:g}/s (Throttling when empty). "
            f"{len(files)} files x {args.limits_size_mb:g} MB = {total_mb:.0f} MB. rdsrecorder: "
            f"`sync --concurrency {limits.concurrency} --max-api-rps {limits.refill_per_s:g}` "
            f"(defaults otherwise), a real process. S3 server: {s3_kind}.\n"
        )
        out.append(HEADER)
        with LabThread(root, s3=s3_kind) as lab:
            _, s3 = clients(dict(lab.env))
            for method in ("complete", "portion"):
                row, _ = rdsrecorder_row(lab, limits, method, files, s3, window)
                rows.append(row)
                out.append(row.markdown())
                print(out[-1], file=sys.stderr, flush=True)
            aws = aws_cli() if args.aws_cli else None
            if aws:
                row = aws_cli_row(lab, limits, files, s3, Path(tmp), aws)
                rows.append(row)
                out.append(row.markdown())
            elif args.aws_cli:
                out.append("| AWS CLI | - | not installed (`pip install awscli`) |")
    fastest = {r.method: r for r in rows if r.who == "rdsrecorder"}
    cli = next((r for r in rows if r.who != "rdsrecorder"), None)
    if cli and "portion" in fastest:
        out.append(
            f"\nThe AWS CLI took {cli.seconds / fastest['portion'].seconds:.1f}x as long as "
            "rdsrecorder on the same (portion) API."
        )
    return rows


def limits_targets(rows: list[Row], out: list[str]) -> bool:
    ours = [r for r in rows if r.who == "rdsrecorder"]
    checks = [
        (f"{r.method}: time <= 1.25x the lower bound", f"{r.ratio:.2f}x", r.ratio <= 1.25)
        for r in ours
    ]
    throttled = max((r.throttled_lab for r in ours), default=0)
    checks.append(("at most a handful (5) of throttled calls", str(throttled), throttled <= 5))
    rss = max((r.rss_mb or 0 for r in ours), default=0)
    checks.append(("peak RSS <= 120 MB", f"{rss:.0f} MB", rss <= 120))
    exact = all(r.exact == "yes" for r in ours)
    checks.append(("every copy byte-exact", "yes" if exact else "NO", exact))
    out.append("\n| target | result | |\n|---|---|---|")
    out.extend(f"| {what} | {got} | {'PASS' if ok else 'MISS'} |" for what, got, ok in checks)
    return all(ok for _, _, ok in checks)


STEADY_CAPS = (1_048_576, 1_000_000)  # what users observe, what AWS documents


def steady_state(args: argparse.Namespace, out: list[str]) -> list[Row]:
    """The steady-state mode: many files (64 of 6 MB by default), so that start-up is a few per
    cent of the run; each download path against its lower bound, the portion path once per cap.
    Start-up (time from the process's start to its first request) is reported on its own."""
    rows: list[Row] = []
    startups: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rdsbench-steady-") as tmp:
        root = Path(tmp) / "lab"
        end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        size_mb = args.limits_size_mb
        files = generate(
            root,
            INSTANCE,
            files=args.steady_files + 1,
            end=end,
            size_mb=(size_mb, size_mb),
            seed=15,
        )[: args.steady_files]  # the newest file is the current one: outside the window
        window = [
            "--start",
            dt.datetime.fromtimestamp(files[0].start_s, dt.UTC).isoformat(),
            "--finish",
            dt.datetime.fromtimestamp(files[-1].end_s, dt.UTC).isoformat(),
        ]
        total_mb = sum(f.size for f in files) / MB
        s3_kind = "seaweed" if find_weed() else "moto"
        base = Limits(concurrency=args.limits_concurrency).slower(args.time_scale)
        out.append(
            f"Steady state: {len(files)} files x {size_mb:g} MB = {total_mb:.0f} MB, the limits "
            f"benchmark's limits ({base.latency_s * 1000:.0f} ms a request, +{base.portion_s_per_mb:g} s per "
            f"MB a portion carries, {base.stream_mb_per_s:g} MB/s per stream, bucket "
            f"{base.burst} + {base.refill_per_s:g}/s), `sync --concurrency {base.concurrency}`. "
            f"The portion path runs once per cap; its bound counts ceil(size / cap) calls a "
            f"file. S3 server: {s3_kind}. RDS time scale: {args.time_scale:g}x the limits "
            "benchmark's.\n"
        )
        out.append(STEADY_HEADER)
        runs = [("complete", None), *(("portion", cap) for cap in STEADY_CAPS)]
        runs = [(m, cap) for m, cap in runs if m in args.methods]
        with LabThread(root, s3=s3_kind) as lab:
            _, s3 = clients(dict(lab.env))
            for method, cap in runs:
                limits = dataclasses.replace(base, portion_cap_bytes=cap)
                started_at = time.time()
                row, _ = rdsrecorder_row(lab, limits, method, files, s3, window)
                first = lab.stats().get("first_call_at")
                rows.append(row)
                label = f"{method} (cap {cap:,} B)" if cap else method
                out.append(steady_markdown(row, label))
                print(out[-1], file=sys.stderr, flush=True)
                startup = f"{first - started_at:.2f} s" if first else "-"
                startups.append(f"{label}: {startup}")
    out.append(
        f"\nStart-up (process start to its first request; not a target): {'; '.join(startups)}."
    )
    return rows


STEADY_HEADER = (
    "| method | seconds | lower bound s | time / bound | RDS download calls / MB "
    "| throttled | CPU s/GB | peak RSS MB | byte-exact |\n|---|---|---|---|---|---|---|---|---|"
)


def steady_markdown(row: Row, label: str) -> str:
    rss = f"{row.rss_mb:.0f}" if row.rss_mb else "-"
    return (
        f"| {label} | {row.seconds:.1f} | {row.bound_s:.1f} | **{row.ratio:.2f}x** | "
        f"{row.download_calls / row.total_mb:.3f} | {row.throttled_lab} | "
        f"{row.cpu_s / (row.total_mb / 1000):.0f} | "
        f"{rss} | {row.exact} |"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limits-files", type=int, default=16)
    parser.add_argument("--limits-size-mb", type=float, default=6.0)
    parser.add_argument("--limits-concurrency", type=int, default=8)
    parser.add_argument(
        "--steady-state",
        action="store_true",
        help="the steady-state mode instead of the limits table (64 files of 6 MB, both caps)",
    )
    parser.add_argument("--steady-files", type=int, default=64)
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="steady state: every RDS limit this many times slower (latency, per MB, stream, "
        "refill; S3 unchanged). Peers measure 0.3-0.9 MB/s a file on the real portion API, "
        "the lab's 2: 3 is closer to AWS (a run 3 times longer)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=("complete", "portion"),
        default=("complete", "portion"),
        help="the download paths the steady-state mode runs (default: both)",
    )
    parser.add_argument(
        "--product",
        type=Path,
        help="a checkout whose rdsrecorder package runs instead of this one (the lab stays this "
        "one's): figures before and after a change, on the same machine in the same hour",
    )
    parser.add_argument(
        "--no-aws-cli", dest="aws_cli", action="store_false", help="skip the AWS CLI row"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args()
    if args.product:
        use_product(args.product.resolve())
    if args.steady_state:
        out = [f"## rdsrecorder at steady state\n\nMachine: {machine()}.\n"]
        rows = steady_state(args, out)
        print("\n".join(out))
        return 0 if all(r.exact == "yes" for r in rows) else 1
    out = [f"## rdsrecorder at the API's limits\n\nMachine: {machine()}.\n"]
    ok = limits_targets(limits_table(args, out), out)
    print("\n".join(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
