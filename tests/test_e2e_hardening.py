"""Issue 14 against the lab: every case that used to end in exit 0 with wrong bytes now lands
byte-exact or is reported. In-process runs (the real engine, the lab's RDS emulator, moto S3)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pendulum
import pytest

from rdsrecorder.clock import FakeClock
from rdsrecorder.commands import open_bucket, run_sync
from rdsrecorder.config import AwsSettings
from rdsrecorder.errors import OwnerError
from rdsrecorder.fleet import FleetManifests
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import META_SOURCE, FileStatus, meta_decode
from rdsrecorder.runtime import report_error
from rdsrecorder.verify import verify_run
from rdsrecorder_lab import LabThread
from tests.e2e import (
    Written,
    csv_block,
    multipart_uploads,
    objects,
    s3_client,
    sync_settings,
    write_hourly,
)

MB = 1000 * 1000
DB = "hard-db"
SIZES = [3 * MB, 2 * MB, 3 * MB, 100_000, 1000]


@pytest.fixture(scope="module")
def lab_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Written]]:
    root = tmp_path_factory.mktemp("hardlab")
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=len(SIZES) - 1)
    return root, write_hourly(root, DB, first, SIZES, now)


@pytest.fixture(scope="module")
def lab(lab_data: tuple[Path, list[Written]]) -> Iterator[LabThread]:
    with LabThread(lab_data[0], s3="moto") as lab:
        yield lab


@pytest.fixture
def env(lab: LabThread, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in lab.env.items():
        monkeypatch.setenv(k, v)
    lab.set_faults()
    lab.reset_stats()
    return dict(lab.env)


@pytest.fixture
def files(lab_data: tuple[Path, list[Written]]) -> Iterator[list[Written]]:
    """The lab's files; any a test changed are written back afterwards."""
    written = lab_data[1]
    saved = [(f.path, f.path.read_bytes(), f.path.stat().st_mtime) for f in written]
    yield written
    for path, data, mtime in saved:
        if path.read_bytes() != data:
            path.write_bytes(data)
            os.utime(path, (mtime, mtime))


def settings(env: dict[str, str], f: Written, run_id: str, **kw: object) -> object:
    start = pendulum.from_timestamp(f.timestamp_s, tz="UTC")
    return sync_settings(
        db=DB,
        bucket=env["AWS_S3_BUCKET_NAME"],
        start=start,
        finish=start.add(minutes=59),
        run_id=run_id,
        max_api_rps=500.0,
        **kw,
    )


def key(run_id: str, f: Written, suffix: str = "") -> str:
    return f"{run_id}/rds_log_{run_id}_{f.timestamp_s}{suffix}"


def landed(env: dict[str, str], run_id: str) -> dict[str, bytes]:
    got = objects(s3_client(env), env["AWS_S3_BUCKET_NAME"], f"{run_id}/")
    got.pop(f"{run_id}/manifest.json", None)
    return got


def manifest(env: dict[str, str], run_id: str) -> dict[str, object]:
    client = s3_client(env)
    body = client.get_object(Bucket=env["AWS_S3_BUCKET_NAME"], Key=f"{run_id}/manifest.json")
    return dict(json.loads(body["Body"].read()))


async def test_false_end_of_data_mid_file_is_gone_past(
    env: dict[str, str], lab: LabThread, files: list[Written]
) -> None:
    lab.set_faults(early_eof_after_bytes=1_200_000)  # every file of more than 1.2 MB
    f = files[0]
    report = await run_sync(settings(env, f, "h-eof", download_method="portion"))  # type: ignore[arg-type]
    assert report.exit_code == 0, report.totals
    assert landed(env, "h-eof") == {key("h-eof", f): f.path.read_bytes()}
    assert lab.stats()["faults"].get("early_eof", 0) >= 1


