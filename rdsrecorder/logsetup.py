"""Logging: human-readable lines by default, one JSON object per line with ``--log-format json``
(for containers), and a filter that redacts anything that looks like an AWS secret (defence in
depth: the code never logs credentials on purpose).

Names from the API are data: a log file name with a newline must not forge a log line, so the
text formatter escapes control characters in messages (``\\n`` -> ``\\x0a``); JSON escapes them
anyway."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import IO, Any

_NOISY = ("botocore", "aiobotocore", "aioboto3", "urllib3", "aiohttp.access", "werkzeug", "moto")
_SECRET_PATTERNS = (
    re.compile(
        r"(?i)(aws_secret_access_key|secret_access_key|aws_session_token|session_token)"
        r"(\s*[=:]\s*)(\S+)"
    ),
    re.compile(r"(?i)(authorization)(\s*[=:]\s*)([^,\n]+)"),
    re.compile(r"(?i)(x-amz-security-token)(\s*[=:]\s*)(\S+)"),
    re.compile(r"(Signature=)([0-9a-f]{16,})()"),
)
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, 0x85, 0x2028, 0x2029]}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def escape_controls(text: str) -> str:
    """Control characters (and Unicode line separators) as ``\\xNN``: one message, one line."""
    return text.translate(_CONTROL)


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return text


class RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        self.converter = time.gmtime

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = (
                    value if isinstance(value, str | int | float | bool | None) else str(value)
                )
        if record.exc_info:
            data["exc_info"] = redact(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False)


def setup_logging(
    debug: bool = False, log_format: str = "text", stream: IO[str] | None = None
) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.INFO if debug else logging.WARNING)
    if debug:
        logging.getLogger("botocore").setLevel(logging.INFO)
