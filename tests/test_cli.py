"""The CLI as a user meets it: help, and one clear line + exit code for each bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rdsrecorder", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "RDSRECORDER_METRICS_PORT": "0", **(env or {})},
        check=False,
    )


def test_no_arguments_prints_help_listing_commands() -> None:
    proc = run()
    out = proc.stdout + proc.stderr
    for command in ("sync", "snapshot", "verify", "ls", "lab"):
        assert command in out
    assert "Usage" in out


def test_sync_help_lists_every_option_with_env_var() -> None:
    proc = run("sync", "--help")
    assert proc.returncode == 0
    for option in (
        "--start",
        "--finish",
        "--bucket",
        "--db-identifier",
        "--concurrency",
        "--run-id",
        "--region",
        "--debug",
        "--poll-interval",
        "--finish-grace",
        "--no-snapshot",
        "--download-method",
        "--max-api-rps",
        "--max-api-burst",
        "--expected-bucket-owner",
        "--sse",
        "--shutdown-grace",
        "--metrics-port",
        "--log-format",
        "--spool-dir",
    ):
        assert option in proc.stdout, option
    assert "RDSRECORDER_START" in proc.stdout


BASE = ["sync", "--bucket", "my-bucket", "--db-identifier", "db"]
GET = ["get", "--bucket", "my-bucket", "--db-identifier", "db", "--start", "now-1h"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "yesterday-ish", "--finish", "now"], "--start: cannot parse 'yesterday-ish'"),
        (["--start", "now-1h", "--finish", "13:00 tomorrow"], "--finish: cannot parse"),
        (["--start", "now-1h", "--finish", "now-2h"], "must be after start"),
        (["--start", "now-8d", "--finish", "now-7d"], "at most 7 days"),
        (["--start", "now-1h", "--concurrency", "0"], "--concurrency must be between 1 and 64"),
        (["--start", "now-1h", "--concurrency", "1000"], "--concurrency must be between 1 and 64"),
        (["--start", "now-1h", "--part-size-mib", "1"], "--part-size-mib"),
        (["--start", "now-1h", "--max-api-burst", "0"], "--max-api-burst must be between 1"),
        (["--start", "now-1h", "--max-api-burst", "301"], "--max-api-burst must be between 1"),
        (["--start", "now-1h", "--run-id", "a/b"], "invalid --run-id"),
        (["--finish", "now"], "missing --start"),
        (
            ["--start", "now-1h", "--spool-dir", "/no/such/dir"],
            "--spool-dir is not usable: /no/such/dir",
        ),
    ],
)
def test_bad_sync_input_gives_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = run(*BASE, *args)
    assert proc.returncode == 2, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, proc.stderr
    assert message in error_lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_bucket_names_the_env_var() -> None:
    proc = run("sync", "--db-identifier", "db", "--start", "now-1h")
    assert proc.returncode == 2
    assert "error: missing --bucket (or env AWS_S3_BUCKET_NAME)" in proc.stderr


def test_bucket_falls_back_to_aws_s3_bucket_name_and_options_to_env() -> None:
    # Everything from env; the date is bad so that the run stops at validation.
    proc = run(
        "sync",
        env={
            "AWS_S3_BUCKET_NAME": "from-env",
            "RDSRECORDER_DB_IDENTIFIER": "db",
            "RDSRECORDER_START": "now-1h",
            "RDSRECORDER_FINISH": "now-2h",
        },
    )
    assert proc.returncode == 2
    assert "must be after start" in proc.stderr


def test_snapshot_in_the_past_is_refused() -> None:
    proc = run("snapshot", "--start", "now-1m", "--db-identifier", "db")
    assert proc.returncode == 2
    assert "error: snapshot start" in proc.stderr and "in the past" in proc.stderr


def test_version() -> None:
    proc = run("version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("rdsrecorder ")


def test_metrics_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run(
            "sync",
            "--db-identifier",
            "db",
            "--bucket",
            "my-bucket",
            "--start",
            "now-1h",
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            str(port),
            env={"RDSRECORDER_METRICS_PORT": str(port)},
        )
    assert proc.returncode == 2, proc.stderr
    assert f"error: cannot serve metrics on 127.0.0.1:{port}" in proc.stderr


def test_spool_dir_defaults_to_the_temp_dir_and_falls_back_to_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rdsrecorder.s3 import spool as spool_module
    from rdsrecorder.s3.upload import resolve_spool_dir

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(spool_module.tempfile, "gettempdir", lambda: str(spool))
    assert resolve_spool_dir(None) == str(spool)
    assert resolve_spool_dir("memory") is None
    assert resolve_spool_dir(str(spool)) == str(spool)
    not_a_dir = spool / "file"
    not_a_dir.write_text("x")
    monkeypatch.setattr(spool_module.tempfile, "gettempdir", lambda: str(not_a_dir))
    with caplog.at_level("WARNING"):
        assert resolve_spool_dir(None) is None
    assert "keeping them in memory" in caplog.text
    assert list(spool.iterdir()) == [not_a_dir]  # the probes left nothing behind


def test_malloc_arenas_are_limited_unless_the_user_set_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rdsrecorder import runtime

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert runtime.limit_malloc_arenas() is sys.platform.startswith("linux")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert runtime.limit_malloc_arenas() is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*BASE, "--start", "now-99999999999d", "--finish", "now"], "out of range"),
        ([*BASE, "--start", "9999-01-01"], "more than a year ahead"),
        ([*BASE, "--start", "now-1h", "--poll-interval", "nan"], "finite number"),
        ([*BASE, "--start", "now-1h", "--poll-interval", "inf"], "finite number"),
        ([*BASE, "--start", "now-1h", "--max-api-rps", "nan"], "finite number"),
        ([*BASE, "--start", "now-1h", "--run-id", "r\n"], "invalid --run-id"),
        ([*BASE, "--start", "now-1h", "--metrics-port", "70000"], "--metrics-port"),
        ([*BASE, "--start", "now-1h", "--region", "us east"], "invalid --region"),
        ([*BASE, "--start", "now-1h", "--concurrency", "abc"], "--concurrency"),
        ([*BASE, "--start", "now-1h", "--include-series", "../x"], "--include-series"),
        (
            ["sync", "--db-identifier", "db", "--bucket", "Bad_Bucket", "--start", "now-1h"],
            "bucket",
        ),
        (
            ["snapshot", "--db-identifier", "db", "--start", "now+1h", "--metrics-port", "-1"],
            "port",
        ),
        (["lab", "serve", "--port", "70000"], "--port"),
        (["lab", "serve", "--s3-port", "70000"], "--s3-port"),
        (["lab", "serve", "--data", "/dev/null"], "not a directory"),
        (["lab", "demo", "--hours", "1"], "--hours"),
        (["no-such-command"], "No such command"),
        ([*BASE, "--start", "now-1h", "--retention-hours", "0"], "more than 0 and at most 168"),
        ([*GET, "--output-dir", "/dev/null"], "--output-dir '/dev/null' is not a directory"),
        ([*GET, "--output-dir", "/proc/x"], "--output-dir '/proc/x' is not usable"),
        ([*GET, "--output-dir", "/dev/null/x"], "is not a directory"),
        ([*GET, "--stdout", "--output-dir", "d"], "either --output-dir or --stdout"),
    ],
)
def test_hostile_input_is_one_line_and_exit_2_before_any_aws_call(
    args: list[str], message: str
) -> None:
    # An endpoint nobody listens on: any AWS call would fail differently (exit 3, other lines).
    proc = run(*args, env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert message in lines[0]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AWS_ENDPOINT_URL_RDS": "notaurl"}, "invalid AWS_ENDPOINT_URL_RDS 'notaurl'"),
        ({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:port"}, "invalid AWS_ENDPOINT_URL_S3"),
        ({"AWS_ENDPOINT_URL": "ftp://127.0.0.1"}, "expected an http:// or https:// URL"),
        ({"AWS_ENDPOINT_URL_STS": "http://"}, "invalid AWS_ENDPOINT_URL_STS"),
    ],
)
def test_hostile_environment_is_one_line_and_exit_2(env: dict[str, str], message: str) -> None:
    for args in (["ls", "--bucket", "my-bucket"], [*BASE, "--start", "now-1h"]):
        proc = run(*args, env={"AWS_ACCESS_KEY_ID": "x", **env})
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
        assert message in lines[0]


def test_empty_environment_variables_mean_unset() -> None:
    """compose passes ``AWS_PROFILE=""`` for ``${AWS_PROFILE:-}``: every empty AWS_* and
    RDSRECORDER_* variable must act as if it were not set at all."""
    import typer

    from rdsrecorder.cli import cli

    names = {"AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"}
    for command in typer.main.get_command(cli).commands.values():  # type: ignore[attr-defined]
        for param in command.params:
            envvar = param.envvar or []
            names |= {envvar} if isinstance(envvar, str) else set(envvar)
    assert "RDSRECORDER_RETENTION_HOURS" in names and "RDSRECORDER_JSON" in names
    # The bad window stops the run at validation, after every option was read.
    args = [*BASE, "--start", "now-1h", "--finish", "now-2h"]
    bare = run(*args, env={"RDSRECORDER_METRICS_PORT": ""})
    empty = run(*args, env=dict.fromkeys(sorted(names), ""))
    assert bare.returncode == empty.returncode == 2
    assert "must be after start" in empty.stderr and len(empty.stderr.splitlines()) == 1
    # An empty profile is no profile: the error is the lack of credentials, not a profile "".
    no_creds = {"AWS_PROFILE": "", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    listed = run("ls", "--bucket", "my-bucket", env=no_creds)
    assert "could not be found" not in listed.stderr and "no AWS credentials" in listed.stderr


def test_unset_empty_env_drops_only_empty_aws_and_rdsrecorder_names() -> None:
    from rdsrecorder.runtime import unset_empty_env

    env = {"AWS_PROFILE": "", "AWS_REGION": " ", "RDSRECORDER_START": "", "HOME": "", "AWS_X": "1"}
    env["RDSRECORDER_RUN_ID"] = ""  # kept, so that the config refuses an empty run id
    assert sorted(unset_empty_env(env)) == ["AWS_PROFILE", "AWS_REGION", "RDSRECORDER_START"]
    assert env == {"HOME": "", "AWS_X": "1", "RDSRECORDER_RUN_ID": ""}


def test_an_unreadable_credentials_file_is_named_before_the_missing_credentials(
    tmp_path: Path,
) -> None:
    """botocore skips a credentials file it cannot read (a 0600 file of another uid under a
    container's bind mount): the warning names it. A directory stands in for the unreadable file
    (the tests run as root, who can read any file)."""
    unreadable = tmp_path / "credentials"
    unreadable.mkdir()
    env = {
        "AWS_SHARED_CREDENTIALS_FILE": str(unreadable),
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    proc = run("ls", "--bucket", "my-bucket", "--region", "us-east-1", env=env)
    assert proc.returncode == 3, proc.stderr
    warning, error = proc.stderr.strip().splitlines()[-2:]
    assert f"cannot read {unreadable}: Is a directory; this process runs as uid" in warning
    assert "docker run --user" in warning
    assert error.startswith("error: no AWS credentials found")
