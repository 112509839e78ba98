"""The command line, declared with typer: each command's options (each also an ``RDSRECORDER_*``
env var) handed to its builder in ``rdsrecorder.config`` and run by ``rdsrecorder.runtime``.
Nothing else happens here."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Annotated

import typer

from rdsrecorder import __version__, config, runtime
from rdsrecorder.compression import Compression
from rdsrecorder.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DISCOVER_INTERVAL_S,
    DEFAULT_GET_CONCURRENCY,
    DEFAULT_MAX_API_BURST,
    DEFAULT_MAX_API_RPS,
    DEFAULT_METRICS_PORT,
    DEFAULT_PART_SIZE_MIB,
    DEFAULT_POLL_INTERVAL_S,
    DEFAULT_SHUTDOWN_GRACE_S,
    DEFAULT_SINGLE_PUT_MAX_MIB,
    MAX_CONCURRENCY,
    MAX_PART_SIZE_MIB,
    MIN_PART_SIZE_MIB,
    LogFormat,
    Sse,
)
from rdsrecorder.errors import EXIT_CONFIG, EXIT_INTERRUPTED
from rdsrecorder.iam import Command, Principal
from rdsrecorder.models import DownloadMethod
from rdsrecorder.query_options import DEFAULT_MEMORY_LIMIT_MIB
from rdsrecorder.s3.upload_config import StorageClass

cli = typer.Typer(
    name="rdsrecorder",
    help=(
        "Copy the PostgreSQL log files of AWS RDS / Aurora into S3 before RDS deletes them, "
        "follow new files as they rotate, and take DB snapshots on time."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ENV = "RDSRECORDER_"


def given_run_id(value: str | None) -> str | None:
    """The run id as given. Click reads a set but empty ``RDSRECORDER_RUN_ID`` as unset; it is
    passed on as empty, so that the config refuses it as it refuses ``--run-id ''``."""
    if value is None and os.environ.get(ENV + "RUN_ID") == "":
        return ""
    return value


# -- options shared by several commands ----------------------------------------------------------
BucketOpt = Annotated[
    str | None,
    typer.Option(
        envvar=[ENV + "BUCKET", "AWS_S3_BUCKET_NAME"],
        help="Required. The S3 bucket (env RDSRECORDER_BUCKET or AWS_S3_BUCKET_NAME).",
    ),
]
RegionOpt = Annotated[
    str | None, typer.Option(envvar=[ENV + "REGION"], help="AWS region (default: AWS config).")
]
OwnerOpt = Annotated[
    str | None,
    typer.Option(
        envvar=ENV + "EXPECTED_BUCKET_OWNER",
        help="12-digit account id that must own the bucket; S3 refuses the call otherwise.",
    ),
]
DebugOpt = Annotated[
    bool, typer.Option("--debug", envvar=ENV + "DEBUG", help="Debug logs and tracebacks.")
]
LogFormatOpt = Annotated[
    LogFormat, typer.Option(envvar=ENV + "LOG_FORMAT", help="Log format: text or json lines.")
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        envvar=ENV + "JSON",
        help="Print the result as one JSON document on stdout instead of tables (logs stay on "
        "stderr; fields: docs/json-output.md). Implied by --log-format json.",
    ),
]
MetricsAddrOpt = Annotated[
    str, typer.Option(envvar=ENV + "METRICS_ADDRESS", help="Address of the /metrics server.")
]
# get and query: what reads a DB's logs back for a window.
ReadDbOpt = Annotated[
    str | None,
    typer.Option(
        "--db-identifier",
        "-d",
        envvar=ENV + "DB_IDENTIFIER",
        help="Required. DB instance id, or the Aurora cluster id a run was made for.",
    ),
]
ReadStartOpt = Annotated[
    str | None,
    typer.Option(
        envvar=ENV + "START", help="Required. Window start: a date, ISO-8601, 'now-2h' ..."
    ),
]
ReadFinishOpt = Annotated[
    str | None,
    typer.Option(envvar=ENV + "FINISH", help="Window end (exclusive). Default: now."),
]
GetConcurrencyOpt = Annotated[
    int, typer.Option(envvar=ENV + "CONCURRENCY", help="Objects downloaded at the same time.")
]


@cli.command()
def sync(
    start: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "START",
            help="Required. Window start: '2024-02-04 13:00:00.000 UTC', ISO-8601, 'now', "
            "'now-2h', or 'earliest' (whatever RDS still keeps).",
        ),
    ] = None,
    finish: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "FINISH",
            help="Window end (exclusive). Omit to follow new log files forever.",
        ),
    ] = None,
    bucket: BucketOpt = None,
    db_identifier: Annotated[
        list[str] | None,
        typer.Option(
            "--db-identifier",
            "-d",
            envvar=ENV + "DB_IDENTIFIER",
            help="DB instance id, or an Aurora cluster id (then every member's logs are "
            "copied). Repeatable and comma-separated (-d a -d b,c). Required unless "
            "--discover-tag selects the DBs.",
        ),
    ] = None,
    discover_tag: Annotated[
        list[str] | None,
        typer.Option(
            envvar=ENV + "DISCOVER_TAG",
            help="KEY=VALUE: follow every PostgreSQL instance of the region with this tag (an "
            "Aurora member also through its cluster's tags). Repeatable, comma-separated; all "
            "must match.",
        ),
    ] = None,
    discover_interval: Annotated[
        float,
        typer.Option(
            envvar=ENV + "DISCOVER_INTERVAL",
            help="Seconds between discoveries while following (DBs that appear are picked up, "
            "DBs that disappear finish).",
        ),
    ] = DEFAULT_DISCOVER_INTERVAL_S,
    shard: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "SHARD",
            help="I/N: copy only this process's share of the DBs (0-based; rendezvous hashing "
            "of the instance or cluster id). N processes with the same run id cover the fleet "
            "once.",
        ),
    ] = None,
    retention_hours: Annotated[
        float | None,
        typer.Option(
            envvar=ENV + "RETENTION_HOURS",
            help="How long RDS keeps log files, for the retention headroom metric (default: "
            "rds.log_retention_period of the DB's parameter group, else 72).",
        ),
    ] = None,
    assume_role: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "ASSUME_ROLE",
            help="IAM role ARN to assume (STS AssumeRole, refreshed before it expires) for every "
            "RDS call: DBs in another account. S3 keeps this process's credentials.",
        ),
    ] = None,
    assume_role_external_id: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "ASSUME_ROLE_EXTERNAL_ID", help="External id the role's trust policy asks."
        ),
    ] = None,
    assume_role_session_name: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "ASSUME_ROLE_SESSION_NAME",
            help="Session name of the assumed roles (default: rdsrecorder; shows in CloudTrail).",
        ),
    ] = None,
    s3_assume_role: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "S3_ASSUME_ROLE",
            help="IAM role ARN to assume for the S3 calls (default: this process's credentials).",
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            envvar=ENV + "CONCURRENCY",
            help=f"Files copied at the same time (1-{MAX_CONCURRENCY}).",
        ),
    ] = DEFAULT_CONCURRENCY,
    run_id: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "RUN_ID",
            help="Run id: the S3 prefix. Default: a new one, printed at start. Give the same id "
            "to resume a run (a restarted container should always get the same id).",
        ),
    ] = None,
    region: RegionOpt = None,
    poll_interval: Annotated[
        float,
        typer.Option(
            envvar=ENV + "POLL_INTERVAL",
            help="Seconds between listings when following (at least 1).",
        ),
    ] = DEFAULT_POLL_INTERVAL_S,
    finish_grace: Annotated[
        float | None,
        typer.Option(
            envvar=ENV + "FINISH_GRACE",
            help="Seconds after finish to wait for the last file to rotate "
            "(default: one rotation period + 5 min); then it is copied as it is.",
        ),
    ] = None,
    snapshot: Annotated[
        bool,
        typer.Option(
            "--snapshot/--no-snapshot",
            envvar=ENV + "SNAPSHOT",
            help="Wait & Sync mode: take a DB snapshot at start.",
        ),
    ] = True,
    download_method: Annotated[
        DownloadMethod,
        typer.Option(
            envvar=ENV + "DOWNLOAD_METHOD",
            help="auto: whole-file endpoint when allowed, else DownloadDBLogFilePortion.",
        ),
    ] = DownloadMethod.AUTO,
    part_size_mib: Annotated[
        int,
        typer.Option(
            envvar=ENV + "PART_SIZE_MIB",
            help=f"S3 multipart part size in MiB ({MIN_PART_SIZE_MIB}-{MAX_PART_SIZE_MIB}).",
        ),
    ] = DEFAULT_PART_SIZE_MIB,
    fleet_max_api_rps: Annotated[
        float,
        typer.Option(
            envvar=ENV + "FLEET_MAX_API_RPS",
            help="RDS API calls per second for the whole fleet: each of the N processes of "
            "--shard I/N takes 1/N of it (the account allows ~12/s to every tool together; "
            "see docs/api-budget.md).",
        ),
    ] = DEFAULT_MAX_API_RPS,
    fleet_max_api_burst: Annotated[
        int,
        typer.Option(
            envvar=ENV + "FLEET_MAX_API_BURST",
            help="RDS API calls the whole fleet may send at once before the rate paces them "
            "(1/N per process; the account's bucket holds ~300).",
        ),
    ] = DEFAULT_MAX_API_BURST,
    max_api_rps: Annotated[
        float | None,
        typer.Option(
            envvar=ENV + "MAX_API_RPS",
            help="Cap on this process's RDS API calls per second (default: "
            "--fleet-max-api-rps / N). Halved on throttling, then climbs back.",
        ),
    ] = None,
    max_api_burst: Annotated[
        int | None,
        typer.Option(
            envvar=ENV + "MAX_API_BURST",
            help="RDS API calls this process may send at once before its rate paces them "
            "(default: --fleet-max-api-burst / N).",
        ),
    ] = None,
    expected_bucket_owner: OwnerOpt = None,
    sse: Annotated[
        Sse | None, typer.Option(envvar=ENV + "SSE", help="Server-side encryption of objects.")
    ] = None,
    sse_kms_key_id: Annotated[
        str | None, typer.Option(envvar=ENV + "SSE_KMS_KEY_ID", help="KMS key for aws:kms.")
    ] = None,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            envvar=ENV + "SHUTDOWN_GRACE",
            help="Seconds files in flight get to finish on SIGTERM/SIGINT.",
        ),
    ] = DEFAULT_SHUTDOWN_GRACE_S,
    include_plain: Annotated[
        bool,
        typer.Option(envvar=ENV + "INCLUDE_PLAIN", help="Also copy the non-.csv (stderr) files."),
    ] = False,
    include_series: Annotated[
        list[str] | None,
        typer.Option(
            envvar=ENV + "INCLUDE_SERIES",
            help="Also copy the files of this log series (e.g. 'audit.log' for "
            "error/audit.log.<date>.csv), under keys ending in _<series>; repeatable or "
            "comma-separated. Only postgresql.log is copied by default.",
        ),
    ] = None,
    spool_dir: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "SPOOL_DIR",
            help="Where parts wait while they fill and upload (default: the temp dir; "
            "'memory' keeps them in RAM).",
        ),
    ] = None,
    compress: Annotated[
        Compression,
        typer.Option(
            envvar=ENV + "COMPRESS",
            help="none: objects hold the log's bytes as they are; gzip: keys end in .gz and "
            "objects are gzip streams of the exact bytes (pgbadger reads them directly).",
        ),
    ] = Compression.NONE,
    storage_class: Annotated[
        StorageClass,
        typer.Option(
            envvar=ENV + "STORAGE_CLASS",
            help="S3 storage class of the log objects (the cold ones bill at least 128 KB "
            "and 30/90 days per object: see docs/bucket.md).",
        ),
    ] = StorageClass.STANDARD,
    single_put_max_mib: Annotated[
        int,
        typer.Option(
            envvar=ENV + "SINGLE_PUT_MAX_MIB",
            help="Files up to this size are spooled whole and sent in one PutObject; larger "
            "ones stream into a multipart upload as they arrive (5-5120). S3 checks the SHA-256 "
            "of every object or part.",
        ),
    ] = DEFAULT_SINGLE_PUT_MAX_MIB,
    parquet_twins: Annotated[
        bool,
        typer.Option(
            "--parquet-twins",
            envvar=ENV + "PARQUET_TWINS",
            help="Also write a Parquet twin of each complete copy under athena/<run id>/db=/date=/ "
            "for Athena (the [query] extra; the raw objects stay as they are; see athena-ddl).",
        ),
    ] = False,
    metrics_address: MetricsAddrOpt = "0.0.0.0",
    metrics_port: Annotated[
        int,
        typer.Option(
            envvar=ENV + "METRICS_PORT", help="Port of the /metrics server (0: disabled)."
        ),
    ] = DEFAULT_METRICS_PORT,
    log_format: LogFormatOpt = LogFormat.TEXT,
    json_output: JsonOpt = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            envvar=ENV + "PROGRESS",
            help="Progress bar (default: when stderr is a terminal).",
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Copy the csvlog files whose span overlaps [start, finish) into S3, then (if finish is in
    the future) follow new files until finish."""
    raise typer.Exit(
        runtime.sync(
            debug,
            log_format,
            lambda: config.build_sync(
                now=runtime.now(),
                start=start,
                finish=finish,
                bucket=bucket,
                db_identifier=db_identifier,
                discover_tag=discover_tag,
                discover_interval_s=discover_interval,
                shard_spec=shard,
                retention_hours=retention_hours,
                assume_role=assume_role,
                assume_role_external_id=assume_role_external_id,
                assume_role_session_name=assume_role_session_name,
                s3_assume_role=s3_assume_role,
                concurrency=concurrency,
                run_id=given_run_id(run_id),
                region=region,
                poll_interval_s=poll_interval,
                finish_grace_s=finish_grace,
                snapshot=snapshot,
                download_method=download_method,
                part_size_mib=part_size_mib,
                max_api_rps=max_api_rps,
                max_api_burst=max_api_burst,
                fleet_max_api_rps=fleet_max_api_rps,
                fleet_max_api_burst=fleet_max_api_burst,
                expected_bucket_owner=expected_bucket_owner,
                sse=sse,
                sse_kms_key_id=sse_kms_key_id,
                shutdown_grace_s=shutdown_grace,
                include_plain=include_plain,
                include_series=include_series,
                spool_dir=spool_dir,
                compress=compress,
                storage_class=storage_class,
                single_put_max_mib=single_put_max_mib,
                metrics_address=metrics_address,
                metrics_port=metrics_port,
                log_format=log_format,
                progress=progress,
                debug=debug,
                json_output=json_output,
                parquet_twins=parquet_twins,
            ),
        )
    )


