"""Configuration: one frozen settings type per command, built by one function per command from the
typed values the CLI parsed, with every check of user input here and nowhere else.

Adding an option means: its CLI parameter (``cli.py``) and its field + check here. The core reads
these objects; it never reads env vars itself (AWS endpoint and credential env vars are botocore's:
``AWS_ENDPOINT_URL_RDS``, ``AWS_ENDPOINT_URL_S3``, ``AWS_PROFILE`` ...).

Every check raises ``ConfigError`` (exit 2) with one line that names the option."""

from __future__ import annotations

import enum
import math
import re
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pendulum

from rdsrecorder.budget import (
    ACCOUNT_API_BURST,
    DEFAULT_FLEET_API_BURST,
    DEFAULT_FLEET_API_RPS,
    process_burst,
    process_share,
)
from rdsrecorder.compression import Compression
from rdsrecorder.errors import ConfigError
from rdsrecorder.iam import Command, IamPolicySettings, Principal
from rdsrecorder.models import MIB, DownloadMethod
from rdsrecorder.pgbadger import INSTALL_HINT as PGBADGER_MISSING
from rdsrecorder.pgbadger import find_pgbadger
from rdsrecorder.query_options import (
    DEFAULT_MEMORY_LIMIT_MIB,
    MIN_MEMORY_LIMIT_MIB,
    OutputFormat,
    duckdb_missing,
)
from rdsrecorder.s3.spool import SPOOL_IN_MEMORY, spool_dir_usable
from rdsrecorder.s3.upload_config import (
    DEFAULT_PART_SIZE_BYTES,
    DEFAULT_SINGLE_PUT_MAX_BYTES,
    MAX_PART_BYTES,
    MAX_PUT_BYTES,
    MIN_PART_BYTES,
    StorageClass,
    UploadConfig,
)
from rdsrecorder.window import parse_when, validate_snapshot_start, validate_sync_window

# -- defaults and limits (memory per file in flight: see docs/design.md, "Memory") ---------------
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 64
# The uploader owns its limits and defaults (``rdsrecorder.s3.upload_config``); the options
# count in MiB.
MIN_PART_SIZE_MIB = MIN_PART_BYTES // MIB
DEFAULT_PART_SIZE_MIB = DEFAULT_PART_SIZE_BYTES // MIB
MAX_PART_SIZE_MIB = MAX_PART_BYTES // MIB
DEFAULT_SINGLE_PUT_MAX_MIB = DEFAULT_SINGLE_PUT_MAX_BYTES // MIB
MAX_SINGLE_PUT_MAX_MIB = MAX_PUT_BYTES // MIB
DEFAULT_GET_CONCURRENCY = 4
# The RDS API budget of the whole fleet (rdsrecorder.budget, docs/api-budget.md); one process
# (--shard I/N) takes 1/N of it unless --max-api-rps / --max-api-burst say otherwise.
DEFAULT_MAX_API_RPS = DEFAULT_FLEET_API_RPS
DEFAULT_MAX_API_BURST = DEFAULT_FLEET_API_BURST
MAX_API_BURST = ACCOUNT_API_BURST  # the account's whole bucket: more could never be used
DEFAULT_POLL_INTERVAL_S = 30.0
MIN_POLL_INTERVAL_S = 1.0
DEFAULT_DISCOVER_INTERVAL_S = 300.0
MIN_DISCOVER_INTERVAL_S = 10.0
MAX_RETENTION_HOURS = 7 * 24  # RDS keeps PostgreSQL logs at most 7 days (rds.log_retention_period)
DEFAULT_METRICS_PORT = 9445
DEFAULT_SHUTDOWN_GRACE_S = 5.0
DEFAULT_MAX_ATTEMPTS = 8  # per AWS call, with exponential backoff + jitter
MAX_FUTURE_S = 366 * 24 * 3600  # a start or finish further ahead is a typo, not a plan

DEFAULT_ROLE_SESSION_NAME = "rdsrecorder"
# ASCII: the names AWS allows are ASCII; a Unicode \w or \d would accept more.
_ROLE_ARN_RE = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,64}", re.ASCII)
_SESSION_NAME_RE = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
_EXTERNAL_ID_RE = re.compile(r"[\w+=,.@:/-]{2,1224}", re.ASCII)
_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_RE = re.compile(r"\d{1,3}(\.\d{1,3}){3}", re.ASCII)
_REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}", re.ASCII)
_ACCOUNT_RE = re.compile(r"\d{12}", re.ASCII)
_KMS_KEY_RE = re.compile(r"[A-Za-z0-9:/_.+=@-]{1,2048}")
_DB_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,62}")
_SHARD_RE = re.compile(r"(\d{1,4})/(\d{1,4})", re.ASCII)


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class Sse(enum.StrEnum):
    AES256 = "AES256"
    KMS = "aws:kms"


