"""The tables people read at the end of a command: the sync summary, verify's rows, the files
``get`` brought back and the runs of a bucket. Printed to stdout; wide when piped, so that
scripts and CI logs get whole lines."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from rdsrecorder.commands import SyncReport
from rdsrecorder.get import GetReport
from rdsrecorder.models import FileStatus
from rdsrecorder.verify import RunSummary, VerifyReport


def _console() -> Console:
    # Piped output (scripts, CI logs) gets a wide console: rich would squeeze tables to 80 columns.
    return Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 200)


def render_summary(report: SyncReport, console: Console | None = None) -> None:
    t = report.totals
    console = console or _console()
    table = Table(title=f"run {report.run_id} — {report.mode.label}", show_header=True)
    table.add_column("copied", justify="right")
    table.add_column("partial", justify="right")
    table.add_column("already in S3", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("lost", justify="right")
    table.add_column("changed", justify="right")
    table.add_column("truncated lines", justify="right")
    table.add_column("bytes", justify="right")
    table.add_row(
        str(t.copied),
        str(t.partial),
        str(t.skipped),
        str(t.failed),
        str(t.lost),
        str(t.changed),
        str(t.truncated_lines),
        f"{t.bytes:,}",
    )
    console.print(table)
    for entry in t.entries:
        if entry.status in (
            FileStatus.FAILED,
            FileStatus.LOST,
            FileStatus.CHANGED,
            FileStatus.TRUNCATED,
        ):
            console.print(f"  {entry.status}: {entry.instance} {entry.source}: {entry.error}")
    if report.snapshot is not None:
        console.print(f"snapshot: {report.snapshot.snapshot_id} {report.snapshot.arn}")
    if report.snapshot_error:
        console.print(f"snapshot failed: {report.snapshot_error}")
    if report.interrupted or t.interrupted:
        troubles = t.failed + t.lost + t.changed
        before = f"; {troubles} file(s) had failed or were lost before the stop" if troubles else ""
        console.print(f"interrupted{before}: re-run with --run-id {report.run_id} to resume")


def render_verify(report: VerifyReport, console: Console | None = None) -> None:
    console = console or _console()
    table = Table(title=f"verify {report.run_id}")
    for col in ("key", "source", "status", "detail"):
        table.add_column(col)
    for row in report.rows:
        table.add_row(row.key, row.source, row.status, row.detail)
    console.print(table)
    for hole in report.holes:
        console.print(f"hole: {hole}")
    summary = ", ".join(f"{n} {s}" for s, n in sorted(report.counts().items()))
    console.print(f"{'OK' if report.ok else 'PROBLEMS'}: {summary or 'no files'}")


def render_runs(runs: list[RunSummary], console: Console | None = None) -> None:
    console = console or _console()
    table = Table(title="runs")
    for col in ("run id", "db", "window", "mode", "files", "bytes", "started", "status"):
        table.add_column(col)
    for r in runs:
        table.add_row(
            r.run_id,
            r.db_identifier,
            f"{r.window_start} .. {r.window_finish or '∞'}",
            r.mode,
            str(r.files),
            f"{r.bytes:,}",
            r.started_at,
            r.status,
        )
    console.print(table)


def render_get(report: GetReport, *, to_stderr: bool = False) -> None:
    """The files ``get`` wrote (a table), then the failures and holes, one line each. With
    ``--stdout`` the logs own stdout: everything goes to stderr, without the table."""
    console = Console(file=sys.stderr, highlight=False, width=200) if to_stderr else _console()
    if not to_stderr and report.files:
        table = Table(title=f"{report.db_identifier}: {len(report.files)} file(s)")
        table.add_column("file")
        table.add_column("run")
        table.add_column("bytes", justify="right")
        for f in report.files:
            table.add_row(f.path, f.run_id, f"{f.size:,}")
        console.print(table)
    total = sum(f.size for f in report.files)
    console.print(
        f"got {len(report.files)} file(s), {total:,} bytes, of {report.db_identifier} "
        f"from {report.runs} run(s), each checked against its sha256"
    )
    for line in report.partial:
        console.print(f"partial: {line}")
    for line in report.failures:
        console.print(f"failed: {line}")
    for line in report.holes:
        console.print(f"hole: {line}")
