"""Decisions by error code: the one table, credentials loaded anew when AWS says they expired (on
the whole-file endpoint and on S3 writes), and the whole-file endpoint given up only on
AccessDenied, then tried again later."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pendulum
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from rdsrecorder.aws import Aws
from rdsrecorder.clock import FakeClock
from rdsrecorder.commands import run_sync
from rdsrecorder.config import AwsSettings
from rdsrecorder.errors import EXIT_INTERRUPTED, AwsError
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import DownloadMethod, DownloadStats, LogFile
from rdsrecorder.rds.download import COMPLETE_REPROBE_S, RdsDownloader
from rdsrecorder.retry import CODES, Decision, HttpAnswerError, answer_code, decide
from rdsrecorder_lab import (
    LAB_ACCESS_KEY_ID,
    LAB_SECRET_ACCESS_KEY,
    Faults,
    Lab,
    LabThread,
    generate,
)
from tests.e2e import objects, sync_settings, write_hourly
from tests.s3_servers import BucketSink, S3Gateway, S3Server, blob, chunked

INSTANCE = "cred-db"
ROTATED_KEY, ROTATED_SECRET = "LABROTATEDKEY", "rotatedsecret"


class Seen(Hooks):
    def __init__(self) -> None:
        self.retries: list[tuple[str, str, str]] = []

    def retry(self, service: str, operation: str, reason: str) -> None:
        self.retries.append((service, operation, reason))


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "Op",
    )


def test_the_table_decides_by_code_then_by_status() -> None:
    assert decide(client_error("Throttling", 400)) is Decision.THROTTLED
    assert decide(client_error("Whatever", 429)) is Decision.THROTTLED
    assert decide(client_error("InternalFailure", 500)) is Decision.TRANSIENT
    assert decide(client_error("Whatever", 503)) is Decision.TRANSIENT
    assert decide(EndpointConnectionError(endpoint_url="http://x")) is Decision.TRANSIENT
    for code in ("ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId"):
        assert decide(client_error(code, 403)) is Decision.REFRESH
    assert decide(client_error("RequestExpired", 400)) is Decision.REFRESH
    assert decide(client_error("SignatureDoesNotMatch", 403)) is Decision.REFRESH
    assert decide(client_error("AccessDenied", 403)) is Decision.DENIED
    assert decide(client_error("DBInstanceNotFound", 404)) is Decision.FINAL
    assert decide(client_error("Whatever", 403)) is Decision.FINAL
    # The raw endpoint's answers: the code of the XML body first.
    body = "<ErrorResponse><Error><Code>ExpiredToken</Code><Message>m</Message></Error>"
    assert answer_code(body) == "ExpiredToken"
    assert decide(HttpAnswerError(403, answer_code(body), "X")) is Decision.REFRESH
    assert decide(HttpAnswerError(403, "AccessDenied", "X")) is Decision.DENIED
    assert decide(HttpAnswerError(400, "Throttling", "X")) is Decision.THROTTLED
    assert decide(HttpAnswerError(404, "", "X")) is Decision.FINAL
    assert decide(HttpAnswerError(502, "", "X")) is Decision.TRANSIENT
    assert set(Decision) == set(CODES.values())  # every decision is named in the table


def test_docs_list_every_code_of_the_table() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    missing = [code for code in CODES if f"`{code}`" not in doc]
    assert not missing, f"docs/errors.md does not list {missing}"


def use_credentials_file(
    monkeypatch: pytest.MonkeyPatch, path: Path, key: str, secret: str
) -> None:
    """The chain's credentials come from a file (as a sidecar that rotates keys writes it)."""
    path.write_text(f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))


@pytest.fixture(scope="module")
def cred_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabThread]:
    root = tmp_path_factory.mktemp("credlab")
    end = dt.datetime(2024, 2, 4, 19, tzinfo=dt.UTC)
    generate(root, INSTANCE, files=4, end=end, size_mb=(0.3, 0.4), seed=5)
    with LabThread(root, s3="none") as lab:
        lab.lab.emulator.credentials[ROTATED_KEY] = ROTATED_SECRET
        yield lab


def log_files(lab: LabThread) -> list[tuple[LogFile, bytes]]:
    out = []
    for path in sorted((lab.lab.root / INSTANCE / "error").glob("*.csv")):
        data = path.read_bytes()
        name = f"error/{path.name}"
        out.append((LogFile(INSTANCE, name, int(path.stat().st_mtime * 1000), len(data)), data))
    return out


