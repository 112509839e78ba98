"""The portion path end to end against the lab: a line longer than the API's cap is a known loss,
recorded as one (status ``truncated`` with the bytes lost, exit 4, a metric), once, and never
retried; statements that quote RDS's truncation notice are data."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from pathlib import Path

import pendulum
import pytest

from rdsrecorder.commands import run_sync
from rdsrecorder.errors import EXIT_INCOMPLETE
from rdsrecorder.hooks import Hooks
from rdsrecorder.rds.portions import NOTICE_SUFFIX, OBSERVED_CAP_BYTES, max_calls_for
from rdsrecorder_lab import LabThread
from tests.e2e import csv_block, notice_quoting_csvlog, objects, s3_client, sync_settings

DB = "long-db"
LONG_LINE_BYTES = 1_500_000


class Lost(Hooks):
    def __init__(self) -> None:
        self.lines: list[int] = []
        self.bytes: list[int] = []
        self.retries = 0

    def truncated_lines(self, instance: str, count: int) -> None:
        self.lines.append(count)

    def truncated_bytes(self, instance: str, count: int) -> None:
        self.bytes.append(count)

    def retry_scheduled(self, instance: str) -> None:
        self.retries += 1


def long_line(ts: pendulum.DateTime) -> bytes:
    """One csvlog record on a single line, longer than the cap: a bulk INSERT."""
    stamp = ts.format("YYYY-MM-DD HH:mm:ss.SSS") + " UTC"
    values = ",".join(f"({i},'row {i}')" for i in range(200_000))
    head = f'{stamp},"app","shop",411,"10.0.0.1:5432","s1",7,"INSERT",{stamp},3/7,0,LOG,00000,'
    line = f'{head}"statement: INSERT INTO t VALUES {values}",,,,,,,,,"psql","client backend",,0'
    return line.encode()[: LONG_LINE_BYTES - 1] + b"\n"


@pytest.mark.parametrize("cap", [OBSERVED_CAP_BYTES, 1_000_000])
async def test_a_line_over_the_cap_is_a_known_loss_recorded_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cap: int
) -> None:
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=2)
    errdir = tmp_path / DB / "error"
    errdir.mkdir(parents=True)
    before, after = csv_block(first, 700_000, seed=1), csv_block(first, 400_000, seed=2)
    line = long_line(first)
    source = before + line + after
    for i, data in enumerate((source, csv_block(first.add(hours=1), 5_000, seed=3))):
        stamp = first.add(hours=i).format("YYYY-MM-DD-HH")
        (errdir / f"postgresql.log.{stamp}.csv").write_bytes(data)
    name = f"error/postgresql.log.{first.format('YYYY-MM-DD-HH')}.csv"
    kept = cap - len(NOTICE_SUFFIX)  # RDS returns the line's head and its notice
    lost = len(line) - kept
    hooks = Lost()
    with LabThread(tmp_path, s3="moto") as lab:
        lab.set_faults(portion_max_bytes=cap)
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)
        report = await run_sync(
            sync_settings(
                db=DB,
                bucket=lab.bucket,
                start=first,
                finish=first.add(hours=1),
                run_id=f"long-{cap}",
                download_method="portion",
            ),
            hooks=hooks,
        )
        calls = lab.stats()["portion_calls_by_file"][f"{DB}/{name}"]
        got = objects(s3_client(lab.env), lab.bucket, f"long-{cap}/")
    assert report.exit_code == EXIT_INCOMPLETE
    (entry,) = report.totals.entries
    assert entry.status == "truncated"
    assert (entry.truncated_lines, entry.truncated_bytes) == (1, lost)
    assert f"{lost} bytes lost" in entry.error and "rds:DownloadCompleteDBLogFile" in entry.error
    assert report.totals.truncated == 1 and report.totals.failed == 0
    assert hooks.lines == [1] and hooks.bytes == [lost]  # the metric, once
    # What RDS returned, where it returned it: the line's head, then its notice.
    assert got[entry.key] == before + line[:kept] + NOTICE_SUFFIX + after
    # Read once, not again and again: one pass over the file (a cut asked again, the line
    # asked for alone).
    assert calls <= math.ceil(len(source) / cap) + 4
    manifest = json.loads(got[f"long-{cap}/manifest.json"])
    (recorded,) = manifest["files"].values()
    assert recorded["status"] == "truncated" and recorded["truncated_bytes"] == lost


async def test_a_truncated_file_is_not_retried_while_following(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower records the loss once and never asks for the file again: three listings
    later, not one more portion call for it."""
    now = pendulum.now("UTC")
    # The newest file is over an hour old and still written to: a late rotation, which the
    # follower looks for again and again (from the poll interval, backing off).
    first = now.start_of("hour").subtract(hours=3)
    errdir = tmp_path / DB / "error"
    errdir.mkdir(parents=True)
    line = long_line(first)
    source = csv_block(first, 300_000, seed=1) + line
    files = {first: source, first.add(hours=1): csv_block(first.add(hours=1), 5_000, seed=3)}
    for ts, data in files.items():
        (errdir / f"postgresql.log.{ts.format('YYYY-MM-DD-HH')}.csv").write_bytes(data)
    key = f"{DB}/error/postgresql.log.{first.format('YYYY-MM-DD-HH')}.csv"
    hooks = Lost()
    stop = asyncio.Event()
    with LabThread(tmp_path, s3="moto") as lab:
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)

        def counts() -> tuple[int, int]:
            stats = lab.stats()
            return stats["calls"].get("DescribeDBLogFiles", 0), stats["portion_calls_by_file"].get(
                key, 0
            )

        settings = sync_settings(
            db=DB,
            bucket=lab.bucket,
            start=first,
            finish=None,
            run_id="follow",
            download_method="portion",
            poll_interval_s=0.2,
        )
        follower = asyncio.ensure_future(run_sync(settings, hooks=hooks, stop=stop))
        async with asyncio.timeout(60):  # a guard against a hang, not a speed target
            while not hooks.bytes:
                await asyncio.sleep(0.05)
            listings, calls = await asyncio.to_thread(counts)
            while (await asyncio.to_thread(counts))[0] < listings + 3:
                await asyncio.sleep(0.05)
            assert (await asyncio.to_thread(counts))[1] == calls
            stop.set()
            report = await follower
    assert hooks.lines == [1] and len(hooks.bytes) == 1
    assert hooks.retries == 0  # no retry scheduled (rdsrecorder_file_retries_total)
    statuses = [e.status for e in report.totals.entries if e.source.endswith(".csv")]
    assert "truncated" in statuses and report.totals.failed == 0


