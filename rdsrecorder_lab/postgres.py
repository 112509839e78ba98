"""A real PostgreSQL writing minute-rotated csvlog files into the lab, with a small workload.

``LabPostgres(root, instance)`` runs ``initdb`` into a temporary directory, starts the server with
the logging settings RDS uses for csvlog (``logging_collector=on``, ``log_destination=csvlog``,
``log_filename=postgresql.log.%Y-%m-%d-%H%M``, ``log_rotation_age=1min``, ``log_timezone=UTC``,
``log_min_duration_statement=0``), and feeds one long-lived ``psql`` a few statements every
second: reads, inserts, multi-line queries, errors with DETAIL and HINT, checkpoints.

* The server listens on a Unix socket in its temporary directory only (no TCP port).
* When we are root it runs as the unprivileged ``postgres`` user (``runuser -u postgres``), as
  PostgreSQL refuses to run as root; otherwise as the current user.
* The logs are written to the temporary directory, and ``<root>/<instance>/error`` is a symbolic
  link to it while the server runs: the lab root may live where the ``postgres`` user cannot
  write (a private temp dir of root). On stop the files are moved into a real
  ``<root>/<instance>/error`` directory, so they outlive the server; files already there when
  the server starts are moved alongside its own and kept.
* Server and workload run in their own sessions, so Ctrl-C in a terminal reaches the lab only,
  which stops them cleanly (``pg_ctl stop -m fast``; SIGKILL to the postmaster by its pid if that
  fails). No process is left behind.

Binaries are looked up in ``/usr/lib/postgresql/<version>/bin`` (Debian, newest first), then on
``PATH``. ``missing_reason()`` tells why PostgreSQL cannot run here (None when it can).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import random
import shutil
import signal
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

LOG_FILENAME = "postgresql.log.%Y-%m-%d-%H%M"
_PG_USER = "postgres"
_PORT = 5432  # only names the socket file: the socket lives in a private directory
_STOP_TIMEOUT_S = 30
_WORKLOAD_STOP_S = 5.0


class PostgresError(RuntimeError):
    pass


def find_bin_dir() -> Path | None:
    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in path.parent.parent.name.split(".") if p.isdigit())

    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=version, reverse=True
    )
    for postgres in candidates:
        if (postgres.parent / "initdb").is_file() and (postgres.parent / "pg_ctl").is_file():
            return postgres.parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl and shutil.which("initdb"):
        return Path(pg_ctl).resolve().parent
    return None


def missing_reason() -> str | None:
    """Why a lab PostgreSQL cannot be started here, or None if it can."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return "PostgreSQL binaries (initdb, pg_ctl, postgres) not found"
    if not (bin_dir / "psql").is_file() and shutil.which("psql") is None:
        return "psql not found"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_PG_USER)
        except KeyError:
            return f"running as root and there is no {_PG_USER!r} user to run PostgreSQL"
        if shutil.which("runuser") is None:
            return "running as root and runuser is not available"
    return None


