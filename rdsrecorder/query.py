"""``rdsrecorder query``: SQL over the csvlog rows of one DB and time window, wherever and however
the runs of the bucket keep them.

* **Fetching.** ``get``'s own selection does it (``rdsrecorder.get.get_window``): the manifests
  of every run, only the files whose span overlaps the window, per file the best copy that
  passes its sha256 (across runs, raw or gzip), each fetched once, decompressed, into a private
  temporary directory on disk (``--work-dir``; removed at the end, whatever happens).
* **The table.** ``logs`` is a DuckDB view over those files (``read_csv``, nothing sniffed), one
  ``read_csv`` per (instance, csvlog layout), ``UNION ALL``, restricted to ``log_time`` in
  ``[start, finish)``; the csvlog columns typed as ``rdsrecorder.csvlog`` says, plus
  ``instance`` (the DB instance that wrote the row: an Aurora cluster has several).
* **Memory.** DuckDB streams the CSV files and spills what it must hold (sorts, joins,
  aggregates) to ``<work dir>/spill`` beyond ``--memory-limit-mib``; rows reach stdout in
  batches of ``FETCH_ROWS`` for ``--csv`` and ``--json``. The table for a terminal holds the
  result (it sizes its columns on every row): use ``--csv`` for big results. Disk: the window's
  log bytes, uncompressed, plus the spill.
* **Checked first.** The statement is parsed and bound against an empty ``logs`` before anything
  is fetched: a typo costs no download. A bad statement is one ``error:`` line with DuckDB's
  message, exit 2.
* **Holes.** A window no copy covers is an empty ``logs`` (the statement still runs: exit 0), its
  holes said on stderr, as ``get`` names them. Copies that fail their check with no good copy
  left: their rows are missing, said, exit 6.

DuckDB is the optional ``[query]`` extra: imported here, when the command runs, never by the
rest of rdsrecorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import decimal
import functools
import json
import logging
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

from rdsrecorder.commands import open_bucket
from rdsrecorder.csvlog import COLUMNS, LayoutError, layout_of, read_csv_sql, sql_string
from rdsrecorder.errors import EXIT_CONFIG, EXIT_OK, EXIT_VERIFY, RdsRecorderError, one_line
from rdsrecorder.hooks import Hooks
from rdsrecorder.query_options import OutputFormat
from rdsrecorder.times import iso

if TYPE_CHECKING:
    from rdsrecorder.config import QuerySettings
    from rdsrecorder.get import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

EXPORT_BLOCK_CHARS = 1 << 20
FETCH_ROWS = 2048  # rows per batch from DuckDB to stdout: a few MB at most for csvlog rows


class QueryError(RdsRecorderError):
    """The statement (or the data it reads) is refused by the engine."""

    exit_code = EXIT_CONFIG


@dataclass
class QueryReport:
    db_identifier: str
    start_s: float
    finish_s: float
    runs: int = 0
    files: int = 0
    bytes: int = 0
    rows: int = 0  # rows of the result printed
    holes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_VERIFY if self.failures else EXIT_OK


def _engine_error(exc: Exception) -> QueryError:
    return QueryError(f"the statement failed: {one_line(str(exc), 480)}")


@dataclass(frozen=True)
class LogFile:
    instance: str
    path: Path


class Engine:
    """One DuckDB connection in a work directory: ``check`` a statement, ``load`` the files,
    ``run`` the statement. Blocking: called in a worker thread."""

    def __init__(self, work_dir: Path, memory_limit_mib: int, threads: int | None = None) -> None:
        import duckdb

        self._duckdb = duckdb
        spill = work_dir / "spill"
        spill.mkdir(exist_ok=True)
        config: dict[str, Any] = {
            "memory_limit": f"{memory_limit_mib}MiB",
            "temp_directory": str(spill),
            # Rows in any order unless the statement says ORDER BY: an export then streams
            # instead of holding rows back to keep the files' order (1 GB: 330 MiB, not 1 GiB).
            "preserve_insertion_order": False,
        }
        if threads:
            config["threads"] = threads
        self.con = duckdb.connect(":memory:", config=config)
        self.con.execute("SET TimeZone = 'UTC'")  # timestamps shown, and printed, in UTC
        self.con.execute("SET enable_progress_bar = false")  # it would write to stdout

    def close(self) -> None:
        self.con.close()

    def _empty_table(self, name: str) -> None:
        columns = ", ".join(f"{n} {t}" for n, t in COLUMNS)
        self.con.execute(f"CREATE TABLE {name} ({columns}, instance VARCHAR)")

    def check(self, sql: str) -> bool:
        """One statement that parses and, for a query, binds against an empty ``logs``. True
        for a query (a SELECT)."""
        duckdb = self._duckdb
        try:
            statements = self.con.extract_statements(sql)
        except duckdb.Error as exc:
            raise _engine_error(exc) from None
        if len(statements) != 1:
            raise QueryError(f"give one SQL statement, not {len(statements)}")
        statement = statements[0]
        is_select = bool(statement.type == duckdb.StatementType.SELECT)
        self._empty_table("logs")
        try:
            if is_select:
                self.con.execute("EXPLAIN " + statement.query)
        except duckdb.Error as exc:
            raise _engine_error(exc) from None
        finally:
            self.con.execute("DROP TABLE logs")
        return is_select

    def load(self, files: Sequence[LogFile], start_s: float, finish_s: float) -> None:
        """``logs``: the rows of ``files`` with ``log_time`` in ``[start_s, finish_s)``."""
        groups: dict[tuple[str, int], list[str]] = {}
        for f in files:
            try:
                layout = layout_of(f.path)
            except LayoutError as exc:
                raise QueryError(f"{f.instance}: {exc}") from None
            if layout:
                groups.setdefault((f.instance, layout), []).append(str(f.path))
        if not groups:
            self._empty_table("logs")
            return
        parts = [
            f"SELECT *, {sql_string(instance)} AS instance FROM ({read_csv_sql(paths, layout)})"
            for (instance, layout), paths in sorted(groups.items())
        ]
        self.con.execute(
            "CREATE VIEW logs AS SELECT * FROM ("
            + " UNION ALL ".join(parts)
            + f") WHERE log_time >= {_timestamp(start_s)} AND log_time < {_timestamp(finish_s)}"
        )

    def export(self, sql: str, fmt: OutputFormat, out: IO[str], spool: Path) -> int:
        """A query's rows written by DuckDB's own CSV or JSON writer (ten times the Python rows'
        pace: no Python object per value) into ``spool``, then copied to ``out`` in blocks; how
        many rows."""
        duckdb = self._duckdb
        options = (
            "FORMAT csv, HEADER true" if fmt is OutputFormat.CSV else "FORMAT json, ARRAY true"
        )
        query = sql.strip().rstrip(";")
        try:
            written = self.con.execute(
                f"COPY ({query}) TO {sql_string(str(spool))} ({options})"
            ).fetchone()
        except duckdb.Error as exc:
            raise _engine_error(exc) from None
        with spool.open(encoding="utf-8", newline="") as f:
            while block := f.read(EXPORT_BLOCK_CHARS):
                out.write(block)
        out.flush()
        spool.unlink()
        return int(written[0]) if written else 0

    def run(self, sql: str, sink: RowSink) -> int:
        """Runs the statement, its rows to ``sink`` in batches; how many rows."""
        duckdb = self._duckdb
        try:
            cursor = self.con.execute(sql)
            columns = [d[0] for d in cursor.description or ()]
            sink.start(columns)
            count = 0
            while batch := cursor.fetchmany(FETCH_ROWS):
                sink.rows(batch)
                count += len(batch)
        except duckdb.Error as exc:
            raise _engine_error(exc) from None
        sink.end()
        return count


def _timestamp(epoch_s: float) -> str:
    stamp = dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat()
    return f"CAST({sql_string(stamp)} AS TIMESTAMPTZ)"


# -- output ------------------------------------------------------------------------------------
class RowSink(Protocol):
    def start(self, columns: list[str]) -> None: ...

    def rows(self, batch: list[tuple[Any, ...]]) -> None: ...

    def end(self) -> None: ...


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID | dt.timedelta):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class CsvSink:
    """A header line, then the rows; fields with commas, quotes or line breaks quoted."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._writer = csv.writer(out, lineterminator="\n")

    def start(self, columns: list[str]) -> None:
        self._writer.writerow(columns)

    def rows(self, batch: list[tuple[Any, ...]]) -> None:
        self._writer.writerows([_text(v) for v in row] for row in batch)

    def end(self) -> None:
        self._out.flush()


