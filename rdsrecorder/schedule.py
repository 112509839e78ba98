"""When each DB is listed next, so that following a fleet costs about one listing per rotation.

A DB is listed again ``ROTATION_SLACK_S`` after its next expected rotation: the newest file's
timestamp plus the rotation period learnt from the names. When the rotation is late, the next
listings back off exponentially from ``poll_interval_s`` up to ``idle_poll_s``. A period learnt
from minute names (which an idle spell may distort) is never trusted for longer than
``idle_poll_s``; an hourly or daily name cannot change before its hour or day is over.

``Timers`` is the heap under it: finding the DBs due now costs O(log n) each, not a sweep of the
fleet (see docs/architecture.md).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from rdsrecorder.logfiles import NOMINAL_PERIOD_S, SpannedFile, rotation_period_s

FULL_LISTING_EVERY = 10  # listings of a DB; between them FileLastWritten keeps them small
ROTATION_SLACK_S = 5.0  # list this long after an expected rotation (RDS shows the file at once)
IDLE_POLL_S = 600.0  # the slowest a DB is listed (idle DBs, late rotations)
MIN_ROTATION_S = 60  # log_rotation_age is 1 to 1440 minutes


class Timers:
    """One due time per DB; setting it again replaces it. Replaced entries stay in the heap and are
    skipped when they surface (compacted when they outnumber the live ones)."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def set(self, instance: str, at_s: float) -> None:
        self._at[instance] = at_s
        heapq.heappush(self._heap, (at_s, instance))
        if len(self._heap) > 2 * len(self._at) + 64:
            self._heap = [(at, inst) for inst, at in self._at.items()]
            heapq.heapify(self._heap)

    def set_earlier(self, instance: str, at_s: float) -> None:
        """Due at ``at_s`` unless it is due sooner already."""
        current = self._at.get(instance)
        if current is None or at_s < current:
            self.set(instance, at_s)

    def drop(self, instance: str) -> None:
        self._at.pop(instance, None)

    def next_s(self) -> float | None:
        """When the first DB is due (None: none is)."""
        heap = self._heap
        while heap and self._at.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now_s: float) -> list[str]:
        """The DBs due at ``now_s``, earliest first; they are no longer due afterwards."""
        due: list[str] = []
        while (at_s := self.next_s()) is not None and at_s <= now_s:
            _, instance = heapq.heappop(self._heap)
            del self._at[instance]
            due.append(instance)
        return due


@dataclass
class _Listing:
    listings: int = 0
    late: int = 0  # listings in a row that found the rotation late
    newest_s: int | None = None


class ListingSchedule:
    def __init__(self, *, poll_interval_s: float, idle_poll_s: float = IDLE_POLL_S) -> None:
        self._poll_interval_s = poll_interval_s
        self._idle_poll_s = max(idle_poll_s, poll_interval_s)
        self._dbs: dict[str, _Listing] = {}
        self._due = Timers()

    def add(self, instance: str, now_s: float) -> None:
        """Follows ``instance`` (again): it is due at once."""
        self._dbs.setdefault(instance, _Listing())
        self._due.set(instance, now_s)

    def drop(self, instance: str) -> None:
        """No more listings of ``instance`` (it left); what was learnt of it is kept."""
        self._due.drop(instance)

    def pop_due(self, now_s: float) -> list[str]:
        return self._due.pop_due(now_s)

    def next_s(self) -> float | None:
        return self._due.next_s()

    def listings(self, instance: str) -> int:
        return self._dbs[instance].listings

    def full(self, instance: str) -> bool:
        """The next listing asks for every file (it finds those gone by retention)."""
        return self._dbs[instance].listings % FULL_LISTING_EVERY == 0

    def failed(self, instance: str, now_s: float) -> None:
        """The listing failed: try again on the next poll."""
        self._due.set(instance, now_s + self._poll_interval_s)

    def listed(self, instance: str, now_s: float, files: Sequence[SpannedFile]) -> None:
        """``instance`` was listed at ``now_s`` and shows ``files`` (its series copied): when to
        list it next, just after its next expected rotation."""
        db = self._dbs[instance]
        db.listings += 1
        newest_s = max((sf.timestamp_s for sf in files), default=None)
        if newest_s is None:
            self._due.set(instance, now_s + self._backoff_s(db))
            return
        if db.newest_s is None or newest_s > db.newest_s:
            db.late = 0
        db.newest_s = newest_s
        newest = max(files, key=lambda sf: sf.timestamp_s)
        learnt = NOMINAL_PERIOD_S[newest.granularity] is None
        if learnt and len({sf.timestamp_s for sf in files}) < 2:
            # One minute-named file tells nothing of the period but its least: log_rotation_age
            # is at least a minute. Look just after that, then again sooner than later.
            soonest_s = newest_s + MIN_ROTATION_S + ROTATION_SLACK_S
            self._due.set(instance, soonest_s if soonest_s > now_s else now_s + self._backoff_s(db))
            return
        expected_s = newest_s + rotation_period_s(files) + ROTATION_SLACK_S
        due_s = expected_s if expected_s > now_s else now_s + self._backoff_s(db)
        # A period learnt from minute names may be wrong (an idle spell): the idle poll bounds it.
        self._due.set(instance, min(due_s, now_s + self._idle_poll_s) if learnt else due_s)

    def _backoff_s(self, db: _Listing) -> float:
        late = db.late
        db.late = late + 1
        return float(min(self._idle_poll_s, self._poll_interval_s * 2 ** min(late, 16)))
