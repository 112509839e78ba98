"""Files ready to copy and the ``slots`` they share: at most ``slots`` files in flight for the whole
process, whatever the number of DBs.

Each DB keeps its ready files in a heap, oldest first (the one closest to expiry). A free slot goes
to the DB whose oldest file is the oldest of the fleet, except that a DB already holding
``per_db_cap`` slots yields to the others while they have work (a DB with 10,000 small files does
not hold up the rest; alone, it may use every slot). At equal age the DB with the fewest files in
flight, then the one served least recently, goes first.

Slot handover: a file holds its slot from its first request until its copy has ended (the last
byte written to S3 and the manifest told); ``release`` then hands the slot to the next file at
once, in the same step, with no poll in between (see docs/architecture.md).

A DB's rank depends on its own state only, so the DBs sit in one heap by rank: choosing costs
O(log n), not a sweep of the fleet. A rank that changed is pushed again; the old entry is skipped
when it surfaces.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Db(Generic[T]):
    order: int  # first seen: the last tie-break
    queue: list[tuple[float, int, T]] = field(default_factory=list)
    busy: int = 0
    served_at: int = -1
    version: int = 0


class ReadyQueue(Generic[T]):
    def __init__(self, *, slots: int, per_db_cap: int) -> None:
        self.slots = slots
        self._cap = per_db_cap
        self._dbs: dict[str, _Db[T]] = {}
        # (capped, oldest timestamp, busy, served_at, order, version, instance)
        self._ranks: list[tuple[bool, float, int, int, int, int, str]] = []
        self._seq = itertools.count()
        self.in_flight = 0
        self._queued = 0

    def push(self, instance: str, timestamp_s: float, item: T) -> None:
        db = self._dbs.get(instance)
        if db is None:
            db = self._dbs[instance] = _Db(order=len(self._dbs))
        head = db.queue[0][0] if db.queue else None
        heapq.heappush(db.queue, (timestamp_s, next(self._seq), item))
        self._queued += 1
        if head is None or timestamp_s < head:
            self._rank(instance, db)

    def take(self) -> T | None:
        """The next file to copy, which now holds a slot; None when every slot is taken or
        nothing is ready."""
        if self.in_flight >= self.slots:
            return None
        while self._ranks:
            *_, version, instance = heapq.heappop(self._ranks)
            db = self._dbs[instance]
            if version != db.version or not db.queue:
                continue  # an outdated rank
            _, _, item = heapq.heappop(db.queue)
            self._queued -= 1
            db.busy += 1
            self.in_flight += 1
            db.served_at = next(self._seq)
            self._rank(instance, db)
            return item
        return None

    def release(self, instance: str) -> None:
        """A file of ``instance`` ended: its slot is free for the next ``take``."""
        db = self._dbs[instance]
        db.busy -= 1
        self.in_flight -= 1
        self._rank(instance, db)

    def queued(self, instance: str | None = None) -> int:
        """Files ready and waiting for a slot (of one DB, or of all)."""
        if instance is None:
            return self._queued
        db = self._dbs.get(instance)
        return len(db.queue) if db else 0

    def drop(self, instance: str) -> list[T]:
        """Empties one DB's queue (a DB recreated: its old incarnation's files are not copied):
        what was waiting, for the caller. Its files in flight keep their slots."""
        db = self._dbs.get(instance)
        if db is None:
            return []
        items = [item for _, _, item in db.queue]
        db.queue.clear()
        self._queued -= len(items)
        self._rank(instance, db)
        return items

    def clear(self) -> list[T]:
        """Empties the queues (a stop): what was waiting, for the caller to count."""
        items = [item for db in self._dbs.values() for _, _, item in db.queue]
        for db in self._dbs.values():
            db.queue.clear()
            db.version += 1
        self._ranks.clear()
        self._queued = 0
        return items

    def _rank(self, instance: str, db: _Db[T]) -> None:
        db.version += 1
        if db.queue:
            rank = (db.busy >= self._cap, db.queue[0][0], db.busy, db.served_at, db.order)
            heapq.heappush(self._ranks, (*rank, db.version, instance))
        if len(self._ranks) > 4 * len(self._dbs) + 64:
            live = [r for r in self._ranks if r[5] == self._dbs[r[6]].version]
            heapq.heapify(live)
            self._ranks = live
