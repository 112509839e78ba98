"""What the benchmarks share: the machine's description, boto3 clients on the lab, a real
`rdsrecorder sync` process with its peak RSS and CPU, CPU meters, and the byte-exactness check."""

from __future__ import annotations

import compileall
import datetime as dt
import functools
import hashlib
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

import rdsrecorder
from rdsrecorder_lab import LAB_REGION

MB = 1_000_000
MIB = 1 << 20


def proc_cpu_s(pid: int | None) -> float:
    """utime + stime of a process (0 when unknown or gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuMeter:
    """CPU seconds spent by the lab (this process's threads other than the main one) and by the
    S3 server process, between start() and stop()."""

    def __init__(self, s3_pid: int | None) -> None:
        self.s3_pid = s3_pid
        self._lab0 = self._s30 = 0.0

    @staticmethod
    def _lab_now() -> float:
        return time.process_time() - time.thread_time()

    def start(self) -> None:
        self._lab0, self._s30 = self._lab_now(), proc_cpu_s(self.s3_pid)

    def stop(self) -> tuple[float, float]:
        return self._lab_now() - self._lab0, proc_cpu_s(self.s3_pid) - self._s30


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, Python {platform.python_version()}, "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d}"
    )


def clients(env: dict[str, str]) -> tuple[Any, Any]:
    cfg = Config(retries={"max_attempts": 10, "mode": "standard"}, s3={"addressing_style": "path"})
    kw = dict(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=LAB_REGION,
        config=cfg,
    )
    return (
        boto3.client("rds", endpoint_url=env["AWS_ENDPOINT_URL_RDS"], **kw),
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], **kw),
    )


def vm_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class ProcessRun:
    seconds: float
    peak_rss_mb: float  # VmHWM, in MB (10^6 bytes); 0 when never read
    returncode: int
    stderr: str
    cpu_s: float  # the child's own user + system time

    @property
    def stderr_tail(self) -> str:
        return "".join(self.stderr.splitlines(keepends=True)[-5:])


def run_process(
    argv: list[str], env: dict[str, str], stdout: Any = subprocess.DEVNULL
) -> ProcessRun:
    """Run ``argv`` to its end; peak RSS is its VmHWM, polled every 20 ms until it exits (VmHWM
    belongs to the address space created at exec; wait4's ru_maxrss would also count the forked
    parent's pages). CPU is the child's own user + system time, from wait4."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    peak = 0.0
    while True:
        hwm = vm_hwm_mib(proc.pid)
        if hwm is not None:
            peak = max(peak, hwm)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    reader.join(5)
    return ProcessRun(
        seconds=elapsed,
        peak_rss_mb=peak * MIB / MB,
        returncode=proc.returncode,
        stderr="".join(stderr_lines),
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


@functools.cache
def byte_compile() -> None:
    """rdsrecorder's modules compiled to bytecode once, as pip leaves an installed package (the
    Docker image's): an editable install has none, and with PYTHONDONTWRITEBYTECODE set Python
    would compile every module again at each start (about 0.1 s here)."""
    compileall.compile_dir(Path(rdsrecorder.__file__).parent, quiet=1)


def use_product(checkout: Path) -> None:
    """Run the rdsrecorder of another checkout in the product processes (benchmarks --product).
    PYTHONSAFEPATH: ``python -m`` would otherwise put the working directory (this checkout)
    ahead of PYTHONPATH."""
    if not (checkout / "rdsrecorder" / "__main__.py").is_file():
        raise SystemExit(f"error: {checkout} holds no rdsrecorder package")
    compileall.compile_dir(checkout / "rdsrecorder", quiet=1)
    os.environ["PYTHONSAFEPATH"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(checkout), os.environ.get("PYTHONPATH", "")) if p
    )
    probe = subprocess.run(
        [sys.executable, "-c", "import rdsrecorder; print(rdsrecorder.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    if not probe.stdout.strip().startswith(str(checkout)):
        raise SystemExit(f"error: the product processes would run {probe.stdout.strip()}")
    print(f"product: {probe.stdout.strip()}", file=sys.stderr)


def run_sync(env: dict[str, str], args: list[str]) -> ProcessRun:
    """A real `rdsrecorder sync` process (start-up included), no metrics server, no progress."""
    byte_compile()
    argv = [sys.executable, "-m", "rdsrecorder", "sync", *args, "--metrics-port", "0"]
    return run_process([*argv, "--no-progress"], {**os.environ, **env})


def object_hashes(s3: Any, bucket: str, prefix: str) -> dict[str, tuple[str, int]]:
    """Key -> (sha256, size) of every object under ``prefix``."""
    out: dict[str, tuple[str, int]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"]] = (hashlib.sha256(body).hexdigest(), len(body))
    return out


def check_exact(
    s3: Any, bucket: str, prefix: str, files: list[Any], leaf: str = "rds_log_"
) -> bool:
    got = sorted(h for h, _ in object_hashes(s3, bucket, f"{prefix}/{leaf}").values())
    return got == sorted(f.sha256 for f in files)
