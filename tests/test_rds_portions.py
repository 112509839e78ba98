"""How many DownloadDBLogFilePortion calls a file costs: the sizing of portions against the lab
(real csvlog data from the lab's generator, the lab's 1 MB / 10,000-line limits and cuts)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from rdsrecorder.aws import Aws
from rdsrecorder.config import AwsSettings
from rdsrecorder.hooks import Hooks
from rdsrecorder.lab import GeneratedFile, LabThread, generate
from rdsrecorder.models import DownloadMethod, DownloadStats, LogFile
from rdsrecorder.rds.download import PORTION_PLAN_BYTES, RdsDownloader, portion_lines

INSTANCE = "portion-db"
FILES = 6


@pytest.fixture(scope="module")
def lab_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[GeneratedFile]]:
    root = tmp_path_factory.mktemp("portions")
    end = dt.datetime(2024, 2, 4, 19, tzinfo=dt.UTC)
    files = generate(root, INSTANCE, files=FILES, end=end, size_mb=(3.0, 6.0), seed=11)
    return root, files


@pytest.fixture(scope="module")
def lab(lab_files: tuple[Path, list[GeneratedFile]]) -> Iterator[LabThread]:
    with LabThread(lab_files[0], s3="none") as lab:
        yield lab


async def download_all(lab: LabThread, files: list[GeneratedFile]) -> list[bytes]:
    settings = AwsSettings(region="us-east-1", max_api_rps=1000)
    async with (
        Aws(settings, Hooks()) as aws,
        RdsDownloader(aws, Hooks(), DownloadMethod.PORTION) as rds,
    ):

        async def one(g: GeneratedFile) -> bytes:
            stats = DownloadStats()
            f = LogFile(INSTANCE, g.name, int(g.last_written_s * 1000), g.size)
            return b"".join([chunk async for chunk in rds.download(f, stats)])

        return await asyncio.gather(*(one(g) for g in files))


async def test_concurrent_files_share_one_probe_and_stay_near_one_call_per_mb(
    lab: LabThread, lab_files: tuple[Path, list[GeneratedFile]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in lab.env.items():
        monkeypatch.setenv(key, value)
    files = lab_files[1]
    lab.set_faults(latency_ms=20)
    lab.reset_stats()
    bodies = await download_all(lab, files)
    assert [hashlib.sha256(b).hexdigest() for b in bodies] == [g.sha256 for g in files]
    stats = lab.stats()
    calls = stats["calls"]["DownloadDBLogFilePortion"]
    cuts = sum(stats["truncated_portions_by_file"].values())
    # Every file starts at once; one of them probes, the others wait for what it learnt. Each
    # file then costs the calls its plan needs (at most 0.975 MB a call), cuts aside.
    planned = sum(math.ceil(g.size / PORTION_PLAN_BYTES) for g in files)
    print(f"\n{calls} calls, {cuts} cuts, {planned} planned, {len(files)} files")
    assert calls - cuts <= planned + 1, (calls, cuts, planned)
    assert cuts <= 1, (cuts, calls)


def test_portion_lines_plans_the_calls_left_from_the_listed_size() -> None:
    # 24.07 MB left at 131 bytes a line: 25 calls of ~0.963 MB each
    assert portion_lines(131.0, 24_072_082) == int(24_072_082 / 25 / 131.0)
    # a file's first call, sized from other files' lines, aims 7 % lower
    assert portion_lines(131.0, 24_072_082, first=True) == int(24_072_082 / 25 * 0.93 / 131.0)
    # the last call asks for more lines than needed so that the end comes in it, never for
    # more than one call can carry
    assert portion_lines(131.0, 500_000) == int((500_000 * 1.25 + 1310) / 131.0)
    assert portion_lines(131.0, 900_000) == int(995_000 / 131.0)
    assert portion_lines(131.0, 900_000, first=True) == int(995_000 / 131.0)
    # past the listed size (a file still being written): 0.96 MB portions
    assert portion_lines(131.0, 0) == portion_lines(131.0, -5_000) == int(960_000 / 131.0)
    # the API's 10,000-line cap, and at least one line
    assert portion_lines(20.0, 24_000_000) == 10_000
    assert portion_lines(5_000_000.0, 24_000_000) == 1
