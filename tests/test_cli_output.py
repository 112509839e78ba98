"""What the commands print, for machines and for people (issue 25, 5 and 6): ``--json`` gives one
JSON document on stdout with the documented fields and logs on stderr; ``--log-format json``
prints nothing but JSON lines; tables fit 80 columns without cutting ids; a closed pipe ends
``get --stdout`` quietly."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pendulum
import pytest
from rich.console import Console

from rdsrecorder.get import GetReport, GotFile
from rdsrecorder.tables import render_get, render_runs, render_verify
from rdsrecorder.verify import RunSummary, VerifyReport, VerifyRow
from rdsrecorder_lab import LabThread
from tests.e2e import Written, write_hourly

pytestmark = pytest.mark.realtime  # real processes

DB = "out-db"
RUN = "20261207T101500-abc123"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "json-output.md"


@pytest.fixture(scope="module")
def synced(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LabThread, list[Written], pendulum.DateTime, dict[str, object]]]:
    """A lab whose window was copied by ``sync --json`` once; the summary document with it."""
    root = tmp_path_factory.mktemp("outlab")
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=3)
    files = write_hourly(root, DB, first, [400_000, 300_000, 200_000, 1000], now)
    # A bucket of its own: moto's servers in one process share their buckets, and get and ls
    # read every run of a bucket.
    with LabThread(root, s3="moto", bucket="cli-output") as lab:
        done = rdsrecorder(
            lab,
            "sync",
            "-d",
            DB,
            "--run-id",
            RUN,
            "--start",
            first.to_iso8601_string(),
            "--finish",
            first.add(hours=2).to_iso8601_string(),
            "--json",
        )
        assert done.returncode == 0, done.stderr
        yield lab, files, first, json.loads(done.stdout)


def rdsrecorder(lab: LabThread, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **lab.env, "RDSRECORDER_METRICS_PORT": "0", "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "rdsrecorder", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kw,  # type: ignore[call-overload]
    )


def documented_fields(command: str) -> set[str]:
    """The field names docs/json-output.md lists under ``## <command>``."""
    section = DOCS.read_text().split(f"\n## {command}\n", 1)[1].split("\n## ", 1)[0]
    return {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}


def keys(doc: object, prefix: str = "") -> set[str]:
    """Every field path of a document: ``totals.copied``, ``files[].key`` ..."""
    out: set[str] = set()
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.add(prefix + k)
            out |= keys(v, prefix + k + ".")
    elif isinstance(doc, list):
        for item in doc:
            out |= keys(item, prefix[:-1] + "[].")
    return out


def test_sync_json_is_the_summary(synced: tuple[LabThread, list[Written], object, dict]) -> None:
    _, files, _, doc = synced
    assert doc["command"] == "sync" and doc["run_id"] == RUN and doc["exit_code"] == 0
    assert doc["mode"] == "download-interval-and-finish"
    assert doc["totals"]["copied"] == 2
    assert doc["totals"]["bytes"] == files[0].size + files[1].size
    assert {f["source"] for f in doc["files"]} == {files[0].name, files[1].name}
    assert {f["sha256"] for f in doc["files"]} == {files[0].sha256, files[1].sha256}
    assert keys(doc) - {"snapshot"} <= documented_fields("sync")


def test_ls_and_verify_json_parse_with_documented_fields(
    synced: tuple[LabThread, list[Written], object, dict],
) -> None:
    lab, files, _, _ = synced
    ls = rdsrecorder(lab, "ls", "--json")
    assert ls.returncode == 0, ls.stderr
    doc = json.loads(ls.stdout)
    (run,) = [r for r in doc["runs"] if r["run_id"] == RUN]
    assert run["db_identifier"] == DB and run["files"] == 2 and run["status"] == "complete"
    assert keys(doc) <= documented_fields("ls")
    verify = rdsrecorder(lab, "verify", "--run-id", RUN, "--json")
    assert verify.returncode == 0, verify.stderr
    doc = json.loads(verify.stdout)
    assert doc["ok"] is True and doc["run_id"] == RUN
    assert {f["source"] for f in doc["files"]} == {files[0].name, files[1].name}
    counted = {k for k in keys(doc) if k.startswith("counts.")}  # a map: status -> count
    assert keys(doc) - counted <= documented_fields("verify")
    # logs went to stderr, never into the document
    assert "INFO" in verify.stderr or verify.stderr == ""


def test_get_json_lists_the_files_written(
    synced: tuple[LabThread, list[Written], pendulum.DateTime, dict], tmp_path: Path
) -> None:
    lab, files, first, _ = synced
    window = ["--start", first.to_iso8601_string(), "--finish", first.add(hours=2).isoformat()]
    got = rdsrecorder(lab, "get", "-d", DB, *window, "--output-dir", str(tmp_path), "--json")
    assert got.returncode == 0, got.stderr
    doc = json.loads(got.stdout)
    assert [
        Path(f["path"]).read_bytes() == f0.path.read_bytes()
        for f, f0 in zip(doc["files"], files, strict=False)
    ] == [True, True]
    assert doc["bytes"] == files[0].size + files[1].size and doc["runs"] == 1
    assert keys(doc) <= documented_fields("get")


