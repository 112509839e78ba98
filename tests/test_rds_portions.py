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
from rdsrecorder.models import DownloadMethod, DownloadStats, LogFile
from rdsrecorder.rds.download import (
    PORTION_PLAN_BYTES,
    RdsDownloader,
    portion_lines,
)
from rdsrecorder_lab import GeneratedFile, LabThread, generate

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


async def download_rounds(lab: LabThread, files: list[GeneratedFile], rounds: int) -> list[int]:
    """Downloads every file at once, ``rounds`` times with one downloader (what it learnt of
    the instance's lines is kept between rounds); the portion calls of each round."""
    settings = AwsSettings(region="us-east-1", max_api_rps=1000)
    calls: list[int] = []
    async with (
        Aws(settings, Hooks()) as aws,
        RdsDownloader(aws, Hooks(), DownloadMethod.PORTION) as rds,
    ):

        async def one(g: GeneratedFile) -> bytes:
            stats = DownloadStats()
            f = LogFile(INSTANCE, g.name, int(g.last_written_s * 1000), g.size)
            return b"".join([chunk async for chunk in rds.download(f, stats)])

        for _ in range(rounds):
            before = lab.stats()["calls"].get("DownloadDBLogFilePortion", 0)
            bodies = await asyncio.gather(*(one(g) for g in files))
            assert [hashlib.sha256(b).hexdigest() for b in bodies] == [g.sha256 for g in files]
            calls.append(lab.stats()["calls"]["DownloadDBLogFilePortion"] - before)
    return calls


async def test_files_probe_only_until_the_lines_are_known_then_need_no_extra_call(
    lab: LabThread, lab_files: tuple[Path, list[GeneratedFile]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in lab.env.items():
        monkeypatch.setenv(key, value)
    files = lab_files[1]
    lab.set_faults(latency_ms=20)
    lab.reset_stats()
    first, second = await download_rounds(lab, files, rounds=2)
    cuts = sum(lab.stats()["truncated_portions_by_file"].values())
    # At most 1.022 MB a call by the plan: that many calls per file, cuts aside.
    planned = sum(math.ceil(g.size / PORTION_PLAN_BYTES) for g in files)
    print(f"\n{first} + {second} calls, {cuts} cuts, {planned} planned, {len(files)} files")
    # Every file starts before anything is known of the instance's lines: each probes once
    # (a small first call) instead of waiting for another file's probe.
    assert first - cuts <= planned + len(files), (first, cuts, planned)
    # Once the lines are known, no file probes: the plan's calls, give or take one (a file
    # whose lines run shorter than the instance's average may need one more).
    assert second - cuts <= planned + 1, (second, cuts, planned)
    assert cuts <= 1, (cuts, first, second)


def test_portion_lines_plans_the_calls_left_from_the_listed_size() -> None:
    cap = 1_048_576  # what one DownloadDBLogFilePortion call carries at most (1 MiB)
    line = 131.0
    # 24.07 MB left: the plan needs no more calls than the cap allows (+1), and no call
    # aims closer than 2 % to the cap, where the spread of the lines would cut it
    size = 24_072_082
    carried = portion_lines(line, size) * line
    assert cap * 0.9 < carried < cap * 0.98
    remaining, calls = size, 0
    while remaining > 0 and calls < 100:  # the plan, call after call, on lines of one length
        remaining -= portion_lines(line, remaining) * line
        calls += 1
    assert calls <= math.ceil(size / cap) + 1
    # a file's first call, sized from other files' lines, aims lower than the ones after it:
    # 10 % under the plan, even when the file then needs one more call (files differ, and a cut
    # costs a whole call where one more call costs its latency)
    assert portion_lines(line, size, first=True) < portion_lines(line, size)
    six = 6_060_000  # six calls by the plan, with no room to spare
    planned = six / math.ceil(six / PORTION_PLAN_BYTES)
    assert portion_lines(line, six, first=True) * line <= 0.9 * planned + line
    # the last call asks for more lines than the rest needs so that the end comes in it, never
    # for more than one call can carry
    assert portion_lines(line, 500_000) * line > 500_000 * 1.2
    assert portion_lines(line, 900_000) * line < cap
    assert portion_lines(line, 900_000, first=True) == portion_lines(line, 900_000)
    # past the listed size (a file still being written): about 1 MB a call, under the cap
    past = portion_lines(line, 0) * line
    assert portion_lines(line, 0) == portion_lines(line, -5_000)
    assert cap * 0.9 < past < cap
    # the API's 10,000-line cap, and at least one line
    assert portion_lines(20.0, 24_000_000) == 10_000
    assert portion_lines(5_000_000.0, 24_000_000) == 1


async def test_the_next_portion_is_asked_for_while_the_consumer_holds_a_chunk(
    lab: LabThread, lab_files: tuple[Path, list[GeneratedFile]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next call goes out before a chunk is handed on, so that what the consumer does with
    the chunk (spool, hashes, the S3 upload) runs beside that call's latency: a consumer that
    holds each chunk until the lab has seen the next call would otherwise wait for ever."""
    for key, value in lab.env.items():
        monkeypatch.setenv(key, value)
    g = max(lab_files[1], key=lambda g: g.size)
    lab.set_faults(latency_ms=20)
    lab.reset_stats()
    seen_by_lab = f"{INSTANCE}/{g.name}"

    def lab_calls() -> int:
        return int(lab.stats()["portion_calls_by_file"].get(seen_by_lab, 0))

    held = 0
    async with (
        Aws(AwsSettings(region="us-east-1", max_api_rps=1000), Hooks()) as aws,
        RdsDownloader(aws, Hooks(), DownloadMethod.PORTION) as rds,
    ):
        stats = DownloadStats()
        f = LogFile(INSTANCE, g.name, int(g.last_written_s * 1000), g.size)
        body = []
        async for chunk in rds.download(f, stats):
            made = len(body) + 1  # the calls that brought this chunk (one a chunk, no cuts)
            if stats.bytes < g.size:  # more to come: the next call is on its way already
                async with asyncio.timeout(5):
                    while await asyncio.to_thread(lab_calls) <= made:
                        await asyncio.sleep(0.01)
                held += 1
            body.append(chunk)
    assert hashlib.sha256(b"".join(body)).hexdigest() == g.sha256
    assert held >= 3  # a file of several portions, each held while the next was asked for
    assert lab_calls() == stats.api_calls  # nothing asked twice, nothing left in flight
