"""The RDS API budget: the fleet's, split over its shards; one limiter a process whose rate halves
on throttling and climbs back slowly; what it exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pendulum
import pytest

from rdsrecorder.aws import Aws
from rdsrecorder.budget import (
    DEFAULT_FLEET_API_BURST,
    DEFAULT_FLEET_API_RPS,
    MIN_FRACTION,
    RECOVERY_S,
    AdaptiveRateLimiter,
)
from rdsrecorder.config import AwsSettings, LogFormat, build_sync
from rdsrecorder.errors import ConfigError
from rdsrecorder.hooks import Hooks
from rdsrecorder.metrics import PrometheusHooks
from rdsrecorder.models import DownloadMethod
from rdsrecorder_lab import LabThread, generate


def sync_aws(**kw: Any) -> AwsSettings:
    args: dict[str, Any] = {
        "now": pendulum.datetime(2026, 12, 7, 12, tz="UTC"),
        "start": "2026-12-07T10:00:00Z",
        "finish": "2026-12-07T11:00:00Z",
        "bucket": "logs-bucket",
        "db_identifier": "db-1",
        "concurrency": 4,
        "run_id": "r1",
        "region": "eu-west-1",
        "poll_interval_s": 30.0,
        "finish_grace_s": None,
        "snapshot": False,
        "download_method": DownloadMethod.AUTO,
        "part_size_mib": 5,
        "max_api_rps": None,
        "expected_bucket_owner": None,
        "sse": None,
        "sse_kms_key_id": None,
        "shutdown_grace_s": 5.0,
        "include_plain": False,
        "spool_dir": "memory",
        "metrics_address": "127.0.0.1",
        "metrics_port": 0,
        "log_format": LogFormat.TEXT,
        "progress": False,
        "debug": False,
    }
    args.update(kw)
    return build_sync(**args).aws


def test_each_shard_takes_its_part_of_the_fleets_budget_unless_told_otherwise() -> None:
    alone = sync_aws()
    assert (alone.max_api_rps, alone.max_api_burst) == (
        DEFAULT_FLEET_API_RPS,
        DEFAULT_FLEET_API_BURST,
    )
    assert DEFAULT_FLEET_API_RPS < 12  # well under the account's sustained rate
    quarter = sync_aws(shard_spec="1/4")
    assert (quarter.max_api_rps, quarter.max_api_burst) == (DEFAULT_FLEET_API_RPS / 4, 5)
    assert quarter.fleet_max_api_rps == DEFAULT_FLEET_API_RPS
    own = sync_aws(shard_spec="1/4", fleet_max_api_rps=6.0, fleet_max_api_burst=30)
    assert (own.max_api_rps, own.max_api_burst) == (1.5, 7)
    # An explicit per-process rate or burst wins.
    explicit = sync_aws(shard_spec="1/4", max_api_rps=3.0, max_api_burst=2)
    assert (explicit.max_api_rps, explicit.max_api_burst) == (3.0, 2)
    assert sync_aws(shard_spec="0/64").max_api_burst == 1  # never less than one call


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"fleet_max_api_rps": 0.0}, "--fleet-max-api-rps must be positive"),
        ({"fleet_max_api_rps": float("nan")}, "--fleet-max-api-rps must be a finite number"),
        ({"fleet_max_api_burst": 301}, "--fleet-max-api-burst must be between 1 and 300"),
        ({"max_api_rps": -1.0}, "--max-api-rps must be positive"),
        ({"max_api_burst": 0}, "--max-api-burst must be between 1 and 300"),
    ],
)
def test_bad_budgets_are_one_line_each(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sync_aws(**kw)


class Time:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_a_throttle_halves_the_rate_once_per_round_trip_and_it_climbs_back_slowly() -> None:
    time = Time()
    rates: list[float] = []
    limiter = AdaptiveRateLimiter(
        8.0, burst=4, monotonic=time.monotonic, sleep=time.sleep, on_rate=rates.append
    )
    sent = [await limiter.acquire() for _ in range(4)]  # the burst, at once
    assert time.now == 0.0
    limiter.throttled(sent[0])
    assert limiter.rate_per_s == 4.0
    limiter.throttled(sent[1])  # sent before the decrease: already answered for
    assert limiter.rate_per_s == 4.0 and limiter.decreases == 1
    after = await limiter.acquire()  # no burst left: a token at the lowered rate
    assert after == pytest.approx(1 / 4.0, rel=0.05)
    limiter.throttled(after)  # sent after the decrease: a new signal
    assert limiter.rate_per_s == pytest.approx(2.0, rel=0.05)
    # Climbs back linearly: from a quarter to the ceiling in three quarters of RECOVERY_S.
    time.now += RECOVERY_S / 2
    await limiter.acquire()
    assert limiter.rate_per_s == pytest.approx(6.0, rel=0.05)
    time.now += RECOVERY_S
    await limiter.acquire()
    assert limiter.rate_per_s == 8.0  # never above the ceiling
    assert rates[0] == 8.0 and min(rates) == pytest.approx(2.0, rel=0.05) and rates[-1] == 8.0
    # Never below the floor, however much it is throttled; the burst shrinks with the rate.
    for _ in range(20):
        limiter.throttled()
    assert limiter.rate_per_s == 8.0 * MIN_FRACTION
    assert limiter.burst == 1.0


async def test_the_sustained_rate_holds_between_throttles() -> None:
    time = Time()
    limiter = AdaptiveRateLimiter(5.0, burst=2, monotonic=time.monotonic, sleep=time.sleep)
    for _ in range(22):
        await limiter.acquire()
    assert time.now == pytest.approx(4.0)  # 2 from the burst, then 20 at 5/s


def test_the_budget_and_the_rate_are_metrics() -> None:
    hooks = PrometheusHooks("r1")
    aws = Aws(AwsSettings(region="eu-west-1", max_api_rps=2.0, fleet_max_api_rps=8.0), hooks)
    aws.rate_limiter.throttled()
    text = hooks.render().decode()
    assert 'rdsrecorder_rds_api_fleet_budget{run_id="r1"} 8' in text
    assert 'rdsrecorder_rds_api_rate_max{run_id="r1"} 2' in text
    assert 'rdsrecorder_rds_api_rate{run_id="r1"} 1' in text


async def test_throttling_answers_lower_the_rate_of_every_rds_call(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    generate(tmp_path, "budget-db", hours=1, size_mb=(0.01, 0.01))
    with LabThread(tmp_path, s3="none") as lab:
        for key, value in lab.env.items():
            monkeypatch.setenv(key, value)
        lab.set_faults(throttle_every_n=3)
        async with Aws(AwsSettings(region="eu-west-1", max_api_rps=50.0), Hooks()) as aws:
            for _ in range(4):
                await aws.call("rds", "describe_db_log_files", DBInstanceIdentifier="budget-db")
            assert aws.rate_limiter.decreases >= 1
            assert aws.rate_limiter.rate_per_s < 50.0
            assert aws.throttled_calls >= 1