@cli.command()
def snapshot(
    start: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "START",
            help="Required. When to take the snapshot (in the future): a date, or 'now+10m'.",
        ),
    ] = None,
    db_identifier: Annotated[
        str | None,
        typer.Option(
            "--db-identifier",
            "-d",
            envvar=ENV + "DB_IDENTIFIER",
            help="Required. DB instance id (a cluster snapshot is taken when it belongs to an "
            "Aurora cluster), or an Aurora cluster id.",
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "RUN_ID",
            help="Run id tagged on the snapshot (run-id=...). Default: a new one.",
        ),
    ] = None,
    region: RegionOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", envvar=ENV + "WAIT", help="Wait until it is available.")
    ] = False,
    metrics_address: MetricsAddrOpt = "0.0.0.0",
    metrics_port: Annotated[
        int,
        typer.Option(
            envvar=ENV + "METRICS_PORT",
            help="Serve /metrics on this port while waiting (0: none, the default).",
        ),
    ] = 0,
    log_format: LogFormatOpt = LogFormat.TEXT,
    debug: DebugOpt = False,
) -> None:
    """Take a DB snapshot (a cluster snapshot for Aurora) at a future time."""
    raise typer.Exit(
        runtime.snapshot(
            debug,
            log_format,
            lambda: config.build_snapshot(
                now=runtime.now(),
                start=start,
                db_identifier=db_identifier,
                run_id=given_run_id(run_id),
                region=region,
                wait=wait,
                metrics_address=metrics_address,
                metrics_port=metrics_port,
                log_format=log_format,
                debug=debug,
            ),
        )
    )


