"""Between the CLI and the core: turns raw flags into frozen settings, sets up logging, metrics,
progress and signal handling, runs the command's coroutine and maps the outcome to an exit code
and one line on stderr. Every ``RdsRecorderError`` becomes ``error: <message>`` + its exit code;
``--debug`` adds the traceback."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pendulum

from rdsrecorder.clock import Clock
from rdsrecorder.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_VERIFY,
    ConfigError,
    RdsRecorderError,
)
from rdsrecorder.hooks import Hooks, MultiHooks
from rdsrecorder.logs import setup_logging
from rdsrecorder.models import DownloadMethod
from rdsrecorder.settings import (
    MIB,
    AwsSettings,
    ObservabilitySettings,
    SnapshotSettings,
    SyncSettings,
)
from rdsrecorder.window import parse_when

log = logging.getLogger("rdsrecorder")
T = TypeVar("T")

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_CONCURRENCY = 64


def new_run_id(now: pendulum.DateTime) -> str:
    return f"{now.in_timezone('UTC').format('YYYYMMDDTHHmmss')}-{secrets.token_hex(3)}"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- raw arguments as the CLI gives them -----------------------------------------------------------
@dataclass
class SyncArgs:
    start: str | None
    finish: str | None
    bucket: str | None
    db_identifier: str | None
    concurrency: int
    run_id: str | None
    region: str | None
    poll_interval: float
    finish_grace: float | None
    snapshot: bool
    download_method: DownloadMethod
    part_size_mib: int
    max_api_rps: float
    expected_bucket_owner: str | None
    sse: Any
    sse_kms_key_id: str | None
    shutdown_grace: float
    include_plain: bool
    spool_dir: str | None
    metrics_address: str
    metrics_port: int
    log_format: Any
    progress: bool | None
    debug: bool


@dataclass
class SnapshotArgs:
    start: str | None
    db_identifier: str | None
    run_id: str | None
    region: str | None
    wait: bool
    metrics_address: str
    metrics_port: int
    log_format: Any
    debug: bool


@dataclass
class VerifyArgs:
    run_id: str | None
    bucket: str | None
    region: str | None
    expected_bucket_owner: str | None
    log_format: Any
    debug: bool


@dataclass
class LsArgs:
    bucket: str | None
    region: str | None
    expected_bucket_owner: str | None
    log_format: Any
    debug: bool


# -- settings builders (validation of everything a user can type) ------------------------------
def _required(value: str | None, flag: str, env: str) -> str:
    if value is None or not value.strip():
        raise ConfigError(f"missing {flag} (or env {env})")
    return value.strip()


def _run_id(value: str | None, now: pendulum.DateTime) -> str:
    if value is None or not value.strip():
        return new_run_id(now)
    if not _RUN_ID_RE.match(value):
        raise ConfigError(
            f"invalid --run-id {value!r}: 1-64 letters, digits, '.', '_' or '-', no '/'"
        )
    return value


def _obs(a: Any, progress: bool | None = False) -> ObservabilitySettings:
    return ObservabilitySettings(
        debug=a.debug,
        log_format=str(getattr(a.log_format, "value", a.log_format)),
        metrics_address=getattr(a, "metrics_address", "0.0.0.0"),
        metrics_port=getattr(a, "metrics_port", 0),
        progress=progress,
    )


def build_sync_settings(a: SyncArgs, now: pendulum.DateTime) -> SyncSettings:
    db = _required(a.db_identifier, "--db-identifier", "RDSRECORDER_DB_IDENTIFIER")
    bucket = _required(a.bucket, "--bucket", "AWS_S3_BUCKET_NAME")
    start = parse_when(_required(a.start, "--start", "RDSRECORDER_START"), now, option="--start")
    finish = parse_when(a.finish, now, option="--finish") if a.finish else None
    if not 1 <= a.concurrency <= _MAX_CONCURRENCY:
        raise ConfigError(
            f"--concurrency must be between 1 and {_MAX_CONCURRENCY}, not {a.concurrency}"
        )
    if a.part_size_mib < 5 or a.part_size_mib > 5 * 1024:
        raise ConfigError(f"--part-size-mib must be between 5 and 5120, not {a.part_size_mib}")
    if a.poll_interval < 1:
        raise ConfigError(f"--poll-interval must be at least 1 second, not {a.poll_interval}")
    if a.max_api_rps <= 0:
        raise ConfigError(f"--max-api-rps must be positive, not {a.max_api_rps}")
    if a.finish_grace is not None and a.finish_grace < 0:
        raise ConfigError("--finish-grace must not be negative")
    if a.shutdown_grace < 0:
        raise ConfigError("--shutdown-grace must not be negative")
    sse = str(a.sse.value) if a.sse is not None else None
    if a.sse_kms_key_id and sse != "aws:kms":
        raise ConfigError("--sse-kms-key-id needs --sse aws:kms")
    return SyncSettings(
        db_identifier=db,
        bucket=bucket,
        start=start,
        finish=finish,
        run_id=_run_id(a.run_id, now),
        concurrency=a.concurrency,
        poll_interval_s=a.poll_interval,
        finish_grace_s=a.finish_grace,
        snapshot=a.snapshot,
        download_method=DownloadMethod(a.download_method),
        part_size_bytes=a.part_size_mib * MIB,
        shutdown_grace_s=a.shutdown_grace,
        include_plain=a.include_plain,
        spool_dir=a.spool_dir or None,
        aws=AwsSettings(
            region=a.region,
            expected_bucket_owner=a.expected_bucket_owner,
            sse=sse,
            sse_kms_key_id=a.sse_kms_key_id,
            max_api_rps=a.max_api_rps,
        ),
        obs=_obs(a, a.progress),
    )


def build_snapshot_settings(a: SnapshotArgs, now: pendulum.DateTime) -> SnapshotSettings:
    db = _required(a.db_identifier, "--db-identifier", "RDSRECORDER_DB_IDENTIFIER")
    start = parse_when(_required(a.start, "--start", "RDSRECORDER_START"), now, option="--start")
    return SnapshotSettings(
        db_identifier=db,
        start=start,
        run_id=_run_id(a.run_id, now),
        wait=a.wait,
        aws=AwsSettings(region=a.region),
        obs=_obs(a),
    )


# -- runtime: signals, metrics, error mapping ------------------------------------------------------
class _Signals:
    """First SIGINT/SIGTERM: set the stop event (drain). Second: cancel the run (abort now).
    Third: exit at once."""

    def __init__(self, stop: asyncio.Event, main: asyncio.Task[Any]) -> None:
        self._stop = stop
        self._main = main
        self._count = 0

    def __call__(self, signum: int) -> None:
        self._count += 1
        name = signal.Signals(signum).name
        if self._count == 1:
            log.warning("%s received: stopping (again to abort at once)", name)
            self._stop.set()
        elif self._count == 2:
            log.warning("%s received again: aborting", name)
            self._main.cancel()
        else:
            os._exit(EXIT_INTERRUPTED)

    @contextlib.contextmanager
    def installed(self) -> Any:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self, sig)
        try:
            yield self
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def _metrics(obs: ObservabilitySettings, run_id: str) -> AsyncIterator[Hooks]:
    if not obs.metrics_port:
        yield Hooks()
        return
    from rdsrecorder.metrics import MetricsServer, PrometheusHooks

    hooks = PrometheusHooks(run_id=run_id)
    server = MetricsServer(hooks, obs.metrics_address, obs.metrics_port)
    try:
        await server.__aenter__()
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {obs.metrics_address}:{obs.metrics_port} ({exc.strerror}); "
            "choose another --metrics-port, or 0 to disable"
        ) from exc
    try:
        log.info("metrics on http://%s:%d/metrics", obs.metrics_address, server.port)
        yield hooks
    finally:
        await server.__aexit__(None, None, None)


MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core), and an arena
    keeps much of what it once held. aiohttp reads request bodies from files (the spooled parts)
    and resolves host names in worker threads: their arenas measured +13 MiB of peak RSS copying
    8 x 200 MB at concurrency 8 (114 -> 101 MiB with two arenas, same speed). One event loop
    needs no more than two. A MALLOC_ARENA_MAX set by the user wins; other C libraries are left
    alone. True if the limit was applied."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_arena_max = -8  # from glibc's malloc.h
    return bool(mallopt(m_arena_max, arenas))


def _run(debug: bool, main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    limit_malloc_arenas()

    async def runner() -> int:
        stop = asyncio.Event()
        task = asyncio.current_task()
        assert task is not None
        with _Signals(stop, task).installed():
            return await main(stop)

    try:
        return asyncio.run(runner())
    except RdsRecorderError as exc:
        if debug:
            log.exception("failed")
        _stderr(f"error: {exc}")
        return exc.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):
        _stderr("aborted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            log.exception("internal error")
        _stderr(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
        return EXIT_FAILURE


def _config(debug: bool, log_format: Any, build: Callable[[], T]) -> T | int:
    setup_logging(debug=debug, log_format=str(getattr(log_format, "value", log_format)))
    try:
        return build()
    except RdsRecorderError as exc:
        _stderr(f"error: {exc}")
        return exc.exit_code


# -- commands --------------------------------------------------------------------------------------
def sync(a: SyncArgs) -> int:
    now = pendulum.now("UTC")
    built = _config(a.debug, a.log_format, lambda: build_sync_settings(a, now))
    if isinstance(built, int):
        return built
    settings = built
    from rdsrecorder.progress import ProgressHooks, render_summary
    from rdsrecorder.runner import run_sync

    log.info("run id: %s", settings.run_id)

    async def main(stop: asyncio.Event) -> int:
        async with _metrics(settings.obs, settings.run_id) as metrics_hooks:
            progress = ProgressHooks(enabled=settings.obs.progress)
            with progress:
                report = await run_sync(
                    settings, hooks=MultiHooks(metrics_hooks, progress), clock=Clock(), stop=stop
                )
        render_summary(report)
        return report.exit_code

    return _run(settings.obs.debug, main)


def snapshot(a: SnapshotArgs) -> int:
    now = pendulum.now("UTC")
    built = _config(a.debug, a.log_format, lambda: build_snapshot_settings(a, now))
    if isinstance(built, int):
        return built
    settings = built
    from rdsrecorder.runner import run_snapshot

    async def main(stop: asyncio.Event) -> int:
        async with _metrics(settings.obs, settings.run_id) as hooks:
            result = await run_snapshot(settings, hooks=hooks, stop=stop)
        if result is None:
            _stderr("stopped before the snapshot time: no snapshot taken")
            return EXIT_INTERRUPTED
        print(result.arn, flush=True)
        return EXIT_OK

    return _run(settings.obs.debug, main)


@contextlib.asynccontextmanager
async def _bucket(
    bucket: str, region: str | None, expected_bucket_owner: str | None
) -> AsyncIterator[Any]:
    """An S3Sink on a checked bucket, for the read-only commands."""
    from rdsrecorder.aws import Aws
    from rdsrecorder.s3 import S3Sink

    hooks = Hooks()
    aws_settings = AwsSettings(region=region, expected_bucket_owner=expected_bucket_owner)
    async with Aws(aws_settings, hooks) as aws:
        sink = S3Sink(
            aws, bucket, hooks, part_size_bytes=8 * MIB, expected_bucket_owner=expected_bucket_owner
        )
        await sink.check_bucket()
        yield sink


def verify(a: VerifyArgs) -> int:
    def build() -> tuple[str, str]:
        run_id = _required(a.run_id, "--run-id", "RDSRECORDER_RUN_ID")
        return run_id, _required(a.bucket, "--bucket", "AWS_S3_BUCKET_NAME")

    built = _config(a.debug, a.log_format, build)
    if isinstance(built, int):
        return built
    run_id, bucket = built
    from rdsrecorder.progress import render_verify
    from rdsrecorder.verify import verify_run

    async def main(stop: asyncio.Event) -> int:
        async with _bucket(bucket, a.region, a.expected_bucket_owner) as sink:
            report = await verify_run(sink, run_id)
        render_verify(report)
        return EXIT_OK if report.ok else EXIT_VERIFY

    return _run(a.debug, main)


def ls(a: LsArgs) -> int:
    built = _config(
        a.debug, a.log_format, lambda: _required(a.bucket, "--bucket", "AWS_S3_BUCKET_NAME")
    )
    if isinstance(built, int):
        return built
    bucket = built
    from rdsrecorder.progress import render_runs
    from rdsrecorder.verify import list_runs

    async def main(stop: asyncio.Event) -> int:
        async with _bucket(bucket, a.region, a.expected_bucket_owner) as sink:
            runs = await list_runs(sink)
        render_runs(runs)
        return EXIT_OK

    return _run(a.debug, main)


def lab_serve(**kwargs: Any) -> int:
    from rdsrecorder.lab.runner import lab_main

    setup_logging(debug=False, log_format="text")
    return int(lab_main(**kwargs) or 0)


def lab_generate(**kwargs: Any) -> int:
    from rdsrecorder.lab.runner import generate_main

    setup_logging(debug=False, log_format="text")
    return int(generate_main(**kwargs) or 0)


def lab_demo(concurrency: int, hours: int) -> int:
    from rdsrecorder.demo import demo_main

    setup_logging(debug=False, log_format="text")
    return demo_main(concurrency=concurrency, hours=hours)
