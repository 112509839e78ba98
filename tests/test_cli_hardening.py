"""Issue 14 through the CLI, as a user meets it: engine errors are one ``error:`` line with a
documented exit code in backfill and follow mode, a run id owned by another DB is refused before
writing, SIGTERM in Download interval & Finish honours --shutdown-grace and the summary still
names what failed before it, one-shot commands serve no metrics unless asked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pendulum
import pytest

from rdsrecorder_lab import LabThread
from tests.e2e import Written, objects, s3_client, write_hourly

pytestmark = pytest.mark.realtime  # real processes and signals

DB = "cli-db"


@pytest.fixture(scope="module")
def lab_files(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LabThread, list[Written], pendulum.DateTime]]:
    root = tmp_path_factory.mktemp("clilab")
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=3)
    files = write_hourly(root, DB, first, [3_000_000, 3_000_000, 200_000, 1000], now)
    with LabThread(root, s3="moto") as lab:
        yield lab, files, first


def sync(
    lab: LabThread,
    *args: str,
    signal_in_flight: bool = False,
    signal_on: str | None = None,
) -> tuple[int, list[str]]:
    """Runs ``rdsrecorder sync``: exit code and output lines.
    SIGTERM goes once the lab has a download in flight (``signal_in_flight``) or once a line
    containing ``signal_on`` is logged."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rdsrecorder",
            "sync",
            "--metrics-port",
            "0",
            "--no-progress",
            *args,
        ],
        env={**os.environ, **lab.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    if signal_on is not None:
        assert proc.stderr is not None
        deadline = time.monotonic() + 90
        for line in proc.stderr:  # ends at EOF; bounded by the deadline below
            seen.append(line.rstrip("\n"))
            if signal_on in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
    elif signal_in_flight:
        deadline = time.monotonic() + 90
        while not lab.stats()["in_flight"] and proc.poll() is None:
            assert time.monotonic() < deadline, "no download started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, seen + (out + err).splitlines()


def window(first: pendulum.DateTime, hours: int = 2) -> list[str]:
    return ["--start", first.to_iso8601_string(), "--finish", first.add(hours=hours).isoformat()]


def error_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("error:")]


@pytest.mark.parametrize("follow", [False, True], ids=["backfill", "follow"])
def test_listing_denied_is_one_line_and_exit_3(
    lab_files: tuple[LabThread, list[Written], pendulum.DateTime], follow: bool
) -> None:
    lab, _, first = lab_files
    lab.set_faults(list_error="AccessDenied")
    try:
        span = window(first, hours=24 if follow else 2)
        code, lines = sync(lab, "--db-identifier", DB, "--run-id", f"deny-{follow}", *span)
    finally:
        lab.set_faults()
    (line,) = error_lines(lines)
    assert "DescribeDBLogFiles" in line and "allow rds:DescribeDBLogFiles" in line
    assert code == 3
    assert not any("ExceptionGroup" in x or "Traceback" in x for x in lines)


def test_a_run_id_of_another_db_is_refused_with_one_line(
    lab_files: tuple[LabThread, list[Written], pendulum.DateTime],
) -> None:
    lab, files, first = lab_files
    code, _ = sync(lab, "--db-identifier", DB, "--run-id", "owned", *window(first.add(hours=2), 1))
    assert code == 0
    lab.add_instance("cli-db2")
    lab.append_file("cli-db2", files[2].name, b"another db\n")
    before = objects(s3_client(lab.env), lab.bucket, "owned/")
    code, lines = sync(
        lab, "--db-identifier", "cli-db2", "--run-id", "owned", *window(first.add(hours=2), 1)
    )
    (line,) = error_lines(lines)
    assert "'cli-db'" in line and "--run-id" in line
    assert code == 3
    assert objects(s3_client(lab.env), lab.bucket, "owned/") == before


def test_sigterm_in_a_backfill_honours_the_shutdown_grace(
    lab_files: tuple[LabThread, list[Written], pendulum.DateTime],
) -> None:
    lab, _, first = lab_files
    lab.set_faults(portion_ms_per_mb=8000)  # 3 MB files take over 24 s
    try:
        code, lines = sync(
            lab,
            "--db-identifier",
            DB,
            "--run-id",
            "grace",
            "--shutdown-grace",
            "1",
            "--download-method",
            "portion",
            *window(first),
            signal_in_flight=True,
        )
    finally:
        lab.set_faults()
    assert code == 130
    # 1 s of grace, then the abort: the files, which needed 20 s more, were cut short.
    assert any("aborted by the stop" in line for line in lines)
    assert objects(s3_client(lab.env), lab.bucket, "grace/rds_log_") == {}


def test_interrupted_run_still_names_what_failed_before_the_stop(
    lab_files: tuple[LabThread, list[Written], pendulum.DateTime],
) -> None:
    lab, files, first = lab_files
    # The first file's portions say "binary data": it fails after its 3 attempts (2 + 4 s of
    # delay); the second is slow (3 MB at 30 s a MB), so the stop comes while it is in flight.
    lab.set_faults(binary_files=[files[0].name], portion_ms_per_mb=30_000)
    try:
        code, lines = sync(
            lab,
            "--db-identifier",
            DB,
            "--run-id",
            "fail-then-stop",
            "--shutdown-grace",
            "0",
            "--download-method",
            "portion",
            *window(first),
            signal_on=f"failed {DB} {files[0].name}",
        )
    finally:
        lab.set_faults()
    assert code == 130
    text = "\n".join(lines)
    assert "1 failed" in text and f"failed: {DB} {files[0].name}" in text
    assert "had failed or were lost before the stop" in text


def test_one_shot_commands_serve_no_metrics_unless_asked(
    lab_files: tuple[LabThread, list[Written], pendulum.DateTime],
) -> None:
    lab, _, _ = lab_files
    env = {**os.environ, **lab.env}
    # A port in use, free on the machine before the test took it (not sync's default 9445: a
    # neighbour on the machine may hold that one).
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        snap = [sys.executable, "-m", "rdsrecorder", "snapshot", "--db-identifier", DB]
        snap += ["--start", "now+2s", "--run-id", "snap1"]
        done = subprocess.run(snap, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        # No server: neither "metrics on http://..." (logged at INFO, shown by default) nor a
        # warning that the default port is taken.
        assert "metrics" not in done.stderr
        asked = subprocess.run(
            [*snap[:-1], "snap2", "--metrics-port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert asked.returncode == 0, asked.stderr
        assert f"cannot serve metrics on 0.0.0.0:{port}" in asked.stderr  # a warning, goes on
        ls = subprocess.run(
            [sys.executable, "-m", "rdsrecorder", "ls"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ls.returncode == 0, ls.stderr
    finally:
        taken.close()


def test_cli_help_mentions_include_series(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rdsrecorder", "sync", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    ).stdout
    assert "--include-series" in out