@cli.command()
def verify(
    run_id: Annotated[
        str | None, typer.Option(envvar=ENV + "RUN_ID", help="Required. The run to check.")
    ] = None,
    bucket: BucketOpt = None,
    region: RegionOpt = None,
    expected_bucket_owner: OwnerOpt = None,
    download: Annotated[
        bool,
        typer.Option(
            "--download",
            envvar=ENV + "DOWNLOAD",
            help="Re-read every object, even those S3 holds a matching checksum for.",
        ),
    ] = False,
    json_output: JsonOpt = False,
    log_format: LogFormatOpt = LogFormat.TEXT,
    debug: DebugOpt = False,
) -> None:
    """Check a run's objects (by the checksum S3 keeps, or by re-reading them) and that the
    window has no holes."""
    raise typer.Exit(
        runtime.verify(
            debug,
            log_format,
            lambda: config.build_verify(
                run_id=given_run_id(run_id),
                bucket=bucket,
                region=region,
                expected_bucket_owner=expected_bucket_owner,
                log_format=log_format,
                debug=debug,
                download=download,
                json_output=json_output,
            ),
        )
    )


@cli.command()
def get(
    bucket: BucketOpt = None,
    db_identifier: ReadDbOpt = None,
    start: ReadStartOpt = None,
    finish: ReadFinishOpt = None,
    output_dir: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "OUTPUT_DIR",
            help="Where the files go: <dir>/<instance>/<RDS log file name>.",
        ),
    ] = None,
    stdout: Annotated[
        bool,
        typer.Option(
            "--stdout", help="Stream the window's files to stdout in time order, for a pipe."
        ),
    ] = False,
    pgbadger: Annotated[
        str | None,
        typer.Option(
            "--pgbadger",
            metavar="OUT.html",
            help="Then run pgbadger (Debian's package) on the files written: its report in "
            "OUT (.html, .txt or .json).",
        ),
    ] = None,
    concurrency: GetConcurrencyOpt = DEFAULT_GET_CONCURRENCY,
    region: RegionOpt = None,
    expected_bucket_owner: OwnerOpt = None,
    json_output: JsonOpt = False,
    log_format: LogFormatOpt = LogFormat.TEXT,
    debug: DebugOpt = False,
) -> None:
    """Bring back a DB's log files for a time window, from every run in the bucket, checked
    against their sha256 and decompressed."""
    raise typer.Exit(
        runtime.get(
            debug,
            log_format,
            lambda: config.build_get(
                now=runtime.now(),
                bucket=bucket,
                db_identifier=db_identifier,
                start=start,
                finish=finish,
                output_dir=output_dir,
                stdout=stdout,
                concurrency=concurrency,
                region=region,
                expected_bucket_owner=expected_bucket_owner,
                log_format=log_format,
                debug=debug,
                json_output=json_output,
                pgbadger=pgbadger,
            ),
        )
    )


