"""Run the lab: ``Lab`` (async context manager), ``LabThread`` (the same in a background thread),
and the entry points behind ``rdsrecorder lab serve`` and ``rdsrecorder lab generate``.

A lab is the RDS emulator on one port (RDS query API, STS and the whole-file endpoint), an
optional local S3 with the lab's bucket, and an optional real PostgreSQL writing live logs::

    async with Lab(root, s3="moto") as lab:
        os.environ.update(lab.env)       # AWS_ENDPOINT_URL_RDS/_STS/_S3, credentials, bucket
        lab.set_faults(throttle_every_n=5)
        ...
        print(lab.stats()["max_concurrent_downloads"])

    with LabThread(root, s3="moto") as lab:   # its own event loop: the caller's loop measures
        ...                                   # the client alone; subprocesses can use it too

Credentials: access key ``LABACCESSKEY``, secret ``labsecret`` (``LAB_ACCESS_KEY_ID`` /
``LAB_SECRET_ACCESS_KEY``). The emulator refuses other credentials; moto S3 accepts any, SeaweedFS
only these.
"""

from __future__ import annotations

import asyncio
import math
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from rdsrecorder.errors import ConfigError
from rdsrecorder_lab.catalog import (
    DEFAULT_LOG_RETENTION_MIN,
    IDENTIFIER_RE,
    Instance,
    LogFileEntry,
)
from rdsrecorder_lab.emulator import (
    LAB_ACCESS_KEY_ID,
    LAB_REGION,
    LAB_SECRET_ACCESS_KEY,
    RdsEmulator,
)
from rdsrecorder_lab.faults import Faults
from rdsrecorder_lab.generate import (
    Rotation,
    generate,
    generate_fleet,
    parse_size_range,
    period_s,
)
from rdsrecorder_lab.postgres import LabPostgres
from rdsrecorder_lab.s3local import S3_KINDS, LocalS3, connect_host, create_bucket, make_s3

T = TypeVar("T")
DEFAULT_BUCKET = "rdsrecorder-lab"
_START_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 90.0
MAX_GENERATED_INSTANCES = 10_000


