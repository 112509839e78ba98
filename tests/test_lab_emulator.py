"""The lab's RDS/STS emulator, exercised through real aioboto3 clients."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from rdsrecorder_lab import (
    LAB_ACCESS_KEY_ID,
    LAB_SECRET_ACCESS_KEY,
    MAX_PORTION_BYTES,
    TRUNCATION_NOTICE,
    Lab,
)
from tests.lab_helpers import (
    BINARY,
    INSTANCE,
    LONG_LINE,
    LONG_LINE_BYTES,
    TRICKY,
    WIDE,
    WIDE_LINE_BYTES,
    LabData,
    download_portions,
    rds_client,
)


@pytest.fixture
async def lab(lab_root: LabData) -> AsyncIterator[Lab]:
    """conftest's lab, with snapshots that become available within the test."""
    async with Lab(lab_root.root, s3="none", snapshot_delay_s=0.3) as lab:
        yield lab


def code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response: dict[str, Any] = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


# -- pointing an SDK at the lab --------------------------------------------------------------------
async def test_env_points_sdk_at_lab(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in lab.env.items():
        monkeypatch.setenv(key, value)
    assert set(lab.env) >= {
        "AWS_ENDPOINT_URL_RDS",
        "AWS_ENDPOINT_URL_STS",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_S3_BUCKET_NAME",
    }
    assert "AWS_ENDPOINT_URL_S3" not in lab.env  # s3="none"
    session = aioboto3.Session()
    async with session.client("sts") as sts:
        identity = await sts.get_caller_identity()
    assert identity["Account"] == "123456789012"
    async with session.client("rds") as rds:
        found = await rds.describe_db_instances(DBInstanceIdentifier=INSTANCE)
    assert found["DBInstances"][0]["DBInstanceIdentifier"] == INSTANCE


async def test_wrong_credentials_are_refused(lab: Lab) -> None:
    async with rds_client(lab.rds_url, aws_access_key_id="AKIAUNKNOWN") as rds:
        with pytest.raises(ClientError) as exc:
            await rds.describe_db_instances()
    assert code(exc) == ("InvalidClientTokenId", 403)
    async with rds_client(lab.rds_url, aws_secret_access_key="not-the-secret") as rds:
        with pytest.raises(ClientError) as exc:
            await rds.describe_db_log_files(DBInstanceIdentifier=INSTANCE)
    assert code(exc) == ("SignatureDoesNotMatch", 403)
    session = aioboto3.Session()
    async with session.client(
        "sts",
        endpoint_url=lab.rds_url,
        region_name="us-east-1",
        aws_access_key_id="AKIAUNKNOWN",
        aws_secret_access_key="x",
    ) as sts:
        with pytest.raises(ClientError) as exc:
            await sts.get_caller_identity()
    assert code(exc) == ("InvalidClientTokenId", 403)


async def test_unknown_action_and_unsigned_request(lab: Lab) -> None:
    body = "Action=RebootDBInstance&Version=2014-10-31&DBInstanceIdentifier=lab-db"
    request = AWSRequest(
        method="POST",
        url=lab.rds_url + "/",
        data=body.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    SigV4Auth(Credentials(LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY), "rds", "us-east-1").add_auth(
        request
    )
    async with aiohttp.ClientSession() as http:
        async with http.post(
            lab.rds_url + "/", data=body.encode(), headers=dict(request.headers.items())
        ) as response:
            assert response.status == 400
            assert "<Code>InvalidAction</Code>" in await response.text()
        async with http.post(
            lab.rds_url + "/",
            data=body.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as response:
            assert response.status == 403
            assert "<Code>MissingAuthenticationToken</Code>" in await response.text()


# -- instances and clusters ------------------------------------------------------------------------
async def test_describe_db_instances(rds: Any) -> None:
    one = (await rds.describe_db_instances(DBInstanceIdentifier=INSTANCE))["DBInstances"]
    assert len(one) == 1
    assert one[0]["Engine"] == "postgres"
    assert one[0]["DBInstanceStatus"] == "available"
    assert one[0]["DBInstanceArn"] == f"arn:aws:rds:eu-west-1:123456789012:db:{INSTANCE}"
    assert "DBClusterIdentifier" not in one[0]
    by_arn = await rds.describe_db_instances(DBInstanceIdentifier=one[0]["DBInstanceArn"])
    assert by_arn["DBInstances"][0]["DBInstanceIdentifier"] == INSTANCE
    upper = await rds.describe_db_instances(DBInstanceIdentifier=INSTANCE.upper())
    assert upper["DBInstances"][0]["DBInstanceIdentifier"] == INSTANCE

    every = (await rds.describe_db_instances())["DBInstances"]
    engines = {i["DBInstanceIdentifier"]: i["Engine"] for i in every}
    assert engines == {
        INSTANCE: "postgres",
        "aur-1": "aurora-postgresql",
        "aur-2": "aurora-postgresql",
    }
    members = await rds.describe_db_instances(
        Filters=[{"Name": "db-cluster-id", "Values": ["aur"]}]
    )
    assert {i["DBClusterIdentifier"] for i in members["DBInstances"]} == {"aur"}
    assert len(members["DBInstances"]) == 2

    with pytest.raises(ClientError) as exc:
        await rds.describe_db_instances(DBInstanceIdentifier="no-such-db")
    assert code(exc) == ("DBInstanceNotFound", 404)
    assert isinstance(exc.value, rds.exceptions.DBInstanceNotFoundFault)


async def test_describe_db_clusters(rds: Any) -> None:
    clusters = (await rds.describe_db_clusters(DBClusterIdentifier="aur"))["DBClusters"]
    assert len(clusters) == 1
    members = {
        m["DBInstanceIdentifier"]: m["IsClusterWriter"] for m in clusters[0]["DBClusterMembers"]
    }
    assert members == {"aur-1": False, "aur-2": True}
    assert clusters[0]["Engine"] == "aurora-postgresql"
    assert len((await rds.describe_db_clusters())["DBClusters"]) == 1
    with pytest.raises(rds.exceptions.DBClusterNotFoundFault) as exc:
        await rds.describe_db_clusters(DBClusterIdentifier="nope")
    assert code(exc) == ("DBClusterNotFoundFault", 404)
    # Logs live on the members: a cluster id is not an instance.
    with pytest.raises(ClientError) as exc:
        await rds.describe_db_log_files(DBInstanceIdentifier="aur")
    assert code(exc) == ("DBInstanceNotFound", 404)


async def test_instances_and_files_added_at_runtime_appear(tmp_path: Path) -> None:
    async with Lab(tmp_path, s3="none") as lab, rds_client(lab.rds_url) as rds:
        assert (await rds.describe_db_instances())["DBInstances"] == []
        (tmp_path / "late-db" / "error").mkdir(parents=True)
        listed = await rds.describe_db_log_files(DBInstanceIdentifier="late-db")
        assert listed["DescribeDBLogFiles"] == []
        (tmp_path / "late-db" / "error" / "postgresql.log.2024-03-04-19.csv").write_text("a\n")
        listed = await rds.describe_db_log_files(DBInstanceIdentifier="late-db")
        assert [f["LogFileName"] for f in listed["DescribeDBLogFiles"]] == [
            "error/postgresql.log.2024-03-04-19.csv"
        ]
        (tmp_path / "lab.json").write_text(json.dumps({"clusters": {"c": {"members": ["m-1"]}}}))
        found = await rds.describe_db_instances(DBInstanceIdentifier="m-1")
        assert found["DBInstances"][0]["DBClusterIdentifier"] == "c"
        clusters = (await rds.describe_db_clusters())["DBClusters"]
        assert clusters[0]["DBClusterMembers"][0]["IsClusterWriter"] is True


# -- DescribeDBLogFiles ----------------------------------------------------------------------------
MAX_PAGES = 100  # a listing that never ends must fail the test, not hang it


async def all_files(rds: Any, **kwargs: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    marker = None
    for _ in range(MAX_PAGES):
        page = await rds.describe_db_log_files(
            DBInstanceIdentifier=INSTANCE, **kwargs, **({"Marker": marker} if marker else {})
        )
        out.extend(page["DescribeDBLogFiles"])
        marker = page.get("Marker")
        if not marker:
            return out
    raise AssertionError(f"DescribeDBLogFiles still had a Marker after {MAX_PAGES} pages")


async def test_describe_log_files_matches_disk(rds: Any, lab_root: LabData) -> None:
    listed = {f["LogFileName"]: f for f in await all_files(rds)}
    on_disk = {
        p.relative_to(lab_root.root / INSTANCE).as_posix(): p
        for p in (lab_root.root / INSTANCE).rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }
    assert set(listed) == set(on_disk)
    assert "error/.hidden" not in listed
    for name, path in on_disk.items():
        st = path.stat()
        assert listed[name]["Size"] == st.st_size
        assert listed[name]["LastWritten"] == st.st_mtime_ns // 1_000_000  # epoch milliseconds
    newest = max(lab_root.generated, key=lambda f: f.start_s)
    assert abs(listed[newest.name]["LastWritten"] / 1000 - newest.last_written_s) < 0.002


async def test_describe_log_files_pages_in_no_particular_order(rds: Any) -> None:
    pages: list[list[str]] = []
    marker = None
    for _ in range(MAX_PAGES):
        kwargs: dict[str, str] = {"Marker": marker} if marker else {}
        page = await rds.describe_db_log_files(
            DBInstanceIdentifier=INSTANCE, MaxRecords=4, **kwargs
        )
        pages.append([f["LogFileName"] for f in page["DescribeDBLogFiles"]])
        marker = page.get("Marker")
        if not marker:
            break
    assert not marker, f"still paging after {MAX_PAGES} pages"
    names = [n for page in pages for n in page]
    assert all(len(p) == 4 for p in pages[:-1]) and 1 <= len(pages[-1]) <= 4
    assert len(names) == len(set(names)) == len(await all_files(rds))
    assert names != sorted(names) and names != sorted(names, reverse=True)
    again = [f["LogFileName"] for f in await all_files(rds, MaxRecords=4)]
    assert again == names  # stable: paging is consistent


async def test_describe_log_files_filters(rds: Any, lab_root: LabData) -> None:
    every = await all_files(rds)
    csv = await all_files(rds, FilenameContains=".csv")
    assert {f["LogFileName"] for f in csv} == {
        f["LogFileName"] for f in every if ".csv" in f["LogFileName"]
    }
    cutoff = sorted(f["LastWritten"] for f in every)[-3]
    recent = await all_files(rds, FileLastWritten=cutoff)
    assert {f["LogFileName"] for f in recent} == {
        f["LogFileName"] for f in every if f["LastWritten"] >= cutoff
    }
    big = await all_files(rds, FileSize=LONG_LINE_BYTES)
    assert {f["LogFileName"] for f in big} == {
        f["LogFileName"] for f in every if f["Size"] > LONG_LINE_BYTES
    }
    assert LONG_LINE in {f["LogFileName"] for f in big}
    with pytest.raises(ClientError) as exc:
        await rds.describe_db_log_files(DBInstanceIdentifier=INSTANCE, MaxRecords=0)
    assert code(exc) == ("InvalidParameterValue", 400)


# -- DownloadDBLogFilePortion ----------------------------------------------------------------------
async def test_portions_concatenate_byte_exact(rds: Any, lab_root: LabData) -> None:
    for name in [f.name for f in lab_root.generated] + [TRICKY]:
        got, responses = await download_portions(rds, INSTANCE, name, lines=700)
        want = lab_root.bytes(name)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest(), name
        markers = [r["Marker"] for r in responses]
        assert all(re.fullmatch(r"\d+:\d+", m) for m in markers), markers
        assert int(markers[-1].split(":")[1]) == len(want)
        assert [r["AdditionalDataPending"] for r in responses] == [True] * (len(responses) - 1) + [
            False
        ]


async def test_portion_special_characters(rds: Any, lab_root: LabData) -> None:
    got, _ = await download_portions(rds, INSTANCE, TRICKY, lines=1)
    assert got == lab_root.bytes(TRICKY)
    assert b"\r\n" in got and b"\rlone" in got and "😀".encode() in got


async def test_too_many_lines_are_truncated_and_fewer_lines_recover(
    rds: Any, lab_root: LabData
) -> None:
    want = lab_root.bytes(WIDE)
    first = await rds.download_db_log_file_portion(
        DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker="0"
    )  # NumberOfLines defaults to 10,000: 1.5 MB of lines
    text = first["LogFileData"].encode()
    # Cut at about 1 MiB (the cap, notice included), the notice on a line of its own.
    assert MAX_PORTION_BYTES == 1_048_576
    notice = b"\n " + TRUNCATION_NOTICE.encode() + b"\n"
    assert text.endswith(notice) and text.count(TRUNCATION_NOTICE.encode()) == 1
    assert MAX_PORTION_BYTES - 100 < len(text) <= MAX_PORTION_BYTES
    kept = text[: -len(notice)]
    assert want.startswith(kept)
    cut_line = len(kept) // WIDE_LINE_BYTES
    assert len(kept) % WIDE_LINE_BYTES != 0  # the cut falls inside a line ...
    # ... and the marker moved past all 10,000 lines: the rest of that line, and the lines
    # after it, are skipped.
    assert int(first["Marker"].split(":")[1]) == 10_000 * WIDE_LINE_BYTES
    assert first["AdditionalDataPending"] is True
    after = await rds.download_db_log_file_portion(
        DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker=first["Marker"], NumberOfLines=1
    )
    assert after["LogFileData"].encode() == want[10_000 * WIDE_LINE_BYTES :][:WIDE_LINE_BYTES]
    # What a reader that trusts the markers gets: the cut line's head, then line 10,000.
    got = kept + after["LogFileData"].encode()
    assert got == want[: len(kept)] + want[10_000 * WIDE_LINE_BYTES : 10_001 * WIDE_LINE_BYTES]
    assert not got[:-WIDE_LINE_BYTES].endswith(want[: (cut_line + 1) * WIDE_LINE_BYTES])
    # Asking again from the same marker with fewer lines gets everything.
    second = await rds.download_db_log_file_portion(
        DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, Marker="0", NumberOfLines=5000
    )
    assert second["LogFileData"].encode() == want[: 5000 * WIDE_LINE_BYTES]
    assert second["Marker"].endswith(f":{5000 * WIDE_LINE_BYTES}")
    stats = await _stats(rds)
    assert stats["truncated_portions_by_file"] == {f"{INSTANCE}/{WIDE}": 1}
    assert stats["calls_by_instance"] == {INSTANCE: {"DownloadDBLogFilePortion": 3}}


async def _stats(rds: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(rds.meta.endpoint_url + "/_lab/stats") as response:
            result: dict[str, Any] = await response.json()
            return result


async def test_line_over_1mb_is_cut_and_its_tail_lost(rds: Any, lab_root: LabData) -> None:
    want = lab_root.bytes(LONG_LINE)
    got, responses = await download_portions(rds, INSTANCE, LONG_LINE, lines=1)
    assert len(responses) == 7
    long_portion = responses[3]["LogFileData"].encode()
    assert len(long_portion) <= MAX_PORTION_BYTES
    assert long_portion.endswith(b"\n " + TRUNCATION_NOTICE.encode() + b"\n")
    assert long_portion.startswith(b"L" * 900_000)
    # Everything around the long line is intact; the line itself lost its tail.
    assert got[: 3 * 101] == want[: 3 * 101] and got[-3 * 101 :] == want[-3 * 101 :]
    assert len(got) < len(want)
    assert int(responses[3]["Marker"].split(":")[1]) == 3 * 101 + LONG_LINE_BYTES


async def test_without_marker_the_tail_is_returned(rds: Any, lab_root: LabData) -> None:
    want = lab_root.bytes(WIDE)
    tail = await rds.download_db_log_file_portion(
        DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, NumberOfLines=3
    )
    assert tail["LogFileData"].encode() == want[-3 * WIDE_LINE_BYTES :]
    assert tail["AdditionalDataPending"] is False
    assert tail["Marker"].endswith(f":{len(want)}")


async def test_portion_parameter_errors(rds: Any) -> None:
    cases: list[dict[str, Any]] = [
        {"Marker": "0", "NumberOfLines": 0},
        {"Marker": "0", "NumberOfLines": 10_001},
        {"Marker": "not-a-marker"},
    ]
    for kwargs in cases:
        with pytest.raises(ClientError) as exc:
            await rds.download_db_log_file_portion(
                DBInstanceIdentifier=INSTANCE, LogFileName=WIDE, **kwargs
            )
        assert code(exc) == ("InvalidParameterValue", 400), kwargs


async def test_unknown_file_instance_and_escapes(rds: Any) -> None:
    for name in ("error/postgresql.log.1999-01-01-00.csv", "../lab.json", "error/.hidden", "error"):
        with pytest.raises(ClientError) as exc:
            await rds.download_db_log_file_portion(
                DBInstanceIdentifier=INSTANCE, LogFileName=name, Marker="0"
            )
        assert code(exc) == ("DBLogFileNotFoundFault", 404), name
        assert isinstance(exc.value, rds.exceptions.DBLogFileNotFoundFault)
    with pytest.raises(ClientError) as exc:
        await rds.download_db_log_file_portion(
            DBInstanceIdentifier="no-such-db", LogFileName=WIDE, Marker="0"
        )
    assert code(exc) == ("DBInstanceNotFound", 404)


async def test_binary_file_is_refused_like_rds(rds: Any) -> None:
    with pytest.raises(ClientError) as exc:
        await rds.download_db_log_file_portion(
            DBInstanceIdentifier=INSTANCE, LogFileName=BINARY, Marker="0"
        )
    assert code(exc) == ("InvalidParameterValue", 400)
    assert "binary data" in str(exc.value)


async def test_growing_file_is_read_at_its_current_end(tmp_path: Path) -> None:
    error_dir = tmp_path / "live-db" / "error"
    error_dir.mkdir(parents=True)
    path = error_dir / "postgresql.log.2024-03-04-1905.csv"
    path.write_bytes(b"one\ntwo\n")
    async with Lab(tmp_path, s3="none") as lab, rds_client(lab.rds_url) as rds:
        name = "error/" + path.name
        first = await rds.download_db_log_file_portion(
            DBInstanceIdentifier="live-db", LogFileName=name, Marker="0", NumberOfLines=1
        )
        assert (first["LogFileData"], first["AdditionalDataPending"]) == ("one\n", True)
        rest = await rds.download_db_log_file_portion(
            DBInstanceIdentifier="live-db", LogFileName=name, Marker=first["Marker"]
        )
        assert (rest["LogFileData"], rest["AdditionalDataPending"]) == ("two\n", False)
        # PostgreSQL writes on: a record in progress, ending in half a UTF-8 character.
        with path.open("ab") as f:
            f.write(b"three\nfo" + "ü".encode()[:1])
        more = await rds.download_db_log_file_portion(
            DBInstanceIdentifier="live-db", LogFileName=name, Marker=rest["Marker"]
        )
        assert more["LogFileData"] == "three\nfo"  # the half character is held back
        with path.open("ab") as f:
            f.write("ü".encode()[1:] + b"r\n")
        last = await rds.download_db_log_file_portion(
            DBInstanceIdentifier="live-db", LogFileName=name, Marker=more["Marker"]
        )
        assert last["LogFileData"] == "ür\n"
        assert last["Marker"].endswith(f":{path.stat().st_size}")
        assert last["AdditionalDataPending"] is False
        at_end = await rds.download_db_log_file_portion(
            DBInstanceIdentifier="live-db", LogFileName=name, Marker=last["Marker"]
        )
        assert "LogFileData" not in at_end or at_end["LogFileData"] == ""
        assert at_end["Marker"] == last["Marker"]
        # The file expires (retention): the next call says so.
        shutil.move(path, tmp_path / "expired")
        with pytest.raises(ClientError) as exc:
            await rds.download_db_log_file_portion(
                DBInstanceIdentifier="live-db", LogFileName=name, Marker=last["Marker"]
            )
        assert code(exc) == ("DBLogFileNotFoundFault", 404)


# -- snapshots and tags ----------------------------------------------------------------------------
async def test_db_snapshot_lifecycle(rds: Any) -> None:
    created = await rds.create_db_snapshot(
        DBSnapshotIdentifier="Run-1-Start",
        DBInstanceIdentifier=INSTANCE,
        Tags=[{"Key": "app", "Value": "rdsrecorder"}],
    )
    snap = created["DBSnapshot"]
    assert snap["DBSnapshotIdentifier"] == "run-1-start"  # stored lower-cased, as RDS does
    assert snap["Status"] == "creating"
    assert snap["TagList"] == [{"Key": "app", "Value": "rdsrecorder"}]
    waiter = rds.get_waiter("db_snapshot_available")
    await waiter.wait(
        DBSnapshotIdentifier="run-1-start", WaiterConfig={"Delay": 1, "MaxAttempts": 5}
    )
    found = (await rds.describe_db_snapshots(DBInstanceIdentifier=INSTANCE))["DBSnapshots"]
    assert [(s["DBSnapshotIdentifier"], s["Status"]) for s in found] == [
        ("run-1-start", "available")
    ]
    assert found[0]["SnapshotCreateTime"] == snap["SnapshotCreateTime"]
    with pytest.raises(ClientError) as exc:
        await rds.create_db_snapshot(
            DBSnapshotIdentifier="run-1-start", DBInstanceIdentifier=INSTANCE
        )
    assert code(exc) == ("DBSnapshotAlreadyExists", 400)
    with pytest.raises(ClientError) as exc:
        await rds.describe_db_snapshots(DBSnapshotIdentifier="nope")
    assert code(exc) == ("DBSnapshotNotFound", 404)
    with pytest.raises(ClientError) as exc:
        await rds.create_db_snapshot(DBSnapshotIdentifier="s", DBInstanceIdentifier="no-such-db")
    assert code(exc) == ("DBInstanceNotFound", 404)
    # An Aurora member is snapshotted through its cluster.
    with pytest.raises(ClientError) as exc:
        await rds.create_db_snapshot(DBSnapshotIdentifier="s", DBInstanceIdentifier="aur-1")
    assert code(exc) == ("InvalidParameterValue", 400)


@pytest.mark.parametrize("ident", ["1abc", "a--b", "ab-", "a_b", "a.b", "ü", "a" * 256, "-ab"])
async def test_snapshot_ids_are_validated(rds: Any, ident: str) -> None:
    with pytest.raises(ClientError) as exc:
        await rds.create_db_snapshot(DBSnapshotIdentifier=ident, DBInstanceIdentifier=INSTANCE)
    assert code(exc) == ("InvalidParameterValue", 400)


async def test_snapshot_id_limits(rds: Any) -> None:
    await rds.create_db_snapshot(DBSnapshotIdentifier="a" * 255, DBInstanceIdentifier=INSTANCE)
    await rds.create_db_snapshot(DBSnapshotIdentifier="b", DBInstanceIdentifier=INSTANCE)
    with pytest.raises(ClientError) as exc:
        await rds.create_db_cluster_snapshot(
            DBClusterSnapshotIdentifier="c" * 64, DBClusterIdentifier="aur"
        )
    assert code(exc) == ("InvalidParameterValue", 400)
    await rds.create_db_cluster_snapshot(
        DBClusterSnapshotIdentifier="c" * 63, DBClusterIdentifier="aur"
    )


async def test_cluster_snapshot_lifecycle_and_tags(rds: Any) -> None:
    created = await rds.create_db_cluster_snapshot(
        DBClusterSnapshotIdentifier="run-2",
        DBClusterIdentifier="aur",
        Tags=[{"Key": "app", "Value": "rdsrecorder"}],
    )
    snap = created["DBClusterSnapshot"]
    assert (snap["Status"], snap["Engine"]) == ("creating", "aurora-postgresql")
    with pytest.raises(ClientError) as exc:
        await rds.create_db_cluster_snapshot(
            DBClusterSnapshotIdentifier="run-2", DBClusterIdentifier="aur"
        )
    assert code(exc) == ("DBClusterSnapshotAlreadyExistsFault", 400)
    with pytest.raises(ClientError) as exc:
        await rds.create_db_cluster_snapshot(
            DBClusterSnapshotIdentifier="x", DBClusterIdentifier="nope"
        )
    assert code(exc) == ("DBClusterNotFoundFault", 404)
    waiter = rds.get_waiter("db_cluster_snapshot_available")
    await waiter.wait(
        DBClusterSnapshotIdentifier="run-2", WaiterConfig={"Delay": 1, "MaxAttempts": 5}
    )
    arn = snap["DBClusterSnapshotArn"]
    await rds.add_tags_to_resource(ResourceName=arn, Tags=[{"Key": "run", "Value": "2"}])
    tags = (await rds.list_tags_for_resource(ResourceName=arn))["TagList"]
    assert tags == [{"Key": "app", "Value": "rdsrecorder"}, {"Key": "run", "Value": "2"}]
    listed = await rds.describe_db_cluster_snapshots(DBClusterIdentifier="aur")
    assert [s["Status"] for s in listed["DBClusterSnapshots"]] == ["available"]
    assert listed["DBClusterSnapshots"][0]["TagList"] == tags
    with pytest.raises(ClientError) as exc:
        await rds.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier="nope")
    assert code(exc) == ("DBClusterSnapshotNotFoundFault", 404)


async def test_tags_on_instances_and_unknown_resources(rds: Any) -> None:
    arn = f"arn:aws:rds:eu-west-1:123456789012:db:{INSTANCE}"
    await rds.add_tags_to_resource(ResourceName=arn, Tags=[{"Key": "team", "Value": "data"}])
    assert (await rds.list_tags_for_resource(ResourceName=arn))["TagList"] == [
        {"Key": "team", "Value": "data"}
    ]
    instance = (await rds.describe_db_instances(DBInstanceIdentifier=INSTANCE))["DBInstances"][0]
    assert instance["TagList"] == [{"Key": "team", "Value": "data"}]
    prefix = "arn:aws:rds:eu-west-1:123456789012"
    cases = {
        f"{prefix}:snapshot:nope": "DBSnapshotNotFound",
        f"{prefix}:cluster-snapshot:nope": "DBClusterSnapshotNotFoundFault",
        f"{prefix}:db:nope": "DBInstanceNotFound",
        "not-an-arn": "InvalidParameterValue",
    }
    for resource, expected in cases.items():
        with pytest.raises(ClientError) as exc:
            await rds.list_tags_for_resource(ResourceName=resource)
        assert code(exc)[0] == expected, resource
    with pytest.raises(ClientError) as exc:
        await rds.add_tags_to_resource(ResourceName=arn, Tags=[{"Key": "aws:x", "Value": "y"}])
    assert code(exc) == ("InvalidParameterValue", 400)