@cli.command()
def query(
    sql: Annotated[
        str | None,
        typer.Argument(
            help="One SQL statement (DuckDB's dialect) over the table logs, e.g. "
            '"SELECT error_severity, count(*) FROM logs GROUP BY 1".',
            show_default=False,
        ),
    ] = None,
    bucket: BucketOpt = None,
    db_identifier: ReadDbOpt = None,
    start: ReadStartOpt = None,
    finish: ReadFinishOpt = None,
    json_rows: Annotated[
        bool, typer.Option("--json", help="The rows as one JSON array of objects.")
    ] = False,
    csv_rows: Annotated[
        bool, typer.Option("--csv", help="The rows as CSV with a header line.")
    ] = False,
    memory_limit_mib: Annotated[
        int,
        typer.Option(
            envvar=ENV + "MEMORY_LIMIT_MIB",
            help="DuckDB's memory limit; beyond it, it spills to the work directory.",
        ),
    ] = DEFAULT_MEMORY_LIMIT_MIB,
    work_dir: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "WORK_DIR",
            help="Where the window's files and DuckDB's spill go while the query runs "
            "(default: the temp dir); room for the window's uncompressed logs.",
        ),
    ] = None,
    concurrency: GetConcurrencyOpt = DEFAULT_GET_CONCURRENCY,
    region: RegionOpt = None,
    expected_bucket_owner: OwnerOpt = None,
    log_format: LogFormatOpt = LogFormat.TEXT,
    debug: DebugOpt = False,
) -> None:
    """SQL over the csvlog rows of a DB and time window, from every run in the bucket (the
    [query] extra: DuckDB). The table is logs; columns: PostgreSQL's csvlog names, plus
    instance (docs/query.md)."""
    raise typer.Exit(
        runtime.query(
            debug,
            log_format,
            lambda: config.build_query(
                now=runtime.now(),
                bucket=bucket,
                db_identifier=db_identifier,
                start=start,
                finish=finish,
                sql=sql,
                json_rows=json_rows,
                csv_rows=csv_rows,
                memory_limit_mib=memory_limit_mib,
                work_dir=work_dir,
                concurrency=concurrency,
                region=region,
                expected_bucket_owner=expected_bucket_owner,
                log_format=log_format,
                debug=debug,
            ),
        )
    )


