"""How many DownloadDBLogFilePortion calls a file costs, and what counts as a cut: against the lab
(real csvlog data from the lab's generator, the lab's cap (either one) / 10,000-line limits)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rdsrecorder.aws import Aws
from rdsrecorder.config import AwsSettings
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import DownloadMethod, DownloadStats, LogFile
from rdsrecorder.rds.download import FIRST_PORTION_LINES, RdsDownloader
from rdsrecorder.rds.portions import (
    DOCUMENTED_CAP_BYTES,
    LAST_CALL_FACTOR,
    LAST_CALL_ROOM_BYTES,
    MAX_MARGIN,
    MIN_MARGIN,
    NOTICE_SUFFIX,
    OBSERVED_CAP_BYTES,
    TRUNCATION_NOTICE,
    LineModel,
    PortionCap,
    complete_lines,
    is_cut,
    lines_for,
    max_calls_for,
    target_bytes,
)
from rdsrecorder_lab import GeneratedFile, LabThread, generate
from tests.e2e import notice_quoting_csvlog

INSTANCE = "portion-db"
FILES = 4


@pytest.fixture(scope="module")
def lab_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[GeneratedFile]]:
    root = tmp_path_factory.mktemp("portions")
    end = dt.datetime(2024, 2, 4, 19, tzinfo=dt.UTC)
    files = generate(root, INSTANCE, files=FILES, end=end, size_mb=(8.0, 20.0), seed=11)
    return root, files


@pytest.fixture(scope="module")
def lab(lab_files: tuple[Path, list[GeneratedFile]]) -> Iterator[LabThread]:
    with LabThread(lab_files[0], s3="none") as lab:
        yield lab


async def download_all(
    lab: LabThread, files: list[GeneratedFile], *, concurrency: int = 2
) -> list[DownloadStats]:
    """Downloads every file, ``concurrency`` at a time, with one downloader (what it learns of
    the cap and of the instance's lines is kept from file to file); each byte-exact."""
    settings = AwsSettings(region="us-east-1", max_api_rps=1000)
    gate = asyncio.Semaphore(concurrency)
    async with (
        Aws(settings, Hooks()) as aws,
        RdsDownloader(aws, Hooks(), DownloadMethod.PORTION) as rds,
    ):

        async def one(g: GeneratedFile) -> DownloadStats:
            async with gate:
                stats = DownloadStats()
                f = LogFile(INSTANCE, g.name, int(g.last_written_s * 1000), g.size)
                body = b"".join([chunk async for chunk in rds.download(f, stats)])
            assert hashlib.sha256(body).hexdigest() == g.sha256
            return stats

        return await asyncio.gather(*(one(g) for g in files))


@pytest.mark.parametrize("cap", [OBSERVED_CAP_BYTES, DOCUMENTED_CAP_BYTES])
async def test_at_most_1_10_calls_per_mb_whichever_cap(
    lab: LabThread,
    lab_files: tuple[Path, list[GeneratedFile]],
    monkeypatch: pytest.MonkeyPatch,
    cap: int,
) -> None:
    """The cap is learnt from the answers, not assumed, and each call is sized from the file's
    earlier portions: csvlog of mixed line lengths costs at most 1.10 calls per MB, counted by
    the lab, on an API that carries 1 MiB a call and on one that carries 1,000,000 bytes."""
    for key, value in lab.env.items():
        monkeypatch.setenv(key, value)
    files = lab_files[1]
    lab.set_faults(portion_max_bytes=cap)
    lab.reset_stats()
    await download_all(lab, files, concurrency=1)  # one probe of the instance's lines
    stats = lab.stats()
    calls = stats["calls"]["DownloadDBLogFilePortion"]
    mb = sum(g.size for g in files) / 1e6
    floor = sum(math.ceil(g.size / cap) for g in files)
    cuts = sum(stats["truncated_portions_by_file"].values())
    print(f"\ncap {cap}: {calls} calls for {mb:.1f} MB ({calls / mb:.3f}/MB), floor {floor}")
    assert calls / mb <= 1.10, (calls, mb, floor, cuts)
    assert cuts <= 2  # learning the cap costs a cut or two, then none


async def test_statements_quoting_the_notice_are_data(
    lab: LabThread, lab_files: tuple[Path, list[GeneratedFile]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notice counts only where RDS puts it (at a cut: its marker skipped bytes): the same
    text in statements, at the end of a portion included, is copied as data, byte-exact, with
    no truncation and within the calls the file's size allows."""
    for key, value in lab.env.items():
        monkeypatch.setenv(key, value)
    data = notice_quoting_csvlog(3_200_000)
    name = "error/postgresql.log.2024-02-04-05.csv"
    path = lab_files[0] / INSTANCE / "error" / "postgresql.log.2024-02-04-05.csv"
    path.write_bytes(data)
    g = GeneratedFile(name, path, 0, 0, len(data), hashlib.sha256(data).hexdigest(), 0, 0)
    lab.set_faults()
    lab.reset_stats()
    (stats,) = await download_all(lab, [g])
    assert stats.truncated_lines == 0 and stats.truncated_bytes == 0
    assert stats.recovered_truncations == 0
    lab_calls = lab.stats()["calls"]["DownloadDBLogFilePortion"]
    assert lab_calls == stats.api_calls <= max_calls_for(len(data))
    assert lab_calls <= math.ceil(len(data) / OBSERVED_CAP_BYTES) + 2  # a probe, a last call


def test_the_notice_is_a_cut_only_where_rds_puts_it() -> None:
    cap = PortionCap()
    lines = b"a,1\n" * 10
    cut = lines + NOTICE_SUFFIX
    # The markers skipped bytes the answer does not carry: cut.
    assert is_cut(cut, len(cut) + 500, cap)
    # The markers span exactly the answer: a statement that ends with the notice's line.
    assert not is_cut(cut, len(cut), cap)
    # The text anywhere but at the end, or not on a line of its own: data.
    assert not is_cut(NOTICE_SUFFIX + lines, len(lines) + 500, cap)
    assert not is_cut(lines + TRUNCATION_NOTICE.encode() + b"\n", len(lines) + 500, cap)
    # Markers that are not byte offsets: cut only at the cap's length.
    assert not is_cut(cut, None, cap)
    at_cap = b"x" * (DOCUMENTED_CAP_BYTES - len(NOTICE_SUFFIX)) + NOTICE_SUFFIX
    assert is_cut(at_cap, None, cap)
    assert complete_lines(cut) == 10


def test_the_cap_is_learnt_from_cut_and_full_answers() -> None:
    cap = PortionCap()
    assert not cap.known and cap.bytes == OBSERVED_CAP_BYTES  # until a cut says otherwise
    cap.answered(990_000, cut=False)
    assert cap.bytes == OBSERVED_CAP_BYTES
    cap.answered(999_998, cut=True)  # a cut answer is as long as the cap, give or take a char
    assert cap.known and DOCUMENTED_CAP_BYTES <= cap.bytes < DOCUMENTED_CAP_BYTES + 4
    cap.answered(1_000_002, cut=False)  # a full answer proves the cap is at least as long
    assert cap.bytes >= 1_000_002


def test_calls_are_planned_from_the_size_left_and_the_cap() -> None:
    line, margin = 131.0, 0.02
    for cap in (OBSERVED_CAP_BYTES, DOCUMENTED_CAP_BYTES):
        most = cap * (1 - margin)
        last = cap - LAST_CALL_ROOM_BYTES
        for size in (6_060_000, 24_072_082):
            remaining, calls = size, 0
            while remaining > 0 and calls < 100:  # the plan, call after call
                target = target_bytes(remaining, cap, margin, line)
                assert target <= (most if remaining > last else cap * LAST_CALL_FACTOR)
                remaining -= min(remaining, lines_for(target, line) * line)
                calls += 1
            # Every call but the last within the margin; the last may carry up to the cap, as it
            # cannot carry more than the file's rest.
            assert calls == 1 + math.ceil((size - last) / most), (cap, size)
    # 6.06 MB at a 1 MiB cap: 6 calls (5 x 1 MiB would be 5.24 MB), though 6 x most is not
    # enough once the margin passes 3.6 %.
    size = 6_060_000
    assert 6 * OBSERVED_CAP_BYTES * (1 - 0.04) < size
    remaining, calls = size, 0
    while remaining > 0:
        remaining -= min(
            remaining,
            lines_for(target_bytes(remaining, OBSERVED_CAP_BYTES, 0.04, line), line) * line,
        )
        calls += 1
    assert calls == 6
    # The first call, sized from other files' lines, gets the room it wants ...
    later = target_bytes(size, OBSERVED_CAP_BYTES, margin, line)
    roomy = target_bytes(size, OBSERVED_CAP_BYTES, margin, line, first_margin=0.07)
    assert roomy == OBSERVED_CAP_BYTES * (1 - 0.07) < later
    # ... as far as that costs the file no call.
    tight = target_bytes(size, OBSERVED_CAP_BYTES, 0.035, line, first_margin=0.12)
    most = OBSERVED_CAP_BYTES * (1 - 0.035)
    assert tight == size - 4 * most - (OBSERVED_CAP_BYTES - LAST_CALL_ROOM_BYTES)
    assert tight > OBSERVED_CAP_BYTES * (1 - 0.12)
    most = OBSERVED_CAP_BYTES * (1 - margin)
    # Past the listed size (a file still being written): as much as a call may carry.
    assert target_bytes(0, OBSERVED_CAP_BYTES, margin, line) == most
    # The API's 10,000-line cap, and at least one line.
    assert lines_for(most, 20.0) == 10_000 and lines_for(most, 5_000_000.0) == 1


def test_the_margin_follows_the_errors_of_each_kind_of_prediction() -> None:
    """Predictions within a file (from its previous portion) and a file's first call (from
    other files' lines) keep margins of their own: an uneven file's first call does not make
    every later call keep more room, and a miss widens the margin for a while, then less."""
    model = LineModel()
    for _ in range(30):
        model.predicted(1_000_000, 1_004_000)  # within a file: 0.4 % off
        model.predicted(1_000_000, 1_050_000, first=True)  # first calls: 5 % off
    assert MIN_MARGIN < model.margin < 0.015  # about 3 x 0.4 %
    assert model.first_margin == MAX_MARGIN  # 3 x 5 %, kept within its bound
    calm = model.margin
    model.predicted(1_000_000, 1_060_000)  # a 6 % miss within a file
    widened = model.margin
    assert widened > 4 * calm
    for _ in range(10):
        model.predicted(1_000_000, 1_004_000)
    assert calm < model.margin < widened
    assert 0.0 < LineModel().margin < LineModel().first_margin <= MAX_MARGIN


async def test_files_that_start_together_share_one_probe(
    lab: LabThread, lab_files: tuple[Path, list[GeneratedFile]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing known of an instance's lines yet: one file probes, the files that start meanwhile
    wait for its answer instead of each paying for a probe; each is byte-exact."""
    for key, value in lab.env.items():
        monkeypatch.setenv(key, value)
    files = lab_files[1]
    lab.set_faults()
    lab.reset_stats()
    asked: list[int] = []
    original = RdsDownloader._portion

    async def counted(self: RdsDownloader, f: LogFile, marker: str, lines: int) -> Any:
        if marker == "0":
            asked.append(lines)
        return await original(self, f, marker, lines)

    monkeypatch.setattr(RdsDownloader, "_portion", counted)
    await download_all(lab, files, concurrency=len(files))
    assert len(asked) == len(files)
    assert asked.count(FIRST_PORTION_LINES) == 1, asked


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