@dataclass(frozen=True, slots=True)
class RoleSettings:
    """An IAM role to assume (STS AssumeRole) for one side of the copy."""

    arn: str
    external_id: str | None = None
    session_name: str = DEFAULT_ROLE_SESSION_NAME


@dataclass(frozen=True, slots=True)
class AwsSettings:
    region: str | None = None  # None: the AWS config / env decides
    expected_bucket_owner: str | None = None
    sse: Sse | None = None
    sse_kms_key_id: str | None = None
    max_api_rps: float = DEFAULT_MAX_API_RPS  # this process's ceiling (its share of the fleet's)
    max_api_burst: int = DEFAULT_MAX_API_BURST
    fleet_max_api_rps: float = DEFAULT_FLEET_API_RPS  # the fleet's budget (reported as a metric)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    assume_role: RoleSettings | None = None  # every RDS call (and the whole-file download)
    s3_assume_role: RoleSettings | None = None  # S3 calls; None: the process's credentials


@dataclass(frozen=True, slots=True)
class ObservabilitySettings:
    debug: bool = False
    log_format: LogFormat = LogFormat.TEXT
    metrics_address: str = "0.0.0.0"
    metrics_port: int = DEFAULT_METRICS_PORT  # 0 = no metrics server
    progress: bool | None = None  # None = only when stderr is a terminal
    json_output: bool = False  # the command's result as one JSON document instead of tables