class Lab:
    """The emulator on ``host:port`` (0: a free port), a local S3 (``s3``: "moto", "seaweed" or
    "none") with ``bucket`` created, and, with ``postgres_instance``, a real PostgreSQL whose
    live logs appear as that instance. Start and stop with ``async with`` (or start/stop)."""

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        s3: str = "moto",
        s3_port: int = 0,
        bucket: str = DEFAULT_BUCKET,
        faults: Faults | None = None,
        postgres_instance: str | None = None,
        postgres_rotation_min: int = 1,
        snapshot_delay_s: float = 2.0,
        verify_signatures: bool = True,
        now: Callable[[], float] = time.time,
    ) -> None:
        """``now``: the host's clock as the emulator reads it (a test's fake clock; the
        ``clock_offset_s`` knob goes on top)."""
        if s3 not in ("moto", "seaweed", "none"):
            raise ValueError(f"s3 must be moto, seaweed or none, not {s3!r}")
        self.root = Path(root)
        self.host = host
        self.port = port
        self.s3_kind = s3
        self.s3_port = s3_port
        self.bucket = bucket
        self.emulator = RdsEmulator(
            self.root,
            faults=faults,
            snapshot_delay_s=snapshot_delay_s,
            verify_signatures=verify_signatures,
            now=now,
        )
        self.postgres = (
            LabPostgres(self.root, postgres_instance, rotation_age_min=postgres_rotation_min)
            if postgres_instance
            else None
        )
        self._runner: web.AppRunner | None = None
        self._s3: LocalS3 | None = None
        self._rds_url = ""
        self._s3_url = ""

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            runner = RdsEmulator.runner(self.emulator.app)
            self._runner = runner
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            bound_port = runner.addresses[0][1]
            self._rds_url = f"http://{connect_host(self.host)}:{bound_port}"
            if self.s3_kind != "none":
                s3 = make_s3(
                    self.s3_kind, LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY, self.host, self.s3_port
                )
                self._s3 = s3
                self._s3_url = await asyncio.to_thread(s3.start)
                await asyncio.to_thread(
                    create_bucket,
                    self._s3_url,
                    self.bucket,
                    LAB_ACCESS_KEY_ID,
                    LAB_SECRET_ACCESS_KEY,
                    LAB_REGION,
                )
            if self.postgres is not None:
                await self.postgres.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.postgres is not None:
            await self.postgres.stop()
        s3, self._s3 = self._s3, None
        if s3 is not None:
            await asyncio.to_thread(s3.stop)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Lab:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what clients need -------------------------------------------------------------------------
    @property
    def rds_url(self) -> str:
        return self._rds_url

    @property
    def s3_url(self) -> str:
        return self._s3_url

    @property
    def s3_pid(self) -> int | None:
        """The local S3 server's process when it runs in its own (SeaweedFS), else None."""
        pid = getattr(self._s3, "pid", None)
        return pid if isinstance(pid, int) else None

    @property
    def env(self) -> dict[str, str]:
        """Environment that points an AWS SDK (and rdsrecorder) at the lab."""
        env = {
            "AWS_ENDPOINT_URL_RDS": self._rds_url,
            "AWS_ENDPOINT_URL_STS": self._rds_url,
            "AWS_ACCESS_KEY_ID": LAB_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": LAB_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": LAB_REGION,
            "AWS_S3_BUCKET_NAME": self.bucket,
        }
        if self._s3_url:
            env["AWS_ENDPOINT_URL_S3"] = self._s3_url
        return env

    # -- knobs and counters ------------------------------------------------------------------------
    def set_faults(self, faults: Faults | None = None, **knobs: Any) -> Faults:
        """Replace the fault knobs: ``set_faults()`` clears them all, ``set_faults(latency_ms=5)``
        sets one (the others go back to their defaults)."""
        if faults is not None and knobs:
            raise TypeError("pass a Faults value or knobs, not both")
        value = faults if faults is not None else Faults.from_mapping(knobs)
        self.emulator.set_faults(value)
        return value

    @property
    def faults(self) -> Faults:
        return self.emulator.faults

    def stats(self) -> dict[str, Any]:
        return self.emulator.stats()

    def reset_stats(self) -> None:
        self.emulator.reset_stats()

    # -- changing what the lab serves while it runs ------------------------------------------------
    def change_file(
        self,
        instance: str,
        name: str,
        action: str,
        *,
        data: bytes = b"",
        size: int | None = None,
        last_written_s: float | None = None,
    ) -> LogFileEntry | None:
        """``action``: append, truncate, replace or delete (see ``Catalog.change_file``)."""
        return self.emulator.catalog.change_file(
            instance, name, action, data=data, size=size, last_written_s=last_written_s
        )

    def append_file(self, instance: str, name: str, data: bytes) -> LogFileEntry:
        entry = self.change_file(instance, name, "append", data=data)
        assert entry is not None
        return entry

    def truncate_file(self, instance: str, name: str, size: int) -> LogFileEntry:
        entry = self.change_file(instance, name, "truncate", size=size)
        assert entry is not None
        return entry

    def replace_file(self, instance: str, name: str, data: bytes) -> LogFileEntry:
        entry = self.change_file(instance, name, "replace", data=data)
        assert entry is not None
        return entry

    def delete_file(self, instance: str, name: str) -> None:
        self.change_file(instance, name, "delete")

    def add_instance(
        self,
        identifier: str,
        *,
        engine: str = "postgres",
        tags: Mapping[str, str] | None = None,
        cluster: str | None = None,
        log_retention_period_min: int = DEFAULT_LOG_RETENTION_MIN,
        parameter_group: str | None = None,
    ) -> Instance:
        return self.emulator.catalog.add_instance(
            identifier,
            engine=engine,
            tags=tags,
            cluster=cluster,
            log_retention_period_min=log_retention_period_min,
            parameter_group=parameter_group,
        )

    def remove_instance(self, identifier: str) -> None:
        self.emulator.catalog.remove_instance(identifier)


