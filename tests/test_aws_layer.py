"""The AWS layer: the shared rate limiter (deterministic, on a fake monotonic clock), retries with
backoff counted through the hooks (against the lab's throttling and 5xx knobs), translation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from rdsrecorder.aws import Aws, translate
from rdsrecorder.budget import AdaptiveRateLimiter as RateLimiter
from rdsrecorder.config import AwsSettings
from rdsrecorder.errors import AwsError, LogFileGoneError, ThrottledError
from rdsrecorder.hooks import Hooks
from rdsrecorder.retry import error_code
from rdsrecorder.retry import is_transient as is_retryable
from rdsrecorder_lab import LabThread, generate


class Recorded(Hooks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.retries: list[tuple[str, str, str]] = []

    def aws_call(self, service: str, operation: str, outcome: str) -> None:
        self.calls.append((service, operation, outcome))

    def retry(self, service: str, operation: str, reason: str) -> None:
        self.retries.append((service, operation, reason))


async def test_rate_limiter_holds_the_rate() -> None:
    now = [0.0]

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds

    limiter = RateLimiter(5.0, burst=2, monotonic=lambda: now[0], sleep=fake_sleep)
    for _ in range(22):
        await limiter.acquire()
    # 2 from the burst, then 20 at 5/s
    assert now[0] == pytest.approx(4.0)


async def test_rate_limiter_spends_its_burst_then_the_rate_and_a_throttle_empties_it() -> None:
    now = [0.0]

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds

    limiter = RateLimiter(15.0, burst=20, monotonic=lambda: now[0], sleep=fake_sleep)
    for _ in range(20):
        await limiter.acquire()
    assert now[0] == 0.0  # a short backfill starts at once
    for _ in range(15):
        await limiter.acquire()
    assert now[0] == pytest.approx(1.0)  # then the sustained rate
    now[0] += 10.0  # idle: the bucket refills, to 20 at most
    limiter.throttled()  # ... but the server said Throttling: no burst, half the rate
    await limiter.acquire()
    assert now[0] == pytest.approx(11.0 + 1 / 7.5, rel=0.01)


def test_max_api_burst_is_the_limiter_burst() -> None:
    aws = Aws(AwsSettings(region="eu-west-1", max_api_rps=15, max_api_burst=20), Hooks())
    assert (aws.rate_limiter.rate_per_s, aws.rate_limiter.burst) == (15, 20)


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "Op",
    )


def test_classification_and_translation() -> None:
    assert is_retryable(client_error("Throttling", 400))
    assert is_retryable(client_error("ThrottlingException", 400))
    assert is_retryable(client_error("RequestLimitExceeded", 400))
    assert is_retryable(client_error("InternalFailure", 500))
    assert is_retryable(client_error("Whatever", 503))
    assert is_retryable(EndpointConnectionError(endpoint_url="http://x"))
    assert not is_retryable(client_error("DBInstanceNotFound", 404))
    assert error_code(client_error("SlowDown", 503)) == "SlowDown"
    assert isinstance(
        translate(client_error("DBLogFileNotFoundFault", 404), "rds", "X"), LogFileGoneError
    )
    assert isinstance(translate(client_error("Throttling", 400), "rds", "X"), ThrottledError)
    err = translate(client_error("AccessDenied", 403), "s3", "PutObject")
    assert type(err) is AwsError and err.code == "AccessDenied" and "\n" not in str(err)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabThread]:
    root: Path = tmp_path_factory.mktemp("awslab")
    generate(root, "aws-db", hours=1, size_mb=(0.01, 0.01))
    with LabThread(root, s3="none") as lab:
        yield lab


async def test_throttles_and_500s_are_retried_and_counted(
    lab: LabThread, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for k, v in lab.env.items():
        monkeypatch.setenv(k, v)
    lab.set_faults(throttle_every_n=2)
    hooks = Recorded()
    async with Aws(AwsSettings(region="us-east-1", max_api_rps=100), hooks) as aws:
        for _ in range(6):
            resp = await aws.call("rds", "describe_db_log_files", DBInstanceIdentifier="aws-db")
            assert resp["DescribeDBLogFiles"]
    assert [c for c in hooks.calls if c[2] == "ok"] == [("rds", "DescribeDBLogFiles", "ok")] * 6
    assert any(c[2] == "throttled" for c in hooks.calls)
    assert hooks.retries and all(r[2] == "Throttling" for r in hooks.retries)
    throttled = sum(1 for c in hooks.calls if c[2] == "throttled")
    assert f"AWS throttled {throttled} call(s)" in caplog.text
    lab.set_faults(error_rate=1.0)
    hooks = Recorded()
    async with Aws(AwsSettings(region="us-east-1", max_api_rps=100, max_attempts=3), hooks) as aws:
        with pytest.raises(AwsError) as err:
            await aws.call("rds", "describe_db_log_files", DBInstanceIdentifier="aws-db")
    assert len(hooks.retries) == 2  # 3 attempts
    assert hooks.calls[-1] == ("rds", "DescribeDBLogFiles", "error")
    assert "InternalFailure" in str(err.value)
    lab.set_faults()