@dataclass(frozen=True, slots=True)
class Shard:
    """This process's share of the fleet: shard ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True, slots=True)
class SyncSettings:
    db_identifier: str  # the only (or first) DB given; "" when only discovery selects the DBs
    bucket: str
    start: pendulum.DateTime
    finish: pendulum.DateTime | None  # None = follow forever
    run_id: str
    concurrency: int = DEFAULT_CONCURRENCY
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    finish_grace_s: float | None = None  # None = one rotation period + 5 min
    snapshot: bool = True  # only used in Wait & Sync mode
    download_method: DownloadMethod = DownloadMethod.AUTO
    upload: UploadConfig = field(default_factory=UploadConfig)
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    include_plain: bool = False  # also copy the non-.csv twins
    # Log series copied besides postgresql.log ("audit.log" for error/audit.log.<date>.csv), each
    # under keys that name it (see recorder.py).
    include_series: tuple[str, ...] = ()
    # Where parts wait while they fill and upload: None = the system temp dir (in memory when it
    # is not writable), "memory" = in memory, else a directory (checked by ``build_sync``).
    spool_dir: str | None = None
    compress: Compression = Compression.NONE
    aws: AwsSettings = field(default_factory=AwsSettings)
    obs: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    # -- many DBs (see rdsrecorder.fleet) --
    db_identifiers: tuple[str, ...] = ()  # every -d given (instances or Aurora clusters)
    discover_tags: tuple[tuple[str, str], ...] = ()  # every KEY=VALUE must match
    discover_interval_s: float = DEFAULT_DISCOVER_INTERVAL_S
    shard: Shard = field(default_factory=Shard)
    retention_hours: float | None = None  # None: rds.log_retention_period, else 3 days
    parquet_twins: bool = False  # a Parquet twin of each complete copy, for Athena (athena.py)

    @property
    def targets(self) -> tuple[str, ...]:
        """The DBs named on the command line (instances or clusters), in order, no repeats."""
        if self.db_identifiers:
            return self.db_identifiers
        return (self.db_identifier,) if self.db_identifier else ()

    @property
    def fleet(self) -> bool:
        """More than one DB, or discovery: per-DB folders and manifests (``<RUNID>/<db>/``)."""
        return len(self.targets) > 1 or bool(self.discover_tags)


@dataclass(frozen=True, slots=True)
class SnapshotSettings:
    db_identifier: str
    start: pendulum.DateTime
    run_id: str
    wait: bool = False
    aws: AwsSettings = field(default_factory=AwsSettings)
    obs: ObservabilitySettings = field(default_factory=ObservabilitySettings)


@dataclass(frozen=True, slots=True)
class VerifySettings:
    bucket: str
    run_id: str
    download: bool = False  # re-read every object even when S3 holds a checksum to compare
    aws: AwsSettings = field(default_factory=AwsSettings)
    obs: ObservabilitySettings = field(default_factory=ObservabilitySettings)


@dataclass(frozen=True, slots=True)
class GetSettings:
    bucket: str
    db_identifier: str  # an instance id, or the DB identifier a run was made for (a cluster)
    start: pendulum.DateTime
    finish: pendulum.DateTime
    output_dir: str | None  # None: ``stdout``
    stdout: bool = False
    concurrency: int = DEFAULT_GET_CONCURRENCY
    aws: AwsSettings = field(default_factory=AwsSettings)
    obs: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    pgbadger: str | None = None  # the report pgbadger writes from the files got


@dataclass(frozen=True, slots=True)
class LsSettings:
    bucket: str
    aws: AwsSettings = field(default_factory=AwsSettings)
    obs: ObservabilitySettings = field(default_factory=ObservabilitySettings)


def new_run_id(now: pendulum.DateTime) -> str:
    return f"{now.in_timezone('UTC').format('YYYYMMDDTHHmmss')}-{secrets.token_hex(3)}"


# -- checks --------------------------------------------------------------------------------------
def _required(value: str | None, flag: str, env: str) -> str:
    if value is None or not value.strip():
        raise ConfigError(f"missing {flag} (or env {env})")
    return value.strip()


def _finite(value: float, flag: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, not {value}")
    return value


def _run_id(value: str | None, now: pendulum.DateTime) -> str:
    if value is None:
        return new_run_id(now)
    if not value.strip():
        # A template or secret that lost its value: a new run id at every restart would copy
        # everything again under a new prefix each time.
        raise ConfigError(
            "empty --run-id (or env RDSRECORDER_RUN_ID): give the run's id, or leave it unset "
            "for a new run"
        )
    if not _RUN_ID_RE.fullmatch(value):
        raise ConfigError(
            f"invalid --run-id {value!r}: 1-64 letters, digits, '.', '_' or '-', no '/'"
        )
    return value


def _bucket(value: str | None) -> str:
    name = _required(value, "--bucket", "AWS_S3_BUCKET_NAME")
    if (
        not _BUCKET_RE.fullmatch(name)
        or ".." in name
        or ".-" in name
        or "-." in name
        or _IP_RE.fullmatch(name)
    ):
        raise ConfigError(
            f"invalid --bucket {name!r}: an S3 bucket name has 3-63 lower-case letters, digits, "
            "'.' or '-', and starts and ends with a letter or digit"
        )
    return name


def _region(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    region = value.strip()
    if not _REGION_RE.fullmatch(region):
        raise ConfigError(f"invalid --region {region!r}: expected a region such as eu-west-1")
    return region


def _account(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    if not _ACCOUNT_RE.fullmatch(value.strip()):
        raise ConfigError(
            f"invalid --expected-bucket-owner {value!r}: an AWS account id has 12 digits"
        )
    return value.strip()


def db_identifiers(values: list[str] | None) -> tuple[str, ...]:
    """``-d a -d b,c`` (and ``RDSRECORDER_DB_IDENTIFIER=a,b,c``): every id once, in order."""
    out: dict[str, None] = {}
    for value in values or []:
        for part in value.split(","):
            ident = part.strip()
            if not ident:
                continue
            if not _DB_ID_RE.fullmatch(ident):
                raise ConfigError(
                    f"invalid --db-identifier {ident!r}: a DB instance or cluster id has 1-63 "
                    "letters, digits or '-' and starts with a letter"
                )
            out[ident] = None
    return tuple(out)


def discover_tags(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    """``--discover-tag KEY=VALUE`` (repeatable, or comma-separated in the env var)."""
    out: dict[tuple[str, str], None] = {}
    for value in values or []:
        for part in value.split(","):
            item = part.strip()
            if not item:
                continue
            key, sep, tag_value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"invalid --discover-tag {item!r}: expected KEY=VALUE")
            if len(key.strip()) > 128 or len(tag_value.strip()) > 256:
                raise ConfigError(
                    f"invalid --discover-tag {item!r}: a tag key has at most 128 characters, "
                    "a value at most 256"
                )
            out[(key.strip(), tag_value.strip())] = None
    return tuple(out)


def shard(value: str | None) -> Shard:
    """``--shard I/N``: 0 <= I < N."""
    if value is None or not value.strip():
        return Shard()
    m = _SHARD_RE.fullmatch(value.strip())
    if m is None:
        raise ConfigError(f"invalid --shard {value!r}: expected I/N, e.g. 0/2")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"invalid --shard {value!r}: needs N >= 1 and 0 <= I < N")
    return Shard(index, count)


def _which_dbs(
    db_identifier: list[str] | str | None,
    discover_tag: list[str] | None,
    discover_interval_s: float,
    retention_hours: float | None,
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The fleet options of ``sync``: ids and tags (one of them needed), their intervals."""
    ids = db_identifiers([db_identifier] if isinstance(db_identifier, str) else db_identifier)
    tags = discover_tags(discover_tag)
    if not ids and not tags:
        raise ConfigError(
            "missing --db-identifier (or env RDSRECORDER_DB_IDENTIFIER) or --discover-tag "
            "(or env RDSRECORDER_DISCOVER_TAG)"
        )
    if _finite(discover_interval_s, "--discover-interval") < MIN_DISCOVER_INTERVAL_S:
        raise ConfigError(
            f"--discover-interval must be at least {MIN_DISCOVER_INTERVAL_S:.0f} seconds, "
            f"not {discover_interval_s}"
        )
    _retention_hours(retention_hours)
    return ids, tags


