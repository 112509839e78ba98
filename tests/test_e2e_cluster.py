"""An Aurora cluster id: every member's logs, each under <RUNID>/<instance-id>/."""

from __future__ import annotations

import hashlib
import json
import logging

import pendulum
import pytest

from rdsrecorder.commands import SyncReport, run_sync
from rdsrecorder_lab import LabThread
from tests.e2e import objects, s3_client, sync_settings, write_hourly


async def synced(
    lab: LabThread,
    monkeypatch: pytest.MonkeyPatch,
    db: str,
    first: pendulum.DateTime,
    hours: int,
    run_id: str,
) -> SyncReport:
    """``sync`` of ``hours`` from ``first`` of one DB, against the lab."""
    for k, v in lab.env.items():
        monkeypatch.setenv(k, v)
    return await run_sync(
        sync_settings(
            db=db, bucket=lab.bucket, start=first, finish=first.add(hours=hours), run_id=run_id
        )
    )


async def test_cluster_members_each_get_their_folder(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=3)
    writer = write_hourly(tmp_path, "aur-1", first, [20_000, 30_000, 40_000, 500], now)
    reader = write_hourly(tmp_path, "aur-2", first, [5_000, 6_000, 7_000, 500], now)
    (tmp_path / "lab.json").write_text(
        json.dumps({"clusters": {"aur": {"members": ["aur-1", "aur-2"], "writer": "aur-1"}}})
    )
    with LabThread(tmp_path, s3="moto") as lab:
        report = await synced(lab, monkeypatch, "aur", first, 3, "clu")
        assert report.exit_code == 0
        assert report.instances == ("aur-1", "aur-2")
        got = objects(s3_client(lab.env), lab.bucket, "clu/")
    for instance, files in (("aur-1", writer), ("aur-2", reader)):
        for f in files[:3]:
            key = f"clu/{instance}/rds_log_clu_{f.timestamp_s}"
            assert hashlib.sha256(got[key]).hexdigest() == f.sha256
    assert len(got) == 6 + 1  # + manifest
    # A member on its own keeps the seed's flat layout.
    with LabThread(tmp_path, s3="moto") as lab:
        report = await synced(lab, monkeypatch, "aur-2", first, 1, "one")
        assert report.exit_code == 0
        assert set(objects(s3_client(lab.env), lab.bucket, "one/")) == {
            f"one/rds_log_one_{reader[0].timestamp_s}",
            "one/manifest.json",
        }


async def test_a_cluster_name_is_resolved_without_a_word(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """A cluster's name is not an instance's: RDS's not-found answer to it is how the name is
    resolved, not a warning, and only the members' logs are listed."""
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=2)
    write_hourly(tmp_path, "c-1", first, [10_000, 500], now)
    (tmp_path / "lab.json").write_text(json.dumps({"clusters": {"cl": {"members": ["c-1"]}}}))
    with LabThread(tmp_path, s3="moto") as lab:
        report = await synced(lab, monkeypatch, "cl", first, 1, "d")
        stats = lab.stats()
    assert report.exit_code == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "DescribeDBLogFiles" not in stats["calls_by_instance"]["cl"]
    assert stats["calls_by_instance"]["c-1"]["DescribeDBLogFiles"] >= 1
