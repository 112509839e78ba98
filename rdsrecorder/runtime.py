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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pendulum
from botocore.exceptions import BotoCoreError
from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url

from rdsrecorder.clock import Clock
from rdsrecorder.config import (
    AthenaDdlSettings,
    GetSettings,
    LogFormat,
    LsSettings,
    ObservabilitySettings,
    QuerySettings,
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
EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE  # 141: what a shell reports for a writer killed by SIGPIPE
_ENV_PREFIXES = ("AWS_", "RDSRECORDER_")
_RUN_ID_ENV = "RDSRECORDER_RUN_ID"


_json_lines = False  # --log-format json: the lines below are JSON log records too


def stderr_line(line: str, level: int = logging.ERROR) -> None:
    """A line for people on stderr (``error: ...``, ``aborted``); with ``--log-format json`` a JSON
    log record instead, so that nothing but JSON lines is printed."""
    if _json_lines:
        log.log(level, "%s", line.removeprefix("error: "))
    else:
        print(line, file=sys.stderr, flush=True)


def stdout_closed() -> None:
    """Points stdout at /dev/null, so that the interpreter's last flush at exit cannot fail on
    the closed pipe and print a second error."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


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
    is an error for a following ``sync`` (``required``: a daemon nobody can scrape is a silent
    failure) and a warning for one-shot work (a backfill, ``snapshot``)."""
    if not obs.metrics_port:
        yield Hooks()
        return
    from rdsrecorder.metrics import MetricsServer, PrometheusHooks

    hooks = PrometheusHooks(run_id=run_id)
    server = MetricsServer(hooks, obs.metrics_address, obs.metrics_port)
    try:
        await server.__aenter__()
    except OSError as exc:
        # asyncio wraps the bind error in a sentence of its own; the errno says it plainly.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        where = f"{obs.metrics_address}:{obs.metrics_port} ({reason})"
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
        if isinstance(leaf, BrokenPipeError):
            # The reader of stdout went away (``| head``): done, quietly, as Unix tools are.
            stdout_closed()
            codes.append(EXIT_CLOSED_PIPE)
        elif isinstance(leaf, (KeyboardInterrupt, asyncio.CancelledError)):
            stderr_line("aborted", logging.WARNING)
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
        stderr_line("aborted", logging.WARNING)
        return EXIT_INTERRUPTED
    except Exception as exc:
        return report_error(exc, debug)


def unset_empty_env(environ: MutableMapping[str, str]) -> list[str]:
    """Empty ``AWS_*`` and ``RDSRECORDER_*`` variables mean unset (compose's ``${AWS_PROFILE:-}``
    passes ``AWS_PROFILE=""``, which botocore would take as a profile named ""). click already
    skips empty values of our own options; botocore reads the AWS ones itself. The names dropped.
    ``RDSRECORDER_RUN_ID`` is kept: an empty run id is refused (a container restarted with it
    would otherwise start a new run and copy everything again)."""
    empty = [
        name
        for name, value in environ.items()
        if name.startswith(_ENV_PREFIXES) and not value.strip() and name != _RUN_ID_ENV
    ]
    for name in empty:
        del environ[name]
    return empty


def check_endpoint_env(environ: Mapping[str, str]) -> None:
    """botocore's endpoint variables (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_<SERVICE>``) must be
    URLs: botocore would only fail when it makes its first client, with a bare ValueError."""
    for name, value in sorted(environ.items()):
        if not name.startswith("AWS_ENDPOINT_URL"):
            continue
        url = value.strip()
        scheme = url.partition("://")[0].lower()
        try:
            urlsplit(url).port  # noqa: B018 (raises ValueError on a port that is not a number)
            valid = is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url)
        except ValueError:
            valid = False
        if scheme not in ("http", "https") or not valid:
            raise ConfigError(
                f"invalid {name} {one_line(value, 100)!r}: expected an http:// or https:// URL "
                "such as https://rds.eu-west-1.amazonaws.com or http://127.0.0.1:8080"
            )


def unreadable_aws_files(environ: Mapping[str, str]) -> list[str]:
    """The shared credentials and config files that exist but this process cannot read, one line
    each. botocore skips such a file without a word, so that a 0600 ``~/.aws/credentials`` of
    another uid (a container's user, 10001 in our image, under a bind mount) would only show up as
    "no AWS credentials found"."""
    out = []
    for name, default in (
        ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        ("AWS_CONFIG_FILE", "~/.aws/config"),
    ):
        path = os.path.expanduser(environ.get(name) or default)
        if not os.path.lexists(path):
            continue
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            out.append(f"{path}: {exc.strerror or exc}")
    return out


def _say_unreadable_aws_files() -> None:
    for problem in unreadable_aws_files(os.environ):
        log.warning(
            "cannot read %s; this process runs as uid %d, so the credentials and profiles in it "
            'are not used (in a container: docker run --user "$(id -u):$(id -g)", see '
            "docs/operations.md#credentials-from-a-file)",
            problem,
            os.getuid(),
        )


