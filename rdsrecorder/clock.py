"""An injectable clock, so that time-based logic is tested in milliseconds.

``Clock`` is wall time (epoch seconds, UTC). ``FakeClock`` jumps forward when something sleeps,
so a test of a three-hour follow runs instantly.
"""

from __future__ import annotations

import asyncio
import time


class Clock:
    def now(self) -> float:
        """Epoch seconds (UTC)."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)
        else:
            await asyncio.sleep(0)

    async def sleep_until(self, deadline_s: float, stop: asyncio.Event | None = None) -> bool:
        """Sleep until ``deadline_s`` (epoch seconds). Returns False if ``stop`` was set first."""
        while True:
            if stop is not None and stop.is_set():
                return False
            remaining_s = deadline_s - self.now()
            if remaining_s <= 0:
                return True
            # Wake at least every 60 s: re-reading the clock corrects for drift and suspend.
            step_s = min(remaining_s, 60.0)
            if stop is None:
                await self.sleep(step_s)
                continue
            try:
                async with asyncio.timeout(step_s):
                    await stop.wait()
                return False
            except TimeoutError:
                continue


class FakeClock(Clock):
    """Time moves only when someone sleeps (or the test calls ``advance``)."""

    def __init__(self, start_s: float) -> None:
        self._now_s = start_s

    def now(self) -> float:
        return self._now_s

    def advance(self, seconds: float) -> None:
        self._now_s += seconds

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._now_s += seconds
        await asyncio.sleep(0)

    async def sleep_until(self, deadline_s: float, stop: asyncio.Event | None = None) -> bool:
        await asyncio.sleep(0)
        if stop is not None and stop.is_set():
            return False
        self._now_s = max(self._now_s, deadline_s)
        return True