def _retention_hours(value: float | None) -> float | None:
    if value is not None and not 0 < _finite(value, "--retention-hours") <= MAX_RETENTION_HOURS:
        raise ConfigError(
            f"--retention-hours must be more than 0 and at most {MAX_RETENTION_HOURS} (RDS keeps "
            f"PostgreSQL logs at most 7 days), not {value:g}"
        )
    return value


def _role(
    arn: str | None, external_id: str | None, session_name: str | None, flag: str
) -> RoleSettings | None:
    if arn is None or not arn.strip():
        if external_id:
            raise ConfigError(f"{flag}-external-id needs {flag}")
        return None
    if not _ROLE_ARN_RE.fullmatch(arn.strip()):
        raise ConfigError(
            f"invalid {flag} {arn!r}: expected an IAM role ARN such as "
            "arn:aws:iam::123456789012:role/rdsrecorder"
        )
    if external_id is not None and not _EXTERNAL_ID_RE.fullmatch(external_id):
        raise ConfigError(f"invalid {flag}-external-id: 2-1224 letters, digits or +=,.@:/-")
    name = session_name or DEFAULT_ROLE_SESSION_NAME
    if not _SESSION_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid --assume-role-session-name {name!r}: 2-64 letters, digits or +=,.@-"
        )
    return RoleSettings(arn=arn.strip(), external_id=external_id, session_name=name)


def _kms_key(sse: Sse | None, key: str | None) -> str | None:
    if key and sse is not Sse.KMS:
        raise ConfigError("--sse-kms-key-id needs --sse aws:kms")
    if key and not _KMS_KEY_RE.fullmatch(key):
        raise ConfigError(f"invalid --sse-kms-key-id {key!r}")
    return key or None


def _when(text: str, now: pendulum.DateTime, option: str) -> pendulum.DateTime:
    when = parse_when(text, now, option=option)
    if (when - now).total_seconds() > MAX_FUTURE_S:
        raise ConfigError(f"{option}: {when.to_iso8601_string()} is more than a year ahead")
    return when


def _observability(
    *,
    debug: bool,
    log_format: LogFormat,
    metrics_address: str = "0.0.0.0",
    metrics_port: int = 0,
    progress: bool | None = False,
    json_output: bool = False,
) -> ObservabilitySettings:
    if not 0 <= metrics_port <= 65535:
        raise ConfigError(f"--metrics-port must be between 0 and 65535, not {metrics_port}")
    if not metrics_address.strip():
        raise ConfigError("--metrics-address must not be empty")
    json_lines = log_format is LogFormat.JSON  # then nothing but JSON lines is printed
    return ObservabilitySettings(
        debug=debug,
        log_format=log_format,
        metrics_address=metrics_address.strip(),
        metrics_port=metrics_port,
        progress=False if json_lines else progress,
        json_output=json_output or json_lines,
    )