async def test_short_whole_file_body_is_retried_then_read_with_portions(
    env: dict[str, str], lab: LabThread, files: list[Written]
) -> None:
    f = files[0]
    lab.set_faults(short_body_files=[f.name], short_body_fraction=0.4)
    report = await run_sync(settings(env, f, "h-short"))  # type: ignore[arg-type]
    assert report.exit_code == 0, report.totals
    assert landed(env, "h-short") == {key("h-short", f): f.path.read_bytes()}
    (entry,) = manifest(env, "h-short")["files"].values()  # type: ignore[attr-defined]
    assert entry["method"] == "portion" and entry["size"] == entry["source_size"] == f.size


async def test_short_body_with_complete_only_is_reported_not_copied(
    env: dict[str, str], lab: LabThread, files: list[Written]
) -> None:
    f = files[0]
    lab.set_faults(short_body_files=[f.name], short_body_fraction=0.4)
    report = await run_sync(settings(env, f, "h-short2", download_method="complete"))  # type: ignore[arg-type]
    assert report.exit_code == 4
    assert landed(env, "h-short2") == {}
    (entry,) = manifest(env, "h-short2")["files"].values()  # type: ignore[attr-defined]
    assert entry["status"] == "failed" and "ended after" in entry["error"]


async def test_overlapping_pages_do_not_duplicate_bytes(
    env: dict[str, str], lab: LabThread, files: list[Written]
) -> None:
    lab.set_faults(overlap_bytes=700)
    f = files[1]
    report = await run_sync(settings(env, f, "h-overlap", download_method="portion"))  # type: ignore[arg-type]
    assert report.exit_code == 0, report.totals
    assert landed(env, "h-overlap") == {key("h-overlap", f): f.path.read_bytes()}


