"""Two processes on one host (issue 25, 4): the two-shard example of docs/fleets.md runs as written
(each follower its own --metrics-port), a follower whose port is taken stops with one line, and a
backfill beside a follower goes on without metrics."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pendulum
import pytest

from rdsrecorder_lab import LabThread
from rdsrecorder_lab.generate import generate_fleet
from tests.e2e import objects, s3_client

pytestmark = pytest.mark.realtime  # real processes

ROOT = Path(__file__).resolve().parents[1]


def shard_commands() -> list[list[str]]:
    """The ``--shard`` lines of docs/fleets.md's first example, split as a shell would."""
    text = (ROOT / "docs" / "fleets.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if "--shard" in line]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_two_shard_example_runs_on_one_host(tmp_path: Path) -> None:
    commands = shard_commands()
    assert len(commands) == 2
    ports = [option(c, "--metrics-port") for c in commands]
    assert len(set(ports)) == 2, "each replica on one host needs its own --metrics-port"
    end = pendulum.now("UTC").subtract(hours=1)
    fleet = generate_fleet(tmp_path, 4, prefix="pay", tags={"team": "payments"}, end=end)
    expected = {
        f"fleet-logs/{db}/rds_log_fleet-logs_{int(f.start_s)}" for db in fleet for f in fleet[db]
    }
    # A bucket of its own: moto's servers in one process share their buckets, and the fleet
    # tests use this run id too.
    with LabThread(tmp_path, s3="moto", bucket="two-on-one-host") as lab:
        env = {**os.environ, **lab.env, "RDSRECORDER_METRICS_ADDRESS": "127.0.0.1"}
        # As written, but on ports free on this machine (the example's 9445/9446 may be taken by
        # whatever else runs here): the point is two distinct ports, as the example gives.
        local = {p: str(free_port()) for p in ports}
        procs, logs = [], []
        for i, args in enumerate(commands):
            assert args[0] == "rdsrecorder"
            argv = [local.get(a, a) for a in args[1:]]
            logs.append((tmp_path / f"shard{i}.log").open("w"))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "rdsrecorder", *argv, "--no-progress"],
                    env=env,
                    stdout=logs[-1],
                    stderr=subprocess.STDOUT,
                )
            )
        try:
            deadline = time.monotonic() + 120
            got: set[str] = set()
            while time.monotonic() < deadline and all(p.poll() is None for p in procs):
                got = {k for k in objects(s3_client(lab.env), lab.bucket, "fleet-logs/")}
                if expected <= got:
                    break
                time.sleep(0.5)
            assert all(p.poll() is None for p in procs), [
                (tmp_path / f"shard{i}.log").read_text() for i in range(2)
            ]
            for port in local.values():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    assert b"rdsrecorder_dbs_followed" in r.read()
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
            for f in logs:
                f.close()
    assert expected <= got
    assert [p.returncode for p in procs] == [130, 130]


def test_a_follower_on_a_taken_port_stops_and_a_backfill_goes_on(tmp_path: Path) -> None:
    end = pendulum.now("UTC").subtract(hours=1)
    generate_fleet(tmp_path, 1, prefix="bf", end=end)
    with LabThread(tmp_path, s3="moto", bucket="taken-port") as lab, socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, **lab.env}
        base = [sys.executable, "-m", "rdsrecorder", "sync", "-d", "bf-000", "--start", "earliest"]
        base += ["--metrics-address", "127.0.0.1", "--metrics-port", str(port)]
        follower = subprocess.run(
            [*base, "--run-id", "f"], env=env, capture_output=True, text=True, timeout=60
        )
        backfill = subprocess.run(
            [*base, "--run-id", "b", "--finish", "now"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        landed = objects(s3_client(lab.env), lab.bucket, "b/")
    assert follower.returncode == 2
    errors = [ln for ln in follower.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        f"error: cannot serve metrics on 127.0.0.1:{port} (Address already in use); choose "
        "another --metrics-port, or 0 to disable"
    ]
    assert backfill.returncode == 0, backfill.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in backfill.stderr  # the warning
    assert any(k.startswith("b/rds_log_") for k in landed)