class LabPostgres:
    def __init__(
        self,
        root: Path,
        instance: str,
        *,
        rotation_age_min: int = 1,
        workload_interval_s: float = 1.0,
        seed: int = 1,
    ) -> None:
        self.root = root
        self.instance = instance
        self.rotation_age_min = rotation_age_min
        self.workload_interval_s = workload_interval_s
        self._rng = random.Random(seed)
        self._bin: Path | None = None
        self._tmp: Path | None = None
        self._as_root = os.geteuid() == 0
        self._workload: asyncio.Task[None] | None = None
        self._psql: asyncio.subprocess.Process | None = None
        self._started = False

    @property
    def log_dir(self) -> Path:
        return self.root / self.instance / "error"

    @property
    def socket_dir(self) -> Path:
        assert self._tmp is not None, "not started"
        return self._tmp / "sock"

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        reason = missing_reason()
        if reason:
            raise PostgresError(reason)
        self._bin = find_bin_dir()
        self._tmp = Path(tempfile.mkdtemp(prefix="rdsrecorder-pg-"))
        try:
            await self._init_cluster()
            self._link_log_dir()
            await self._run(
                self._pg("pg_ctl"),
                "-D",
                str(self._tmp / "data"),
                "-l",
                str(self._tmp / "startup.log"),
                "-w",
                "-t",
                "60",
                "start",
                what="pg_ctl start",
            )
            self._started = True
            await self._sql(
                "CREATE TABLE IF NOT EXISTS lab_orders (id serial PRIMARY KEY, customer text NOT"
                " NULL, amount numeric(10, 2), note text, created_at timestamptz DEFAULT now());"
            )
            self._workload = asyncio.create_task(self._workload_loop(), name="lab-pg-workload")
            log.info("PostgreSQL is writing csvlog for %s into %s", self.instance, self.log_dir)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._workload is not None:
            self._workload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._workload
            self._workload = None
        await self._stop_psql()
        if self._started:
            self._started = False
            await self._stop_server()
        if self._tmp is not None:
            self._unlink_log_dir()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    async def __aenter__(self) -> LabPostgres:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- setup -------------------------------------------------------------------------------------
    def _pg(self, program: str) -> str:
        assert self._bin is not None
        return str(self._bin / program)

    async def _init_cluster(self) -> None:
        assert self._tmp is not None
        tmp = self._tmp
        for sub in ("sock", "log"):
            (tmp / sub).mkdir()
        tmp.chmod(0o755)
        (tmp / "log").chmod(0o755)
        if self._as_root:
            entry = pwd.getpwnam(_PG_USER)
            for path in (tmp, tmp / "sock", tmp / "log"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        await self._run(
            self._pg("initdb"),
            "-D",
            str(tmp / "data"),
            "-U",
            _PG_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            what="initdb",
        )
        settings = {
            "listen_addresses": "''",
            "port": str(_PORT),
            "unix_socket_directories": f"'{tmp / 'sock'}'",
            "logging_collector": "on",
            "log_destination": "'csvlog'",
            "log_directory": f"'{tmp / 'log'}'",
            "log_filename": f"'{LOG_FILENAME}'",
            "log_rotation_age": f"{self.rotation_age_min}min",
            "log_rotation_size": "0",
            "log_truncate_on_rotation": "off",
            "log_file_mode": "0644",
            "log_timezone": "'UTC'",
            "log_line_prefix": "'%t:%r:%u@%d:[%p]:'",  # the RDS default, for the stderr twin
            "log_min_duration_statement": "0",
            "log_checkpoints": "on",
            "log_connections": "on",
            "log_disconnections": "on",
            "shared_buffers": "16MB",
            "max_connections": "20",
            "fsync": "off",  # a lab database: speed over durability
        }
        conf = tmp / "data" / "postgresql.conf"
        with conf.open("a") as f:
            f.write("\n# rdsrecorder lab\n")
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def _link_log_dir(self) -> None:
        assert self._tmp is not None
        target = self._tmp / "log"
        link = self.log_dir
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()  # left by a lab that was killed
        elif link.is_dir():
            for entry in link.iterdir():
                shutil.move(str(entry), target / entry.name)
            link.rmdir()
        link.symlink_to(target, target_is_directory=True)

    def _unlink_log_dir(self) -> None:
        assert self._tmp is not None
        link = self.log_dir
        if not link.is_symlink():
            return
        link.unlink()
        shutil.move(str(self._tmp / "log"), link)
        uid, gid = os.geteuid(), os.getegid()
        for path in (link, *link.iterdir()):
            with contextlib.suppress(OSError):
                os.chown(path, uid, gid)

    # -- processes ---------------------------------------------------------------------------------
    async def _run(self, *argv: str, what: str) -> None:
        prefix = ["runuser", "-u", _PG_USER, "--"] if self._as_root else []
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        output, _ = await proc.communicate()
        if proc.returncode != 0:
            detail = output.decode(errors="replace").strip()[-2000:]
            raise PostgresError(f"{what} failed ({proc.returncode}): {detail}")

    def _psql_argv(self) -> list[str]:
        psql = self._pg("psql") if (self._bin and (self._bin / "psql").is_file()) else "psql"
        return [
            psql,
            "-X",
            "-q",
            "-h",
            str(self.socket_dir),
            "-p",
            str(_PORT),
            "-U",
            _PG_USER,
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=0",
        ]

    async def _sql(self, statement: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self._psql_argv(),
            "-c",
            statement,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env={**os.environ, "PGAPPNAME": "rdsrecorder-lab-setup"},
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise PostgresError(f"psql failed: {err.decode(errors='replace').strip()}")

    async def _stop_psql(self) -> None:
        proc, self._psql = self._psql, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), _WORKLOAD_STOP_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _stop_server(self) -> None:
        assert self._tmp is not None
        data = self._tmp / "data"
        try:
            await self._run(
                self._pg("pg_ctl"),
                "-D",
                str(data),
                "-m",
                "fast",
                "-w",
                "-t",
                str(_STOP_TIMEOUT_S),
                "stop",
                what="pg_ctl stop",
            )
        except PostgresError as exc:
            log.warning("%s; killing the postmaster", exc)
            self._kill_postmaster(data)

    @staticmethod
    def _kill_postmaster(data: Path) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)

    # -- workload ----------------------------------------------------------------------------------
    async def _workload_loop(self) -> None:
        tick = 0
        while True:
            tick += 1
            try:
                await self._send(self._statements(tick))
            except (ConnectionError, OSError) as exc:
                log.warning("lab workload: psql went away (%s); restarting it", exc)
                await self._stop_psql()
            await asyncio.sleep(self.workload_interval_s)

    async def _send(self, sql: str) -> None:
        if self._psql is None or self._psql.returncode is not None:
            self._psql = await asyncio.create_subprocess_exec(
                *self._psql_argv(),
                "-f",
                "-",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PGAPPNAME": "rdsrecorder-lab-workload"},
            )
        assert self._psql.stdin is not None
        self._psql.stdin.write(sql.encode())
        await self._psql.stdin.drain()

    def _statements(self, tick: int) -> str:
        rng = self._rng
        customer = rng.choice(["ada", "grace", "linus", "barbara", "ken", "margaret"])
        amount = round(rng.uniform(1, 500), 2)
        out = [
            "SELECT count(*), sum(amount) FROM lab_orders;",
            "INSERT INTO lab_orders (customer, amount, note)\n"
            f"VALUES ('{customer}', {amount}, 'said \"hi\", then left');",
            "SELECT customer,\n       count(*) AS orders,\n       round(avg(amount), 2) AS avg\n"
            "  FROM lab_orders\n WHERE created_at > now() - interval '1 hour'\n"
            " GROUP BY customer\n ORDER BY orders DESC\n LIMIT 5;",
            f"SELECT pg_sleep({rng.uniform(0.001, 0.05):.3f});",
        ]
        if tick % 3 == 0:
            out.append(
                "DO $$BEGIN RAISE WARNING 'lab: slow consumer' USING DETAIL = 'queue depth 42',"
                " HINT = 'add a worker'; END$$;"
            )
        if tick % 5 == 0:
            out.append("SELECT 1 / 0;")
        if tick % 7 == 0:
            out.append("SELECT * FROM lab_missing_table;")
        if tick % 11 == 0:
            out.append("INSERT INTO lab_orders (id, customer) VALUES (1, 'duplicate');")
        if tick % 30 == 0:
            out.append("CHECKPOINT;")
        return "\n".join(out) + "\n"
