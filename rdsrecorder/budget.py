"""The RDS API budget: the fleet's share of the account's, and a rate that yields to other tools.

RDS throttles per account and region (a token bucket: about 300 calls of burst, 12 a second),
and every SDK, CLI, console session and agent of the account draws from it. A fleet of N
replicas (``--shard I/N``) shares one budget, ``--fleet-max-api-rps`` / ``--fleet-max-api-burst``:
each process's ceiling is 1/N of it unless ``--max-api-rps`` / ``--max-api-burst`` say otherwise.

``AdaptiveRateLimiter`` is the one limiter of a process's RDS calls (listings, portions,
whole-file downloads, Describe*). It is a token bucket whose rate adapts AIMD-fashion:

* a ``Throttling`` answer halves the rate at once and empties the bucket, once per round trip
  (answers to calls sent before the last decrease say nothing new);
* without throttling the rate climbs back by ``ceiling / RECOVERY_S`` each second, so from half
  to the ceiling in half a minute, never above the ceiling, never below ``ceiling * MIN_FRACTION``;
* the burst shrinks with the rate: after throttling, a pause does not end in a full burst.

Why not botocore's ``adaptive`` retry mode: it lives in botocore's retry handler (off here, so
that every retry is seen and counted), one limiter per client (the whole-file download is not a
botocore call at all), it has no ceiling (it sends as fast as it can until the first throttle),
and it is documented as experimental. The design and the figures: docs/api-budget.md."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

# The fleet's share of the account's budget by default: two thirds of the sustained 12 calls/s,
# leaving a third to the console, Terraform, agents; a twentieth of the 300-call burst.
DEFAULT_FLEET_API_RPS = 8.0
DEFAULT_FLEET_API_BURST = 20
ACCOUNT_API_RPS = 12.0  # AWS's documented sustained rate per account and region
ACCOUNT_API_BURST = 300
DECREASE_FACTOR = 0.5
RECOVERY_S = 60.0  # from nothing to the ceiling without throttling; half of it from half
MIN_FRACTION = 1 / 16  # the rate never goes under this share of the ceiling
_REPORT_STEP = 0.01  # the rate is reported when it moved by 1 % of the ceiling


def process_share(fleet: float, shards: int) -> float:
    """One process's part of the fleet's budget."""
    return fleet / max(1, shards)


def process_burst(fleet_burst: int, shards: int) -> int:
    return max(1, fleet_burst // max(1, shards))


class AdaptiveRateLimiter:
    """Token bucket shared by every RDS call of the process (see the module doc). ``acquire``
    waits for a token and returns when it was taken (for ``throttled``)."""

    def __init__(
        self,
        ceiling_per_s: float,
        burst: float | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
        on_rate: Callable[[float], None] | None = None,
    ) -> None:
        if ceiling_per_s <= 0:
            raise ValueError("ceiling_per_s must be positive")
        self.ceiling_per_s = ceiling_per_s
        self.rate_per_s = ceiling_per_s
        self.max_burst = burst if burst is not None else max(1.0, ceiling_per_s)
        self._tokens = self.max_burst
        self._monotonic = monotonic
        self._sleep = sleep
        self._on_rate = on_rate
        self._updated = monotonic()
        self._decreased_at = float("-inf")
        self._reported = ceiling_per_s
        self.decreases = 0
        self._lock = asyncio.Lock()
        if on_rate is not None:
            on_rate(ceiling_per_s)

    @property
    def burst(self) -> float:
        """The bucket's size now: the configured burst, scaled with the rate."""
        return max(1.0, self.max_burst * self.rate_per_s / self.ceiling_per_s)

    def _advance(self) -> float:
        now = self._monotonic()
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        if self.rate_per_s < self.ceiling_per_s:
            self.rate_per_s = min(
                self.ceiling_per_s, self.rate_per_s + elapsed * self.ceiling_per_s / RECOVERY_S
            )
            self._report()
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_s)
        return now

    def _report(self) -> None:
        if self._on_rate is None:
            return
        if (
            abs(self.rate_per_s - self._reported) >= _REPORT_STEP * self.ceiling_per_s
            or self.rate_per_s == self.ceiling_per_s != self._reported
        ):
            self._reported = self.rate_per_s
            self._on_rate(self.rate_per_s)

    async def acquire(self) -> float:
        # One waiter at a time: FIFO fairness, and no thundering herd after a pause.
        async with self._lock:
            while True:
                now = self._advance()
                # The tolerance: float error can leave 0.9999999 tokens, and a sleep that small
                # may not move the clock at all.
                if self._tokens >= 1 - 1e-6:
                    self._tokens = max(0.0, self._tokens - 1)
                    return now
                await self._sleep((1 - self._tokens) / self.rate_per_s)

    def throttled(self, sent_at: float | None = None) -> None:
        """AWS refused a call for the account's rate. ``sent_at``: what ``acquire`` returned for
        it (None: a call sent now)."""
        self._advance()
        if sent_at is not None and sent_at <= self._decreased_at:
            return  # sent before the last decrease: that one already answered for it
        self._decreased_at = self._monotonic()
        self.decreases += 1
        floor = self.ceiling_per_s * MIN_FRACTION
        self.rate_per_s = max(floor, self.rate_per_s * DECREASE_FACTOR)
        self._tokens = 0.0
        self._report()