def json_lines() -> None:
    """JSON log records from now on, ``error:`` lines included (for the CLI's usage errors)."""
    global _json_lines
    setup_logging(log_format=LogFormat.JSON.value)
    _json_lines = True


def configure(debug: bool, log_format: LogFormat, build: Callable[[], S]) -> S | int:
    """Logging first (so that the builder may log), then the process environment and the
    settings; an exit code on bad input."""
    global _json_lines
    setup_logging(debug=debug, log_format=log_format.value)
    _json_lines = log_format is LogFormat.JSON
    try:
        unset_empty_env(os.environ)
        check_endpoint_env(os.environ)
        built = build()
        if hasattr(built, "aws"):  # a command that calls AWS
            _say_unreadable_aws_files()
        return built
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
        # A follower must be scraped; a backfill (finish already past) is one-shot work that may
        # run beside a follower on the same host: a taken port is a warning for it.
        follows = settings.finish is None or settings.finish > now()
        async with serve_metrics(settings.obs, settings.run_id, required=follows) as metrics_hooks:
            progress = ProgressHooks(enabled=settings.obs.progress)
            hooks = MultiHooks(metrics_hooks, progress)
            with progress:
                report = await run_sync(settings, hooks=hooks, clock=Clock(), stop=stop)
        from rdsrecorder.tables import print_json, render_summary, summary_doc

        if settings.obs.json_output:
            print_json(summary_doc(report))
        else:
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
            stderr_line("stopped before the snapshot time: no snapshot taken", logging.WARNING)
            return EXIT_INTERRUPTED
        if settings.obs.json_output:
            from rdsrecorder.tables import print_json

            print_json({"command": "snapshot", "id": result.snapshot_id, "arn": result.arn})
        else:
            print(result.arn, flush=True)
        return EXIT_OK

    return run(settings.obs.debug, main)


def verify(debug: bool, log_format: LogFormat, build: Callable[[], VerifySettings]) -> int:
    built = configure(debug, log_format, build)
    if isinstance(built, int):
        return built
    settings = built
    from rdsrecorder.commands import run_verify
    from rdsrecorder.tables import print_json, render_verify, verify_doc

    async def main(stop: asyncio.Event) -> int:
        report = await run_verify(settings)
        if settings.obs.json_output:
            print_json(verify_doc(report))
        else:
            render_verify(report)
        return EXIT_OK if report.ok else EXIT_VERIFY

    return run(settings.obs.debug, main)


def get(debug: bool, log_format: LogFormat, build: Callable[[], GetSettings]) -> int:
    built = configure(debug, log_format, build)
    if isinstance(built, int):
        return built
    settings = built
    from rdsrecorder.commands import run_get
    from rdsrecorder.tables import get_doc, print_json, render_get

    async def main(stop: asyncio.Event) -> int:
        report = await run_get(settings)
        if settings.obs.json_output:  # with --stdout the logs own stdout: the document, stderr
            print_json(get_doc(report), sys.stderr if settings.stdout else sys.stdout)
        else:
            render_get(report, to_stderr=settings.stdout)
        return report.exit_code

    return run(settings.obs.debug, main)


def ls(debug: bool, log_format: LogFormat, build: Callable[[], LsSettings]) -> int:
    built = configure(debug, log_format, build)
    if isinstance(built, int):
        return built
    settings = built
    from rdsrecorder.commands import run_ls
    from rdsrecorder.tables import print_json, render_runs, runs_doc

    async def main(stop: asyncio.Event) -> int:
        runs = await run_ls(settings)
        if settings.obs.json_output:
            print_json(runs_doc(runs))
        else:
            render_runs(runs)
        return EXIT_OK

    return run(settings.obs.debug, main)


def query(debug: bool, log_format: LogFormat, build: Callable[[], QuerySettings]) -> int:
    built = configure(debug, log_format, build)
    if isinstance(built, int):
        return built
    settings = built
    from rdsrecorder.query import run_query

    async def main(stop: asyncio.Event) -> int:
        report = await run_query(settings)
        return report.exit_code

    return run(settings.obs.debug, main)


def athena_ddl(debug: bool, log_format: LogFormat, build: Callable[[], AthenaDdlSettings]) -> int:
    built = configure(debug, log_format, build)
    if isinstance(built, int):
        return built
    settings = built
    from rdsrecorder.commands import run_athena_ddl

    async def main(stop: asyncio.Event) -> int:
        sys.stdout.write(await run_athena_ddl(settings))
        sys.stdout.flush()
        return EXIT_OK

    return run(settings.obs.debug, main)


def iam_policy(build: Callable[[], IamPolicySettings]) -> int:
    built = configure(False, LogFormat.TEXT, build)
    if isinstance(built, int):
        return built
    sys.stdout.write(render(policy(built)))
    return EXIT_OK