def test_json_log_mode_prints_nothing_but_json_lines(
    synced: tuple[LabThread, list[Written], pendulum.DateTime, dict],
) -> None:
    lab, _, first, _ = synced
    window = ["--start", first.to_iso8601_string(), "--finish", first.add(hours=2).isoformat()]
    cases = [
        ["ls", "--log-format", "json"],
        ["verify", "--run-id", RUN, "--log-format", "json"],
        ["sync", "-d", DB, "--run-id", RUN, *window, "--log-format", "json"],  # all skipped
        ["verify", "--run-id", "no-such-run", "--log-format", "json"],  # an error
        ["sync", "--log-format", "json", "--concurrency", "x"],  # a usage error
    ]
    for args in cases:
        done = rdsrecorder(lab, *args)
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        assert lines, args
        for line in lines:
            assert isinstance(json.loads(line), dict), (args, line)
        assert len([ln for ln in done.stdout.splitlines() if ln.strip()]) <= 1, args


def test_a_closed_pipe_ends_get_quietly(
    synced: tuple[LabThread, list[Written], pendulum.DateTime, dict],
) -> None:
    lab, files, first, _ = synced
    window = ["--start", first.to_iso8601_string(), "--finish", first.add(hours=2).isoformat()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rdsrecorder", "get", "-d", DB, *window, "--stdout"],
        env={**os.environ, **lab.env, "RDSRECORDER_METRICS_PORT": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(10)  # `| head -c 10`: read 10 bytes and go away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.wait(60)
    assert head == files[0].path.read_bytes()[:10]
    assert proc.returncode in (0, 141), err
    assert "error" not in err.lower() and "Traceback" not in err and "bug" not in err


# -- tables at 80 columns -----------------------------------------------------------------------
def rendered(render: object, *args: object) -> str:
    out = io.StringIO()
    render(*args, Console(file=out, width=80))  # type: ignore[operator]
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    return text


def column(text: str, index: int) -> str:
    """The cells of one column of a boxed table's body, joined: a wrapped value made whole."""
    body = [line for line in text.splitlines() if line.startswith("│")]
    return "".join(line.split("│")[1 + index].strip() for line in body)


def test_ls_table_keeps_run_ids_whole_at_80_columns() -> None:
    runs = [
        RunSummary(
            RUN,
            "orders-production-primary",
            "2026-12-07T08:00:00+00:00",
            None,
            "download-interval-and-sync",
            1234,
            98_765_432_100,
            "2026-12-07T10:15:00+00:00",
            None,
            "unfinished",
        )
    ]
    text = rendered(render_runs, runs)
    assert RUN in text and "orders-production-primary" in text and "…" not in text


def test_verify_and_get_tables_wrap_keys_instead_of_cutting_them() -> None:
    key = f"{RUN}/orders-production-primary/rds_log_2026-12-07T08:00:00Z_postgresql.log.csv"
    report = VerifyReport(
        RUN,
        rows=[
            VerifyRow(
                key, "error/postgresql.log.2026-12-07-08.csv", "ok", "sha256 by S3's checksum"
            )
        ],
    )
    text = rendered(render_verify, report)
    assert "…" not in text and key in column(text, 0)  # wrapped over lines, whole
    got = GetReport("orders-production-primary", 0.0, 3600.0, runs=1)
    path = "/var/tmp/restore/orders-production-primary/error/postgresql.log.2026-12-07-08.csv"
    got.files.append(GotFile("orders-production-primary", "x", RUN, key, 123, path))
    out = io.StringIO()
    render_get(got, console=Console(file=out, width=80))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert RUN in text and "…" not in text and path in column(text, 0)


def test_sync_summary_keeps_numbers_and_the_run_id_whole_at_80_columns() -> None:
    from rdsrecorder.commands import SyncReport
    from rdsrecorder.recorder import RunTotals
    from rdsrecorder.tables import render_summary
    from rdsrecorder.window import Mode

    run_id = "prod-orders-primary-logs-archive-2026-12-07-shard-0-of-2-abcdefgh"  # 64: the most
    totals = RunTotals(copied=1234, skipped=56, bytes=98_765_432_100)
    report = SyncReport(run_id=run_id, mode=Mode.DOWNLOAD_AND_SYNC, totals=totals)
    text = rendered(render_summary, report)
    assert run_id in text and "98,765,432,100" in text and "…" not in text
    assert " 1234 " in text and " 56 " in text
