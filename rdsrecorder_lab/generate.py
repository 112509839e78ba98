"""Realistic RDS PostgreSQL 15 csvlog files for the lab, fast.

Each file is ``<root>/<instance>/error/postgresql.log.<stamp>.csv`` with its plain twin
``postgresql.log.<stamp>`` (a few stderr-format lines, as RDS keeps next to csvlog files):

* hourly rotation: ``postgresql.log.2024-03-04-19.csv`` (RDS's default),
* minute rotation: ``postgresql.log.2024-03-04-1905.csv`` every ``rotation_minutes``
  (Aurora PostgreSQL's default naming),
* daily rotation: ``postgresql.log.2024-03-04.csv``.

Records follow PostgreSQL 15's csvlog layout, 26 columns: log_time (ms, "UTC"), user_name,
database_name, process_id, connection_from, session_id, session_line_num, command_tag,
session_start_time, virtual_transaction_id, transaction_id, error_severity, sql_state_code,
message, detail, hint, internal_query, internal_query_pos, context, query, query_pos, location,
application_name, backend_type, leader_pid, query_id; quoted the way PostgreSQL quotes them
(text columns in double quotes with ``""`` inside, NULLs empty, numbers bare). They include
multi-line statements, statements with ``\\r\\n`` line ends and non-ASCII text, ERRORs with
DETAIL / HINT / CONTEXT, durations, connections, checkpoints and autovacuum reports (whose
messages span lines).

Speed: a block of a few hundred record bodies is rendered once per file and repeated with
increasing timestamps and per-session line numbers; 200 MB take a few seconds. ``log_time``
never decreases within a file. A file's mtime is its last record's time; the newest file ends
at ``end`` (default now) and is the "current" one.

``long_line=True`` puts one record longer than 1 MB on a single line (a bulk INSERT) in the
middle file, to exercise the portion API's truncation.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rdsrecorder_lab.catalog import Catalog

MB = 1_000_000
LONG_LINE_BYTES = 1_200_000
_BLOCK_RECORDS = 600
_WRITE_BATCH_RECORDS = 2000


class Rotation(enum.StrEnum):
    HOUR = "hour"
    MINUTE = "minute"
    DAY = "day"


@dataclass(frozen=True, slots=True)
class GeneratedFile:
    name: str  # "error/postgresql.log.2024-03-04-19.csv", as DescribeDBLogFiles lists it
    path: Path
    start_s: float  # the timestamp in the name (epoch seconds, UTC)
    end_s: float  # start of the next file's span
    size: int
    sha256: str  # hex
    records: int
    last_written_s: float  # mtime


def parse_size_range(spec: str) -> tuple[float, float]:
    """``"0.01-30"`` -> (0.01, 30.0) MB; ``"5"`` -> (5.0, 5.0)."""
    low, sep, high = spec.partition("-")
    try:
        lo_mb = float(low)
        hi_mb = float(high) if sep else lo_mb
    except ValueError:
        raise ValueError(f"size range must look like 0.01-30 (MB), not {spec!r}") from None
    if not (0 < lo_mb <= hi_mb) or not math.isfinite(hi_mb):
        raise ValueError(f"size range must be positive and low <= high, not {spec!r}")
    return lo_mb, hi_mb


def period_s(rotation: Rotation, rotation_minutes: int = 1) -> int:
    if rotation is Rotation.HOUR:
        return 3600
    if rotation is Rotation.DAY:
        return 86400
    if not 1 <= rotation_minutes <= 1440:
        raise ValueError("rotation_minutes must be between 1 and 1440")
    return rotation_minutes * 60


def file_stamp(start: dt.datetime, rotation: Rotation) -> str:
    if rotation is Rotation.HOUR:
        return start.strftime("%Y-%m-%d-%H")
    if rotation is Rotation.DAY:
        return start.strftime("%Y-%m-%d")
    return start.strftime("%Y-%m-%d-%H%M")


def generate(
    root: Path,
    instance: str,
    *,
    hours: float = 6,
    files: int | None = None,
    end: dt.datetime | None = None,
    rotation: Rotation = Rotation.HOUR,
    rotation_minutes: int = 1,
    size_mb: tuple[float, float] | Sequence[float] = (0.01, 30.0),
    long_line: bool = False,
    seed: int = 1,
    plain_twins: bool = True,
) -> list[GeneratedFile]:
    """Write the csvlog files of ``hours`` (or ``files`` files) ending at ``end``; oldest first.

    Sizes are drawn log-uniformly from ``size_mb`` (a few big files among many small ones, as
    load varies during a day); a pair of equal bounds gives equal sizes.
    """
    rng = random.Random(seed)
    end_dt = (end or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    step_s = period_s(rotation, rotation_minutes)
    count = files if files is not None else max(1, math.ceil(hours * 3600 / step_s))
    if count < 1:
        raise ValueError("at least one file")
    end_s = end_dt.timestamp()
    last_start_s = _align(end_s, step_s)
    lo_mb, hi_mb = size_mb[0], size_mb[1]
    error_dir = root / instance / "error"
    error_dir.mkdir(parents=True, exist_ok=True)
    out: list[GeneratedFile] = []
    for index in range(count):
        start_s = last_start_s - (count - 1 - index) * step_s
        span_end_s = start_s + step_s
        newest = index == count - 1
        last_record_s = end_s if newest else span_end_s - rng.uniform(0.05, 2.0)
        target = int(math.exp(rng.uniform(math.log(lo_mb), math.log(hi_mb))) * MB)
        stamp = file_stamp(dt.datetime.fromtimestamp(start_s, dt.UTC), rotation)
        path = error_dir / f"postgresql.log.{stamp}.csv"
        writer = _CsvlogWriter(random.Random(rng.random()), start_s, last_record_s)
        long_at = index == count // 2 and long_line
        size, sha256, records = writer.write(path, max(target, 1), long_line=long_at)
        os.utime(path, (last_record_s, last_record_s))
        if plain_twins:
            twin = error_dir / f"postgresql.log.{stamp}"
            twin.write_bytes(_plain_twin(start_s, index == 0, rng))
            os.utime(twin, (last_record_s, last_record_s))
        out.append(
            GeneratedFile(
                name=f"error/{path.name}",
                path=path,
                start_s=start_s,
                end_s=span_end_s,
                size=size,
                sha256=sha256,
                records=records,
                last_written_s=last_record_s,
            )
        )
    return out


def generate_fleet(
    root: Path,
    count: int,
    *,
    prefix: str = "db",
    files: int = 3,
    rotation: Rotation = Rotation.MINUTE,
    rotation_minutes: int = 1,
    size_mb: tuple[float, float] | Sequence[float] = (0.002, 0.01),
    end: dt.datetime | None = None,
    engine: str = "postgres",
    tags: Mapping[str, str] | None = None,
    seed: int = 1,
) -> dict[str, list[GeneratedFile]]:
    """``count`` instances ``<prefix>-000``, ``<prefix>-001`` ... with ``files`` small csvlog
    files each (minute rotation by default), all ending at ``end``, registered in ``lab.json``
    with ``engine`` and the tags ``{"fleet": prefix, "index": "<i>", **tags}``. 100 instances of
    3 files take well under a second."""
    if count < 1:
        raise ValueError("count must be at least 1")
    width = max(3, len(str(count - 1)))
    end_dt = end or dt.datetime.now(dt.UTC)
    out: dict[str, list[GeneratedFile]] = {}
    specs: dict[str, dict[str, object]] = {}
    for index in range(count):
        ident = f"{prefix}-{index:0{width}d}"
        out[ident] = generate(
            root,
            ident,
            files=files,
            end=end_dt,
            rotation=rotation,
            rotation_minutes=rotation_minutes,
            size_mb=size_mb,
            seed=seed + index,
        )
        specs[ident] = {
            "engine": engine,
            "tags": {"fleet": prefix, "index": str(index), **(tags or {})},
        }

    def register(raw: dict[str, Any]) -> None:
        raw.setdefault("instances", {}).update(specs)

    Catalog(root).update_config(register)
    return out


def _align(epoch_s: float, step_s: int) -> float:
    return float(int(epoch_s // step_s) * step_s)


def csv_text(value: str | None) -> str:
    """A text column as PostgreSQL writes it: NULL empty, else quoted with quotes doubled."""
    if value is None:
        return ""
    return '"' + value.replace('"', '""') + '"'


def _plain_twin(start_s: float, first: bool, rng: random.Random) -> bytes:
    stamp = dt.datetime.fromtimestamp(start_s, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    pid = rng.randint(300, 900)
    if first:
        lines = [
            f"{stamp}::@:[{pid}]:LOG:  ending log output to stderr",
            f'{stamp}::@:[{pid}]:HINT:  Future log output will go to log destination "csvlog".',
        ]
    else:
        lines = [f"{stamp}::@:[{pid}]:LOG:  could not receive data from client: Connection reset"]
    return ("\n".join(lines) + "\n").encode()


# -- record rendering ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Session:
    head: str  # user,db,pid,connection_from,session_id (each with its trailing comma)
    start: str  # session_start_time
    app: str
    backend: str
    pid: int


_USERS = [("app", "shop"), ("reporting", "shop"), ("batch", "warehouse"), ("postgres", "postgres")]
_APPS = ["web-api", "psql", "metabase", "order-worker", "pgbench"]
_CUSTOMERS = ["Zoë", "Ada", "Grace", "Linus", "José", "Ölçer", "ミナ", "O'Brien", "Barbara"]

_STATEMENTS = [
    "SELECT id, status, total FROM orders WHERE customer_id = {n} ORDER BY created_at DESC"
    " LIMIT 20",
    "UPDATE orders SET status = 'shipped', updated_at = now() WHERE id = {n}",
    "INSERT INTO order_events (order_id, kind, payload)"
    " VALUES ({n}, 'created', '{{\"src\": \"web\"}}')",
    "SELECT count(*) FROM sessions WHERE last_seen > now() - interval '5 minutes'",
    "BEGIN",
    "COMMIT",
    "SELECT c.name,\n       sum(o.total) AS revenue\n  FROM customers c\n"
    "  JOIN orders o ON o.customer_id = c.id\n WHERE o.created_at >= date_trunc('day', now())\n"
    " GROUP BY c.name\n ORDER BY revenue DESC\n LIMIT 10",
    "WITH recent AS (\n  SELECT * FROM orders WHERE created_at > now() - interval '1 hour'\n)\n"
    "SELECT status, count(*)\n  FROM recent\n GROUP BY status",
    "SELECT * FROM customers WHERE name = '{customer}'",
    "SELECT id\r\n  FROM invoices\r\n WHERE due_date < current_date\r\n   AND paid = false",
]


class _CsvlogWriter:
    def __init__(self, rng: random.Random, start_s: float, last_s: float) -> None:
        self._rng = rng
        self._start_s = start_s
        self._last_s = max(last_s, start_s)
        self._sessions = [self._session(i) for i in range(24)]
        self._sessions.append(self._background("checkpointer"))
        self._sessions.append(self._background("autovacuum worker"))
        self._block = [self._record_body() for _ in range(_BLOCK_RECORDS)]

    def write(self, path: Path, target_bytes: int, *, long_line: bool) -> tuple[int, str, int]:
        """Write about ``target_bytes`` of records; returns (size, sha256 hex, records)."""
        rng = self._rng
        avg_bytes = sum(len(body.encode()) + 40 for _, body in self._block) / len(self._block)
        expected = max(1, int(target_bytes / avg_bytes))
        step_s = (self._last_s - self._start_s) / expected
        offset = rng.randrange(len(self._block))
        lines = [0] * len(self._sessions)
        digest = hashlib.sha256()
        written = 0
        records = 0
        long_after = expected // 2 if long_line else -1
        sec_cache: dict[int, str] = {}
        with path.open("wb") as f:
            while written < target_bytes or records == 0:
                remaining = max(target_bytes - written, 1)
                batch = max(1, min(_WRITE_BATCH_RECORDS, int(remaining / avg_bytes) + 1))
                parts: list[str] = []
                for _ in range(batch):
                    t = min(self._start_s + records * step_s, self._last_s)
                    whole = int(t)
                    base = sec_cache.get(whole)
                    if base is None:
                        base = dt.datetime.fromtimestamp(whole, dt.UTC).strftime(
                            "%Y-%m-%d %H:%M:%S"
                        )
                        sec_cache = {whole: base}
                    stamp = f"{base}.{int((t - whole) * 1000):03d} UTC"
                    sess_index, body = self._block[(offset + records) % len(self._block)]
                    lines[sess_index] += 1
                    session = self._sessions[sess_index]
                    parts.append(f"{stamp},{session.head}{lines[sess_index]},{body}")
                    if records == long_after:
                        parts.append(self._long_record(stamp, lines))
                        records += 1
                    records += 1
                data = "".join(parts).encode()
                f.write(data)
                digest.update(data)
                written += len(data)
        return written, digest.hexdigest(), records

    # -- building blocks ---------------------------------------------------------------------------
    def _session(self, index: int) -> _Session:
        rng = self._rng
        user, db = _USERS[index % len(_USERS)]
        pid = rng.randint(1000, 65000)
        started = self._start_s - rng.uniform(0, 3600)
        start = dt.datetime.fromtimestamp(int(started), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        host = f"10.0.{rng.randint(0, 9)}.{rng.randint(2, 254)}:{rng.randint(32768, 60999)}"
        sid = f"{int(started):x}.{pid:x}"
        head = f"{csv_text(user)},{csv_text(db)},{pid},{csv_text(host)},{sid},"
        return _Session(head, start, rng.choice(_APPS), "client backend", pid)

    def _background(self, kind: str) -> _Session:
        pid = self._rng.randint(300, 999)
        started = self._start_s - 86400
        start = dt.datetime.fromtimestamp(int(started), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return _Session(f",,{pid},,{int(started):x}.{pid:x},", start, "", kind, pid)

    def _record_body(self) -> tuple[int, str]:
        """(session index, everything after session_line_num) of one record."""
        rng = self._rng
        roll = rng.random()
        if roll < 0.03:
            return len(self._sessions) - 2, self._checkpoint()
        if roll < 0.045:
            return len(self._sessions) - 1, self._autovacuum()
        index = rng.randrange(len(self._sessions) - 2)
        session = self._sessions[index]
        statement = rng.choice(_STATEMENTS).format(
            n=rng.randint(1, 10**6), customer=rng.choice(_CUSTOMERS).replace("'", "''")
        )
        tag = statement.split(None, 1)[0].upper()
        vxid = f"{rng.randint(2, 40)}/{rng.randint(1, 10**6)}"
        query_id = str(rng.randint(-(2**62), 2**62)) if rng.random() < 0.8 else "0"
        if roll < 0.10:
            return index, self._error(session, statement, tag, vxid, query_id)
        if roll < 0.13:
            return index, self._connection(session)
        if roll < 0.15:
            size = rng.randint(10**5, 10**8)
            message = f'temporary file: path "base/pgsql_tmp/pgsql_tmp{session.pid}.0", size {size}'
            return index, self._tail(tag, session, vxid, "LOG", "00000", message, query_id=query_id)
        duration_ms = rng.lognormvariate(0, 1.5)
        message = f"duration: {duration_ms:.3f} ms  statement: {statement}"
        return index, self._tail(tag, session, vxid, "LOG", "00000", message, query_id=query_id)

    def _tail(
        self,
        tag: str,
        session: _Session,
        vxid: str,
        severity: str,
        state: str,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        context: str | None = None,
        query: str | None = None,
        query_pos: int | None = None,
        query_id: str = "0",
        txid: int = 0,
    ) -> str:
        columns = [
            csv_text(tag) if session.backend == "client backend" else "",
            session.start,
            vxid,
            str(txid),
            severity,
            state,
            csv_text(message),
            csv_text(detail),
            csv_text(hint),
            "",  # internal_query
            "",  # internal_query_pos
            csv_text(context),
            csv_text(query),
            "" if query_pos is None else str(query_pos),
            "",  # location (log_error_verbosity=verbose only)
            csv_text(session.app),
            csv_text(session.backend),
            "",  # leader_pid
            query_id,
        ]
        return ",".join(columns) + "\n"

    def _error(self, session: _Session, statement: str, tag: str, vxid: str, qid: str) -> str:
        rng = self._rng
        kind = rng.randrange(4)
        if kind == 0:
            return self._tail(
                tag, session, vxid, "ERROR", "23505",
                'duplicate key value violates unique constraint "orders_pkey"',
                detail=f"Key (id)=({rng.randint(1, 10**6)}) already exists.",
                query=statement, query_id=qid, txid=rng.randint(10**6, 10**7),
            )  # fmt: skip
        if kind == 1:
            return self._tail(
                "SELECT", session, vxid, "ERROR", "42P01",
                'relation "order_archive" does not exist',
                query="SELECT *\n  FROM order_archive\n WHERE id = 1", query_pos=17,
                query_id=qid,
            )  # fmt: skip
        if kind == 2:
            return self._tail(
                "SELECT", session, vxid, "WARNING", "01000", "stock level below threshold",
                detail="item 4711: 3 left", hint="Reorder soon or raise the threshold.",
                context="PL/pgSQL function check_stock(integer) line 7 at RAISE",
                query="SELECT check_stock(4711)", query_id=qid,
            )  # fmt: skip
        return self._tail(
            "UPDATE", session, vxid, "ERROR", "40P01", "deadlock detected",
            detail=(
                f"Process {session.pid} waits for ShareLock on transaction 123456; blocked by "
                "process 4242.\nProcess 4242 waits for ShareLock on transaction 123457; blocked "
                f"by process {session.pid}."
            ),
            hint="See server log for query details.",
            context='while updating tuple (0,12) in relation "orders"',
            query=f"UPDATE orders SET status = 'paid' WHERE id = {rng.randint(1, 10**6)}",
            query_id=qid, txid=rng.randint(10**6, 10**7),
        )  # fmt: skip

    def _connection(self, session: _Session) -> str:
        host, _, port = session.head.split(",")[3].strip('"').partition(":")
        user = session.head.split(",")[0].strip('"')
        db = session.head.split(",")[1].strip('"')
        message = self._rng.choice(
            [
                f"connection received: host={host} port={port}",
                f"connection authorized: user={user} database={db} application_name={session.app}",
                f"disconnection: session time: 0:00:{self._rng.uniform(0, 59):06.3f} user={user} "
                f"database={db} host={host} port={port}",
            ]
        )
        return self._tail("idle", session, "", "LOG", "00000", message)

    def _checkpoint(self) -> str:
        rng = self._rng
        session = self._sessions[-2]
        if rng.random() < 0.5:
            return self._tail("", session, "", "LOG", "00000", "checkpoint starting: time")
        buffers = rng.randint(1, 5000)
        message = (
            f"checkpoint complete: wrote {buffers} buffers ({buffers / 1638.4:.1f}%); 0 WAL "
            f"file(s) added, 0 removed, {rng.randint(0, 3)} recycled; "
            f"write={rng.uniform(0, 30):.3f} s, sync=0.004 s, total={rng.uniform(0, 30):.3f} s; "
            f"sync files=12, longest=0.002 s, average=0.001 s; "
            f"distance={rng.randint(1, 90000)} kB, estimate=90000 kB"
        )
        return self._tail("", session, "", "LOG", "00000", message)

    def _autovacuum(self) -> str:
        rng = self._rng
        session = self._sessions[-1]
        message = (
            'automatic vacuum of table "shop.public.orders": index scans: 1\n'
            f"pages: 0 removed, {rng.randint(100, 9999)} remain, 120 scanned (1.20% of total)\n"
            f"tuples: {rng.randint(0, 5000)} removed, 812345 remain, 0 are dead but not yet "
            "removable\n"
            f"avg read rate: {rng.uniform(0, 90):.3f} MB/s, avg write rate: 1.234 MB/s\n"
            "WAL usage: 250 records, 12 full page images, 98765 bytes\n"
            f"system usage: CPU: user: 0.01 s, system: 0.00 s, elapsed: {rng.uniform(0, 2):.2f} s"
        )
        return self._tail("", session, f"{rng.randint(2, 40)}/{rng.randint(1, 999)}", "LOG",
                          "00000", message)  # fmt: skip

    def _long_record(self, stamp: str, lines: list[int]) -> str:
        index = 0
        lines[index] += 1
        session = self._sessions[index]
        values = []
        size = 0
        n = 0
        while size < LONG_LINE_BYTES:
            n += 1
            value = f"({n}, 'bulk row {n:08d} {'x' * 40}')"
            values.append(value)
            size += len(value) + 1
        statement = "INSERT INTO bulk_import (id, note) VALUES " + ",".join(values)
        message = f"duration: 1532.118 ms  statement: {statement}"
        body = self._tail("INSERT", session, "3/77", "LOG", "00000", message, query_id="0")
        return f"{stamp},{session.head}{lines[index]},{body}"