@cli.command("ls")
def ls_(
    bucket: BucketOpt = None,
    region: RegionOpt = None,
    expected_bucket_owner: OwnerOpt = None,
    json_output: JsonOpt = False,
    log_format: LogFormatOpt = LogFormat.TEXT,
    debug: DebugOpt = False,
) -> None:
    """List the runs kept in a bucket."""
    raise typer.Exit(
        runtime.ls(
            debug,
            log_format,
            lambda: config.build_ls(
                bucket=bucket,
                region=region,
                expected_bucket_owner=expected_bucket_owner,
                log_format=log_format,
                debug=debug,
                json_output=json_output,
            ),
        )
    )


@cli.command("athena-ddl")
def athena_ddl(
    run_id: Annotated[
        str | None,
        typer.Option(envvar=ENV + "RUN_ID", help="Required. The run synced with --parquet-twins."),
    ] = None,
    bucket: BucketOpt = None,
    table: Annotated[
        str | None, typer.Option(help="Table name (default: rdsrecorder_<run id>).")
    ] = None,
    region: RegionOpt = None,
    expected_bucket_owner: OwnerOpt = None,
    log_format: LogFormatOpt = LogFormat.TEXT,
    debug: DebugOpt = False,
) -> None:
    """Print the Athena CREATE EXTERNAL TABLE over a run's Parquet twins (csvlog columns typed,
    partition projection on db and date; docs/query.md)."""
    raise typer.Exit(
        runtime.athena_ddl(
            debug,
            log_format,
            lambda: config.build_athena_ddl(
                bucket=bucket,
                run_id=given_run_id(run_id),
                table=table,
                region=region,
                expected_bucket_owner=expected_bucket_owner,
                log_format=log_format,
                debug=debug,
            ),
        )
    )