def _output_dir(value: str) -> str:
    """``get --output-dir``: a directory, or a path where one can be made. Checked by making an
    anonymous file in it (or in its nearest existing parent), which leaves nothing behind and
    also catches what permissions do not say (read-only mounts, /proc, root's own limits)."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"--output-dir {value!r} is not a directory: give a directory (made if absent)"
        )
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--output-dir {value!r}: {str(parent)!r} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--output-dir {value!r} is not usable: cannot write in {str(parent)!r} "
            f"({exc.strerror or exc}); give a writable directory"
        ) from None
    return value


def check_spool_dir(setting: str | None) -> str | None:
    """An explicit ``--spool-dir`` must be usable; the default (the temp dir) may fall back to
    memory at run time, with a warning."""
    if not setting or setting == SPOOL_IN_MEMORY:
        return setting or None
    problem = spool_dir_usable(setting)
    if problem is not None:
        raise ConfigError(f"--spool-dir is not usable: {problem}")
    return setting


_SERIES_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _series(names: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for raw in names:
        for name in str(raw).split(","):
            name = name.strip()
            if not name:
                continue
            if not _SERIES_RE.fullmatch(name):
                raise ConfigError(
                    f"invalid --include-series {name!r}: a log series such as 'audit.log' "
                    "(letters, digits, '.', '_', '-')"
                )
            if name not in out:
                out.append(name)
    return tuple(out)


def _api_budget(
    max_api_rps: float | None,
    max_api_burst: int | None,
    fleet_rps: float,
    fleet_burst: int,
    shard_of: Shard,
) -> tuple[float, int]:
    """This process's RDS rate and burst: as given, else its share of the fleet's."""
    if _finite(fleet_rps, "--fleet-max-api-rps") <= 0:
        raise ConfigError(f"--fleet-max-api-rps must be positive, not {fleet_rps}")
    if max_api_rps is not None and _finite(max_api_rps, "--max-api-rps") <= 0:
        raise ConfigError(f"--max-api-rps must be positive, not {max_api_rps}")
    for name, value in (("--fleet-max-api-burst", fleet_burst), ("--max-api-burst", max_api_burst)):
        if value is not None and not 1 <= value <= MAX_API_BURST:
            raise ConfigError(
                f"{name} must be between 1 and {MAX_API_BURST} (the account's own bucket), "
                f"not {value}"
            )
    rps = max_api_rps if max_api_rps is not None else process_share(fleet_rps, shard_of.count)
    burst = (
        max_api_burst if max_api_burst is not None else process_burst(fleet_burst, shard_of.count)
    )
    return rps, burst


# -- one builder per command -----------------------------------------------------------------------
def build_sync(
    *,
    now: pendulum.DateTime,
    start: str | None,
    finish: str | None,
    bucket: str | None,
    db_identifier: list[str] | str | None,
    concurrency: int,
    run_id: str | None,
    region: str | None,
    poll_interval_s: float,
    finish_grace_s: float | None,
    snapshot: bool,
    download_method: DownloadMethod,
    part_size_mib: int,
    max_api_rps: float | None,
    expected_bucket_owner: str | None,
    sse: Sse | None,
    sse_kms_key_id: str | None,
    shutdown_grace_s: float,
    max_api_burst: int | None = None,
    fleet_max_api_rps: float = DEFAULT_FLEET_API_RPS,
    fleet_max_api_burst: int = DEFAULT_FLEET_API_BURST,
    include_plain: bool,
    spool_dir: str | None,
    metrics_address: str,
    compress: Compression = Compression.NONE,
    storage_class: StorageClass = StorageClass.STANDARD,
    single_put_max_mib: int = DEFAULT_SINGLE_PUT_MAX_MIB,
    metrics_port: int,
    log_format: LogFormat,
    progress: bool | None,
    debug: bool,
    discover_tag: list[str] | None = None,
    discover_interval_s: float = DEFAULT_DISCOVER_INTERVAL_S,
    shard_spec: str | None = None,
    retention_hours: float | None = None,
    assume_role: str | None = None,
    assume_role_external_id: str | None = None,
    assume_role_session_name: str | None = None,
    s3_assume_role: str | None = None,
    include_series: Sequence[str] | None = None,
    json_output: bool = False,
    parquet_twins: bool = False,
) -> SyncSettings:
    if parquet_twins and (missing := duckdb_missing()):
        raise ConfigError(f"--parquet-twins: {missing}")
    ids, tags = _which_dbs(db_identifier, discover_tag, discover_interval_s, retention_hours)
    shard_of = shard(shard_spec)
    bucket_name = _bucket(bucket)
    start_at = _when(_required(start, "--start", "RDSRECORDER_START"), now, "--start")
    finish_at = _when(finish, now, "--finish") if finish else None
    validate_sync_window(start_at, finish_at, now)
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(
            f"--concurrency must be between 1 and {MAX_CONCURRENCY}, not {concurrency}"
        )
    if not MIN_PART_SIZE_MIB <= part_size_mib <= MAX_PART_SIZE_MIB:
        raise ConfigError(
            f"--part-size-mib must be between {MIN_PART_SIZE_MIB} and {MAX_PART_SIZE_MIB}, "
            f"not {part_size_mib}"
        )
    if not MIN_PART_SIZE_MIB <= single_put_max_mib <= MAX_SINGLE_PUT_MAX_MIB:
        raise ConfigError(
            f"--single-put-max-mib must be between {MIN_PART_SIZE_MIB} and "
            f"{MAX_SINGLE_PUT_MAX_MIB}, not {single_put_max_mib}"
        )
    if _finite(poll_interval_s, "--poll-interval") < MIN_POLL_INTERVAL_S:
        raise ConfigError(f"--poll-interval must be at least 1 second, not {poll_interval_s}")
    rps, burst = _api_budget(
        max_api_rps, max_api_burst, fleet_max_api_rps, fleet_max_api_burst, shard_of
    )
    if finish_grace_s is not None and _finite(finish_grace_s, "--finish-grace") < 0:
        raise ConfigError("--finish-grace must not be negative")
    if _finite(shutdown_grace_s, "--shutdown-grace") < 0:
        raise ConfigError("--shutdown-grace must not be negative")
    _kms_key(sse, sse_kms_key_id)
    return SyncSettings(
        db_identifier=ids[0] if ids else "",
        db_identifiers=ids,
        discover_tags=tags,
        discover_interval_s=discover_interval_s,
        shard=shard_of,
        retention_hours=retention_hours,
        bucket=bucket_name,
        start=start_at,
        finish=finish_at,
        run_id=_run_id(run_id, now),
        concurrency=concurrency,
        poll_interval_s=poll_interval_s,
        finish_grace_s=finish_grace_s,
        snapshot=snapshot,
        download_method=download_method,
        upload=UploadConfig(
            part_size_bytes=part_size_mib * MIB,
            single_put_max_bytes=single_put_max_mib * MIB,
            storage_class=StorageClass(storage_class),
        ),
        shutdown_grace_s=shutdown_grace_s,
        include_plain=include_plain,
        include_series=_series(include_series or ()),
        spool_dir=check_spool_dir(spool_dir),
        compress=Compression(compress),
        aws=AwsSettings(
            region=_region(region),
            expected_bucket_owner=_account(expected_bucket_owner),
            sse=sse,
            sse_kms_key_id=sse_kms_key_id or None,
            max_api_rps=rps,
            max_api_burst=burst,
            fleet_max_api_rps=fleet_max_api_rps,
            assume_role=_role(
                assume_role, assume_role_external_id, assume_role_session_name, "--assume-role"
            ),
            s3_assume_role=_role(
                s3_assume_role, None, assume_role_session_name, "--s3-assume-role"
            ),
        ),
        obs=_observability(
            debug=debug,
            log_format=log_format,
            metrics_address=metrics_address,
            metrics_port=metrics_port,
            progress=progress,
            json_output=json_output,
        ),
        parquet_twins=parquet_twins,
    )


def build_snapshot(
    *,
    now: pendulum.DateTime,
    start: str | None,
    db_identifier: str | None,
    run_id: str | None,
    region: str | None,
    wait: bool,
    metrics_address: str,
    metrics_port: int,
    log_format: LogFormat,
    debug: bool,
) -> SnapshotSettings:
    db = _required(db_identifier, "--db-identifier", "RDSRECORDER_DB_IDENTIFIER")
    start_at = _when(_required(start, "--start", "RDSRECORDER_START"), now, "--start")
    validate_snapshot_start(start_at, now)
    return SnapshotSettings(
        db_identifier=db,
        start=start_at,
        run_id=_run_id(run_id, now),
        wait=wait,
        aws=AwsSettings(region=_region(region)),
        obs=_observability(
            debug=debug,
            log_format=log_format,
            metrics_address=metrics_address,
            metrics_port=metrics_port,
        ),
    )


def build_verify(
    *,
    run_id: str | None,
    bucket: str | None,
    region: str | None,
    expected_bucket_owner: str | None,
    log_format: LogFormat,
    debug: bool,
    download: bool = False,
    json_output: bool = False,
) -> VerifySettings:
    run = _required(run_id, "--run-id", "RDSRECORDER_RUN_ID")
    if not _RUN_ID_RE.fullmatch(run):
        raise ConfigError(f"invalid --run-id {run!r}: 1-64 letters, digits, '.', '_' or '-'")
    return VerifySettings(
        bucket=_bucket(bucket),
        run_id=run,
        download=download,
        aws=AwsSettings(
            region=_region(region), expected_bucket_owner=_account(expected_bucket_owner)
        ),
        obs=_observability(debug=debug, log_format=log_format, json_output=json_output),
    )


def build_ls(
    *,
    bucket: str | None,
    region: str | None,
    expected_bucket_owner: str | None,
    log_format: LogFormat,
    debug: bool,
    json_output: bool = False,
) -> LsSettings:
    return LsSettings(
        bucket=_bucket(bucket),
        aws=AwsSettings(
            region=_region(region), expected_bucket_owner=_account(expected_bucket_owner)
        ),
        obs=_observability(debug=debug, log_format=log_format, json_output=json_output),
    )


def build_get(
    *,
    now: pendulum.DateTime,
    bucket: str | None,
    db_identifier: str | None,
    start: str | None,
    finish: str | None,
    output_dir: str | None,
    stdout: bool,
    concurrency: int,
    region: str | None,
    expected_bucket_owner: str | None,
    log_format: LogFormat,
    debug: bool,
    json_output: bool = False,
    pgbadger: str | None = None,
) -> GetSettings:
    db = _required(db_identifier, "--db-identifier", "RDSRECORDER_DB_IDENTIFIER")
    if "/" in db or db in (".", ".."):
        raise ConfigError(f"invalid --db-identifier {db!r}")
    start_at = parse_when(_required(start, "--start", "RDSRECORDER_START"), now, option="--start")
    finish_at = parse_when(finish, now, option="--finish") if finish else now
    if finish_at <= start_at:
        raise ConfigError(
            f"--finish ({finish_at.to_iso8601_string()}) must be after --start "
            f"({start_at.to_iso8601_string()})"
        )
    if stdout and output_dir:
        raise ConfigError("give either --output-dir or --stdout, not both")
    if not stdout and not (output_dir and output_dir.strip()):
        raise ConfigError("missing --output-dir (or --stdout to stream the files to a pipe)")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(
            f"--concurrency must be between 1 and {MAX_CONCURRENCY}, not {concurrency}"
        )
    if pgbadger is not None:
        pgbadger = _pgbadger_report(pgbadger, stdout)
    return GetSettings(
        bucket=_bucket(bucket),
        db_identifier=db,
        start=start_at,
        finish=finish_at,
        output_dir=_output_dir(output_dir.strip()) if output_dir and not stdout else None,
        stdout=stdout,
        concurrency=concurrency,
        aws=AwsSettings(
            region=_region(region), expected_bucket_owner=_account(expected_bucket_owner)
        ),
        obs=_observability(debug=debug, log_format=log_format, json_output=json_output),
        pgbadger=pgbadger,
    )


def _pgbadger_report(value: str, stdout: bool) -> str:
    """``get --pgbadger OUT``: pgbadger installed, OUT a file in an existing directory."""
    if stdout:
        raise ConfigError("--pgbadger reads the files get writes: give --output-dir, not --stdout")
    if find_pgbadger() is None:
        raise ConfigError(f"--pgbadger: {PGBADGER_MISSING}")
    path = Path(value.strip()).expanduser()
    if not value.strip() or path.is_dir():
        raise ConfigError(f"--pgbadger {value!r}: give the report's file name, e.g. report.html")
    if not path.parent.resolve().is_dir():
        raise ConfigError(f"--pgbadger {value!r}: {str(path.parent)!r} is not a directory")
    return str(path)


def build_iam_policy(
    *,
    bucket: str | None,
    command: Command,
    download_method: DownloadMethod,
    snapshot: bool,
    retention_hours: float | None,
    wait: bool,
    assume_role: str | None,
    s3_assume_role: str | None,
    sse: Sse | None,
    sse_kms_key_id: str | None,
    principal: Principal,
) -> IamPolicySettings:
    rds_role = _role(assume_role, None, None, "--assume-role")
    s3_role = _role(s3_assume_role, None, None, "--s3-assume-role")
    if (rds_role or s3_role) and command is not Command.SYNC:
        raise ConfigError("--assume-role and --s3-assume-role are options of --command sync")
    if principal is Principal.RDS_ROLE and rds_role is None:
        raise ConfigError("--for rds-role needs --assume-role (the role the RDS calls go through)")
    if principal is Principal.S3_ROLE and s3_role is None:
        raise ConfigError("--for s3-role needs --s3-assume-role (the role the S3 calls go through)")
    return IamPolicySettings(
        bucket=None if command is Command.SNAPSHOT else _bucket(bucket),
        command=command,
        download_method=download_method,
        snapshot=snapshot,
        retention_known=_retention_hours(retention_hours) is not None,
        wait=wait,
        assume_role=rds_role.arn if rds_role else None,
        s3_assume_role=s3_role.arn if s3_role else None,
        kms_key=_kms_key(sse, sse_kms_key_id),
        principal=principal,
    )


@dataclass(frozen=True, slots=True)
class QuerySettings:
    bucket: str
    db_identifier: str
    start: pendulum.DateTime
    finish: pendulum.DateTime
    sql: str
    output: OutputFormat = OutputFormat.TABLE
    memory_limit_mib: int = DEFAULT_MEMORY_LIMIT_MIB
    work_dir: str | None = None  # None: the system's temp dir
    concurrency: int = DEFAULT_GET_CONCURRENCY
    aws: AwsSettings = field(default_factory=AwsSettings)
    obs: ObservabilitySettings = field(default_factory=ObservabilitySettings)


def _work_dir(value: str) -> str:
    """``query --work-dir``: an existing directory where an anonymous file can be made."""
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--work-dir {value!r} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--work-dir {value!r} is not usable ({exc.strerror or exc}); give a writable directory"
        ) from None
    return str(path)


def build_query(
    *,
    now: pendulum.DateTime,
    bucket: str | None,
    db_identifier: str | None,
    start: str | None,
    finish: str | None,
    sql: str | None,
    json_rows: bool,
    csv_rows: bool,
    memory_limit_mib: int,
    work_dir: str | None,
    concurrency: int,
    region: str | None,
    expected_bucket_owner: str | None,
    log_format: LogFormat,
    debug: bool,
) -> QuerySettings:
    missing = duckdb_missing()
    if missing:
        raise ConfigError(missing)
    window = build_get(
        now=now,
        bucket=bucket,
        db_identifier=db_identifier,
        start=start,
        finish=finish,
        output_dir=None,
        stdout=True,
        concurrency=concurrency,
        region=region,
        expected_bucket_owner=expected_bucket_owner,
        log_format=log_format,
        debug=debug,
    )
    if sql is None or not sql.strip():
        raise ConfigError('missing the SQL statement, e.g. "SELECT count(*) FROM logs"')
    if json_rows and csv_rows:
        raise ConfigError("give either --json or --csv, not both")
    if memory_limit_mib < MIN_MEMORY_LIMIT_MIB:
        raise ConfigError(
            f"--memory-limit-mib must be at least {MIN_MEMORY_LIMIT_MIB}, not {memory_limit_mib}"
        )
    if work_dir is not None:
        work_dir = _work_dir(work_dir.strip())
    output = (
        OutputFormat.JSON if json_rows else OutputFormat.CSV if csv_rows else OutputFormat.TABLE
    )
    return QuerySettings(
        bucket=window.bucket,
        db_identifier=window.db_identifier,
        start=window.start,
        finish=window.finish,
        sql=sql,
        output=output,
        memory_limit_mib=memory_limit_mib,
        work_dir=work_dir,
        concurrency=concurrency,
        aws=window.aws,
        obs=window.obs,
    )


@dataclass(frozen=True, slots=True)
class AthenaDdlSettings:
    bucket: str
    run_id: str
    table: str | None = None
    aws: AwsSettings = field(default_factory=AwsSettings)
    obs: ObservabilitySettings = field(default_factory=ObservabilitySettings)


_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def build_athena_ddl(
    *,
    bucket: str | None,
    run_id: str | None,
    table: str | None,
    region: str | None,
    expected_bucket_owner: str | None,
    log_format: LogFormat,
    debug: bool,
) -> AthenaDdlSettings:
    run = _required(run_id, "--run-id", "RDSRECORDER_RUN_ID")
    if not _RUN_ID_RE.fullmatch(run):
        raise ConfigError(f"invalid --run-id {run!r}")
    if table is not None and not _TABLE_RE.fullmatch(table):
        raise ConfigError(f"invalid --table {table!r}: letters, digits and _, at most 128")
    return AthenaDdlSettings(
        bucket=_bucket(bucket),
        run_id=run,
        table=table,
        aws=AwsSettings(
            region=_region(region), expected_bucket_owner=_account(expected_bucket_owner)
        ),
        obs=_observability(debug=debug, log_format=log_format),
    )
