"""PostgreSQL's csvlog layout, as RDS writes it, for the engines that read it (DuckDB here, Athena
through the Parquet twins).

The columns are PostgreSQL's names, in file order. Each major version only ever appended columns:
23 up to PostgreSQL 12, 24 in 13 (``backend_type``), 26 from 14 (``leader_pid``, ``query_id``). A
file's layout is therefore its first record's field count, and a shorter layout's missing columns
are NULL. Types are DuckDB's; ``ATHENA_TYPES`` maps them for a Hive DDL.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

COLUMNS: tuple[tuple[str, str], ...] = (
    ("log_time", "TIMESTAMPTZ"),
    ("user_name", "VARCHAR"),
    ("database_name", "VARCHAR"),
    ("process_id", "INTEGER"),
    ("connection_from", "VARCHAR"),
    ("session_id", "VARCHAR"),
    ("session_line_num", "BIGINT"),
    ("command_tag", "VARCHAR"),
    ("session_start_time", "TIMESTAMPTZ"),
    ("virtual_transaction_id", "VARCHAR"),
    ("transaction_id", "BIGINT"),
    ("error_severity", "VARCHAR"),
    ("sql_state_code", "VARCHAR"),
    ("message", "VARCHAR"),
    ("detail", "VARCHAR"),
    ("hint", "VARCHAR"),
    ("internal_query", "VARCHAR"),
    ("internal_query_pos", "INTEGER"),
    ("context", "VARCHAR"),
    ("query", "VARCHAR"),
    ("query_pos", "INTEGER"),
    ("location", "VARCHAR"),
    ("application_name", "VARCHAR"),
    ("backend_type", "VARCHAR"),
    ("leader_pid", "INTEGER"),
    ("query_id", "BIGINT"),
)
NAMES = tuple(name for name, _ in COLUMNS)
# Field counts of the layouts RDS runs: PostgreSQL <= 12, 13, >= 14.
LAYOUTS = (23, 24, 26)
# The longest record read (a statement logged whole can be megabytes). DuckDB sizes its read
# buffers from it, within its memory limit: at 1 GiB a 256 MiB limit could not even aggregate.
MAX_RECORD_BYTES = 64 << 20
ATHENA_TYPES = {
    "TIMESTAMPTZ": "timestamp",
    "VARCHAR": "string",
    "INTEGER": "int",
    "BIGINT": "bigint",
}


class LayoutError(ValueError):
    pass


def layout_of(path: Path) -> int:
    """The field count of the file's first record (0 for an empty file); a count that is no
    csvlog layout is refused."""
    csv.field_size_limit(sys.maxsize)  # a statement may be megabytes long
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        first = next(csv.reader(f), None)
    if first is None:
        return 0
    if len(first) not in LAYOUTS:
        raise LayoutError(
            f"{path.name}: its first record has {len(first)} fields; csvlog has "
            f"{', '.join(map(str, LAYOUTS))} (PostgreSQL <= 12, 13, >= 14)"
        )
    return len(first)


def sql_string(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def read_csv_sql(paths: list[str], layout: int) -> str:
    """DuckDB ``read_csv`` of csvlog files of one layout, every csvlog column selected (NULL for
    those the layout lacks). Quoted empty strings stay empty strings, unquoted empty fields are
    NULL, as PostgreSQL writes them. Nothing is sniffed, not even the line end: DuckDB took a
    file whose first statement holds a CR LF inside quotes for a CR LF file, and failed on it. A
    malformed record is an error, never skipped."""
    present = COLUMNS[:layout]
    spec = "{" + ", ".join(f"{sql_string(n)}: {sql_string(t)}" for n, t in present) + "}"
    files = "[" + ", ".join(sql_string(p) for p in paths) + "]"
    select = ", ".join(n if i < layout else f"CAST(NULL AS {t}) AS {n}" for i, (n, t) in
                       enumerate(COLUMNS))  # fmt: skip
    return (
        f"SELECT {select} FROM read_csv({files}, columns = {spec}, header = false, "
        "delim = ',', quote = '\"', escape = '\"', new_line = '\\n', auto_detect = false, "
        "strict_mode = true, "
        f"allow_quoted_nulls = false, max_line_size = {MAX_RECORD_BYTES})"
    )
