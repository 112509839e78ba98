"""What a command prints at its end: the sync summary, verify's rows, the files ``get`` brought
back and the runs of a bucket, either as tables for people (stdout; wide when piped, so that
scripts and CI logs get whole lines; ids are wrapped, never cut, on an 80-column terminal) or as
one JSON document (``--json``, or ``--log-format json``). The documents' fields are documented in
docs/json-output.md; a field is only ever added, never renamed."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

import pendulum
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from rdsrecorder.commands import SyncReport
from rdsrecorder.get import GetReport
from rdsrecorder.models import FileStatus
from rdsrecorder.verify import RunSummary, VerifyReport


def _console() -> Console:
    # Piped output (scripts, CI logs) gets a wide console: rich would squeeze tables to 80 columns.
    return Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 200)


def print_json(doc: dict[str, Any], file: IO[str] | None = None) -> None:
    """One document on one line: a JSON line among JSON logs, and ``json.loads`` of the output."""
    out = file or sys.stdout
    out.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")
    out.flush()


def summary_doc(report: SyncReport) -> dict[str, Any]:
    t = report.totals
    snap = report.snapshot
    return {
        "command": "sync",
        "run_id": report.run_id,
        "mode": str(report.mode),
        "exit_code": report.exit_code,
        "interrupted": report.interrupted or t.interrupted,
        "totals": {
            "copied": t.copied,
            "partial": t.partial,
            "skipped": t.skipped,
            "failed": t.failed,
            "lost": t.lost,
            "changed": t.changed,
            "truncated": t.truncated,
            "truncated_lines": t.truncated_lines,
            "not_started": t.not_started,
            "aborted": t.aborted,
            "bytes": t.bytes,
        },
        "files": [
            {
                "instance": e.instance,
                "source": e.source,
                "key": e.key,
                "status": str(e.status),
                "size": e.size,
                "sha256": e.sha256,
                "error": e.error,
            }
            for e in t.entries
        ],
        "snapshot": None
        if snap is None
        else {
            "id": snap.snapshot_id,
            "arn": snap.arn,
            "kind": snap.kind,
            "status": snap.status,
            "source": snap.source,
        },
        "snapshot_error": report.snapshot_error,
    }


def verify_doc(report: VerifyReport) -> dict[str, Any]:
    return {
        "command": "verify",
        "run_id": report.run_id,
        "ok": report.ok,
        "finished": report.finished,
        "counts": dict(sorted(report.counts().items())),
        "bytes_read": report.bytes_read,
        "files": [
            {
                "key": r.key,
                "source": r.source,
                "instance": r.instance,
                "status": r.status,
                "detail": r.detail,
                "size": r.size,
                "read": r.read,
            }
            for r in report.rows
        ],
        "holes": list(report.holes),
    }


def runs_doc(runs: list[RunSummary]) -> dict[str, Any]:
    return {
        "command": "ls",
        "runs": [
            {
                "run_id": r.run_id,
                "db_identifier": r.db_identifier,
                "window_start": r.window_start,
                "window_finish": r.window_finish,
                "mode": r.mode,
                "files": r.files,
                "bytes": r.bytes,
                "failed": r.failed,
                "gaps": r.gaps,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "status": r.status,
            }
            for r in runs
        ],
    }


def get_doc(report: GetReport) -> dict[str, Any]:
    return {
        "command": "get",
        "db_identifier": report.db_identifier,
        "start": _iso(report.start_s),
        "finish": _iso(report.finish_s),
        "exit_code": report.exit_code,
        "runs": report.runs,
        "bytes": sum(f.size for f in report.files),
        "files": [
            {
                "instance": f.instance,
                "source": f.source,
                "run_id": f.run_id,
                "key": f.key,
                "size": f.size,
                "path": f.path or None,
            }
            for f in report.files
        ],
        "partial": list(report.partial),
        "failures": list(report.failures),
        "holes": list(report.holes),
    }


def _human(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} TB"


def _iso(ts: float) -> str:
    return pendulum.from_timestamp(ts, tz="UTC").to_iso8601_string()


def _needs(console: Console, table: Table) -> Measurement:
    """The table's own widths, not clamped to the console's."""
    return console.measure(table, options=console.options.update_width(1000))


def _summary_table(report: SyncReport, compact: bool) -> Table:
    t = report.totals
    table = Table(
        title=f"run {report.run_id} — {report.mode.label}",
        box=None if compact else box.HEAVY_HEAD,
        pad_edge=not compact,
    )
    # Compact (80 columns): one-word headers, nothing wrapped or cut.
    cells = {
        "copied": str(t.copied),
        "partial": str(t.partial),
        "in-S3" if compact else "already in S3": str(t.skipped),
        "failed": str(t.failed),
        "lost": str(t.lost),
        "changed": str(t.changed),
        "cut-lines" if compact else "truncated lines": str(t.truncated_lines),
        "bytes": f"{t.bytes:,}",
    }
    for header in cells:
        table.add_column(header, justify="right", no_wrap=compact)
    table.add_row(*cells.values())
    return table


def render_summary(report: SyncReport, console: Console | None = None) -> None:
    t = report.totals
    console = console or _console()
    table = _summary_table(report, compact=False)
    if _needs(console, table).minimum > console.width:  # 80 columns: no box, narrower gutters
        table = _summary_table(report, compact=True)
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
    table.add_column("key", overflow="fold", ratio=3)
    table.add_column("source", overflow="fold", ratio=2)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold", ratio=2)
    for row in report.rows:
        table.add_row(row.key, row.source, row.status, row.detail)
    console.print(table)
    for hole in report.holes:
        console.print(f"hole: {hole}")
    summary = ", ".join(f"{n} {s}" for s, n in sorted(report.counts().items()))
    console.print(f"{'OK' if report.ok else 'PROBLEMS'}: {summary or 'no files'}")


def _runs_table(runs: list[RunSummary], wide: bool) -> Table:
    table = Table(title="runs", box=box.HEAVY_HEAD if wide else None, pad_edge=wide)
    table.add_column("run id", overflow="fold")
    table.add_column("db", overflow="fold")
    if wide:
        table.add_column("window")
        table.add_column("mode")
    table.add_column("files", justify="right", overflow="fold")
    table.add_column("bytes" if wide else "size", justify="right", overflow="fold")
    if wide:
        table.add_column("started")
    table.add_column("status", overflow="fold")
    for r in runs:
        cells = [r.run_id, r.db_identifier]
        cells += [f"{r.window_start} .. {r.window_finish or '∞'}", r.mode] if wide else []
        cells += [str(r.files), f"{r.bytes:,}" if wide else _human(r.bytes)]
        cells += [r.started_at] if wide else []
        table.add_row(*cells, r.status)
    return table


def render_runs(runs: list[RunSummary], console: Console | None = None) -> None:
    """Every column when they fit on one line each; else (an 80-column terminal) the run id, the
    DB, the counts and the status, sizes as "98.8 GB" (window, mode and start are in
    ``ls --json``). Ids are never cut: what is still too long wraps."""
    console = console or _console()
    table = _runs_table(runs, wide=True)
    if _needs(console, table).maximum > console.width:
        table = _runs_table(runs, wide=False)
    console.print(table)


def render_get(
    report: GetReport, *, to_stderr: bool = False, console: Console | None = None
) -> None:
    """The files ``get`` wrote (a table), then the failures and holes, one line each. With
    ``--stdout`` the logs own stdout: everything goes to stderr, without the table."""
    if console is None:
        console = Console(file=sys.stderr, highlight=False, width=200) if to_stderr else _console()
    if not to_stderr and report.files:
        table = Table(title=f"{report.db_identifier}: {len(report.files)} file(s)")
        table.add_column("file", overflow="fold")
        table.add_column("run", no_wrap=True, min_width=max(len(f.run_id) for f in report.files))
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