async def test_statements_quoting_the_notice_copy_byte_exact_with_exit_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RDS's notice inside statements (on a line of its own too) is data: a sync on the portion
    path copies the file byte-exact, with no truncation, exit 0, within the calls its size
    allows."""
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=2)
    errdir = tmp_path / DB / "error"
    errdir.mkdir(parents=True)
    source = notice_quoting_csvlog(1_200_000)
    for i, data in enumerate((source, csv_block(first.add(hours=1), 5_000, seed=3))):
        stamp = first.add(hours=i).format("YYYY-MM-DD-HH")
        (errdir / f"postgresql.log.{stamp}.csv").write_bytes(data)
    name = f"error/postgresql.log.{first.format('YYYY-MM-DD-HH')}.csv"
    with LabThread(tmp_path, s3="moto") as lab:
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)
        report = await run_sync(
            sync_settings(
                db=DB,
                bucket=lab.bucket,
                start=first,
                finish=first.add(hours=1),
                run_id="quoted",
                download_method="portion",
            )
        )
        stats = lab.stats()
        got = objects(s3_client(lab.env), lab.bucket, "quoted/")
    assert report.exit_code == 0
    (entry,) = report.totals.entries
    assert entry.status == "copied" and entry.truncated_lines == 0
    assert hashlib.sha256(got[entry.key]).hexdigest() == hashlib.sha256(source).hexdigest()
    assert sum(stats["truncated_portions_by_file"].values()) == 0
    calls = stats["portion_calls_by_file"][f"{DB}/{name}"]
    assert calls <= max_calls_for(len(source))
    assert calls <= math.ceil(len(source) / OBSERVED_CAP_BYTES) + 2  # a probe, a last call
