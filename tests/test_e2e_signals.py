"""Graceful shutdown as a container runtime does it: SIGTERM to a real `rdsrecorder sync`
process mid-transfer, then a re-run with the same run id that completes the copy without
downloading again what had landed."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pendulum
import pytest

from rdsrecorder.models import META_SOURCE
from rdsrecorder_lab import LabThread
from tests.e2e import Written, multipart_uploads, objects, s3_client, write_hourly

pytestmark = pytest.mark.realtime  # real processes, real signals, real seconds

MB = 1000 * 1000


@pytest.fixture(scope="module")
def big_lab(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LabThread, list[Written], pendulum.DateTime]]:
    root = tmp_path_factory.mktemp("siglab")
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=7)
    files = write_hourly(root, "sig-db", first, [12 * MB] * 7 + [1000], now)
    with LabThread(root, s3="moto") as lab:
        yield lab, files[:7], first


def spooled_files(pid: int, spool: Path) -> list[str]:
    """The anonymous part files a process has open in ``spool`` (unlinked: "... (deleted)")."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{spool}/"):
            found.append(target)
    return found


def start_sync(env: dict[str, str], first: pendulum.DateTime, run_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rdsrecorder",
            "sync",
            "--db-identifier",
            "sig-db",
            "--start",
            first.to_iso8601_string(),
            "--finish",
            first.add(hours=7).to_iso8601_string(),
            "--run-id",
            run_id,
            "--concurrency",
            "2",
            "--download-method",
            "portion",
            "--metrics-port",
            "0",
            "--no-progress",
        ],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.timeout(180)
def test_sigterm_mid_transfer_then_resume(
    big_lab: tuple[LabThread, list[Written], pendulum.DateTime],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    lab, files, first = big_lab
    spool = tmp_path / "tmp"  # the temp dir, where parts are spooled by default
    spool.mkdir()
    env = {**lab.env, "TMPDIR": str(spool)}
    bucket = env["AWS_S3_BUCKET_NAME"]
    client = s3_client(env)
    lab.set_faults(latency_ms=30)  # slow enough to be caught mid-transfer
    proc = start_sync(env, first, "sig-run")
    # wait until at least one file landed and others are in flight
    deadline = time.monotonic() + 90
    spooled: list[str] = []
    while time.monotonic() < deadline:
        spooled = spooled or spooled_files(proc.pid, spool)
        landed = client.list_objects_v2(Bucket=bucket, Prefix="sig-run/rds_log_").get("KeyCount", 0)
        if landed >= 1:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("nothing landed in 90 s")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)  # a hang fails here; how fast is not the point
    assert proc.returncode == 130, stderr
    assert "SIGTERM" in stderr
    assert multipart_uploads(client, bucket) == []
    assert spooled and all(name.endswith("(deleted)") for name in spooled), spooled
    assert list(spool.iterdir()) == []  # part files are anonymous: nothing left by a SIGTERM
    before = {
        key: client.head_object(Bucket=bucket, Key=key)["Metadata"]
        for key in objects(client, bucket, "sig-run/rds_log_")
    }
    # Every object that landed is whole: a PutObject, or a completed (atomic) multipart upload.
    complete_sources = {m[META_SOURCE] for m in before.values()}
    assert 1 <= len(complete_sources) < len(files)

    lab.set_faults()
    lab.reset_stats()
    proc = start_sync(env, first, "sig-run")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    downloaded = set(lab.stats()["portion_calls_by_file"])
    assert (
        not downloaded & {f"sig-db/{s}" for s in complete_sources}
        and not downloaded & complete_sources
    )
    got = objects(client, bucket, "sig-run/rds_log_")
    assert len(got) == len(files)  # one key per file, no duplicates
    assert sorted(hashlib.sha256(v).hexdigest() for v in got.values()) == sorted(
        f.sha256 for f in files
    )
    assert list(spool.iterdir()) == []
