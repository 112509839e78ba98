"""Logs and progress for people and for containers: JSON lines, redaction, the progress bar only on
a terminal, the summary table."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import subprocess
import sys

from rich.console import Console

from rdsrecorder.commands import SyncReport
from rdsrecorder.logsetup import redact, setup_logging
from rdsrecorder.progress import ProgressHooks
from rdsrecorder.recorder import RunTotals
from rdsrecorder.tables import render_summary
from rdsrecorder.window import Mode


def test_json_logs_are_one_object_per_line_and_redacted() -> None:
    stream = io.StringIO()
    setup_logging(debug=False, log_format="json", stream=stream)
    log = logging.getLogger("rdsrecorder.test")
    log.info("copied %s", "f.csv", extra={"db_instance": "db1"})
    log.warning("aws_secret_access_key=abcdEFGH1234 leaked?")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = stream.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["message"] == "copied f.csv" and records[0]["db_instance"] == "db1"
    assert records[0]["level"] == "info" and records[0]["ts"].endswith("Z")
    assert "abcdEFGH1234" not in lines[1] and "***" in records[1]["message"]
    assert "ValueError: boom" in records[2]["exc_info"]
    setup_logging(debug=False, log_format="text", stream=io.StringIO())


def test_redact_patterns() -> None:
    assert "s3cr3t" not in redact("AWS_SECRET_ACCESS_KEY=s3cr3t")
    assert "FQoGZXIvYXdz" not in redact("x-amz-security-token: FQoGZXIvYXdz")
    assert "AWS4-HMAC" not in redact("Authorization: AWS4-HMAC-SHA256 Credential=abc")


def test_progress_bar_only_on_a_terminal_and_restores_logging() -> None:
    setup_logging(debug=False, log_format="text", stream=io.StringIO())
    handlers_before = list(logging.getLogger().handlers)
    plain = ProgressHooks(enabled=None, console=Console(file=io.StringIO(), force_terminal=False))
    assert not plain.enabled
    out = io.StringIO()
    term = ProgressHooks(enabled=None, console=Console(file=out, force_terminal=True, width=120))
    assert term.enabled
    with term:
        term.files_pending("db", 2)
        term.file_started("db")
        term.bytes_downloaded("db", 2_500_000)
        term.file_finished("db", "copied", 1.0, 0.0)
        logging.getLogger("rdsrecorder.test").info("a log line while the bar is shown")
    text = out.getvalue()
    assert "1/2 files" in text and "2.5 MB" in text
    assert "a log line while the bar is shown" in text
    assert logging.getLogger().handlers == handlers_before


def test_summary_table_lists_failures() -> None:
    totals = RunTotals(copied=3, failed=1, bytes=1234)
    report = SyncReport(run_id="r", mode=Mode.DOWNLOAD_AND_FINISH, totals=totals)
    out = io.StringIO()
    render_summary(report, Console(file=out, width=150))
    text = out.getvalue()
    assert "Download interval & Finish" in text and "1,234" in text
    assert report.exit_code == 4


def test_no_terminal_no_rich_at_start() -> None:
    """A container's stderr is no terminal: the bar is off and rich is not imported for it (it
    costs about 25 ms of start-up); TTY_COMPATIBLE or FORCE_COLOR let rich decide."""
    probe = (
        "import sys; from rdsrecorder.progress import ProgressHooks; "
        "p = ProgressHooks(enabled=None); print(p.enabled, 'rich' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE", "FORCE_COLOR")}
    run = functools.partial(
        subprocess.run, [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert run(env=env).stdout.split() == ["False", "False"]
    assert run(env={**env, "TTY_COMPATIBLE": "1"}).stdout.split() == ["True", "True"]