@cli.command("iam-policy")
def iam_policy(
    bucket: BucketOpt = None,
    command: Annotated[
        Command,
        typer.Option(
            help="The command the policy is for (verify, get, ls, query and athena-ddl only read)."
        ),
    ] = Command.SYNC,
    download_method: Annotated[
        DownloadMethod,
        typer.Option(
            envvar=ENV + "DOWNLOAD_METHOD",
            help="sync's --download-method: auto needs both download actions, complete and "
            "portion one each.",
        ),
    ] = DownloadMethod.AUTO,
    snapshot: Annotated[
        bool,
        typer.Option(
            "--snapshot/--no-snapshot",
            envvar=ENV + "SNAPSHOT",
            help="sync's --snapshot: the snapshot of Wait & Sync mode.",
        ),
    ] = True,
    retention_hours: Annotated[
        float | None,
        typer.Option(
            envvar=ENV + "RETENTION_HOURS",
            help="sync's --retention-hours: given, the DB's parameters need not be read.",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", envvar=ENV + "WAIT", help="snapshot's --wait."),
    ] = False,
    assume_role: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "ASSUME_ROLE",
            help="sync's --assume-role: the RDS actions go on that role, sts:AssumeRole on it "
            "to this process.",
        ),
    ] = None,
    s3_assume_role: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "S3_ASSUME_ROLE",
            help="sync's --s3-assume-role: the S3 actions go on that role.",
        ),
    ] = None,
    sse: Annotated[
        Sse | None, typer.Option(envvar=ENV + "SSE", help="--sse of sync (or of the objects read).")
    ] = None,
    sse_kms_key_id: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "SSE_KMS_KEY_ID",
            help="A customer managed KMS key (id, ARN or alias/...): the KMS actions on it.",
        ),
    ] = None,
    principal: Annotated[
        Principal,
        typer.Option(
            "--for",
            help="Whose policy: this process's identity, or the role of --assume-role "
            "(rds-role) or of --s3-assume-role (s3-role).",
        ),
    ] = Principal.IDENTITY,
) -> None:
    """Print the least-privilege IAM policy (JSON) for these options; each statement's Sid says
    what it buys (docs/iam.md)."""
    raise typer.Exit(
        runtime.iam_policy(
            lambda: config.build_iam_policy(
                bucket=bucket,
                command=command,
                download_method=download_method,
                snapshot=snapshot,
                retention_hours=retention_hours,
                wait=wait,
                assume_role=assume_role,
                s3_assume_role=s3_assume_role,
                sse=sse,
                sse_kms_key_id=sse_kms_key_id,
                principal=principal,
            )
        )
    )


