"""Every fault knob of the lab has an observable effect; counters and the JSON control plane."""

from __future__ import annotations

import time
from typing import Any

import aioboto3
import aiohttp
import pytest
from botocore.exceptions import BotoCoreError, ClientError

from rdsrecorder_lab import LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY, Faults, Lab
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
        return str(exc.response["Error"]["Code"])
    return "ok"


async def test_latency(lab: Lab, rds: Any) -> None:
    lab.set_faults(latency_ms=300)
    started = time.monotonic()
    await rds.describe_db_log_files(DBInstanceIdentifier=INSTANCE)
    assert time.monotonic() - started >= 0.3
    lab.set_faults()
    await rds.describe_db_log_files(DBInstanceIdentifier=INSTANCE)
    # The second call was not delayed: the lab counts what each knob asked for.
    assert lab.stats()["faults"] == {"latency": 1}
    assert lab.stats()["delay_s"] == {"latency_ms": pytest.approx(0.3)}


async def test_throttle_every_nth_rds_call(lab: Lab, rds: Any) -> None:
    lab.set_faults(throttle_every_n=3)
    session = aioboto3.Session()
    async with session.client(
        "sts",
        endpoint_url=lab.rds_url,
        region_name="us-east-1",
        aws_access_key_id=LAB_ACCESS_KEY_ID,
        aws_secret_access_key=LAB_SECRET_ACCESS_KEY,
    ) as sts:
        seen = []
        for _ in range(6):
            seen.append(await outcome(rds.describe_db_instances()))
            await sts.get_caller_identity()  # STS is not an RDS call: never throttled
    assert seen == ["ok", "ok", "Throttling", "ok", "ok", "Throttling"]
    with pytest.raises(ClientError) as exc:
        for _ in range(3):
            await rds.describe_db_instances()
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert exc.value.response["Error"]["Message"] == "Rate exceeded"
    # A client that retries gets through.
    async with rds_client(lab.rds_url, retries=True) as patient:
        for _ in range(6):
            await patient.describe_db_instances()
    assert lab.stats()["faults"]["throttled"] == 3 + 2


async def test_error_rate_is_seeded(lab: Lab, rds: Any) -> None:
    lab.set_faults(error_rate=1.0)
    with pytest.raises(ClientError) as exc:
        await rds.describe_db_instances()
    assert exc.value.response["Error"]["Code"] == "InternalFailure"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500

    async def pattern(seed: int) -> list[str]:
        lab.set_faults(error_rate=0.5, seed=seed)
        return [await outcome(rds.describe_db_instances()) for _ in range(24)]

    first = await pattern(11)
    assert set(first) == {"ok", "InternalFailure"}
    assert await pattern(11) == first
    assert await pattern(12) != first


async def test_reset_mid_response(lab: Lab, rds: Any, lab_root: LabData) -> None:
    lab.set_faults(reset_rate=1.0)
    with pytest.raises(BotoCoreError):
        await rds.download_db_log_file_portion(
            DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker="0", NumberOfLines=100
        )
    url = complete_url(lab.rds_url, INSTANCE, WIDE)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(url, headers=signed_headers(url)) as response:
                assert response.status == 200
                await response.read()
    assert lab.stats()["faults"]["resets"] == 2
    # Resets are per call: with a retrying client and a partial rate, the copy is still exact.
    lab.set_faults(reset_rate=0.3, seed=3)
    async with rds_client(lab.rds_url, retries=True) as patient:
        got, _ = await download_portions(patient, INSTANCE, TRICKY, lines=1)
    assert got == lab_root.bytes(TRICKY)


async def test_stuck_marker(lab: Lab, rds: Any, lab_root: LabData) -> None:
    wide = lab_root.bytes(WIDE)
    lab.set_faults(stuck_marker_files=[f"{INSTANCE}/{WIDE}"])
    first = await rds.download_db_log_file_portion(
        DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker="0", NumberOfLines=10
    )
    marker = first["Marker"]
    assert marker.endswith(f":{10 * WIDE_LINE_BYTES}")
    for _ in range(3):
        again = await rds.download_db_log_file_portion(
            DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker=marker, NumberOfLines=10
        )
        assert again["Marker"] == marker
        assert again["AdditionalDataPending"] is True
        # the portion after the marker, again and again
        assert again["LogFileData"].encode() == wide[10 * WIDE_LINE_BYTES : 20 * WIDE_LINE_BYTES]
    assert lab.stats()["faults"] == {"stuck": 3}
    lab.set_faults(stuck_marker_files=[WIDE])  # a bare LogFileName names it as well
    again = await rds.download_db_log_file_portion(
        DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker=marker, NumberOfLines=10
    )
    assert again["Marker"] == marker


