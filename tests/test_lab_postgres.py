"""A real PostgreSQL writing minute-rotated csvlog files into the lab, served by the emulator."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import sys
import time
from pathlib import Path

import pytest

from rdsrecorder_lab import Lab
from rdsrecorder_lab.postgres import missing_reason
from tests.lab_helpers import download_portions, rds_client

pytestmark = pytest.mark.postgres
REASON = missing_reason()
ROTATION_WAIT_S = 75  # the first rotation comes at the minute boundary after the server started


def command_lines() -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return out


@pytest.mark.skipif(REASON is not None, reason=f"cannot run PostgreSQL here: {REASON}")
@pytest.mark.timeout(180)
async def test_real_postgres_rotates_csvlog_into_the_lab(tmp_path: Path) -> None:
    log_dir = tmp_path / "pg-db" / "error"
    async with Lab(tmp_path, s3="none", postgres_instance="pg-db") as lab:
        # From here: initdb and the start take a while on a busy machine, and count for nothing.
        started = time.monotonic()
        assert lab.postgres is not None
        private_dir = str(lab.postgres.socket_dir.parent)
        assert any(private_dir in cmd for cmd in command_lines())  # the server runs
        while len(csvs := sorted(log_dir.glob("postgresql.log.*.csv"))) < 2:
            assert time.monotonic() - started < ROTATION_WAIT_S, "no rotation observed"
            await asyncio.sleep(0.5)
        # Let the workload run its rarer statements (every 3rd, 5th, 11th second).
        await asyncio.sleep(max(0.0, 13 - (time.monotonic() - started)))
        async with rds_client(lab.rds_url) as rds:
            listed = await rds.describe_db_log_files(DBInstanceIdentifier="pg-db")
            names = {f["LogFileName"]: f["Size"] for f in listed["DescribeDBLogFiles"]}
            for path in csvs:
                assert re.fullmatch(r"postgresql\.log\.\d{4}-\d\d-\d\d-\d{4}\.csv", path.name)
                assert f"error/{path.name}" in names
                assert f"error/{path.name.removesuffix('.csv')}" in names  # the plain twin
            # The rotated file is complete: its portions are its bytes.
            rotated = csvs[0]
            got, _ = await download_portions(rds, "pg-db", f"error/{rotated.name}", lines=50)
            assert got == rotated.read_bytes()
            # The current file keeps growing.
            current = f"error/{csvs[-1].name}"
            await asyncio.sleep(2.5)
            later = await rds.describe_db_log_files(
                DBInstanceIdentifier="pg-db", FilenameContains=csvs[-1].name
            )
            assert later["DescribeDBLogFiles"][0]["Size"] > names[current]
        csv.field_size_limit(sys.maxsize)
        text = "".join(p.read_text(encoding="utf-8") for p in sorted(log_dir.glob("*.csv")))
        rows = list(csv.reader(io.StringIO(text, newline="")))
    assert {len(r) for r in rows} == {26}  # PostgreSQL 15 csvlog, as the generator writes it
    states = {r[12] for r in rows}
    assert {"00000", "22012", "42P01", "01000", "23505"} <= states
    assert any(r[12] == "23505" and r[14].startswith("Key (id)=(1)") for r in rows)  # DETAIL
    assert any(r[15] == "add a worker" for r in rows)  # HINT
    assert any(r[13].startswith("duration: ") and "\n" in r[13] for r in rows)

    # Stopped: the logs stay, in a real directory, and no server process is left.
    assert log_dir.is_dir() and not log_dir.is_symlink()
    assert {p.name for p in csvs} <= {p.name for p in log_dir.iterdir()}
    assert not [cmd for cmd in command_lines() if private_dir in cmd]
    assert not Path(private_dir).exists()