@cli.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"rdsrecorder {__version__}")


@cli.command(
    "lab",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def lab(ctx: typer.Context) -> None:
    """The lab (the [lab] extra): emulated RDS log API + local S3, to try rdsrecorder without
    AWS. See `rdsrecorder lab --help`."""
    # The lab is its own package with its own dependencies: imported here, when the command
    # runs, so that the runtime never loads it (docs/lab.md).
    try:
        from rdsrecorder_lab.cli import lab_cli

        if importlib.util.find_spec("moto") is None:
            raise ModuleNotFoundError("No module named 'moto'")
    except ImportError as exc:
        print(
            f"error: the lab needs the [lab] extra: pip install 'rdsrecorder[lab]' ({exc})",
            file=sys.stderr,
        )
        raise typer.Exit(EXIT_CONFIG) from None
    group = typer.main.get_command(lab_cli)
    code = group.main(args=ctx.args, prog_name=ctx.command_path, standalone_mode=False)
    raise typer.Exit(code if isinstance(code, int) else 0)


def _json_log_format(args: list[str]) -> bool:
    """``--log-format json`` (or its env var), read by hand: for the errors of a command line
    that click could not parse."""
    for i, arg in enumerate(args):
        if arg == "--log-format=json" or (
            arg == "--log-format" and args[i + 1 : i + 2] == ["json"]
        ):
            return True
    return os.environ.get(ENV + "LOG_FORMAT", "").strip().lower() == "json"


def main() -> None:
    """The console script: typer's own usage errors become the same one ``error:`` line (exit 2)
    as every other bad input; no arguments prints the help."""
    try:
        code = cli(standalone_mode=False)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except typer.TyperException as exc:  # typer's click: usage errors, bad parameters
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help())
            code = 0
        else:
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            line = f"error: {' '.join(str(message).split())}{hint}"
            if _json_log_format(sys.argv[1:]):  # nothing but JSON lines, even before parsing
                runtime.json_lines()
            runtime.stderr_line(line)
            code = int(getattr(exc, "exit_code", EXIT_CONFIG) or EXIT_CONFIG)
    sys.exit(code if isinstance(code, int) else 0)
