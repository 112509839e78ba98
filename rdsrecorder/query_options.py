"""What the config and the CLI need of ``query`` (its options and their limits), apart from the
engine: ``config`` fills the settings from here, so it never imports ``query`` (which reads S3
through ``get`` and so depends on the config itself)."""

from __future__ import annotations

import enum
import importlib.util

DEFAULT_MEMORY_LIMIT_MIB = 1024
MIN_MEMORY_LIMIT_MIB = 512  # below it DuckDB's CSV read buffers alone can fill the limit (measured)
EXTRA_HINT = "pip install 'rdsrecorder[query]'"


class OutputFormat(enum.StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def duckdb_missing() -> str | None:
    """Why ``query`` cannot run here (None when it can)."""
    if importlib.util.find_spec("duckdb") is None:
        return f"query needs DuckDB, the [query] extra: {EXTRA_HINT}"
    return None