class LabThread:
    """A ``Lab`` served by a background thread with its own event loop.

    Knobs and counters are read and changed on the lab's loop, so calling them from the test's
    thread is safe.
    """

    def __init__(self, root: Path, **kwargs: Any) -> None:
        self.lab = Lab(root, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._serve, args=(loop,), name="rdsrecorder-lab", daemon=True
        )
        self._thread.start()
        try:
            self._call(self.lab.start(), _START_TIMEOUT_S)
        except BaseException:
            self._shutdown_loop()
            raise

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self._call(self.lab.stop(), _STOP_TIMEOUT_S)
        finally:
            self._shutdown_loop()

    def __enter__(self) -> LabThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=_STOP_TIMEOUT_S)

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        assert self._loop is not None, "the lab is not running"
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=timeout_s)

    def _on_loop(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return fn(*args, **kwargs)

        return self._call(run())

    # -- same surface as Lab -----------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.lab.root

    @property
    def bucket(self) -> str:
        return self.lab.bucket

    @property
    def rds_url(self) -> str:
        return self.lab.rds_url

    @property
    def s3_url(self) -> str:
        return self.lab.s3_url

    @property
    def env(self) -> dict[str, str]:
        return self.lab.env

    @property
    def s3_pid(self) -> int | None:
        return self.lab.s3_pid

    @property
    def faults(self) -> Faults:
        return self.lab.faults

    def set_faults(self, faults: Faults | None = None, **knobs: Any) -> Faults:
        result: Faults = self._on_loop(self.lab.set_faults, faults, **knobs)
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._on_loop(self.lab.stats)
        return result

    def reset_stats(self) -> None:
        self._on_loop(self.lab.reset_stats)

    def change_file(
        self, instance: str, name: str, action: str, **kwargs: Any
    ) -> LogFileEntry | None:
        result: LogFileEntry | None = self._on_loop(
            self.lab.change_file, instance, name, action, **kwargs
        )
        return result

    def append_file(self, instance: str, name: str, data: bytes) -> LogFileEntry:
        result: LogFileEntry = self._on_loop(self.lab.append_file, instance, name, data)
        return result

    def truncate_file(self, instance: str, name: str, size: int) -> LogFileEntry:
        result: LogFileEntry = self._on_loop(self.lab.truncate_file, instance, name, size)
        return result

    def replace_file(self, instance: str, name: str, data: bytes) -> LogFileEntry:
        result: LogFileEntry = self._on_loop(self.lab.replace_file, instance, name, data)
        return result

    def delete_file(self, instance: str, name: str) -> None:
        self._on_loop(self.lab.delete_file, instance, name)

    def add_instance(self, identifier: str, **kwargs: Any) -> Instance:
        result: Instance = self._on_loop(self.lab.add_instance, identifier, **kwargs)
        return result

    def remove_instance(self, identifier: str) -> None:
        self._on_loop(self.lab.remove_instance, identifier)


# -- CLI entry points ------------------------------------------------------------------------------
# ``serve`` and ``generate_files`` check their arguments and raise ConfigError (the CLI prints it
# as one ``error: ...`` line, exit 2); ``lab_main`` and ``generate_main`` are the same as functions
# that print the error and return 2.
def generate_files(
    data: Path,
    instance: str = "lab-db",
    hours: int = 6,
    size_mb: str = "0.01-30",
    rotation: str = "hour",
    long_line: bool = False,
    seed: int = 1,
    rotation_minutes: int = 1,
    files: int | None = None,
    instances: int = 1,
) -> int:
    """``rdsrecorder lab generate DIR``: write csvlog files ending now; prints what it wrote.
    With ``instances`` > 1, instances ``<instance>-000`` ... (see ``generate_fleet``)."""
    sizes = _sizes(size_mb)
    try:
        kind = Rotation(rotation)
    except ValueError:
        raise ConfigError(f"--rotation must be hour, minute or day, not {rotation!r}") from None
    if not 1 <= rotation_minutes <= 1440:
        raise ConfigError(f"--rotation-minutes must be from 1 to 1440, not {rotation_minutes}")
    if files is None and hours < 1:
        raise ConfigError(f"--hours must be at least 1, not {hours}")
    if files is not None and files < 1:
        raise ConfigError(f"--files must be at least 1, not {files}")
    if not 1 <= instances <= MAX_GENERATED_INSTANCES:
        raise ConfigError(
            f"--instances must be from 1 to {MAX_GENERATED_INSTANCES}, not {instances}"
        )
    _check_identifier(instance)
    _check_data_dir(Path(data))
    root = Path(data)
    try:
        if instances > 1:
            count = (
                files
                if files is not None
                else math.ceil(hours * 3600 / period_s(kind, rotation_minutes))
            )
            fleet = generate_fleet(
                root,
                instances,
                prefix=instance,
                files=count,
                rotation=kind,
                rotation_minutes=rotation_minutes,
                size_mb=sizes,
                seed=seed,
            )
            total = sum(f.size for fs in fleet.values() for f in fs)
            written = sum(len(fs) for fs in fleet.values())
            print(
                f"{instances} instances, {written} csvlog files, {total / 1e6:,.1f} MB, in {root}"
            )
            return 0
        made = generate(
            root,
            instance,
            hours=hours,
            files=files,
            rotation=kind,
            rotation_minutes=rotation_minutes,
            size_mb=sizes,
            long_line=long_line,
            seed=seed,
        )
    except OSError as exc:
        raise ConfigError(f"cannot write to {root}: {exc.strerror or exc}") from None
    total = sum(f.size for f in made)
    for f in made:
        print(f"{f.size:>12,}  {instance}/{f.name}")
    print(f"{len(made)} csvlog files, {total / 1e6:,.1f} MB, in {root / instance}")
    return 0


def generate_main(data: Path, **kwargs: Any) -> int:
    """``generate_files`` that prints a ConfigError and returns 2."""
    try:
        return generate_files(data, **kwargs)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def serve(
    data: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    s3: str = "moto",
    s3_port: int = 9000,
    bucket: str = DEFAULT_BUCKET,
    instance: str = "lab-db",
    generate_hours: int = 6,
    postgres: str | None = None,
    size_mb: str = "0.01-30",
    seed: int = 1,
    throttle_every: int = 0,
    **knobs: Any,
) -> int:
    """``rdsrecorder lab serve``: serve until Ctrl-C or SIGTERM; ``export`` lines go to stdout.
    ``knobs`` are ``Faults`` fields (``latency_ms=50``, ``account_burst=300`` ...)."""
    try:
        faults = Faults.from_mapping({"throttle_every_n": throttle_every, "seed": seed, **knobs})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    sizes = _sizes(size_mb)
    _check_port("--port", port)
    _check_port("--s3-port", s3_port)
    if s3 not in S3_KINDS:
        raise ConfigError(f"--s3 must be one of {', '.join(S3_KINDS)}, not {s3!r}")
    if generate_hours < 0:
        raise ConfigError(f"--generate-hours must be >= 0, not {generate_hours}")
    _check_identifier(instance)
    if postgres is not None:
        _check_identifier(postgres)
    if data is not None:
        _check_data_dir(Path(data))
    temp: tempfile.TemporaryDirectory[str] | None = None
    if data is None:
        temp = tempfile.TemporaryDirectory(prefix="rdsrecorder-lab-")
        data = Path(temp.name)
    try:
        if generate_hours > 0 and not _has_logs(data / instance):
            files = generate(data, instance, hours=generate_hours, size_mb=sizes, seed=seed)
            _say(f"generated {len(files)} csvlog files for {instance} in {data / instance}")
        lab = Lab(
            data,
            host=host,
            port=port,
            s3=s3,
            s3_port=s3_port,
            bucket=bucket,
            faults=faults,
            postgres_instance=postgres,
        )
        return asyncio.run(_serve_forever(lab))
    except OSError as exc:  # a port in use, an unwritable directory ...
        raise ConfigError(f"cannot start the lab: {exc}") from None
    finally:
        if temp is not None:
            temp.cleanup()


def lab_main(data: Path | None = None, **kwargs: Any) -> int:
    """``serve`` that prints a ConfigError and returns 2."""
    try:
        return serve(data, **kwargs)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _sizes(size_mb: str) -> tuple[float, float]:
    try:
        return parse_size_range(size_mb)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_port(flag: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{flag} must be from 0 (any free port) to 65535, not {port}")


def _check_identifier(identifier: str) -> None:
    if not IDENTIFIER_RE.match(identifier) or len(identifier) > 63:
        raise ConfigError(
            f"{identifier!r} is not a DB instance identifier: 1 to 63 letters, digits or "
            "hyphens, a letter first, no trailing hyphen, no two hyphens in a row"
        )


def _check_data_dir(data: Path) -> None:
    if data.exists() and not data.is_dir():
        raise ConfigError(f"--data {data} is not a directory")


async def _serve_forever(lab: Lab) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with lab:
            print("\n".join(env_lines(lab.env)), flush=True)
            _describe(lab)
            await stop.wait()
            _say("stopping the lab ...")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


def _describe(lab: Lab) -> None:
    instances = lab.emulator.catalog.instances()
    _say(f"lab: RDS/STS emulator on {lab.rds_url}, data in {lab.root}")
    if lab.s3_url:
        _say(f"lab: {lab.s3_kind} S3 on {lab.s3_url}, bucket {lab.bucket}")
    for name, inst in instances.items():
        count = len(lab.emulator.catalog.log_files(inst))
        _say(f"lab: instance {name} ({inst.engine}): {count} log files")
    first = next(iter(instances), "lab-db")
    _say(
        f"lab: AWS CLI: aws rds describe-db-log-files --db-instance-identifier {first} "
        f"--endpoint-url {lab.rds_url} (region {LAB_REGION})"
    )
    _say(f"lab: faults {lab.faults.to_dict()}")
    _say(
        f"lab: change faults with: curl -X PATCH {lab.rds_url}/_lab/faults "
        "-d '{\"latency_ms\": 50}'; counters at "
        f"{lab.rds_url}/_lab/stats. Ctrl-C stops the lab."
    )


def _has_logs(instance_dir: Path) -> bool:
    error_dir = instance_dir / "error"
    return error_dir.is_dir() and any(error_dir.iterdir())


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def env_lines(env: Mapping[str, str]) -> list[str]:
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