class JsonSink:
    """One JSON array of row objects (column name -> value), a row per line."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._columns: list[str] = []
        self._first = True

    def start(self, columns: list[str]) -> None:
        self._columns = columns
        self._out.write("[")

    def rows(self, batch: list[tuple[Any, ...]]) -> None:
        lines = []
        for row in batch:
            doc = json.dumps(
                dict(zip(self._columns, row, strict=True)),
                ensure_ascii=False,
                default=_json_value,
                separators=(",", ":"),
            )
            lines.append(("\n" if self._first else ",\n") + doc)
            self._first = False
        self._out.write("".join(lines))

    def end(self) -> None:
        self._out.write("]\n" if self._first else "\n]\n")
        self._out.flush()


class TableSink:
    """A table for people (rich): it holds the rows to size its columns."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._columns: list[str] = []
        self._rows: list[list[str]] = []

    def start(self, columns: list[str]) -> None:
        self._columns = columns

    def rows(self, batch: list[tuple[Any, ...]]) -> None:
        self._rows += [[_text(v) for v in row] for row in batch]

    def end(self) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console(file=self._out, highlight=False, width=None if _tty(self._out) else 200)
        table = Table()
        for name in self._columns:
            table.add_column(name, overflow="fold")
        for row in self._rows:
            table.add_row(*row)
        console.print(table, markup=False)
        console.print(f"({len(self._rows)} row{'' if len(self._rows) == 1 else 's'})")