class ChangeOnce(Hooks):
    """Changes the file in the lab once its first bytes have arrived (mid-read)."""

    def __init__(self, lab: LabThread, f: Written, action: str, data: bytes = b"") -> None:
        self.lab, self.f, self.action, self.data = lab, f, action, data
        self.done = False

    def bytes_downloaded(self, instance: str, count: int) -> None:
        if self.done:
            return
        self.done = True
        if self.action == "truncate":
            self.lab.truncate_file(DB, self.f.name, self.f.size // 3)
        else:
            self.lab.replace_file(DB, self.f.name, self.data)


@pytest.mark.parametrize("method", ["portion", "complete"])
@pytest.mark.parametrize("action", ["truncate", "replace"])
async def test_file_changed_while_read_is_copied_again_as_it_is_now(
    env: dict[str, str], lab: LabThread, files: list[Written], method: str, action: str
) -> None:
    f = files[2]
    old = f.path.read_bytes()
    new = csv_block(pendulum.from_timestamp(f.timestamp_s, tz="UTC"), 3_500_000, seed=99)
    run_id = f"h-chg-{method}-{action}"
    hooks = ChangeOnce(lab, f, action, new)
    report = await run_sync(settings(env, f, run_id, download_method=method), hooks=hooks)  # type: ignore[arg-type]
    assert hooks.done
    now_there = f.path.read_bytes()
    assert now_there != old
    got = landed(env, run_id)
    # Never a mix of old and new bytes: the file as it was (a whole-file stream that had read
    # it all already) or as RDS has it now, in full.
    assert set(got) == {key(run_id, f)}, report.totals
    assert got[key(run_id, f)] in (old, now_there)
    if method == "portion":
        assert got[key(run_id, f)] == now_there
    (entry,) = manifest(env, run_id)["files"].values()  # type: ignore[attr-defined]
    assert entry["status"] == "copied" and entry["size"] == entry["source_size"]
    assert entry["sha256"] == hashlib.sha256(got[key(run_id, f)]).hexdigest()
    assert report.exit_code == 0


async def test_a_recreated_file_never_overwrites_the_archived_copy(
    env: dict[str, str], lab: LabThread, files: list[Written]
) -> None:
    f = files[3]
    first = await run_sync(settings(env, f, "h-conflict"))  # type: ignore[arg-type]
    assert first.exit_code == 0
    original = f.path.read_bytes()
    lab.replace_file(DB, f.name, b"a recreated instance's file of the same name\n")
    second = await run_sync(settings(env, f, "h-conflict"))  # type: ignore[arg-type]
    assert second.exit_code == 0, second.totals
    assert landed(env, "h-conflict") == {
        key("h-conflict", f): original,
        key("h-conflict", f, "_v2"): b"a recreated instance's file of the same name\n",
    }
    assert set(manifest(env, "h-conflict")["files"]) == {  # type: ignore[arg-type]
        key("h-conflict", f),
        key("h-conflict", f, "_v2"),
    }


async def test_restart_with_a_later_relative_start_leaves_no_gap(
    env: dict[str, str], files: list[Written]
) -> None:
    assert (await run_sync(settings(env, files[2], "h-restart"))).exit_code == 0  # type: ignore[arg-type]
    # The restart evaluates "now-1h" to a later start: the run goes on from its manifest.
    later = settings(env, files[3], "h-restart")
    report = await run_sync(later)  # type: ignore[arg-type]
    assert report.exit_code == 0
    assert set(landed(env, "h-restart")) == {key("h-restart", files[2]), key("h-restart", files[3])}
    assert report.totals.skipped == 1


async def test_a_run_id_owned_by_another_db_is_refused_before_writing(
    env: dict[str, str], lab: LabThread, files: list[Written]
) -> None:
    f = files[3]
    assert (await run_sync(settings(env, f, "h-owner"))).exit_code == 0  # type: ignore[arg-type]
    before = landed(env, "h-owner")
    lab.add_instance("hard-db2")
    lab.append_file("hard-db2", f.name, b"db2 line\n")
    other = sync_settings(
        db="hard-db2",
        bucket=env["AWS_S3_BUCKET_NAME"],
        start=pendulum.from_timestamp(f.timestamp_s, tz="UTC"),
        finish=pendulum.from_timestamp(f.timestamp_s + 3599, tz="UTC"),
        run_id="h-owner",
    )
    with pytest.raises(OwnerError, match="hard-db"):
        await run_sync(other)
    assert landed(env, "h-owner") == before
    assert manifest(env, "h-owner")["db_identifier"] == DB


async def test_a_failure_of_the_first_writes_ends_the_run_before_any_log_write(
    env: dict[str, str], lab: LabThread, files: list[Written], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's first writes (manifest, owner checks, stale uploads) come before any log file
    is copied: when they fail, the run ends with their error and no log object, and its
    manifest is not rewritten."""

    async def taken_meanwhile(self: FleetManifests) -> None:
        raise OwnerError("run h-gated belongs to DB other-db now")

    monkeypatch.setattr(FleetManifests, "check_owners", taken_meanwhile)
    lab.reset_stats()
    with pytest.raises(OwnerError, match="other-db"):
        await run_sync(settings(env, files[3], "h-gated"))  # type: ignore[arg-type]
    assert lab.stats()["calls"].get("DownloadCompleteLogFile", 0) == 0
    assert landed(env, "h-gated") == {}
    assert manifest(env, "h-gated")["files"] == {}  # the first write only: nothing after it


async def test_stale_multipart_uploads_of_the_run_are_aborted(
    env: dict[str, str], files: list[Written]
) -> None:
    client = s3_client(env)
    bucket = env["AWS_S3_BUCKET_NAME"]
    client.create_multipart_upload(Bucket=bucket, Key="h-stale/rds_log_h-stale_1")
    client.create_multipart_upload(Bucket=bucket, Key="other-run/rds_log_other-run_1")
    report = await run_sync(settings(env, files[3], "h-stale"))  # type: ignore[arg-type]
    assert report.exit_code == 0
    assert [u["Key"] for u in multipart_uploads(client, bucket)] == [
        "other-run/rds_log_other-run_1"
    ]
    client.abort_multipart_upload(
        Bucket=bucket,
        Key="other-run/rds_log_other-run_1",
        UploadId=multipart_uploads(client, bucket)[0]["UploadId"],
    )


async def test_verify_fails_on_a_short_copied_entry_in_s3(
    env: dict[str, str], files: list[Written]
) -> None:
    f = files[3]
    assert (await run_sync(settings(env, f, "h-verify"))).exit_code == 0  # type: ignore[arg-type]
    client = s3_client(env)
    bucket = env["AWS_S3_BUCKET_NAME"]
    m = manifest(env, "h-verify")
    (entry,) = m["files"].values()  # type: ignore[attr-defined]
    half = f.path.read_bytes()[: f.size // 2]
    entry["size"], entry["sha256"] = len(half), hashlib.sha256(half).hexdigest()
    entry["stored_size"], entry["checksum"] = len(half), ""
    client.put_object(Bucket=bucket, Key=entry["key"], Body=half)
    client.put_object(Bucket=bucket, Key="h-verify/manifest.json", Body=json.dumps(m).encode())
    async with open_bucket(bucket, AwsSettings(region="us-east-1"), Hooks()) as b:
        report = await verify_run(b, "h-verify")
    assert not report.ok
    assert [r.status for r in report.rows] == ["short"]
    assert FileStatus.COPIED == entry["status"]


async def test_a_non_ascii_file_name_lands_and_verifies(
    env: dict[str, str], lab: LabThread, lab_data: tuple[Path, list[Written]]
) -> None:
    root, files = lab_data
    ts = pendulum.from_timestamp(files[0].timestamp_s, tz="UTC").subtract(hours=2)
    name = f"error/zoë ミナ/postgresql.log.{ts.format('YYYY-MM-DD-HH')}.csv"
    data = csv_block(ts, 50_000, seed=5)
    path = root / DB / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = ts.add(minutes=59).timestamp()
    os.utime(path, (stamp, stamp))
    for method in ("complete", "portion"):
        run_id = f"h-name-{method}"
        s = sync_settings(
            db=DB,
            bucket=env["AWS_S3_BUCKET_NAME"],
            start=ts,
            finish=ts.add(minutes=59),
            run_id=run_id,
            download_method=method,
        )
        report = await run_sync(s)
        assert report.exit_code == 0, report.totals
        got = landed(env, run_id)
        assert got == {f"{run_id}/rds_log_{run_id}_{int(ts.timestamp())}": data}
        head = s3_client(env).head_object(Bucket=env["AWS_S3_BUCKET_NAME"], Key=next(iter(got)))
        assert meta_decode(head["Metadata"][META_SOURCE]) == name
        async with open_bucket(env["AWS_S3_BUCKET_NAME"], AwsSettings(), Hooks()) as b:
            assert (await verify_run(b, run_id)).ok


@pytest.mark.parametrize("follow", [False, True], ids=["backfill", "follow"])
async def test_persistent_listing_errors_end_in_one_line(
    lab_data: tuple[Path, list[Written]],
    follow: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = lab_data[1]
    # FakeClock: the follower's rounds and the retries' backoff pass at once. The lab answers on
    # the same clock: its Date headers are what the follower takes for AWS's time.
    clock = FakeClock(pendulum.now("UTC").timestamp())
    with LabThread(lab_data[0], s3="moto", now=clock.now) as lab:
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)
        lab.set_faults(list_error="InternalFailure")
        start = pendulum.from_timestamp(files[0].timestamp_s, tz="UTC")
        s = sync_settings(
            db=DB,
            bucket=lab.env["AWS_S3_BUCKET_NAME"],
            start=start,
            finish=pendulum.now("UTC").add(hours=1) if follow else start.add(hours=1),
            run_id=f"h-list500-{follow}",
            max_attempts=2,
            poll_interval_s=60.0,
        )
        with pytest.raises(BaseException) as raised:
            await run_sync(s, clock=clock)
    capsys.readouterr()
    assert report_error(raised.value, debug=False) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: rds DescribeDBLogFiles failed: InternalFailure")
