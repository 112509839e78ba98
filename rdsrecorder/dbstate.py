"""What the recorder knows of each DB: its listed files by name and how far each one got, the
object keys they claimed, the gaps and skipped series already said. A DB's listing updates its own
``DbState`` and reads no other DB's (docs/architecture.md).

Keys: only ``postgresql.log`` files (csv and, with ``--include-plain``, the plain twin) own the
documented key ``rds_log_<RUNID>_<unix>``; files of a series named in ``--include-series`` go
under a key that names it (``..._<unix>_audit.log``), so they never take a PostgreSQL log's key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from rdsrecorder.logfiles import SpannedFile, object_key, parse_name
from rdsrecorder.manifest import FileEntry
from rdsrecorder.models import LogFile

log = logging.getLogger(__name__)

IN_FLIGHT = "in-flight"  # queued or copying
ABORTED = "aborted"
POSTGRES_SERIES = "postgresql.log"
LISTING_MARGIN_MS = 5 * 60 * 1000  # LastWritten is updated lazily: look back a little further


def series_of(name: str) -> str:
    """The series a log file belongs to: ``postgresql.log`` for ``error/postgresql.log.<date>``."""
    parsed = parse_name(name)
    base = parsed.base if parsed is not None else name
    return base.rsplit("/", 1)[-1]


def series_suffix(series: str) -> str:
    return "_" + re.sub(r"[^A-Za-z0-9.-]", "-", series)


def file_key(run_id: str, sf: SpannedFile, per_instance: bool) -> str:
    """The object key a file is written to, before any claim (see ``DbState.claim_key``)."""
    key = object_key(run_id, sf.timestamp_s, sf.instance if per_instance else None)
    series = series_of(sf.name)
    if series != POSTGRES_SERIES:
        key += series_suffix(series)
    if not sf.name.endswith(".csv"):
        key += "_stderr"  # the plain twin (--include-plain) shares the csv file's timestamp
    return key


@dataclass(slots=True)
class FileState:
    """One listed file of a DB, keyed by its name in ``DbState.files``."""

    listed: LogFile  # as last listed
    state: str | None = None  # None: not taken yet; IN_FLIGHT, ABORTED or how its copy ended
    key: str = ""  # claimed when first queued
    retries: int = 0
    retry_at_s: float | None = None
    ended: FileEntry | None = None  # its last ending, replaced by a retry's

    @property
    def pending(self) -> bool:
        return self.state in (None, IN_FLIGHT)


@dataclass
class DbState:
    """What the recorder knows of one DB instance."""

    instance: str
    incarnation: str = ""  # the DbiResourceId its files are of ("" when not known)
    files: dict[str, FileState] = field(default_factory=dict)
    spanned: list[SpannedFile] = field(default_factory=list)  # of the series copied, oldest first
    listed_at_s: float | None = None
    departed: bool = False
    pending: list[SpannedFile] = field(default_factory=list)  # for the gauges, oldest first
    _keys: dict[str, str] = field(default_factory=dict)  # object key -> the file name owning it
    _said: set[object] = field(default_factory=set)  # gaps and skipped series already said

    def update(self, listed: Iterable[LogFile], *, full: bool) -> None:
        """Takes a listing in; a ``full`` one also forgets the files it no longer shows (expired
        by retention) unless they are being copied."""
        seen: set[str] = set()
        for f in listed:
            st = self.files.get(f.name)
            if st is None:
                self.files[f.name] = FileState(f)
            elif st.listed != f:  # an unchanged file keeps its old object: less for the GC
                st.listed = f
            seen.add(f.name)
        if full:
            gone = [n for n, st in self.files.items() if n not in seen and st.state != IN_FLIGHT]
            for name in gone:
                st = self.files.pop(name)
                if st.key:
                    self._keys.pop(st.key, None)

    def since_ms(self) -> int | None:
        """The ``FileLastWritten`` of an incremental listing: the oldest file not taken yet (else
        the newest file), less a margin."""
        if not self.files:
            return None
        pending = [st.listed.last_written_ms for st in self.files.values() if st.state is None]
        newest = max(st.listed.last_written_ms for st in self.files.values())
        return max(0, (min(pending) if pending else newest) - LISTING_MARGIN_MS)

    def newest_s(self) -> float:
        """When its newest file was last written (0 when it shows none)."""
        return max((st.listed.last_written_ms for st in self.files.values()), default=0) / 1000

    def claim_key(self, key: str, name: str) -> str:
        """``key`` for file ``name``, or ``key_<n>`` when another file of this DB holds it (two
        files whose names share a timestamp)."""
        n = 1
        candidate = key
        while self._keys.setdefault(candidate, name) != name:
            n += 1
            candidate = f"{key}_{n}"
        if candidate != key:
            log.warning(
                "%s %s shares its timestamp with another file: key %s",
                self.instance,
                name,
                candidate,
            )
        return candidate

    def first_time(self, what: object) -> bool:
        """True the first time ``what`` (a gap, a skipped series) is said for this DB."""
        if what in self._said:
            return False
        self._said.add(what)
        return True
