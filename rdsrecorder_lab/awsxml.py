"""The AWS query protocol as the lab speaks it: flattened form parameters in, XML out.

Requests are ``Action=...&Version=...`` form fields (POST body or GET query); lists arrive
flattened (``Tags.Tag.1.Key``, ``Filters.Filter.1.Values.Value.2``). Responses are
``<{Action}Response xmlns=...><{Action}Result>...</{Action}Result><ResponseMetadata>...``,
errors ``<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>``,
which is what botocore's query parser reads.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RDS_NAMESPACE = "http://rds.amazonaws.com/doc/2014-10-31/"
STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"


class QueryError(Exception):
    """An error answered as an ``<ErrorResponse>``."""

    def __init__(self, status: int, code: str, message: str, sender: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.sender = sender


def invalid(message: str) -> QueryError:
    return QueryError(400, "InvalidParameterValue", message)


@dataclass(frozen=True, slots=True)
class XmlList:
    """A list rendered as repeated ``<member>`` elements."""

    member: str
    items: list[Any]


def members(params: Mapping[str, str], prefix: str) -> list[dict[str, str]]:
    """``prefix.1.Key=a&prefix.1.Value=b&prefix.2...`` -> [{"Key": "a", "Value": "b"}, ...]."""
    out: list[dict[str, str]] = []
    index = 1
    while True:
        head = f"{prefix}.{index}."
        item = {k[len(head) :]: v for k, v in params.items() if k.startswith(head)}
        if not item:
            return out
        out.append(item)
        index += 1


def values(params: Mapping[str, str], prefix: str) -> list[str]:
    """``prefix.1=a&prefix.2=b`` -> ["a", "b"]."""
    out: list[str] = []
    while f"{prefix}.{len(out) + 1}" in params:
        out.append(params[f"{prefix}.{len(out) + 1}"])
    return out


def filters(params: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in members(params, "Filters.Filter"):
        name = item.get("Name", "")
        out.setdefault(name, []).extend(values(item, "Values.Value"))
    return out


def int_param(params: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid(f"Invalid value for parameter {name}: {raw!r}") from None


def required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise QueryError(400, "MissingParameter", f"The request must contain the parameter {name}")
    return value


def escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def timestamp(when: dt.datetime) -> str:
    return (
        when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    )


def render(name: str, value: Any) -> str:
    """One element; ``Raw`` values are inserted as already-escaped XML text."""
    if value is None:
        return ""
    if isinstance(value, XmlList):
        inner = "".join(render(value.member, item) for item in value.items)
    elif isinstance(value, Mapping):
        inner = "".join(render(k, v) for k, v in value.items())
    elif isinstance(value, Raw):
        inner = value.text
    elif isinstance(value, bool):
        inner = "true" if value else "false"
    elif isinstance(value, int | float):
        inner = str(value)
    elif isinstance(value, dt.datetime):
        inner = timestamp(value)
    else:
        inner = escape(str(value))
    return f"<{name}>{inner}</{name}>"


@dataclass(frozen=True, slots=True)
class Raw:
    """Text already escaped for XML (LogFileData: escaped once, possibly a megabyte)."""

    text: str


def response(action: str, result: Mapping[str, Any] | None, request_id: str, namespace: str) -> str:
    body = render(f"{action}Result", result) if result is not None else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{namespace}">'
        f"{body}<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
        f"</{action}Response>\n"
    )


def error(error: QueryError, request_id: str, namespace: str = RDS_NAMESPACE) -> str:
    kind = "Sender" if error.sender else "Receiver"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse xmlns="{namespace}">'
        f"<Error><Type>{kind}</Type><Code>{escape(error.code)}</Code>"
        f"<Message>{escape(error.message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>\n"
    )
