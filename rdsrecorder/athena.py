"""Parquet twins of the log objects, and the Athena table over them.

Athena's CSV SerDes cannot read a line break inside a quoted field, and csvlog is full of them
(multi-line statements, autovacuum reports): a table over the raw objects would split records
without a word. So ``sync --parquet-twins`` writes, for each complete copy it lands, a Parquet
file of the same rows:

    athena/<run id>/db=<instance>/date=<YYYY-MM-DD>/<RDS file name>.parquet

(one per UTC day of the file's ``log_time``: an hourly file has one) beside the raw object, which
stays the source of truth, written once as before. The twin is made from the object as stored:
read back, decompressed, checked against the manifest's sha256, converted by DuckDB (the csvlog
columns, typed as ``rdsrecorder.csvlog`` says; rows in file order), and put. A twin that cannot be
made is a warning: the copy is not affected. A resumed run makes the twins its earlier process
did not (one HEAD per complete copy it skips).

Memory: one twin at a time (``TWIN_CONCURRENCY``), held whole for its PutObject (Parquet with
zstd: about a tenth of the csvlog); DuckDB at most ``TWIN_MEMORY_LIMIT_MIB``. Disk: the file's
log bytes and its twin, in a temporary directory.

``athena_ddl`` prints the ``CREATE EXTERNAL TABLE`` over a run's twins, with partition
projection (``db`` an enum of the run's instances, ``date`` a date range from the run's start),
so Athena needs no crawler and no ``MSCK REPAIR``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Protocol

from rdsrecorder.compression import decompressed
from rdsrecorder.csvlog import ATHENA_TYPES, COLUMNS, layout_of, read_csv_sql, sql_string
from rdsrecorder.manifest import FileEntry, Manifest
from rdsrecorder.models import FileStatus
from rdsrecorder.verify import entry_compression

log = logging.getLogger(__name__)

TWINS_PREFIX = "athena"
TWIN_CONCURRENCY = 1
TWIN_MEMORY_LIMIT_MIB = 256
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
# Hive's and Athena's timestamp has no zone: the twins hold UTC wall-clock times.
_NAIVE = ", ".join(f"CAST({n} AS TIMESTAMP) AS {n}" for n, t in COLUMNS if t == "TIMESTAMPTZ")
_DAY_RE = re.compile(r"\d{4}-\d\d-\d\d")


class TwinStore(Protocol):
    """What the twins need of ``rdsrecorder.s3.bucket.Bucket``."""

    def iter_object(self, key: str) -> AsyncIterator[bytes]: ...

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> str: ...

    async def head(self, key: str) -> object | None: ...


def twins_prefix(run_id: str) -> str:
    return f"{TWINS_PREFIX}/{run_id}/"


def twin_key(run_id: str, instance: str, day: str, source: str) -> str:
    return f"{twins_prefix(run_id)}db={instance}/date={day}/{PurePosixPath(source).name}.parquet"


def parquet_days(csv_path: Path, out_dir: Path) -> list[tuple[str, Path]]:
    """The rows of a csvlog file as one Parquet file per UTC day of ``log_time``, in file order:
    (day, path) each. Blocking (DuckDB)."""
    import duckdb

    layout = layout_of(csv_path)
    if not layout:
        return []
    con = duckdb.connect(
        ":memory:",
        config={
            "memory_limit": f"{TWIN_MEMORY_LIMIT_MIB}MiB",
            "temp_directory": str(out_dir / "spill"),
            "threads": 1,
        },
    )
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")  # sync's stdout is its summary
        con.execute(f"CREATE VIEW file_rows AS {read_csv_sql([str(csv_path)], layout)}")
        days = con.execute(
            "SELECT DISTINCT strftime(CAST(log_time AS DATE), '%Y-%m-%d') FROM file_rows ORDER BY 1"
        ).fetchall()
        out: list[tuple[str, Path]] = []
        for (day,) in days:
            path = out_dir / f"{day}.parquet"
            con.execute(
                f"COPY (SELECT * REPLACE ({_NAIVE}) FROM file_rows "
                f"WHERE CAST(log_time AS DATE) = DATE '{day}') "
                f"TO {sql_string(str(path))} (FORMAT parquet, COMPRESSION zstd)"
            )
            out.append((day, path))
        return out
    finally:
        con.close()


async def _fetch_checked(store: TwinStore, entry: FileEntry, path: Path) -> None:
    sha = hashlib.sha256()
    size = 0
    with path.open("wb") as out:
        async for chunk in decompressed(store.iter_object(entry.key), entry_compression(entry)):
            sha.update(chunk)
            size += len(chunk)
            await asyncio.to_thread(out.write, chunk)
    if size != entry.size or sha.hexdigest() != entry.sha256:
        raise ValueError("the object read back does not match its manifest entry")


async def write_twins(store: TwinStore, run_id: str, entry: FileEntry) -> list[str]:
    """The twins of one landed object; their keys."""
    with tempfile.TemporaryDirectory(prefix="rdsrecorder-twin-") as work:
        work_dir = Path(work)
        (work_dir / "spill").mkdir()
        local = work_dir / "rows.csv"
        await _fetch_checked(store, entry, local)
        days = await asyncio.to_thread(parquet_days, local, work_dir)
        keys = []
        for day, path in days:
            key = twin_key(run_id, entry.instance, day, entry.source)
            data = await asyncio.to_thread(path.read_bytes)
            await store.put_bytes(key, data, PARQUET_CONTENT_TYPE)
            keys.append(key)
    return keys


class ManifestSink(Protocol):
    def record(self, entry: FileEntry) -> None: ...

    def add_gap(self, instance: str, start: str, end: str, reason: str) -> None: ...

    async def flush(self, force: bool = False) -> None: ...


class ParquetTwins:
    """The recorder's manifest sink, with the twins made on the side: each complete copy it
    records (copied, or skipped by a resumed run whose twin is missing) gets its twins, one file
    at a time, while the recorder goes on. ``drain`` waits for those under way (or cancels them
    when the run is cancelled)."""

    def __init__(
        self,
        inner: ManifestSink,
        store: TwinStore,
        run_id: str,
        write: Callable[[TwinStore, str, FileEntry], Awaitable[list[str]]] = write_twins,
    ) -> None:
        self._inner = inner
        self._store = store
        self._run_id = run_id
        self._write = write
        self._gate = asyncio.Semaphore(TWIN_CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()
        self.written: list[str] = []
        self.failed: list[str] = []

    def record(self, entry: FileEntry) -> None:
        self._inner.record(entry)
        if entry.complete and entry.status in (FileStatus.COPIED, FileStatus.SKIPPED):
            task = asyncio.create_task(self._twin(entry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def add_gap(self, instance: str, start: str, end: str, reason: str) -> None:
        self._inner.add_gap(instance, start, end, reason)

    async def flush(self, force: bool = False) -> None:
        await self._inner.flush(force)

    async def _twin(self, entry: FileEntry) -> None:
        async with self._gate:
            try:
                if entry.status is FileStatus.SKIPPED:
                    day = entry.span_start[:10]
                    key = twin_key(self._run_id, entry.instance, day, entry.source)
                    if await self._store.head(key) is not None:
                        return
                self.written += await self._write(self._store, self._run_id, entry)
            except Exception as exc:  # S3's, DuckDB's, a bad read: the copy stands whatever it is
                self.failed.append(entry.key)
                log.warning(
                    "parquet twin of s3 %s not written: %s: %s", entry.key, type(exc).__name__, exc
                )

    async def drain(self) -> None:
        pending = list(self._tasks)
        try:
            await asyncio.gather(*pending)
        except asyncio.CancelledError:
            for task in pending:
                task.cancel()
            raise
        if self.written or self.failed:
            log.info(
                "parquet twins: %d written, %d not (see the warnings)",
                len(self.written),
                len(self.failed),
            )


# -- the table ---------------------------------------------------------------------------------
def _athena_name(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())


def athena_ddl(
    bucket: str, run_id: str, manifests: list[tuple[str, Manifest]], table: str | None = None
) -> str:
    """``CREATE EXTERNAL TABLE`` over the twins of the run whose manifests are given."""
    instances = sorted(
        {i for _, m in manifests for i in m.instances}
        | {e.instance for _, m in manifests for e in m.files.values()}
    )
    starts = [m.window_start[:10] for _, m in manifests if _DAY_RE.match(m.window_start[:10])]
    starts += [e.span_start[:10] for _, m in manifests for e in m.files.values() if e.status.landed]
    first_day = min(starts) if starts else "2020-01-01"
    location = f"s3://{bucket}/{twins_prefix(run_id)}"
    name = table or f"rdsrecorder_{_athena_name(run_id)}"
    columns = ",\n".join(f"  `{n}` {ATHENA_TYPES[t]}" for n, t in COLUMNS)
    props = {
        "projection.enabled": "true",
        "projection.db.type": "enum",
        "projection.db.values": ",".join(instances),
        "projection.date.type": "date",
        "projection.date.format": "yyyy-MM-dd",
        "projection.date.range": f"{first_day},NOW",
        "projection.date.interval": "1",
        "projection.date.interval.unit": "DAYS",
        "storage.location.template": location + "db=${db}/date=${date}/",
    }
    properties = ",\n".join(f"  '{k}' = '{v}'" for k, v in props.items())
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS `{name}` (\n{columns}\n)\n"
        "PARTITIONED BY (`db` string, `date` string)\n"
        "STORED AS PARQUET\n"
        f"LOCATION '{location}'\n"
        f"TBLPROPERTIES (\n{properties}\n);\n"
    )
