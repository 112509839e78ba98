"""The command line. Thin: it parses flags (each also an RDSRECORDER_* env var), builds one frozen
settings object and hands it to ``rdsrecorder.app``. No logic here."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from rdsrecorder import __version__, app
from rdsrecorder.models import DownloadMethod
from rdsrecorder.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_API_RPS,
    DEFAULT_METRICS_PORT,
    DEFAULT_POLL_INTERVAL_S,
    DEFAULT_SHUTDOWN_GRACE_S,
)

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
lab_cli = typer.Typer(
    help="A local emulator of the RDS log APIs plus a local S3, to try rdsrecorder without AWS.",
    no_args_is_help=True,
)
cli.add_typer(lab_cli, name="lab")

ENV = "RDSRECORDER_"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class Sse(StrEnum):
    AES256 = "AES256"
    kms = "aws:kms"


# -- options shared by several commands ----------------------------------------------------------
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db-identifier",
        "-d",
        envvar=ENV + "DB_IDENTIFIER",
        help="DB instance id, or an Aurora cluster id (then every member's logs are copied).",
    ),
]
BucketOpt = Annotated[
    str | None,
    typer.Option(
        envvar=[ENV + "BUCKET", "AWS_S3_BUCKET_NAME"],
        help="Destination S3 bucket (env RDSRECORDER_BUCKET or AWS_S3_BUCKET_NAME).",
    ),
]
RunIdOpt = Annotated[
    str | None,
    typer.Option(
        envvar=ENV + "RUN_ID",
        help="Run id: the S3 prefix. Default: a new one, printed at start. Give the same id to "
        "resume a run (a restarted container should always get the same id).",
    ),
]
RegionOpt = Annotated[
    str | None, typer.Option(envvar=[ENV + "REGION"], help="AWS region (default: AWS config).")
]
DebugOpt = Annotated[
    bool, typer.Option("--debug", envvar=ENV + "DEBUG", help="Debug logs and tracebacks.")
]
LogFormatOpt = Annotated[
    LogFormat, typer.Option(envvar=ENV + "LOG_FORMAT", help="Log format: text or json lines.")
]
MetricsAddrOpt = Annotated[
    str, typer.Option(envvar=ENV + "METRICS_ADDRESS", help="Address of the /metrics server.")
]
MetricsPortOpt = Annotated[
    int,
    typer.Option(envvar=ENV + "METRICS_PORT", help="Port of the /metrics server (0: disabled)."),
]
MaxRpsOpt = Annotated[
    float,
    typer.Option(
        envvar=ENV + "MAX_API_RPS",
        help="Cap on RDS API calls per second across all tasks (the account allows ~12/s).",
    ),
]


@cli.command()
def sync(
    start: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "START",
            help="Window start: '2024-02-04 13:00:00.000 UTC', ISO-8601, 'now' or 'now-2h'.",
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
    db_identifier: DbOpt = None,
    concurrency: Annotated[
        int, typer.Option(envvar=ENV + "CONCURRENCY", help="Files copied at the same time.")
    ] = DEFAULT_CONCURRENCY,
    run_id: RunIdOpt = None,
    region: RegionOpt = None,
    poll_interval: Annotated[
        float,
        typer.Option(envvar=ENV + "POLL_INTERVAL", help="Seconds between listings when following."),
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
        int, typer.Option(envvar=ENV + "PART_SIZE_MIB", help="S3 multipart part size (>= 5).")
    ] = 8,
    max_api_rps: MaxRpsOpt = DEFAULT_MAX_API_RPS,
    expected_bucket_owner: Annotated[
        str | None,
        typer.Option(envvar=ENV + "EXPECTED_BUCKET_OWNER", help="Account id owning the bucket."),
    ] = None,
    sse: Annotated[
        Sse | None, typer.Option(envvar=ENV + "SSE", help="Server-side encryption.")
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
    spool_dir: Annotated[
        str | None,
        typer.Option(
            envvar=ENV + "SPOOL_DIR",
            help="Where parts wait while they fill and upload (default: the temp dir; "
            "'memory' keeps them in RAM: + 2 x part size per file in flight).",
        ),
    ] = None,
    metrics_address: MetricsAddrOpt = "0.0.0.0",
    metrics_port: MetricsPortOpt = DEFAULT_METRICS_PORT,
    log_format: LogFormatOpt = LogFormat.text,
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
    raise typer.Exit(app.sync(app.SyncArgs(**locals())))


@cli.command()
def snapshot(
    start: Annotated[
        str | None,
        typer.Option(envvar=ENV + "START", help="When to take the snapshot (future)."),
    ] = None,
    db_identifier: DbOpt = None,
    run_id: RunIdOpt = None,
    region: RegionOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", envvar=ENV + "WAIT", help="Wait until it is available.")
    ] = False,
    metrics_address: MetricsAddrOpt = "0.0.0.0",
    metrics_port: MetricsPortOpt = DEFAULT_METRICS_PORT,
    log_format: LogFormatOpt = LogFormat.text,
    debug: DebugOpt = False,
) -> None:
    """Take a DB snapshot (a cluster snapshot for Aurora) at a future time."""
    raise typer.Exit(app.snapshot(app.SnapshotArgs(**locals())))


@cli.command()
def verify(
    run_id: Annotated[str | None, typer.Option(envvar=ENV + "RUN_ID", help="Run to check.")] = None,
    bucket: BucketOpt = None,
    region: RegionOpt = None,
    expected_bucket_owner: Annotated[
        str | None, typer.Option(envvar=ENV + "EXPECTED_BUCKET_OWNER")
    ] = None,
    log_format: LogFormatOpt = LogFormat.text,
    debug: DebugOpt = False,
) -> None:
    """Re-read a run's objects: check every sha256 and that the window has no holes."""
    raise typer.Exit(app.verify(app.VerifyArgs(**locals())))