def _tty(out: IO[str]) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def sink_for(fmt: OutputFormat, out: IO[str]) -> RowSink:
    if fmt is OutputFormat.JSON:
        return JsonSink(out)
    if fmt is OutputFormat.CSV:
        return CsvSink(out)
    return TableSink(out)


# -- the command ---------------------------------------------------------------------------------
async def fetch_window(
    store: Store,
    db: str,
    start_s: float,
    finish_s: float,
    files_dir: Path,
    report: QueryReport,
    *,
    concurrency: int,
    hooks: Hooks,
) -> list[LogFile]:
    """The window's files, as ``get`` chooses and checks them, written under ``files_dir``."""
    # Imported here: get brings the SDK, which a bad statement (refused first) never needs.
    from rdsrecorder.get import NoCopyError, get_window

    try:
        got = await get_window(
            store,
            db,
            start_s,
            finish_s,
            output_dir=str(files_dir),
            concurrency=concurrency,
            hooks=hooks,
        )
    except NoCopyError as exc:
        report.holes = [f"{db}: nothing covers {iso(start_s)} .. {iso(finish_s)} ({exc})"]
        return []
    report.runs = got.runs
    report.files = len(got.files)
    report.bytes = sum(f.size for f in got.files)
    report.holes = list(got.holes)
    report.failures = list(got.failures)
    report.partial = list(got.partial)
    return [LogFile(f.instance, Path(f.path)) for f in got.files]


async def _blocking(engine: Engine, call: Callable[..., T], *args: Any) -> T:
    """``call`` in a worker thread. Cancelled, it interrupts the engine and waits for the call to
    end (at DuckDB's next check): the connection cannot close under a running statement."""
    running = asyncio.get_running_loop().run_in_executor(None, functools.partial(call, *args))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        engine.con.interrupt()
        with contextlib.suppress(Exception):
            await running
        raise


async def query_window(
    store: Store,
    settings: QuerySettings,
    *,
    out: IO[str],
    hooks: Hooks | None = None,
) -> QueryReport:
    """Checks the statement, fetches the window, runs the statement, prints its rows to ``out``."""
    hooks = hooks or Hooks()
    start_s, finish_s = settings.start.timestamp(), settings.finish.timestamp()
    report = QueryReport(settings.db_identifier, start_s, finish_s)
    with tempfile.TemporaryDirectory(prefix="rdsrecorder-query-", dir=settings.work_dir) as work:
        work_dir = Path(work)
        engine = await asyncio.to_thread(Engine, work_dir, settings.memory_limit_mib)
        try:
            is_select = await _blocking(engine, engine.check, settings.sql)
            files = await fetch_window(
                store,
                settings.db_identifier,
                start_s,
                finish_s,
                work_dir / "files",
                report,
                concurrency=settings.concurrency,
                hooks=hooks,
            )
            await _blocking(engine, engine.load, files, start_s, finish_s)
            if is_select and settings.output is not OutputFormat.TABLE:
                report.rows = await _blocking(
                    engine, engine.export, settings.sql, settings.output, out, work_dir / "result"
                )
            else:
                sink = sink_for(settings.output, out)
                report.rows = await _blocking(engine, engine.run, settings.sql, sink)
        finally:
            await asyncio.to_thread(engine.close)
    _log_outcome(report)
    return report


def _log_outcome(report: QueryReport) -> None:
    log.info(
        "query %s %s .. %s: %d row(s) from %d file(s), %d bytes, of %d run(s)",
        report.db_identifier,
        iso(report.start_s),
        iso(report.finish_s),
        report.rows,
        report.files,
        report.bytes,
        report.runs,
    )
    for line in report.partial:
        log.warning("partial: %s", line)
    for line in report.holes:
        log.warning("hole: %s", line)
    for line in report.failures:
        log.error("failed: %s (its rows are missing)", line)


async def run_query(
    settings: QuerySettings, *, out: IO[str] | None = None, hooks: Hooks | None = None
) -> QueryReport:
    hooks = hooks or Hooks()
    async with open_bucket(settings.bucket, settings.aws, hooks) as bucket:
        return await query_window(bucket, settings, out=out or sys.stdout, hooks=hooks)


def rows_of(engine: Engine, sql: str) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql`` (for tests and the benchmark)."""
    cursor = engine.con.execute(sql)
    while batch := cursor.fetchmany(FETCH_ROWS):
        yield from batch
