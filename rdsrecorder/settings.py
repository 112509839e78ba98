"""The one frozen settings object. Built by the CLI (flags and RDSRECORDER_* env vars), read by
the core. The core never reads env vars itself; AWS endpoint/credential env vars are honoured by
botocore (AWS_ENDPOINT_URL_RDS, AWS_ENDPOINT_URL_S3, AWS_PROFILE, ...)."""

from __future__ import annotations

from dataclasses import dataclass

import pendulum

from rdsrecorder.models import DownloadMethod

MIB = 1024 * 1024

# Memory per file in flight: with parts spooled to a temp dir (the default), a download chunk
# (256 KiB) plus HTTP buffers; with parts in memory (--spool-dir memory), one part being filled
# and one being uploaded (the overlapped pipeline), so peak RSS <= base (~85 MB: Python, aiohttp
# and botocore's models) + concurrency * 2 * part size.
DEFAULT_PART_SIZE_BYTES = 8 * MIB
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_API_RPS = 8.0  # under the account's ~12 req/s refill, leaves room for other tools
DEFAULT_POLL_INTERVAL_S = 30.0
DEFAULT_METRICS_PORT = 9445
DEFAULT_SHUTDOWN_GRACE_S = 5.0
RETENTION_MAX_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class AwsSettings:
    region: str | None = None
    expected_bucket_owner: str | None = None
    sse: str | None = None  # None, "AES256" or "aws:kms"
    sse_kms_key_id: str | None = None
    max_api_rps: float = DEFAULT_MAX_API_RPS
    max_attempts: int = 8  # per AWS call, with exponential backoff + jitter


@dataclass(frozen=True, slots=True)
class ObservabilitySettings:
    debug: bool = False
    log_format: str = "text"  # "text" or "json"
    metrics_address: str = "0.0.0.0"
    metrics_port: int = DEFAULT_METRICS_PORT  # 0 = no metrics server
    progress: bool | None = None  # None = only when stderr is a terminal


@dataclass(frozen=True, slots=True)
class SyncSettings:
    db_identifier: str
    bucket: str
    start: pendulum.DateTime
    finish: pendulum.DateTime | None  # None = follow forever
    run_id: str
    concurrency: int = DEFAULT_CONCURRENCY
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    finish_grace_s: float | None = None  # None = one rotation period + 5 min
    snapshot: bool = True  # only used in Wait & Sync mode
    download_method: DownloadMethod = DownloadMethod.AUTO
    part_size_bytes: int = DEFAULT_PART_SIZE_BYTES
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    include_plain: bool = False  # also copy the non-.csv twins
    # Where parts wait while they fill and upload: None = the system temp dir (in memory when it
    # is not writable), "memory" = in memory, else a directory. See rdsrecorder/s3.py.
    spool_dir: str | None = None
    aws: AwsSettings = AwsSettings()
    obs: ObservabilitySettings = ObservabilitySettings()


@dataclass(frozen=True, slots=True)
class SnapshotSettings:
    db_identifier: str
    start: pendulum.DateTime
    run_id: str
    wait: bool = False
    aws: AwsSettings = AwsSettings()
    obs: ObservabilitySettings = ObservabilitySettings()
