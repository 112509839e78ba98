"""An injectable clock, so that time-based logic is tested in milliseconds; and AWS's time.

``Clock`` is wall time (epoch seconds, UTC). ``FakeClock`` jumps forward when something sleeps,
so a test of a three-hour follow runs instantly. ``AwsClock`` is AWS's time: a host clock plus the
offset learnt from the ``Date`` header of AWS's answers (see its docstring).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections import deque

from rdsrecorder.hooks import Hooks

log = logging.getLogger(__name__)

OFFSET_SAMPLES = 16  # answers per service the estimate is taken from (the newest ones)
OFFSET_WARN_S = 60.0  # a host clock further off than this from AWS's is said (once)


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


class AwsClock(Clock):
    """AWS's time: the host's clock plus an estimate of how far AWS's clock is ahead of it.

    RDS stamps ``LastWritten`` and names log files on its own clock, and SigV4 accepts requests
    up to 15 minutes off, so a host whose clock is wrong by minutes keeps working, and would judge
    readiness wrongly on its own time. Every answer of RDS and S3 carries a ``Date`` header (whole
    seconds): a call sent at host time ``s`` and answered at ``r`` says the offset is about
    ``date + 0.5 - (s + r) / 2``, within half a second plus half the round trip. Of the newest
    ``OFFSET_SAMPLES`` answers of a service, the one with the shortest round trip counts (NTP's
    rule: a slow answer says least). RDS's estimate is the one used (its clock stamps what
    readiness compares); S3's stands in until RDS has answered. Before any answer: the host's
    time. An offset over ``OFFSET_WARN_S`` is logged once; every estimate goes to
    ``Hooks.clock_offset``."""

    def __init__(self, host: Clock, hooks: Hooks | None = None) -> None:
        self.host = host
        self._hooks = hooks or Hooks()
        # service -> (round trip, offset) of its newest answers
        self._samples: dict[str, deque[tuple[float, float]]] = {}
        self._offsets: dict[str, float] = {}
        self._warned = False

    @property
    def offset_s(self) -> float:
        """Seconds AWS's clock is ahead of the host's (negative: behind)."""
        for service in ("rds", "s3"):
            if service in self._offsets:
                return self._offsets[service]
        return next(iter(self._offsets.values()), 0.0)

    def observe(self, service: str, date: str | None, sent_s: float, received_s: float) -> None:
        """An answer of ``service`` with the ``Date`` header ``date``, to a call sent at host time
        ``sent_s`` and answered at ``received_s``."""
        if not date:
            return
        try:
            stamped_s = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError):
            return
        round_trip_s = max(0.0, received_s - sent_s)
        samples = self._samples.setdefault(service, deque(maxlen=OFFSET_SAMPLES))
        samples.append((round_trip_s, stamped_s + 0.5 - (sent_s + received_s) / 2))
        # The newest of the quickest: a host clock that was stepped is followed within
        # OFFSET_SAMPLES answers.
        best = min(reversed(samples), key=lambda s: s[0])
        self._offsets[service] = best[1]
        self._hooks.clock_offset(service, best[1])
        offset_s = self.offset_s
        if abs(offset_s) > OFFSET_WARN_S and not self._warned:
            self._warned = True
            log.warning(
                "the host clock is %.0f s %s AWS's (the Date of %s answers): readiness, lag and "
                "retention are reckoned on AWS's time; fix the host's time sync (NTP)",
                abs(offset_s),
                "behind" if offset_s > 0 else "ahead of",
                service.upper(),
            )

    def now(self) -> float:
        return self.host.now() + self.offset_s

    async def sleep(self, seconds: float) -> None:
        await self.host.sleep(seconds)

    async def sleep_until(self, deadline_s: float, stop: asyncio.Event | None = None) -> bool:
        return await self.host.sleep_until(deadline_s - self.offset_s, stop)
