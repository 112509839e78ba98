"""Bounded waits for tests: a regression must fail fast with a clear message, not spin until the
per-test timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Polls ``predicate`` (every millisecond) until it holds; fails after ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s} s: {what}") from None