@cli.command("ls")
def ls_(
    bucket: BucketOpt = None,
    region: RegionOpt = None,
    expected_bucket_owner: Annotated[
        str | None, typer.Option(envvar=ENV + "EXPECTED_BUCKET_OWNER")
    ] = None,
    log_format: LogFormatOpt = LogFormat.text,
    debug: DebugOpt = False,
) -> None:
    """List the runs kept in a bucket."""
    raise typer.Exit(app.ls(app.LsArgs(**locals())))


@cli.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"rdsrecorder {__version__}")


@lab_cli.command("serve")
def lab_serve(
    data: Annotated[
        Path | None,
        typer.Option(help="Directory of <instance>/error/postgresql.log.* files (default: temp)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the RDS/STS emulator.")] = 8080,
    s3: Annotated[str, typer.Option(help="Local S3: moto, seaweed or none.")] = "moto",
    s3_port: Annotated[int, typer.Option(help="Port of the local S3.")] = 9000,
    bucket: Annotated[
        str, typer.Option(help="Bucket created in the local S3.")
    ] = "rdsrecorder-lab",
    instance: Annotated[str, typer.Option(help="DB instance id of generated logs.")] = "lab-db",
    generate_hours: Annotated[
        int, typer.Option(help="Generate this many hours of csvlog files (0: none).")
    ] = 6,
    postgres: Annotated[
        str | None,
        typer.Option(help="Run a real PostgreSQL whose live logs appear as this instance id."),
    ] = None,
    latency_ms: Annotated[float, typer.Option(help="Added latency per API call.")] = 0.0,
    throttle_every: Annotated[int, typer.Option(help="Throttle every Nth RDS call (0: no).")] = 0,
    error_rate: Annotated[float, typer.Option(help="Fraction of calls answered 500.")] = 0.0,
    reset_rate: Annotated[
        float, typer.Option(help="Fraction of downloads whose connection is cut mid-body.")
    ] = 0.0,
    bandwidth_mbps: Annotated[
        float | None, typer.Option(help="Cap on log-data throughput, megabits per second.")
    ] = None,
    gzip_level: Annotated[
        int, typer.Option(help="gzip level of the whole-file endpoint (1-9).")
    ] = 1,
    complete_endpoint: Annotated[
        bool,
        typer.Option(
            "--complete-endpoint/--no-complete-endpoint",
            help="--no-complete-endpoint: deny downloadCompleteLogFile (403), as without the "
            "IAM action.",
        ),
    ] = True,
) -> None:
    """Serve the emulated RDS log API and a local S3; prints the env vars to use it."""
    raise typer.Exit(app.lab_serve(**locals()))


@lab_cli.command("generate")
def lab_generate(
    data: Annotated[Path, typer.Argument(help="Lab data directory.")],
    instance: Annotated[str, typer.Option(help="DB instance id.")] = "lab-db",
    hours: Annotated[int, typer.Option(help="Hours of logs, ending now.")] = 6,
    size_mb: Annotated[str, typer.Option(help="File size range in MB, e.g. 0.01-30.")] = "0.01-30",
    rotation: Annotated[str, typer.Option(help="hour, minute or day.")] = "hour",
    long_line: Annotated[bool, typer.Option(help="Include one csv line over 1 MB.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 1,
) -> None:
    """Write realistic csvlog files for an emulated DB instance."""
    raise typer.Exit(app.lab_generate(**locals()))


@lab_cli.command("demo")
def lab_demo(
    concurrency: Annotated[int, typer.Option(help="Files copied at the same time.")] = 4,
    hours: Annotated[int, typer.Option(help="Hours of generated logs.")] = 6,
) -> None:
    """Start the lab, generate logs, back them up with `rdsrecorder sync`, verify the copy."""
    raise typer.Exit(app.lab_demo(concurrency=concurrency, hours=hours))


def main() -> None:
    cli()