async def test_expired_token_on_the_whole_file_endpoint_loads_new_credentials(
    cred_lab: LabThread, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key, value in cred_lab.env.items():
        monkeypatch.setenv(key, value)
    use_credentials_file(monkeypatch, tmp_path / "creds", LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY)
    cred_lab.set_faults()
    cred_lab.reset_stats()
    hooks = Seen()
    files = log_files(cred_lab)
    async with (
        Aws(AwsSettings(region="eu-west-1", max_api_rps=1000), hooks) as aws,
        RdsDownloader(aws, hooks, DownloadMethod.AUTO) as rds,
    ):
        first, second = files[0], files[1]
        stats = DownloadStats()
        assert b"".join([c async for c in rds.download(first[0], stats)]) == first[1]
        # The key is rotated: the old one expires, the file holds the new one.
        use_credentials_file(monkeypatch, tmp_path / "creds", ROTATED_KEY, ROTATED_SECRET)
        cred_lab.set_faults(expired_access_keys=[LAB_ACCESS_KEY_ID])
        stats = DownloadStats()
        body = b"".join([c async for c in rds.download(second[0], stats)])
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(second[1]).hexdigest()
    assert stats.method == "complete"  # the DB stayed on the whole-file path
    assert ("rds", "DownloadCompleteLogFile", "ExpiredToken") in hooks.retries
    assert cred_lab.stats()["faults"]["expired_token"] == 1
    assert "DownloadDBLogFilePortion" not in cred_lab.stats()["calls"]
    cred_lab.set_faults()


async def test_access_denied_means_portions_until_the_endpoint_is_tried_again(
    cred_lab: LabThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in cred_lab.env.items():
        monkeypatch.setenv(key, value)
    cred_lab.set_faults(complete_endpoint=False)
    clock = FakeClock(1_700_000_000.0)
    files = log_files(cred_lab)
    methods = []
    async with (
        Aws(AwsSettings(region="eu-west-1", max_api_rps=1000), Hooks(), clock=clock) as aws,
        RdsDownloader(aws, Hooks(), DownloadMethod.AUTO) as rds,
    ):

        async def copy(f: LogFile, data: bytes) -> None:
            stats = DownloadStats()
            assert b"".join([c async for c in rds.download(f, stats)]) == data
            methods.append(stats.method)

        await copy(*files[0])  # denied: portions
        cred_lab.set_faults()  # IAM now allows it ...
        await copy(*files[1])  # ... but it is not asked again at once
        clock.advance(COMPLETE_REPROBE_S)
        await copy(*files[2])  # tried again: allowed
        await copy(*files[3])
    assert methods == ["portion", "portion", "complete", "complete"]


async def test_a_final_error_of_the_whole_file_endpoint_is_not_read_as_denied(
    cred_lab: LabThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown instance (404 DBInstanceNotFound) fails the file; the DB is not moved to
    portions for it."""
    for key, value in cred_lab.env.items():
        monkeypatch.setenv(key, value)
    cred_lab.set_faults()
    cred_lab.reset_stats()
    async with (
        Aws(AwsSettings(region="eu-west-1", max_api_rps=1000), Hooks()) as aws,
        RdsDownloader(aws, Hooks(), DownloadMethod.AUTO) as rds,
    ):
        missing = LogFile("no-such-db", "error/postgresql.log.2024-02-04-18.csv", 0, 10)
        with pytest.raises(AwsError) as err:
            _ = [c async for c in rds.download(missing, DownloadStats())]
        assert err.value.code == "DBInstanceNotFound"
    assert "DownloadDBLogFilePortion" not in cred_lab.stats()["calls"]


async def test_expired_token_on_s3_writes_loads_new_credentials(
    gateway: S3Gateway, moto_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bucket = moto_server.new_bucket("creds")
    use_credentials_file(monkeypatch, tmp_path / "creds", "OLDKEY", "oldsecret")
    hooks = Seen()
    small, large = blob(300_000, seed=1), blob(12 * 1024 * 1024, seed=2)
    async with Aws(AwsSettings(region="us-east-1"), hooks) as aws:
        sink = BucketSink(aws, bucket, hooks, part_size_bytes=5 * 1024 * 1024)
        await sink.upload("before", chunked(small, 65536), metadata={}, instance="db")
        use_credentials_file(monkeypatch, tmp_path / "creds", "NEWKEY", "newsecret")
        gateway.expired_keys.add("OLDKEY")
        await sink.upload("small", chunked(small, 65536), metadata={}, instance="db")
        await sink.upload("large", chunked(large, 1024 * 1024), metadata={}, instance="db")
    client = moto_server.client()
    for key, data in (("small", small), ("large", large)):
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert [r for r in hooks.retries if r[2] == "ExpiredToken"] == [
        ("s3", "PutObject", "ExpiredToken")
    ]
    signed = {s.headers["authorization"].split("Credential=")[1][:6] for s in gateway.seen}
    assert signed == {"OLDKEY", "NEWKEY"}


@pytest.mark.parametrize("follow", [False, True], ids=["backfill", "follow"])
async def test_a_run_goes_on_through_keys_rotated_under_it(
    follow: bool,
    gateway: S3Gateway,
    moto_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A whole run, a backfill or a follower: the key is rotated (the old one expires on RDS)
    once the first whole-file download has started, and again (the second one expires on S3)
    once RDS said ExpiredToken. Every rotated file lands byte-exact, on the whole-file path; the
    backfill ends 0, the follower is stopped (130) once they are all in S3."""
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=3)
    files = write_hourly(tmp_path / "lab", "rot-db", first, [200_000] * 4, now)
    bucket = moto_server.new_bucket("rotated")
    creds = tmp_path / "creds"
    async with Lab(tmp_path / "lab", s3="none", faults=Faults(latency_ms=30)) as lab:
        for key, value in lab.env.items():
            if not key.startswith(("AWS_ACCESS_KEY", "AWS_SECRET", "AWS_ENDPOINT_URL_S3")):
                monkeypatch.setenv(key, value)
        lab.emulator.credentials.update({ROTATED_KEY: ROTATED_SECRET, "LABTHIRDKEY": "third"})
        use_credentials_file(monkeypatch, creds, LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY)

        async def rotate() -> None:
            while lab.emulator.stats()["calls"].get("DownloadCompleteLogFile", 0) < 1:
                await asyncio.sleep(0.002)
            use_credentials_file(monkeypatch, creds, ROTATED_KEY, ROTATED_SECRET)
            lab.set_faults(latency_ms=30, expired_access_keys=[LAB_ACCESS_KEY_ID])
            while lab.emulator.stats()["faults"].get("expired_token", 0) < 1:
                await asyncio.sleep(0.002)
            # The next whole-file request comes after the process loaded the second key.
            refused_at = lab.emulator.stats()["calls"]["DownloadCompleteLogFile"]
            while lab.emulator.stats()["calls"]["DownloadCompleteLogFile"] <= refused_at:
                await asyncio.sleep(0.002)
            use_credentials_file(monkeypatch, creds, "LABTHIRDKEY", "third")
            gateway.expired_keys.update({LAB_ACCESS_KEY_ID, ROTATED_KEY})

        hooks = Seen()
        rotation = asyncio.ensure_future(rotate())
        settings = sync_settings(
            db="rot-db",
            bucket=bucket,
            start=first,
            finish=now.add(hours=1) if follow else first.add(hours=3),
            run_id="rotated",
            concurrency=1,
        )
        wanted = {f"rotated/rds_log_rotated_{f.timestamp_s}" for f in files[:3]}
        stop = asyncio.Event()

        async def stop_when_copied() -> None:
            client = moto_server.client()
            while not wanted <= set(await asyncio.to_thread(objects, client, bucket, "rotated/")):
                await asyncio.sleep(0.1)
            stop.set()

        stopper = asyncio.ensure_future(stop_when_copied()) if follow else None
        report = await run_sync(settings, hooks=hooks, stop=stop)
        await asyncio.wait_for(rotation, 1)
        if stopper is not None:
            await stopper
        stats = lab.emulator.stats()
    assert report.exit_code == (EXIT_INTERRUPTED if follow else 0), report
    got = objects(moto_server.client(), bucket, "rotated/")
    for f in files[:3]:
        assert hashlib.sha256(got[f"rotated/rds_log_rotated_{f.timestamp_s}"]).hexdigest() == (
            f.sha256
        )
    assert "DownloadDBLogFilePortion" not in stats["calls"]  # stayed on the whole-file path
    assert stats["faults"]["expired_token"] >= 1
    refused = {r[0] for r in hooks.retries if r[2] == "ExpiredToken"}
    assert refused == {"rds", "s3"}
