"""``rdsrecorder get`` and the write-once archive end to end: two runs of the real engine against
the lab (one raw with multipart objects, one ``--compress gzip``) into a versioned bucket, then
the files of a window back, byte-exact, from both runs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pendulum
import pytest

from rdsrecorder.aws import Aws
from rdsrecorder.commands import run_get, run_sync, run_verify
from rdsrecorder.compression import Compression
from rdsrecorder.config import AwsSettings, ConfigError, LogFormat, VerifySettings, build_get
from rdsrecorder.errors import EXIT_VERIFY
from rdsrecorder.get import GetError, get_window, safe_relative
from rdsrecorder.hooks import Hooks
from rdsrecorder.s3.bucket import Bucket
from rdsrecorder_lab import LabThread
from rdsrecorder_lab.s3local import create_bucket
from tests.e2e import Written, s3_client, sync_settings, write_hourly

KB, MB = 1000, 1000 * 1000
SIZES = [3 * KB, 40 * KB, 12 * MB, 200 * KB, 1 * MB, 5 * KB]


@pytest.fixture(scope="module")
def lab_data(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[Written], pendulum.DateTime]:
    root = tmp_path_factory.mktemp("lab")
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=len(SIZES) - 1)
    return root, write_hourly(root, "get-db", first, SIZES, now), first


@pytest.fixture(scope="module")
def lab(lab_data: tuple[Path, list[Written], pendulum.DateTime]) -> Iterator[LabThread]:
    with LabThread(lab_data[0], s3="moto") as lab:
        yield lab


@pytest.fixture
def env(lab: LabThread, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in lab.env.items():
        monkeypatch.setenv(k, v)
    lab.set_faults()
    return dict(lab.env)


def get_settings(bucket: str, start: pendulum.DateTime, finish: pendulum.DateTime, out: Path):  # type: ignore[no-untyped-def]
    return build_get(
        now=pendulum.now("UTC"),
        bucket=bucket,
        db_identifier="get-db",
        start=start.to_iso8601_string(),
        finish=finish.to_iso8601_string(),
        output_dir=str(out),
        stdout=False,
        concurrency=3,
        region="us-east-1",
        expected_bucket_owner=None,
        log_format=LogFormat.TEXT,
        debug=False,
    )


async def test_two_runs_written_once_and_a_window_back_byte_exact(
    env: dict[str, str],
    lab_data: tuple[Path, list[Written], pendulum.DateTime],
    tmp_path: Path,
) -> None:
    _, files, first = lab_data
    client = s3_client(env)
    bucket = f"get-{pendulum.now('UTC').format('HHmmssSSS')}"
    create_bucket(
        env["AWS_ENDPOINT_URL_S3"],
        bucket,
        env["AWS_ACCESS_KEY_ID"],
        env["AWS_SECRET_ACCESS_KEY"],
        env.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    raw = sync_settings(
        db="get-db",
        bucket=bucket,
        start=first,
        finish=first.add(hours=3),
        run_id="run-raw",
        # the defaults (5 MiB parts, PutObject up to 5 MiB): the 12 MB file goes multipart
    )
    packed = sync_settings(
        db="get-db",
        bucket=bucket,
        start=first.add(hours=2),
        finish=first.add(hours=5),  # the start of the current hour
        run_id="run-gz",
        compress=Compression.GZIP,
    )
    assert (await run_sync(raw)).exit_code == 0
    assert (await run_sync(packed)).exit_code == 0
    # A re-run resumes: every object is proven by its metadata or the manifest, none rewritten.
    again = await run_sync(raw)
    assert (again.totals.skipped, again.totals.copied) == (3, 0)

    versions = client.list_object_versions(Bucket=bucket)["Versions"]
    logs = [v["Key"] for v in versions if not v["Key"].endswith("manifest.json")]
    assert len(logs) == len(set(logs)) == 3 + 3  # one version per key
    gz_keys = [k for k in logs if k.startswith("run-gz/")]
    assert all(k.endswith(".gz") for k in gz_keys)
    manifest = json.loads(
        client.get_object(Bucket=bucket, Key="run-gz/manifest.json")["Body"].read()
    )
    by_source = {f.name: f for f in files}
    raw_bytes = stored_bytes = 0
    for key, entry in manifest["files"].items():
        obj = client.get_object(Bucket=bucket, Key=key)
        stored = obj["Body"].read()
        assert obj["ContentType"] == "application/gzip" and "ContentEncoding" not in obj
        original = gzip.decompress(stored)
        assert hashlib.sha256(original).hexdigest() == by_source[entry["source"]].sha256
        assert (entry["size"], entry["stored_size"]) == (len(original), len(stored))
        assert entry["compression"] == "gzip"
        raw_bytes += len(original)
        stored_bytes += len(stored)
    assert raw_bytes / stored_bytes > 4  # the lab's csvlog; real figures: docs/benchmarks.md

    for run_id in ("run-raw", "run-gz"):
        report = await run_verify(VerifySettings(bucket=bucket, run_id=run_id, aws=AwsSettings()))
        assert report.ok, report.rows
        # Proven by the checksums S3 keeps (a PutObject's SHA-256, a multipart upload's
        # composite of its parts' SHA-256), without reading an object.
        assert report.bytes_read == 0 and not any(r.read for r in report.rows)
        full = await run_verify(
            VerifySettings(bucket=bucket, run_id=run_id, aws=AwsSettings(), download=True)
        )
        assert full.ok and full.bytes_read == sum(r.size for r in full.rows)

    # Hours 1..5: hour 1 only in run-raw, hours 2 (both runs), 3..4 only in run-gz.
    out = tmp_path / "out"
    got = await run_get(get_settings(bucket, first.add(hours=1), first.add(hours=5), out))
    assert got.exit_code == 0, (got.failures, got.holes)
    assert {f.run_id for f in got.files} == {"run-raw", "run-gz"}
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"get-db/{f.name}" for f in files[1:5])
    for f in files[1:5]:
        assert (out / "get-db" / f.name).read_bytes() == f.path.read_bytes()

    # --stdout: the same bytes, in time order.
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = io.BytesIO()
        streamed = await get_window(
            Bucket(aws, bucket),
            "get-db",
            first.add(hours=1).timestamp(),
            first.add(hours=5).timestamp(),
            output_dir=None,
            stdout=sink,
            concurrency=2,
        )
        assert streamed.exit_code == 0
        assert sink.getvalue() == b"".join(f.path.read_bytes() for f in files[1:5])

        # A window reaching before the first file: a hole, the files still written, exit 6.
        early = await get_window(
            Bucket(aws, bucket),
            "get-db",
            first.subtract(hours=2).timestamp(),
            first.add(hours=1).timestamp(),
            output_dir=str(tmp_path / "early"),
        )
        assert early.exit_code == EXIT_VERIFY
        assert len(early.holes) == 1 and early.holes[0].startswith("get-db: nothing covers")
        assert (tmp_path / "early" / "get-db" / files[0].name).read_bytes() == files[
            0
        ].path.read_bytes()

        # Another DB: nothing to get, one clear error.
        with pytest.raises(GetError, match=r"^no copy of 'other-db' overlaps"):
            await get_window(
                Bucket(aws, bucket),
                "other-db",
                first.timestamp(),
                first.add(hours=1).timestamp(),
                output_dir=str(tmp_path / "none"),
            )

        # An object changed behind our back: its checksum fails, nothing is written for it.
        gz_key = next(k for k, e in manifest["files"].items() if e["source"] == files[4].name)
        changed = bytearray(files[4].path.read_bytes())
        changed[100] ^= 1  # the same size, one bit off
        client.put_object(Bucket=bucket, Key=gz_key, Body=gzip.compress(bytes(changed)))
        bad = await get_window(
            Bucket(aws, bucket),
            "get-db",
            first.add(hours=4).timestamp(),
            first.add(hours=5).timestamp(),
            output_dir=str(tmp_path / "bad"),
        )
        assert bad.exit_code == EXIT_VERIFY
        assert len(bad.failures) == 1 and "sha256 does not match" in bad.failures[0]
        assert not (tmp_path / "bad" / "get-db" / files[4].name).exists()
        assert not list((tmp_path / "bad").rglob("*.part"))
        assert len(bad.holes) == 1 and "nothing covers" in bad.holes[0]  # no good copy: a hole

        # Hour 2 is in both runs. Its newest copy (run-gz's, gzip) fails its check: the older
        # raw (multipart) copy of run-raw is the one written; no failure, no hole. A record
        # nobody can read elsewhere in the bucket changes nothing (a warning names it).
        both_key = next(k for k, e in manifest["files"].items() if e["source"] == files[2].name)
        changed = bytearray(files[2].path.read_bytes())
        changed[-1] ^= 1
        client.put_object(Bucket=bucket, Key=both_key, Body=gzip.compress(bytes(changed)))
        client.put_object(Bucket=bucket, Key="junk-run/manifest.json", Body=b'{"files": [')
        for stdout in (None, io.BytesIO()):
            fallback = await get_window(
                Bucket(aws, bucket),
                "get-db",
                first.add(hours=2).timestamp(),
                first.add(hours=3).timestamp(),
                output_dir=None if stdout else str(tmp_path / "fallback"),
                stdout=stdout,
            )
            assert fallback.exit_code == 0, (fallback.failures, fallback.holes)
            assert [(f.run_id, f.source) for f in fallback.files] == [("run-raw", files[2].name)]
            assert len(fallback.replaced) == 1 and both_key in fallback.replaced[0]
            got_bytes = (
                stdout.getvalue()
                if stdout
                else (tmp_path / "fallback" / "get-db" / files[2].name).read_bytes()
            )
            assert got_bytes == files[2].path.read_bytes()


async def test_a_multipart_object_the_manifest_does_not_know_is_proven_not_rewritten(
    env: dict[str, str], lab_data: tuple[Path, list[Written], pendulum.DateTime]
) -> None:
    """Killed between CompleteMultipartUpload and the manifest write: nothing proves what the
    object holds (its metadata has no sha256), so the resumed run copies the file again; S3
    refuses the conditional write, the object holds the same bytes, and the copy is recorded
    with nothing written (one version of the object)."""
    first = lab_data[2]
    bucket = env["AWS_S3_BUCKET_NAME"]
    client = s3_client(env)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    kw = dict(
        db="get-db",
        bucket=bucket,
        start=first.add(hours=2),
        finish=first.add(hours=3),
        run_id="run-lost-manifest",
    )
    assert (await run_sync(sync_settings(**kw))).exit_code == 0  # type: ignore[arg-type]
    client.delete_object(Bucket=bucket, Key="run-lost-manifest/manifest.json")
    report = await run_sync(sync_settings(**kw))  # type: ignore[arg-type]
    assert (report.totals.copied, report.totals.skipped, report.exit_code) == (1, 0, 0)
    report = await run_sync(sync_settings(**kw))  # type: ignore[arg-type]
    assert (report.totals.copied, report.totals.skipped) == (0, 1)
    versions = client.list_object_versions(Bucket=bucket, Prefix="run-lost-manifest/rds_log")
    assert len(versions["Versions"]) == 1


async def test_compress_switched_on_an_existing_run_stores_nothing_twice(
    env: dict[str, str],
    lab_data: tuple[Path, list[Written], pendulum.DateTime],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run copied raw, then the same command with --compress gzip (and back): every file is
    recorded as the copy that is there, nothing is stored again, said once; verify and get
    read the run as before."""
    _, files, first = lab_data
    client = s3_client(env)
    bucket = f"switch-{pendulum.now('UTC').format('HHmmssSSS')}"  # get reads the whole bucket
    create_bucket(
        env["AWS_ENDPOINT_URL_S3"],
        bucket,
        env["AWS_ACCESS_KEY_ID"],
        env["AWS_SECRET_ACCESS_KEY"],
        env.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    kw = dict(
        db="get-db", bucket=bucket, start=first, finish=first.add(hours=3), run_id="run-switch"
    )
    raw = await run_sync(sync_settings(**kw))  # type: ignore[arg-type]
    assert (raw.exit_code, raw.totals.copied) == (0, 3)
    objects = sorted(
        o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="run-switch/")["Contents"]
    )
    with caplog.at_level(logging.INFO, logger="rdsrecorder.transfer"):
        packed = await run_sync(sync_settings(**kw, compress=Compression.GZIP))  # type: ignore[arg-type]
        back = await run_sync(sync_settings(**kw))  # type: ignore[arg-type]
    assert (packed.exit_code, packed.totals.copied, packed.totals.skipped) == (0, 0, 3)
    assert (back.exit_code, back.totals.copied, back.totals.skipped) == (0, 0, 3)
    after = sorted(
        o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="run-switch/")["Contents"]
    )
    assert after == objects and not any(k.endswith(".gz") for k in after)
    versions = client.list_object_versions(Bucket=bucket, Prefix="run-switch/rds_log")["Versions"]
    assert len(versions) == 3  # one per file
    said = [r for r in caplog.records if "not stored again as gzip" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING, logging.INFO, logging.INFO]
    report = await run_verify(
        VerifySettings(bucket=bucket, run_id="run-switch", aws=AwsSettings(), download=True)
    )
    assert report.ok, report.rows
    got = await run_get(get_settings(bucket, first, first.add(hours=3), tmp_path / "out"))
    assert got.exit_code == 0, (got.failures, got.holes)
    for w in files[:3]:
        got_bytes = (tmp_path / "out" / "get-db" / w.name).read_bytes()
        assert hashlib.sha256(got_bytes).hexdigest() == w.sha256


