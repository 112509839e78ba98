"""``rdsrecorder lab ...``: the lab's commands (``serve``, ``generate``, ``demo``) as a Typer app.

The main CLI's ``lab`` command imports this module when it runs (the runtime never does) and hands
it the rest of the command line. Flags are declared here and checked once, by ``runner.serve`` /
``runner.generate_files`` (and ``Faults`` for the knobs), which raise ``ConfigError``; each
command also prints it as one ``error: ...`` line and exits 2, so the lab's commands behave the
same whether or not the main CLI's boundary catches it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from rdsrecorder.errors import ConfigError

lab_cli = typer.Typer(
    help="A local emulator of the RDS log APIs plus a local S3, to try rdsrecorder without AWS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_FAULTS = "Fault knobs (see rdsrecorder_lab/faults.py)"


def _setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger("rdsrecorder").setLevel(logging.INFO)


def _fail(exc: ConfigError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@lab_cli.command("serve")
def serve(
    data: Annotated[
        Path | None,
        typer.Option(help="Directory of <instance>/error/postgresql.log.* files (default: temp)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the RDS/STS emulator (0: any free).")] = 8080,
    s3: Annotated[str, typer.Option(help="Local S3: moto, seaweed or none.")] = "moto",
    s3_port: Annotated[int, typer.Option(help="Port of the local S3 (0: any free).")] = 9000,
    bucket: Annotated[
        str, typer.Option(help="Bucket created in the local S3.")
    ] = "rdsrecorder-lab",
    instance: Annotated[str, typer.Option(help="DB instance id of generated logs.")] = "lab-db",
    generate_hours: Annotated[
        int, typer.Option(help="Generate this many hours of csvlog files (0: none).")
    ] = 6,
    size_mb: Annotated[
        str, typer.Option(help="Size range of generated files in MB, e.g. 0.01-30.")
    ] = "0.01-30",
    postgres: Annotated[
        str | None,
        typer.Option(help="Run a real PostgreSQL whose live logs appear as this instance id."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of generated data and random faults.")] = 1,
    latency_ms: Annotated[
        float, typer.Option(help="Added latency per API call.", rich_help_panel=_FAULTS)
    ] = 0.0,
    portion_ms_per_mb: Annotated[
        float,
        typer.Option(help="Added portion latency per MB returned.", rich_help_panel=_FAULTS),
    ] = 0.0,
    throttle_every: Annotated[
        int, typer.Option(help="Throttle every Nth RDS call (0: no).", rich_help_panel=_FAULTS)
    ] = 0,
    account_burst: Annotated[
        int,
        typer.Option(help="Account token bucket size (0: off; AWS: 300).", rich_help_panel=_FAULTS),
    ] = 0,
    account_refill_per_s: Annotated[
        float,
        typer.Option(help="Token bucket refill per second (AWS: ~12).", rich_help_panel=_FAULTS),
    ] = 12.0,
    error_rate: Annotated[
        float, typer.Option(help="Fraction of calls answered 500.", rich_help_panel=_FAULTS)
    ] = 0.0,
    reset_rate: Annotated[
        float,
        typer.Option(
            help="Fraction of downloads whose connection is cut mid-body.", rich_help_panel=_FAULTS
        ),
    ] = 0.0,
    list_error: Annotated[
        str | None,
        typer.Option(
            help="DescribeDBLogFiles fails: AccessDenied, InternalFailure or DBInstanceNotFound.",
            rich_help_panel=_FAULTS,
        ),
    ] = None,
    list_error_instance: Annotated[
        list[str] | None,
        typer.Option(help="Limit --list-error to this instance (repeat).", rich_help_panel=_FAULTS),
    ] = None,
    stuck_marker_file: Annotated[
        list[str] | None,
        typer.Option(help="File whose marker stops advancing (repeat).", rich_help_panel=_FAULTS),
    ] = None,
    binary_file: Annotated[
        list[str] | None,
        typer.Option(help="File the portion API calls binary (repeat).", rich_help_panel=_FAULTS),
    ] = None,
    early_eof_file: Annotated[
        list[str] | None,
        typer.Option(
            help="File whose portions say AdditionalDataPending=false mid-file (repeat).",
            rich_help_panel=_FAULTS,
        ),
    ] = None,
    early_eof_after_bytes: Annotated[
        int,
        typer.Option(
            help="Offset of that false end (with no --early-eof-file: every file).",
            rich_help_panel=_FAULTS,
        ),
    ] = 0,
    overlap_bytes: Annotated[
        int,
        typer.Option(
            help="Portions repeat this many bytes before their marker.", rich_help_panel=_FAULTS
        ),
    ] = 0,
    portion_max_bytes: Annotated[
        int,
        typer.Option(
            help="The most one portion carries: 1048576 (observed) or 1000000 (documented).",
            rich_help_panel=_FAULTS,
        ),
    ] = 1 << 20,
    short_body_file: Annotated[
        list[str] | None,
        typer.Option(
            help="File whose whole-file stream ends cleanly but short (repeat).",
            rich_help_panel=_FAULTS,
        ),
    ] = None,
    short_body_fraction: Annotated[
        float,
        typer.Option(help="Fraction of such a file that is sent.", rich_help_panel=_FAULTS),
    ] = 0.5,
    bandwidth_mbps: Annotated[
        float | None,
        typer.Option(
            help="Shared cap on log-data throughput, megabits per second.",
            rich_help_panel=_FAULTS,
        ),
    ] = None,
    stream_mbps: Annotated[
        float | None,
        typer.Option(
            help="Cap on each whole-file stream, megabits per second.", rich_help_panel=_FAULTS
        ),
    ] = None,
    gzip_level: Annotated[
        int,
        typer.Option(help="gzip level of the whole-file endpoint (1-9).", rich_help_panel=_FAULTS),
    ] = 1,
    complete_endpoint: Annotated[
        bool,
        typer.Option(
            "--complete-endpoint/--no-complete-endpoint",
            help="--no-complete-endpoint: deny downloadCompleteLogFile (403), as without the "
            "IAM action.",
            rich_help_panel=_FAULTS,
        ),
    ] = True,
) -> None:
    """Serve the emulated RDS log API and a local S3; prints the env vars to use it."""
    from rdsrecorder_lab.runner import serve as run_serve

    _setup_logging()
    try:
        code = run_serve(
            data,
            host=host,
            port=port,
            s3=s3,
            s3_port=s3_port,
            bucket=bucket,
            instance=instance,
            generate_hours=generate_hours,
            postgres=postgres,
            size_mb=size_mb,
            seed=seed,
            throttle_every=throttle_every,
            latency_ms=latency_ms,
            portion_ms_per_mb=portion_ms_per_mb,
            account_burst=account_burst,
            account_refill_per_s=account_refill_per_s,
            error_rate=error_rate,
            reset_rate=reset_rate,
            list_error=list_error,
            list_error_instances=list_error_instance or [],
            stuck_marker_files=stuck_marker_file or [],
            binary_files=binary_file or [],
            early_eof_files=early_eof_file or [],
            early_eof_after_bytes=early_eof_after_bytes,
            overlap_bytes=overlap_bytes,
            portion_max_bytes=portion_max_bytes,
            short_body_files=short_body_file or [],
            short_body_fraction=short_body_fraction,
            bandwidth_mbps=bandwidth_mbps,
            stream_mbps=stream_mbps,
            gzip_level=gzip_level,
            complete_endpoint=complete_endpoint,
        )
    except ConfigError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code)


@lab_cli.command("generate")
def generate(
    data: Annotated[Path, typer.Argument(help="Lab data directory.")],
    instance: Annotated[
        str, typer.Option(help="DB instance id (the prefix, with --instances).")
    ] = "lab-db",
    hours: Annotated[int, typer.Option(help="Hours of logs, ending now.")] = 6,
    files: Annotated[
        int | None, typer.Option(help="Number of files per instance (instead of --hours).")
    ] = None,
    size_mb: Annotated[str, typer.Option(help="File size range in MB, e.g. 0.01-30.")] = "0.01-30",
    rotation: Annotated[str, typer.Option(help="hour, minute or day.")] = "hour",
    rotation_minutes: Annotated[
        int, typer.Option(help="Minutes per file with --rotation minute (1-1440).")
    ] = 1,
    instances: Annotated[
        int, typer.Option(help="Instances to generate: <instance>-000, -001 ... (fleet).")
    ] = 1,
    long_line: Annotated[bool, typer.Option(help="Include one csv line over 1 MB.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 1,
) -> None:
    """Write realistic csvlog files for an emulated DB instance (or a fleet of them)."""
    from rdsrecorder_lab.runner import generate_files

    _setup_logging()
    try:
        code = generate_files(
            data,
            instance=instance,
            hours=hours,
            size_mb=size_mb,
            rotation=rotation,
            long_line=long_line,
            seed=seed,
            rotation_minutes=rotation_minutes,
            files=files,
            instances=instances,
        )
    except ConfigError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code)


@lab_cli.command("demo")
def demo(
    concurrency: Annotated[int, typer.Option(help="Files copied at the same time.")] = 4,
    hours: Annotated[int, typer.Option(help="Hours of generated logs.")] = 6,
) -> None:
    """Start the lab, generate logs, back them up with `rdsrecorder sync`, verify the copy."""
    try:
        if concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, not {concurrency}")
        if not 2 <= hours <= 7 * 24:
            # The demo's window ends where the newest (still written) file starts: one hour of
            # logs leaves nothing to copy.
            raise ConfigError(f"--hours must be from 2 to 168, not {hours}")
    except ConfigError as exc:
        raise _fail(exc) from None
    from rdsrecorder_lab.demo import demo_main

    _setup_logging()
    raise typer.Exit(demo_main(concurrency=concurrency, hours=hours))
