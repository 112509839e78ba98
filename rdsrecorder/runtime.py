"""The process around a command (uvicorn's ``Server`` is the model): logging, malloc arenas, the
event loop, signals, the metrics server, and the one boundary where every outcome becomes an exit
code and every error one line on stderr.

* Signals: the first SIGINT/SIGTERM sets the stop event (work drains), the second cancels the
  command (abort now), a third kills the process (the system's default action).
* Errors: every ``RdsRecorderError`` becomes ``error: <message>`` and its exit code; an
  ``ExceptionGroup`` (from a TaskGroup) is unwrapped into one line per distinct cause; anything
  else is a bug and says so in one line. ``--debug`` adds the traceback.

``cli.py`` calls ``sync``, ``snapshot``, ``verify``, ``get`` and ``ls`` here with a settings
builder."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pendulum
from botocore.exceptions import BotoCoreError

from rdsrecorder.clock import Clock
from rdsrecorder.config import (
    GetSettings,
    LogFormat,
    LsSettings,
    ObservabilitySettings,
    SnapshotSettings,
    SyncSettings,
    VerifySettings,
)
from rdsrecorder.errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_VERIFY,
    ConfigError,
    RdsRecorderError,
    one_line,
)
from rdsrecorder.hooks import Hooks, MultiHooks
from rdsrecorder.iam import IamPolicySettings, policy, render
from rdsrecorder.logsetup import setup_logging

log = logging.getLogger("rdsrecorder")
S = TypeVar("S")

MALLOC_ARENAS = 2


def stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core), and an arena
    keeps much of what it once held; aiohttp reads spooled parts and resolves names in worker
    threads (the benchmark shows the effect on peak RSS). One event loop needs no more than two.
    A MALLOC_ARENA_MAX set by the user wins. True if the limit was applied."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_arena_max = -8  # from glibc's malloc.h
    return bool(mallopt(m_arena_max, arenas))


class _Signals:
    """First SIGINT/SIGTERM: set the stop event (drain). Second: cancel the run (abort now) and
    give both signals back to the system, so that a third ends the process at once the way an
    unhandled signal does (no Python code runs: nothing left to hang on)."""

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
        else:
            log.warning("%s received again: aborting (again to kill the process)", name)
            self._main.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self, sig)
        try:
            yield self
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def serve_metrics(
    obs: ObservabilitySettings, run_id: str, *, required: bool
) -> AsyncIterator[Hooks]:
    """Prometheus hooks and the /metrics server, or plain hooks when the port is 0. A port in use
    is an error for ``sync`` (``required``: a daemon nobody can scrape is a silent failure) and a
    warning for one-shot commands."""
    if not obs.metrics_port:
        yield Hooks()
        return
    from rdsrecorder.metrics import MetricsServer, PrometheusHooks

    hooks = PrometheusHooks(run_id=run_id)
    server = MetricsServer(hooks, obs.metrics_address, obs.metrics_port)
    try:
        await server.__aenter__()
    except OSError as exc:
        where = f"{obs.metrics_address}:{obs.metrics_port} ({exc.strerror or exc})"
        if required:
            raise ConfigError(
                f"cannot serve metrics on {where}; choose another --metrics-port, or 0 to disable"
            ) from exc
        log.warning("cannot serve metrics on %s: going on without them", where)
        yield hooks
        return
    try:
        log.info("metrics on http://%s:%d/metrics", obs.metrics_address, server.port)
        yield hooks
    finally:
        await server.__aexit__(None, None, None)


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The causes inside (nested) exception groups, in order, each once by its message."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            for leaf in leaf_errors(inner):
                if all(str(leaf) != str(seen) or type(leaf) is not type(seen) for seen in out):
                    out.append(leaf)
        return out
    return [exc]


def report_error(exc: BaseException, debug: bool) -> int:
    """One line per distinct cause on stderr; the exit code of the first."""
    if debug:
        log.error("failed", exc_info=exc)
    codes: list[int] = []
    for leaf in leaf_errors(exc):
        if isinstance(leaf, (KeyboardInterrupt, asyncio.CancelledError)):
            stderr_line("aborted")
            codes.append(EXIT_INTERRUPTED)
        elif isinstance(leaf, RdsRecorderError):
            stderr_line(f"error: {one_line(str(leaf), 500)}")
            codes.append(leaf.exit_code)
        elif isinstance(leaf, BotoCoreError):
            stderr_line(f"error: AWS: {one_line(str(leaf), 500)}")
            codes.append(EXIT_FAILURE)
        else:
            stderr_line(
                f"error: unexpected {type(leaf).__name__}: {one_line(str(leaf), 300)} "
                "(a bug: please report it; --debug shows the traceback)"
            )
            codes.append(EXIT_FAILURE)
    return codes[0] if codes else EXIT_FAILURE


def run(debug: bool, main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Runs ``main(stop)`` in a new event loop with the signal handlers installed."""
    limit_malloc_arenas()

    async def runner() -> int:
        stop = asyncio.Event()
        task = asyncio.current_task()
        assert task is not None
        with _Signals(stop, task).installed():
            return await main(stop)

    try:
        return asyncio.run(runner())
    except (KeyboardInterrupt, asyncio.CancelledError):
        stderr_line("aborted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        return report_error(exc, debug)


def configure(debug: bool, log_format: LogFormat, build: Callable[[], S]) -> S | int:
    """Logging first (so that the builder may log), then the settings; an exit code on bad input."""
    setup_logging(debug=debug, log_format=log_format.value)
    try:
        return build()
    except RdsRecorderError as exc:
        return report_error(exc, debug)
    except Exception as exc:  # a check that crashed is still bad input, said in one line
        stderr_line(f"error: {type(exc).__name__}: {one_line(str(exc), 300)}")
        return EXIT_CONFIG


def now() -> pendulum.DateTime:
    return pendulum.now("UTC")


# -- the commands, as a process ------------------------------------------------------------------
def sync(debug: bool, log_format: LogFormat, build: Callable[[], SyncSettings]) -> int:
    built = configure(debug, log_format, build)
    if isinstance(built, int):
        return built
    settings = built
    from rdsrecorder.commands import run_sync
    from rdsrecorder.progress import ProgressHooks

    log.info("run id: %s", settings.run_id)

    async def main(stop: asyncio.Event) -> int:
        async with serve_metrics(settings.obs, settings.run_id, required=True) as metrics_hooks:
            progress = ProgressHooks(enabled=settings.obs.progress)
            hooks = MultiHooks(metrics_hooks, progress)
            with progress:
                report = await run_sync(settings, hooks=hooks, clock=Clock(), stop=stop)
        from rdsrecorder.tables import render_summary

        render_summary(report)
        return report.exit_code

    return run(settings.obs.debug, main)


def snapshot(debug: bool, log_format: LogFormat, build: Callable[[], SnapshotSettings]) -> int:
    built = configure(debug, log_format, build)
    if isinstance(built, int):
        return built
    settings = built
    from rdsrecorder.commands import run_snapshot

    async def main(stop: asyncio.Event) -> int:
        async with serve_metrics(settings.obs, settings.run_id, required=False) as hooks:
            result = await run_snapshot(settings, hooks=hooks, stop=stop)
        if result is None:
            stderr_line("stopped before the snapshot time: no snapshot taken")
            return EXIT_INTERRUPTED
        print(result.arn, flush=True)
        return EXIT_OK

    return run(settings.obs.debug, main)


def verify(debug: bool, log_format: LogFormat, build: Callable[[], VerifySettings]) -> int:
    built = configure(debug, log_format, build)
    if isinstance(built, int):
        return built
    settings = built
    from rdsrecorder.commands import run_verify
    from rdsrecorder.tables import render_verify

    async def main(stop: asyncio.Event) -> int:
        report = await run_verify(settings)
        render_verify(report)
        return EXIT_OK if report.ok else EXIT_VERIFY

    return run(settings.obs.debug, main)


def get(debug: bool, log_format: LogFormat, build: Callable[[], GetSettings]) -> int:
    built = configure(debug, log_format, build)
    if isinstance(built, int):
        return built
    settings = built
    from rdsrecorder.commands import run_get
    from rdsrecorder.tables import render_get

    async def main(stop: asyncio.Event) -> int:
        report = await run_get(settings)
        render_get(report, to_stderr=settings.stdout)
        return report.exit_code

    return run(settings.obs.debug, main)


def ls(debug: bool, log_format: LogFormat, build: Callable[[], LsSettings]) -> int:
    built = configure(debug, log_format, build)
    if isinstance(built, int):
        return built
    settings = built
    from rdsrecorder.commands import run_ls
    from rdsrecorder.tables import render_runs

    async def main(stop: asyncio.Event) -> int:
        render_runs(await run_ls(settings))
        return EXIT_OK

    return run(settings.obs.debug, main)


def iam_policy(build: Callable[[], IamPolicySettings]) -> int:
    built = configure(False, LogFormat.TEXT, build)
    if isinstance(built, int):
        return built
    sys.stdout.write(render(policy(built)))
    return EXIT_OK