@pytest.mark.parametrize(
    ("instance", "source"),
    [
        ("..", "x.csv"),
        ("db", "../x.csv"),
        ("db", "/etc/passwd"),
        ("a/b", "x"),
        ("db", "error/../../x"),
    ],
)
def test_names_that_leave_the_output_dir_are_refused(instance: str, source: str) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        safe_relative(instance, source)
    assert safe_relative("prod-db", "error/postgresql.log.2024-02-04-13.csv").as_posix() == (
        "prod-db/error/postgresql.log.2024-02-04-13.csv"
    )


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"output_dir": None}, "missing --output-dir"),
        ({"stdout": True}, "either --output-dir or --stdout"),
        ({"finish": "2024-02-04T12:00:00Z"}, "must be after --start"),
        ({"db_identifier": "../x"}, "invalid --db-identifier"),
        ({"concurrency": 0}, "--concurrency"),
    ],
)
def test_get_bad_input_is_one_line(kw: dict[str, object], message: str) -> None:
    args: dict[str, object] = dict(
        now=pendulum.now("UTC"),
        bucket="my-bucket",
        db_identifier="db",
        start="2024-02-04T13:00:00Z",
        finish="2024-02-04T15:00:00Z",
        output_dir="out",
        stdout=False,
        concurrency=4,
        region=None,
        expected_bucket_owner=None,
        log_format=LogFormat.TEXT,
        debug=False,
    )
    args.update(kw)
    with pytest.raises(ConfigError, match=message):
        build_get(**args)  # type: ignore[arg-type]
