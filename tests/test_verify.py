"""verify and ls: a run written by the real sink and manifest store into real S3 servers, then
damaged from the outside; hole detection over spans and recorded gaps."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pytest

from rdsrecorder.aws import Aws
from rdsrecorder.clock import FakeClock
from rdsrecorder.compression import same_checksum
from rdsrecorder.config import AwsSettings
from rdsrecorder.errors import RecordError, VerifyError
from rdsrecorder.hooks import Hooks
from rdsrecorder.manifest import FileEntry, Manifest, ManifestStore, manifest_key
from rdsrecorder.models import META_SHA256, META_SOURCE, UploadResult
from rdsrecorder.verify import list_runs, verify_run
from tests.fakes import MemoryStore
from tests.s3_servers import MIB, BucketSink, S3Gateway, S3Server, blob, chunked

T0 = 1_700_000_000.0


def hour(h: int) -> str:
    """ISO time of hour ``h`` counted from 2023-11-14T00:00Z (h may pass 23)."""
    return f"2023-11-{14 + h // 24}T{h % 24:02d}:00:00Z"


@dataclass
class LogSpec:
    start_h: int
    end_h: int | None
    size: int = 2000
    instance: str = "db-1"
    status: str = "copied"


class RunStorage(Protocol):
    """What ``write_run`` needs: ``S3Sink`` or the in-memory ``MemoryStore``."""

    async def upload(
        self, key: str, chunks: AsyncIterator[bytes], *, metadata: dict[str, str], instance: str
    ) -> UploadResult: ...

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str: ...

    async def get_bytes(self, key: str) -> bytes | None: ...

    async def get_document(self, key: str) -> tuple[bytes, str] | None: ...


def base_manifest(run_id: str, start_h: int = 20, finish_h: int | None = 23) -> Manifest:
    return Manifest(
        run_id=run_id,
        db_identifier="db-1",
        bucket="logs",
        window_start=hour(start_h),
        window_finish=hour(finish_h) if finish_h is not None else None,
        mode="backfill",
        version="t",
        started_at=f"2023-11-14T22:{len(run_id):02d}:00Z",
        updated_at="",
        finished_at=None,
        instances=["db-1"],
    )


class CountingHooks(Hooks):
    def __init__(self) -> None:
        self.downloaded = 0

    def bytes_downloaded(self, instance: str, count: int) -> None:
        self.downloaded += count


async def write_run(
    sink: RunStorage,
    run_id: str,
    logs: Sequence[LogSpec],
    *,
    finished: bool = True,
    gaps: Sequence[tuple[str, int, int, str]] = (),
    start_h: int = 20,
    finish_h: int | None = 23,
    instances: Sequence[str] = ("db-1",),
) -> dict[str, bytes]:
    """A run as the recorder writes it: objects through ``upload``, entries in the manifest."""
    store = ManifestStore(sink, run_id, FakeClock(T0))
    m = base_manifest(run_id, start_h, finish_h)
    m.instances = list(instances)
    store.start(m)
    written: dict[str, bytes] = {}
    for i, spec in enumerate(logs):
        source = f"error/postgresql.log.{hour(spec.start_h)[:13]}.csv"
        key = f"{run_id}/rds_log_{run_id}_{i}"
        data = blob(spec.size, seed=i)
        size, sha_hex = 0, ""
        if spec.status != "failed":
            result = await sink.upload(
                key, chunked(data), metadata={META_SOURCE: source}, instance=spec.instance
            )
            size, sha_hex = result.size, result.sha256
            written[key] = data
        store.record(
            FileEntry(
                key=key,
                source=source,
                instance=spec.instance,
                span_start=hour(spec.start_h),
                span_end=hour(spec.end_h) if spec.end_h is not None else None,
                size=size,
                sha256=sha_hex,
                method="portion",
                status=spec.status,
                source_size=spec.size,
                error="marker stuck" if spec.status == "failed" else "",
                complete=spec.status != "partial",
            )
        )
    for instance, a, b, reason in gaps:
        store.add_gap(instance, hour(a), hour(b), reason)
    await store.close(finished=finished)
    return written


CHAIN = [LogSpec(20, 21), LogSpec(21, 22, size=6 * MIB), LogSpec(22, 23)]


async def test_a_good_run_verifies(s3: S3Server) -> None:
    bucket = s3.new_bucket("verify-good")
    hooks = CountingHooks()
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = BucketSink(aws, bucket, Hooks(), part_size_bytes=5 * MIB)
        written = await write_run(sink, "good", CHAIN)
        report = await verify_run(sink, "good", hooks)
    assert report.ok, (report.rows, report.holes)
    assert [(r.key, r.status) for r in report.rows] == [(k, "ok") for k in sorted(written)]
    assert report.holes == [] and report.finished
    total = sum(map(len, written.values()))
    assert report.bytes_read == total == hooks.downloaded
    assert report.counts() == {"ok": 3}


async def test_damage_is_found(moto: S3Server) -> None:
    bucket = moto.new_bucket("verify-bad")
    c = moto.client()
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = BucketSink(aws, bucket, Hooks(), part_size_bytes=5 * MIB)
        written = await write_run(sink, "bad", [*CHAIN, LogSpec(19, 20)], start_h=19)
        keys = sorted(written)
        # same size, other bytes, the original metadata kept: only re-reading can tell
        meta = c.head_object(Bucket=bucket, Key=keys[0])["Metadata"]
        c.put_object(Bucket=bucket, Key=keys[0], Body=blob(2000, seed=99), Metadata=meta)
        c.put_object(Bucket=bucket, Key=keys[1], Body=written[keys[1]][:-1])  # one byte short
        c.delete_object(Bucket=bucket, Key=keys[2])
        c.put_object(Bucket=bucket, Key="bad/stray", Body=b"?")
        report = await verify_run(sink, "bad")
    assert not report.ok
    statuses = {r.key: r.status for r in report.rows}
    assert statuses == {
        keys[0]: "corrupt",
        keys[1]: "size",
        keys[2]: "missing",
        keys[3]: "ok",
        "bad/stray": "unexpected",
    }
    size_row = next(r for r in report.rows if r.status == "size")
    assert size_row.detail == f"{6 * MIB - 1} bytes in S3, the manifest says {6 * MIB}"
    # the manifest still shows the whole window as copied: damage is not a hole
    assert report.holes == []


async def test_metadata_that_disagrees_is_corrupt(moto: S3Server) -> None:
    bucket = moto.new_bucket("verify-meta")
    c = moto.client()
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = BucketSink(aws, bucket, Hooks(), part_size_bytes=5 * MIB)
        written = await write_run(sink, "meta", CHAIN[:2])
        first, second = sorted(written)
        c.copy_object(
            Bucket=bucket,
            Key=first,
            CopySource={"Bucket": bucket, "Key": first},
            MetadataDirective="REPLACE",
            Metadata={META_SHA256: "0" * 64},
        )
        c.copy_object(
            Bucket=bucket,
            Key=second,
            CopySource={"Bucket": bucket, "Key": second},
            MetadataDirective="REPLACE",
            Metadata={META_SOURCE: "error/postgresql.log.2023-11-13-00.csv"},
        )
        report = await verify_run(sink, "meta")
    rows = {r.key: r for r in report.rows}
    assert (rows[first].status, rows[second].status) == ("corrupt", "corrupt")
    assert "sha256 metadata" in rows[first].detail
    assert "2023-11-13-00" in rows[second].detail


async def test_an_unreadable_object_is_reported_not_raised(
    gateway: S3Gateway, moto_server: S3Server
) -> None:
    bucket = moto_server.new_bucket("verify-denied")
    async with Aws(AwsSettings(region="us-east-1", max_attempts=1), Hooks()) as aws:
        sink = BucketSink(aws, bucket, Hooks(), part_size_bytes=5 * MIB)
        await write_run(sink, "denied", CHAIN[:1], finish_h=21)
        gateway.fail("GetObject", status=403, code="AccessDenied", times=1)
        gateway.faults["GetObject"].after = 1  # the manifest is read first
        report = await verify_run(sink, "denied")
    assert [r.status for r in report.rows] == ["unreadable"]
    assert "AccessDenied" in report.rows[0].detail and not report.ok


async def test_runs_and_their_status_are_listed(
    moto: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = moto.new_bucket("ls")
    c = moto.client()
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = BucketSink(aws, bucket, Hooks(), part_size_bytes=5 * MIB)
        await write_run(sink, "r-complete", CHAIN)
        await write_run(sink, "r-failed", [LogSpec(20, 21), LogSpec(21, 22, status="failed")])
        await write_run(sink, "r-stopped", CHAIN[:1], finished=False)
        c.put_object(Bucket=bucket, Key="not-a-run/file", Body=b"x")
        c.put_object(Bucket=bucket, Key="broken/manifest.json", Body=b"{")
        with caplog.at_level(logging.WARNING, logger="rdsrecorder.verify"):
            runs = await list_runs(sink)
    assert "skipping broken/manifest.json is not a valid manifest: not JSON" in caplog.text
    assert [(r.run_id, r.status, r.files, r.failed) for r in runs] == [
        ("r-failed", "incomplete", 1, 1),
        ("r-stopped", "unfinished", 1, 0),
        ("r-complete", "complete", 3, 0),
    ]  # by started_at
    complete = runs[-1]
    assert complete.bytes == 2000 + 6 * MIB + 2000
    assert (complete.window_start, complete.window_finish) == (hour(20), hour(23))
    assert complete.db_identifier == "db-1" and complete.finished_at and complete.mode


async def test_no_manifest_or_a_broken_one_is_a_verify_error(moto: S3Server) -> None:
    bucket = moto.new_bucket("verify-none")
    moto.client().put_object(Bucket=bucket, Key="junk/manifest.json", Body=b"[1, 2]")
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = BucketSink(aws, bucket, Hooks(), part_size_bytes=5 * MIB)
        with pytest.raises(VerifyError, match=r"no manifest for run 'never-ran'"):
            await verify_run(sink, "never-ran")
        with pytest.raises(RecordError, match=r"junk/manifest.json is not a valid manifest"):
            await verify_run(sink, "junk")


# -- holes: the same checks on an in-memory store, many shapes of runs ----------------------------
@dataclass
class HoleCase:
    logs: list[LogSpec]
    holes: list[str]
    gaps: list[tuple[str, int, int, str]] = field(default_factory=list)
    finished: bool = True
    start_h: int = 20
    finish_h: int | None = 23
    instances: tuple[str, ...] = ("db-1",)


def nothing(instance: str, a: int, b: int) -> str:
    return f"{instance}: nothing covers {hour(a)} .. {hour(b)}"


HOLE_CASES = {
    "chained": HoleCase([LogSpec(20, 21), LogSpec(21, 22), LogSpec(22, 23)], []),
    "middle hour missing": HoleCase([LogSpec(20, 21), LogSpec(22, 23)], [nothing("db-1", 21, 22)]),
    "middle hour recorded as idle": HoleCase(
        [LogSpec(20, 21), LogSpec(22, 23)], [], gaps=[("db-1", 21, 22, "no-log-file")]
    ),
    "gap recorded for another instance": HoleCase(
        [LogSpec(20, 21), LogSpec(22, 23)],
        [nothing("db-1", 21, 22)],
        gaps=[("db-2", 21, 22, "no-log-file")],
    ),
    "starts late": HoleCase([LogSpec(21, 22), LogSpec(22, 23)], [nothing("db-1", 20, 21)]),
    "starts late, before retention": HoleCase(
        [LogSpec(21, 22), LogSpec(22, 23)], [], gaps=[("db-1", 20, 21, "before-retention")]
    ),
    "first file began before the window": HoleCase([LogSpec(19, 21), LogSpec(21, 23)], []),
    "tail missing": HoleCase([LogSpec(20, 21), LogSpec(21, 22)], [nothing("db-1", 22, 23)]),
    "tail missing, run not finished": HoleCase(
        [LogSpec(20, 21), LogSpec(21, 22)],
        [f"db-1: not copied yet (the run has not finished): {hour(22)} .. {hour(23)}"],
        finished=False,
    ),
    "follow forever": HoleCase(
        [LogSpec(20, 21), LogSpec(21, 22)], [], finished=False, finish_h=None
    ),
    "the current file covers the tail": HoleCase([LogSpec(20, 21), LogSpec(21, None)], []),
    "a failed file leaves a hole": HoleCase(
        [LogSpec(20, 21), LogSpec(21, 22, status="failed"), LogSpec(22, 23)],
        [nothing("db-1", 21, 22)],
    ),
    "overlapping twins": HoleCase(
        [LogSpec(20, 22), LogSpec(20, 21), LogSpec(21, 23), LogSpec(22, 23)], []
    ),
    "window across midnight": HoleCase(
        [LogSpec(22, 23), LogSpec(23, 24), LogSpec(25, 26)],
        [nothing("db-1", 24, 25)],
        start_h=22,
        finish_h=26,
    ),
    "cluster: one member short, one never seen": HoleCase(
        [LogSpec(20, 23), LogSpec(20, 22, instance="db-2"), LogSpec(20, 23, instance="db-3")],
        [nothing("db-2", 22, 23), nothing("db-4", 20, 23)],
        instances=("db-1", "db-2", "db-3", "db-4"),
    ),
}


@pytest.mark.parametrize("name", list(HOLE_CASES))
async def test_holes(name: str) -> None:
    case = HOLE_CASES[name]
    store = MemoryStore()
    await write_run(
        store,
        "h",
        case.logs,
        finished=case.finished,
        gaps=case.gaps,
        start_h=case.start_h,
        finish_h=case.finish_h,
        instances=case.instances,
    )
    report = await verify_run(store, "h")
    assert report.holes == case.holes
    failed = any(spec.status == "failed" for spec in case.logs)
    assert report.ok == (not case.holes and not failed)
    assert {r.status for r in report.rows} <= {"ok", "failed-in-run"}


async def test_partial_copies_pass_and_truncated_lines_do_not() -> None:
    store = MemoryStore()
    await write_run(store, "p", [LogSpec(20, 22), LogSpec(22, None, status="partial")])
    report = await verify_run(store, "p")
    assert [r.status for r in report.rows] == ["ok", "partial"]
    assert report.rows[1].detail == "copied while still being written"
    assert report.ok
    saved = Manifest.from_json(store.objects[manifest_key("p")][0])
    next(iter(saved.files.values())).truncated_lines = 3
    store.objects[manifest_key("p")] = (saved.to_json().encode(), {})
    report = await verify_run(store, "p")
    assert report.rows[0].detail == "3 truncated line(s)" and not report.ok


def test_checksums_compare_with_or_without_the_parts_suffix() -> None:
    composite = "SHA256:n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=-3"
    assert same_checksum(composite, composite)
    assert same_checksum(composite, composite.rpartition("-")[0])  # moto's HEAD drops it
    assert not same_checksum(composite, "SHA256:AAAAgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=-3")
    assert not same_checksum(composite, "CRC32:n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=")
    assert same_checksum("CRC32:AAAAAA==", "CRC32:AAAAAA==")  # manifests of before 2026-12-04
