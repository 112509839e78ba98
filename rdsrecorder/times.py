"""The one place that turns epoch seconds into text: ISO-8601 for data (manifest, metadata) and a
short human form for logs."""

from __future__ import annotations

import pendulum


def iso(ts: pendulum.DateTime | float) -> str:
    """ISO-8601 in UTC: ``2024-02-04T13:00:00Z``."""
    dt = pendulum.from_timestamp(ts, tz="UTC") if isinstance(ts, int | float) else ts
    return dt.in_timezone("UTC").to_iso8601_string()


def iso_or_none(ts: float | None) -> str | None:
    return None if ts is None else iso(ts)


def human(ts: pendulum.DateTime | float | None) -> str:
    """For logs: ``2024-02-04 13:00:00 UTC`` (``-`` for none)."""
    if ts is None:
        return "-"
    dt = pendulum.from_timestamp(ts, tz="UTC") if isinstance(ts, int | float) else ts
    return dt.in_timezone("UTC").format("YYYY-MM-DD HH:mm:ss") + " UTC"


def parse_iso(text: str) -> float:
    """Epoch seconds of an ISO-8601 date-time; ``ValueError`` otherwise."""
    try:
        parsed = pendulum.parse(text)
    except (ValueError, pendulum.parsing.exceptions.ParserError) as exc:
        raise ValueError(f"not a date-time: {text!r}") from exc
    if not isinstance(parsed, pendulum.DateTime):
        raise ValueError(f"not a date-time: {text!r}")
    return parsed.timestamp()
