"""The knobs that make the lab pessimistic about rates, bodies and pages: the account's token
bucket, latency per MB, per-stream rates, a false end of file, overlapping pages, short bodies and
listing errors, each observed through real clients."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError

from rdsrecorder.clock import FakeClock
from rdsrecorder_lab import Lab
from rdsrecorder_lab.emulator import _Pacer
from tests.lab_helpers import (
    INSTANCE,
    TRICKY,
    WIDE,
    WIDE_LINE_BYTES,
    LabData,
    complete_url,
    download_portions,
    rds_client,
    signed_headers,
)


async def outcome(call: Any) -> str:
    try:
        await call
    except ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 403, 404, 500)
        return str(exc.response["Error"]["Code"])
    return "ok"


async def get_complete(
    lab: Lab, name: str, *, gzip: bool = False, instance: str = INSTANCE
) -> tuple[int, bytes]:
    url = complete_url(lab.rds_url, instance, name)
    headers = signed_headers(url)
    headers["Accept-Encoding"] = "gzip" if gzip else "identity"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=headers) as response:
            return response.status, await response.read()


async def test_account_token_bucket(lab_root: LabData) -> None:
    # The bucket refills on the lab's clock: a fake one, so that a slow machine, whose calls
    # take longer than a token's 0.2 s, sees the same tokens.
    clock = FakeClock(time.time())
    async with Lab(lab_root.root, s3="none", now=clock.now) as lab, rds_client(lab.rds_url) as rds:
        lab.set_faults(account_burst=4, account_refill_per_s=5)
        seen = [await outcome(rds.describe_db_log_files(DBInstanceIdentifier=INSTANCE))]
        seen += [await outcome(rds.describe_db_instances()) for _ in range(3)]
        status, _ = await get_complete(lab, TRICKY)  # the complete-file endpoint pays one too
        assert seen == ["ok"] * 4 and status == 400
        with pytest.raises(ClientError) as exc:
            await rds.describe_db_instances()
        assert exc.value.response["Error"] == {
            "Type": "Sender",
            "Code": "Throttling",
            "Message": "Rate exceeded",
        }
        clock.advance(0.45)  # two tokens back
        assert [await outcome(rds.describe_db_instances()) for _ in range(3)] == [
            "ok",
            "ok",
            "Throttling",
        ]
        stats = lab.stats()
        assert stats["throttled"] == 3
        assert stats["throttled_by_action"] == {
            "DownloadCompleteLogFile": 1,
            "DescribeDBInstances": 2,
        }
        assert stats["faults"] == {"account_throttled": 3}
        assert stats["calls_by_instance"] == {
            INSTANCE: {"DescribeDBLogFiles": 1, "DownloadCompleteLogFile": 1}
        }
        lab.set_faults(account_burst=4)  # setting the faults refills the bucket
        assert [await outcome(rds.describe_db_instances()) for _ in range(4)] == ["ok"] * 4


async def test_portion_latency_grows_with_the_bytes(lab: Lab, rds: Any) -> None:
    lab.set_faults(portion_ms_per_mb=400)

    async def timed(lines: int) -> float:
        started = time.monotonic()
        await rds.download_db_log_file_portion(
            DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker="0", NumberOfLines=lines
        )
        return time.monotonic() - started

    await timed(1)  # 150 bytes: 0.06 ms added
    assert lab.stats()["delay_s"] == {"portion_ms_per_mb": pytest.approx(0.00006)}
    big_s = await timed(5000)  # 750 kB: 300 ms added
    assert big_s >= 0.3
    assert lab.stats()["delay_s"] == {"portion_ms_per_mb": pytest.approx(0.30006)}
    lab.set_faults()
    await timed(5000)
    assert lab.stats()["delay_s"] == {"portion_ms_per_mb": pytest.approx(0.30006)}


async def test_stream_rate_is_per_stream(lab: Lab, lab_root: LabData) -> None:
    size = len(lab_root.bytes(WIDE))  # 1.8 MB
    lab.set_faults(stream_mbps=48)  # 0.3 s per stream
    expected_s = size * 8 / 48e6
    started = time.monotonic()
    status, body = await get_complete(lab, WIDE)
    alone_s = time.monotonic() - started
    assert status == 200 and body == lab_root.bytes(WIDE)
    assert alone_s >= expected_s * 0.9
    both = await asyncio.gather(get_complete(lab, WIDE), get_complete(lab, WIDE))
    assert [b for _, b in both] == [lab_root.bytes(WIDE)] * 2
    # Side by side, not one after the other: each stream had its own rate, none waited for the
    # shared link.
    assert lab.stats()["delay_s"] == {"stream_mbps": pytest.approx(3 * expected_s)}
    lab.set_faults(bandwidth_mbps=48)  # the shared cap: two streams take twice as long
    started = time.monotonic()
    await asyncio.gather(get_complete(lab, WIDE), get_complete(lab, WIDE))
    assert time.monotonic() - started >= 2 * expected_s * 0.9
    assert lab.stats()["delay_s"]["bandwidth_mbps"] == pytest.approx(2 * expected_s)


async def test_additional_data_pending_false_mid_file(
    lab: Lab, rds: Any, lab_root: LabData
) -> None:
    want = lab_root.bytes(WIDE)
    lab.set_faults(early_eof_files=[f"{INSTANCE}/{WIDE}"], early_eof_after_bytes=300_000)
    got, responses = await download_portions(rds, INSTANCE, WIDE, lines=1000)
    # A paginator that trusts the flag stops after the portion holding byte 300,000.
    assert len(responses) == 3 and got == want[: 3000 * WIDE_LINE_BYTES]
    assert responses[-1]["AdditionalDataPending"] is False
    # The marker is right: asking again from it returns the rest.
    marker, rest = responses[-1]["Marker"], []
    for _ in range(100):  # a bounded walk: a marker that never ends fails below
        more = await rds.download_db_log_file_portion(
            DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker=marker, NumberOfLines=1000
        )
        rest.append(more["LogFileData"])
        marker = more["Marker"]
        if not more["AdditionalDataPending"]:
            break
    assert got + "".join(rest).encode() == want
    assert lab.stats()["faults"] == {"early_eof": 1}
    # Other files are untouched; 0 with no file named means no fault.
    other, _ = await download_portions(rds, INSTANCE, TRICKY, lines=1)
    assert other == lab_root.bytes(TRICKY)
    lab.set_faults(early_eof_files=[WIDE])  # offset 0: the first portion says false
    first = await rds.download_db_log_file_portion(
        DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker="0", NumberOfLines=10
    )
    assert first["AdditionalDataPending"] is False and first["Marker"].endswith(":1500")


async def test_overlapping_pages(lab: Lab, rds: Any, lab_root: LabData) -> None:
    want = lab_root.bytes(WIDE)
    lab.set_faults(overlap_bytes=40)
    first = await rds.download_db_log_file_portion(
        DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker="0", NumberOfLines=2
    )
    assert first["LogFileData"].encode() == want[: 2 * WIDE_LINE_BYTES]  # "0": nothing before
    second = await rds.download_db_log_file_portion(
        DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker=first["Marker"], NumberOfLines=2
    )
    assert second["LogFileData"].encode() == want[2 * WIDE_LINE_BYTES - 40 : 4 * WIDE_LINE_BYTES]
    assert second["Marker"].endswith(f":{4 * WIDE_LINE_BYTES}")  # the marker does not move back
    got, _ = await download_portions(rds, INSTANCE, WIDE, lines=3000)
    assert len(got) == len(want) + 3 * 40 and got != want


async def test_short_whole_file_body(lab: Lab, lab_root: LabData) -> None:
    want = lab_root.bytes(WIDE)
    lab.set_faults(short_body_files=[WIDE], short_body_fraction=0.4)
    for gzip in (False, True):
        status, body = await get_complete(lab, WIDE, gzip=gzip)  # no error: a clean end
        assert status == 200
        assert body == want[: int(len(want) * 0.4)]
    status, body = await get_complete(lab, TRICKY)
    assert body == lab_root.bytes(TRICKY)
    assert lab.stats()["faults"] == {"short_bodies": 2}


async def test_listing_errors(lab: Lab, rds: Any) -> None:
    lab.set_faults(list_error="AccessDenied")
    with pytest.raises(ClientError) as exc:
        await rds.describe_db_log_files(DBInstanceIdentifier=INSTANCE)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
    assert "rds:DescribeDBLogFiles" in exc.value.response["Error"]["Message"]
    lab.set_faults(list_error="InternalFailure", list_error_instances=["AUR-1"])
    for _ in range(3):  # persistent: a retry fails too
        with pytest.raises(ClientError) as exc:
            await rds.describe_db_log_files(DBInstanceIdentifier="aur-1")
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert exc.value.response["Error"]["Code"] == "InternalFailure"
    assert lab.stats()["faults"]["list_errors"] >= 3
    assert await outcome(rds.describe_db_log_files(DBInstanceIdentifier="aur-2")) == "ok"
    assert await outcome(rds.describe_db_log_files(DBInstanceIdentifier=INSTANCE)) == "ok"
    # Portions still work: only the listing fails.
    assert (
        await outcome(
            rds.download_db_log_file_portion(
                DBInstanceIdentifier="aur-1", LogFileName=TRICKY, Marker="0"
            )
        )
        == "DBLogFileNotFoundFault"
    )


async def test_new_knobs_over_http(lab: Lab) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.patch(
            lab.rds_url + "/_lab/faults",
            json={"account_burst": 300, "early_eof_files": ["a"], "stream_mbps": 5},
        ) as response:
            assert response.status == 200
            body = await response.json()
        assert body["account_burst"] == 300 and body["account_refill_per_s"] == 12.0
        assert lab.faults.early_eof_files == ("a",)
        for bad in (
            {"account_burst": -1},
            {"account_refill_per_s": 0},
            {"portion_ms_per_mb": float("inf")},
            {"short_body_fraction": 1.5},
            {"list_error": "Teapot"},
            {"overlap_bytes": 1.5},
            {"stream_mbps": 0},
        ):
            async with http.patch(lab.rds_url + "/_lab/faults", json=bad) as response:
                assert response.status == 400, bad
    assert lab.faults.stream_mbps == 5


async def test_a_stream_keeps_its_rate_when_the_lab_itself_runs_late() -> None:
    """stream_mbps is the rate a client sees even when the lab's loop was held up (by its
    neighbours on the same cores): a late chunk does not push back the ones after it. A shared
    link saves no credit while it waits: there, lateness adds up."""

    async def send(stream: bool) -> float:
        clock = FakeClock(1000.0)
        pacer = _Pacer(stream=stream, now=clock.now, sleep=clock.sleep)
        for i in range(10):  # 10 x 100 kB at 8 Mbit/s (1 MB/s): 1 s
            await pacer.take(100_000, 8)
            if i == 2:
                clock.advance(0.3)  # the lab's loop blocked for 0.3 s
        return clock.now() - 1000.0

    assert await send(stream=True) == pytest.approx(1.0)
    assert await send(stream=False) == pytest.approx(1.3)
