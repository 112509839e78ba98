"""Files and instances that change under a running lab, awkward names, fleets of instances from
one lab.json, and the AWS CLI as a client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from botocore.exceptions import ClientError

from rdsrecorder_lab import LAB_REGION, Lab
from rdsrecorder_lab.generate import generate_fleet
from tests.lab_helpers import complete_url, rds_client, signed_headers

NAME = "error/postgresql.log.2024-03-04-19.csv"


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async with Lab(tmp_path, s3="none") as lab:
        yield lab


@pytest.fixture
async def rds(lab: Lab) -> AsyncIterator[Any]:
    async with rds_client(lab.rds_url) as client:
        yield client


async def listed(rds: Any, instance: str) -> dict[str, dict[str, Any]]:
    files = (await rds.describe_db_log_files(DBInstanceIdentifier=instance))["DescribeDBLogFiles"]
    return {f["LogFileName"]: f for f in files}


async def portion(rds: Any, instance: str, name: str, marker: str, lines: int) -> dict[str, Any]:
    result: dict[str, Any] = await rds.download_db_log_file_portion(
        DBInstanceIdentifier=instance, LogFileName=name, Marker=marker, NumberOfLines=lines
    )
    return result


async def post(lab: Lab, path: str, payload: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(lab.rds_url + path, json=payload) as response:
            return response.status, await response.json()


async def test_files_that_change_while_read(lab: Lab, rds: Any) -> None:
    lab.append_file("db-1", NAME, b"a\nb\nc\n")  # a new instance directory appears
    first = await portion(rds, "db-1", NAME, "0", 2)
    assert (first["LogFileData"], first["AdditionalDataPending"]) == ("a\nb\n", True)
    status, body = await post(
        lab,
        "/_lab/files",
        {"instance": "db-1", "name": NAME, "action": "append", "data": "d\n"},
    )
    assert (status, body["size"]) == (200, 8)
    rest = await portion(rds, "db-1", NAME, first["Marker"], 10)
    assert (rest["LogFileData"], rest["AdditionalDataPending"]) == ("c\nd\n", False)
    assert (await listed(rds, "db-1"))[NAME]["Size"] == 8
    # Shrunk under the reader: past the end there is nothing, and the listing says so.
    lab.truncate_file("db-1", NAME, 2)
    after = await portion(rds, "db-1", NAME, rest["Marker"], 10)
    assert (after.get("LogFileData", ""), after["AdditionalDataPending"]) == ("", False)
    assert (await listed(rds, "db-1"))[NAME]["Size"] == 2
    # Replaced: same name, other content; LastWritten as asked.
    status, body = await post(
        lab,
        "/_lab/files",
        {
            "instance": "db-1",
            "name": NAME,
            "action": "replace",
            "data_base64": "eHl6Cg==",
            "last_written_ms": 1_700_000_000_000,
        },
    )
    assert status == 200 and body["last_written_ms"] == 1_700_000_000_000
    assert (await listed(rds, "db-1"))[NAME] == {
        "LogFileName": NAME,
        "LastWritten": 1_700_000_000_000,
        "Size": 4,
    }
    assert (await portion(rds, "db-1", NAME, "0", 10))["LogFileData"] == "xyz\n"
    lab.delete_file("db-1", NAME)
    with pytest.raises(ClientError) as exc:
        await portion(rds, "db-1", NAME, rest["Marker"], 10)
    assert exc.value.response["Error"]["Code"] == "DBLogFileNotFoundFault"
    assert await listed(rds, "db-1") == {}
    for bad in (
        {"instance": "db-1", "name": NAME, "action": "delete"},  # already gone
        {"instance": "db-1", "name": NAME, "action": "explode"},
        {"instance": "db-1", "name": "../escape", "action": "append", "data": "x"},
        {"instance": "db-1", "name": NAME, "action": "truncate"},
        {"instance": "../..", "name": NAME, "action": "append"},
    ):
        status, body = await post(lab, "/_lab/files", bad)
        assert status in (400, 404) and body["error"], bad
    assert not (lab.root / "escape").exists()


async def test_awkward_names_and_no_path_traversal(lab: Lab, rds: Any) -> None:
    awkward = "error/postgresql log ü 100% ミナ.csv"
    status, _ = await post(
        lab,
        "/_lab/files",
        {"instance": "db-1", "name": awkward, "action": "append", "data": "ok\n"},
    )
    assert status == 200
    (lab.root / "secret.txt").write_text("not a log\n")
    assert list(await listed(rds, "db-1")) == [awkward]
    assert (await portion(rds, "db-1", awkward, "0", 10))["LogFileData"] == "ok\n"
    url = complete_url(lab.rds_url, "db-1", quote(awkward))
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=signed_headers(url)) as response:
            assert response.status == 200 and await response.read() == b"ok\n"
        for name in ("error/../../secret.txt", "../secret.txt", "error/%2E%2E/%2E%2E/secret.txt"):
            with pytest.raises(ClientError) as exc:
                await portion(rds, "db-1", name.replace("%2E", "."), "0", 10)
            assert exc.value.response["Error"]["Code"] == "DBLogFileNotFoundFault"
            url = complete_url(lab.rds_url, "db-1", name.replace("..", "%2E%2E"))
            async with http.get(url, headers=signed_headers(url)) as response:
                assert response.status in (403, 404)
                assert b"not a log" not in await response.read()


async def test_fleet_listing_paging_tags_and_retention(lab: Lab, rds: Any) -> None:
    fleet = generate_fleet(lab.root, 100, files=3, tags={"env": "lab"})
    assert len(fleet) == 100 and all(len(files) == 3 for files in fleet.values())
    config = json.loads((lab.root / "lab.json").read_text())
    config["instances"]["db-007"].update(engine="mysql", log_retention_period_min=10080)
    config["clusters"] = {
        "shop": {"members": ["shop-1", "shop-2"], "writer": "shop-2", "tags": {"team": "shop"}}
    }
    (lab.root / "lab.json").write_text(json.dumps(config))
    everyone = await rds.describe_db_instances()
    assert len(everyone["DBInstances"]) == 100 and everyone["Marker"]  # AWS's default page
    pages, marker = [], ""
    for _ in range(10):  # 102 instances in pages of 40: 3 pages; a Marker that never ends fails
        page = await rds.describe_db_instances(MaxRecords=40, Marker=marker)
        pages.append(page["DBInstances"])
        marker = page.get("Marker", "")
        if not marker:
            break
    assert [len(p) for p in pages] == [40, 40, 22]
    by_id = {i["DBInstanceIdentifier"]: i for p in pages for i in p}
    assert len(by_id) == 102
    db7 = by_id["db-007"]
    assert db7["Engine"] == "mysql"
    assert {"Key": "env", "Value": "lab"} in db7["TagList"]
    assert {"Key": "index", "Value": "7"} in db7["TagList"]
    assert by_id["shop-1"]["Engine"] == "aurora-postgresql"
    assert by_id["shop-1"]["DBClusterIdentifier"] == "shop"
    group = db7["DBParameterGroups"][0]["DBParameterGroupName"]
    params = (await rds.describe_db_parameters(DBParameterGroupName=group))["Parameters"]
    retention = {p["ParameterName"]: p for p in params}["rds.log_retention_period"]
    assert (retention["ParameterValue"], retention["Source"]) == ("10080", "user")
    group1 = by_id["db-001"]["DBParameterGroups"][0]["DBParameterGroupName"]
    params = (await rds.describe_db_parameters(DBParameterGroupName=group1))["Parameters"]
    assert {p["ParameterName"]: p["ParameterValue"] for p in params}[
        "rds.log_retention_period"
    ] == "4320"
    with pytest.raises(ClientError) as exc:
        await rds.describe_db_parameters(DBParameterGroupName="nope")
    assert exc.value.response["Error"]["Code"] == "DBParameterGroupNotFound"
    clusters = (await rds.describe_db_clusters())["DBClusters"]
    assert [c["DBClusterIdentifier"] for c in clusters] == ["shop"]
    assert clusters[0]["TagList"] == [{"Key": "team", "Value": "shop"}]
    members = {
        m["DBInstanceIdentifier"]: m["IsClusterWriter"] for m in clusters[0]["DBClusterMembers"]
    }
    assert members == {"shop-1": False, "shop-2": True}
    # The listing-cost benchmark's counter: DescribeDBLogFiles per instance.
    lab.reset_stats()
    for ident in ("db-000", "db-001", "db-001"):
        assert len(await listed(rds, ident)) == 6  # 3 csv files and their plain twins
    assert lab.stats()["calls_by_instance"] == {
        "db-000": {"DescribeDBLogFiles": 1},
        "db-001": {"DescribeDBLogFiles": 2},
    }


async def test_instances_appear_and_disappear(lab: Lab, rds: Any) -> None:
    async def ids() -> list[str]:
        return [
            i["DBInstanceIdentifier"] for i in (await rds.describe_db_instances())["DBInstances"]
        ]

    assert await ids() == []
    lab.add_instance("orders", tags={"team": "orders"}, log_retention_period_min=1440)
    status, body = await post(
        lab,
        "/_lab/instances",
        {"action": "add", "instance": "inv-1", "cluster": "inv", "engine": "aurora-postgresql"},
    )
    assert status == 200 and body["cluster"] == "inv"
    assert await ids() == ["inv-1", "orders"]
    orders = (await rds.describe_db_instances(DBInstanceIdentifier="orders"))["DBInstances"][0]
    assert orders["TagList"] == [{"Key": "team", "Value": "orders"}]
    cluster = (await rds.describe_db_clusters(DBClusterIdentifier="inv"))["DBClusters"][0]
    assert cluster["DBClusterMembers"][0]["DBInstanceIdentifier"] == "inv-1"
    assert cluster["DBClusterMembers"][0]["IsClusterWriter"] is True
    lab.append_file("orders", NAME, b"x\n")
    for bad in (
        {"action": "add", "instance": "orders"},  # exists
        {"action": "add", "instance": "9-bad"},
        {"action": "add", "instance": "x", "log_retention_period_min": 0},
        {"action": "remove", "instance": "nope"},
        {"action": "rename", "instance": "orders"},
        {"action": "add", "instance": "y", "colour": "red"},
    ):
        status, body = await post(lab, "/_lab/instances", bad)
        assert status in (400, 404) and body["error"], bad
    status, _ = await post(lab, "/_lab/instances", {"action": "remove", "instance": "inv-1"})
    assert status == 200
    lab.remove_instance("ORDERS")
    assert await ids() == []
    assert (await rds.describe_db_clusters())["DBClusters"] == []
    assert not (lab.root / "orders").exists()
    with pytest.raises(ClientError) as exc:
        await rds.describe_db_log_files(DBInstanceIdentifier="orders")
    assert exc.value.response["Error"]["Code"] == "DBInstanceNotFound"


def aws_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    aws = Path(sys.executable).with_name("aws")
    return subprocess.run(
        [str(aws), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(
    not Path(sys.executable).with_name("aws").exists(), reason="the AWS CLI is not installed"
)
async def test_aws_cli_against_the_lab(lab: Lab, tmp_path: Path) -> None:
    data = b"".join(b"%04d line of the log\n" % i for i in range(15_000))  # two CLI pages
    lab.append_file("cli-db", NAME, data)
    assert lab.env["AWS_DEFAULT_REGION"] == LAB_REGION != "us-east-1"
    empty = tmp_path / "empty-aws-config"
    empty.write_text("")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
        **lab.env,
    }
    endpoint = ["--endpoint-url", lab.rds_url]
    # In a thread: the lab answers on this test's event loop.
    listed_proc = await asyncio.to_thread(
        aws_cli,
        env,
        "rds",
        "describe-db-log-files",
        "--db-instance-identifier",
        "cli-db",
        *endpoint,
    )
    assert listed_proc.returncode == 0, listed_proc.stderr
    files = json.loads(listed_proc.stdout)["DescribeDBLogFiles"]
    assert files == [
        {"LogFileName": NAME, "LastWritten": files[0]["LastWritten"], "Size": len(data)}
    ]
    got = await asyncio.to_thread(
        aws_cli,
        env,
        "rds",
        "download-db-log-file-portion",
        "--db-instance-identifier",
        "cli-db",
        "--log-file-name",
        NAME,
        "--starting-token",
        "0",
        "--output",
        "text",
        *endpoint,
    )
    assert got.returncode == 0, got.stderr
    # The documented whole-file download: 10,000-line pages, one line feed added per page.
    assert got.stdout == data[: 10_000 * 21].decode() + "\n" + data[10_000 * 21 :].decode() + "\n"