async def test_binary_files(lab: Lab, rds: Any, lab_root: LabData) -> None:
    lab.set_faults(binary_files=[TRICKY])
    with pytest.raises(ClientError) as exc:
        await rds.download_db_log_file_portion(
            DBInstanceIdentifier=INSTANCE, LogFileName=TRICKY, Marker="0"
        )
    assert exc.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert "binary data" in exc.value.response["Error"]["Message"]
    url = complete_url(lab.rds_url, INSTANCE, TRICKY)
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=signed_headers(url)) as response:
            assert response.status == 200
            assert await response.read() == lab_root.bytes(TRICKY)
    assert lab.stats()["faults"] == {"binary": 1}


async def test_faults_apply_to_the_complete_endpoint(lab: Lab) -> None:
    url = complete_url(lab.rds_url, INSTANCE, TRICKY)
    async with aiohttp.ClientSession() as http:
        lab.set_faults(error_rate=1.0)
        async with http.get(url, headers=signed_headers(url)) as response:
            assert response.status == 500
            assert "<Code>InternalFailure</Code>" in await response.text()
        lab.set_faults(throttle_every_n=1)
        async with http.get(url, headers=signed_headers(url)) as response:
            assert response.status == 400
            assert "<Code>Throttling</Code>" in await response.text()


async def test_bandwidth_cap(lab: Lab, rds: Any) -> None:
    lines = 5000  # 750 kB: ~6 Mbit
    lab.set_faults(bandwidth_mbps=10)
    started = time.monotonic()
    await rds.download_db_log_file_portion(
        DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker="0", NumberOfLines=lines
    )
    capped_s = time.monotonic() - started
    expected_s = lines * WIDE_LINE_BYTES * 8 / 10e6
    assert capped_s >= expected_s * 0.95
    lab.set_faults()
    await rds.download_db_log_file_portion(
        DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker="0", NumberOfLines=lines
    )
    # Only the capped answer held the link, for as long as its bytes take at 10 Mbit/s.
    assert lab.stats()["delay_s"] == {"bandwidth_mbps": pytest.approx(expected_s)}


async def test_control_plane_over_http(lab: Lab) -> None:
    base = lab.rds_url + "/_lab/faults"
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as response:
            assert await response.json() == Faults().to_dict()
        async with http.post(base, json={"latency_ms": 5, "binary_files": ["x"]}) as response:
            assert response.status == 200
        assert lab.faults == Faults(latency_ms=5, binary_files=("x",))
        async with http.patch(base, json={"throttle_every_n": 2}) as response:
            assert (await response.json())["latency_ms"] == 5  # PATCH keeps the others
        assert lab.faults == Faults(latency_ms=5, binary_files=("x",), throttle_every_n=2)
        async with http.post(base, json={}) as response:
            assert response.status == 200
        assert lab.faults == Faults()  # POST replaces
        for bad in ({"error_rate": 2}, {"nope": 1}, [1, 2], {"stuck_marker_files": "x"}):
            async with http.post(base, json=bad) as response:
                assert response.status == 400, bad
                assert (await response.json())["error"]
        async with http.post(base, data=b"{not json") as response:
            assert response.status == 400
        assert lab.faults == Faults()
        async with http.get(lab.rds_url + "/_lab/stats") as response:
            assert (await response.json())["calls"] == {}
        async with http.post(lab.rds_url + "/_lab/stats/reset") as response:
            assert response.status == 200


async def test_concurrent_downloads_are_counted(lab: Lab, rds: Any, lab_root: LabData) -> None:
    names = [f.name for f in lab_root.generated[:3]]
    markers = {}
    for name in names:  # start three files, finish none
        first = await rds.download_db_log_file_portion(
            DBInstanceIdentifier=INSTANCE, LogFileName=name, Marker="0", NumberOfLines=5
        )
        assert first["AdditionalDataPending"]
        markers[name] = first["Marker"]
    stats = lab.stats()
    assert stats["max_concurrent_downloads"] == 3
    assert stats["in_flight"] == sorted(f"{INSTANCE}/{n}" for n in names)
    for name in names:
        last = await rds.download_db_log_file_portion(
            DBInstanceIdentifier=INSTANCE, LogFileName=name, Marker=markers[name]
        )
        assert not last["AdditionalDataPending"]
    stats = lab.stats()
    assert stats["in_flight"] == []
    assert stats["calls"] == {"DownloadDBLogFilePortion": 6}
    assert stats["portion_calls_by_file"] == {f"{INSTANCE}/{n}": 2 for n in names}
    assert stats["portion_bytes_by_file"] == {
        f"{INSTANCE}/{n}": len(lab_root.bytes(n)) for n in names
    }
    lab.reset_stats()
    for name in names[:2]:
        await download_portions(rds, INSTANCE, name, lines=200)
    assert lab.stats()["max_concurrent_downloads"] == 1
