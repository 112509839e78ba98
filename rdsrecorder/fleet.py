"""Many DBs in one process: which DBs (ids given with ``-d``, instances discovered by tag), which
of them this process owns (``--shard I/N``), and one manifest per DB.

* **Discovery** reads ``DescribeDBInstances`` (its ``TagList``) and, when a PostgreSQL Aurora
  member is among them, ``DescribeDBClusters`` (a member also matches through its cluster's
  tags): only ``rds:Describe*``, never ``ListTagsForResource``. Engines other than ``postgres``
  and ``aurora-postgresql`` are never selected, so their logs are never listed or read.
* **A DB** is the unit that is sharded and owns a manifest: a plain instance, or an Aurora
  cluster (its members stay together, so one process writes the cluster's manifest).
* **Sharding** is rendezvous (highest random weight) hashing: shard ``I`` of ``N`` owns the DBs
  for which ``blake2b(f"{i}:{db}")`` is highest at ``i == I``. No coordinator: every replica
  computes the same answer; N replicas cover the fleet exactly once, and going from N to N+1
  replicas moves only the DBs the new shard wins (about 1/(N+1) of them). A DB that moves
  resumes under the same run id: complete objects are skipped, its manifest is read back.
* **Incarnations**: an instance is known by its ``DbiResourceId``. A name deleted and recreated
  is a new incarnation: said (WARNING, ``Hooks.db_recreated``), followed again, and its files
  never go over the old one's (``LogFile.incarnation``, the objects' ``db-resource-id``).
* **Missing**: a DB named with ``-d`` that is not found any more stays in the follow set: it is
  exported as missing (``Hooks.db_missing``) and looked for again after ``MISSING_FIRST_S``,
  doubling up to the refresh interval, until it is back.
* **Layout**: a fleet run (more than one DB, or discovery) writes ``<RUNID>/<instance>/...``
  objects and one manifest per DB at ``<RUNID>/<db>/manifest.json``, written by the DB's owner
  (and, while a reshard overlaps, by its old owner too: the writers merge, see
  ``rdsrecorder.manifest``); a run over one DB keeps ``<RUNID>/manifest.json``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import pendulum

from rdsrecorder import __version__
from rdsrecorder.clock import Clock
from rdsrecorder.concurrency import bounded
from rdsrecorder.config import Shard, SyncSettings
from rdsrecorder.errors import AwsError, DbNotFoundError, OwnerError
from rdsrecorder.hooks import Hooks
from rdsrecorder.manifest import FileEntry, Manifest, ManifestStorage, ManifestStore, manifest_key
from rdsrecorder.models import FileStatus
from rdsrecorder.rds.control import INSTANCE_NOT_FOUND, POSTGRES_ENGINES, DbInstance, RdsControl
from rdsrecorder.times import iso, parse_iso
from rdsrecorder.window import Mode

log = logging.getLogger(__name__)

MANIFEST_CONCURRENCY = 16  # manifests of a fleet written or checked at once (500 DBs, one by one,
# would hold the start and a shutdown for seconds)
DEFAULT_RETENTION_S = 3 * 86400.0  # rds.log_retention_period's default: 4320 minutes
RETRY_REFRESH_S = 60.0  # a failed discovery is tried again this soon (the current set is kept)
MISSING_FIRST_S = 30.0  # a named DB not found is looked for again this soon, then less often
ONE_BY_ONE_MAX = 5  # more named instances than this are checked with one paged listing


def _said(task: asyncio.Future[None]) -> None:
    """A background read that failed otherwise than AWS (a bug) is logged, not lost."""
    if not task.cancelled() and task.exception() is not None:
        log.error("reading the log retention failed: %r", task.exception())


def shard_weight(shard: int, db: str) -> bytes:
    return hashlib.blake2b(f"{shard}:{db}".encode(), digest_size=16).digest()


def shard_of(db: str, count: int) -> int:
    """The shard (0 .. count-1) that owns ``db``: rendezvous hashing, stable across processes."""
    return max(range(count), key=lambda i: shard_weight(i, db))


def owns(shard: Shard, db: str) -> bool:
    return shard.count == 1 or shard_of(db, shard.count) == shard.index


def tags_match(wanted: Iterable[tuple[str, str]], *tag_sets: dict[str, str]) -> bool:
    """Every KEY=VALUE of ``wanted`` is on the resource (the instance or, for an Aurora member,
    its cluster)."""
    return all(any(tags.get(k) == v for tags in tag_sets) for k, v in wanted)


@dataclass(frozen=True, slots=True)
class Db:
    id: str  # the instance id, or the Aurora cluster id
    kind: Literal["instance", "cluster"]
    instances: tuple[str, ...]


async def discover(rds: RdsControl, wanted: tuple[tuple[str, str], ...]) -> list[DbInstance]:
    """Every PostgreSQL instance of the region carrying all ``wanted`` tags (an Aurora member
    also through its cluster's tags)."""
    candidates = [i async for i in rds.all_instances() if i.engine in POSTGRES_ENGINES]
    cluster_tags: dict[str, dict[str, str]] = {}
    if any(i.cluster_id for i in candidates):
        cluster_tags = await rds.cluster_tags()
    return [
        i
        for i in candidates
        if tags_match(wanted, i.tags, cluster_tags.get(i.cluster_id or "", {}))
    ]


class ManifestOpener(Protocol):
    async def open(self, db: Db) -> None: ...


class Fleet:
    """The DBs this process follows, re-read every ``refresh_s``: the Recorder's resolver.

    Explicit ids are resolved once at start (a missing one is an error then); clusters are
    re-resolved at every refresh (members join and leave); discovery runs at every refresh. A
    refresh that fails keeps the current set and is tried again soon."""

    def __init__(
        self,
        rds: RdsControl,
        *,
        targets: tuple[str, ...],
        tags: tuple[tuple[str, str], ...],
        shard: Shard,
        refresh_s: float,
        clock: Clock,
        hooks: Hooks,
        retention_s: float | None = None,
    ) -> None:
        self._rds = rds
        self._targets = targets
        self._tags = tags
        self._shard = shard
        self._refresh_s = refresh_s
        self._clock = clock
        self._hooks = hooks
        self._retention_override_s = retention_s
        self._explicit: dict[str, Db] = {}
        self._dbs: dict[str, Db] = {}
        self._groups: dict[str, str | None] = {}  # instance -> parameter group
        self._retention: dict[str, float] = {}  # parameter group -> seconds
        self._retention_denied = False
        self._retention_reading: asyncio.Future[None] | None = None
        self._opened: set[str] = set()
        self._manifests: ManifestOpener | None = None
        self._next_refresh_s = float("inf")
        self._matched: int | None = None  # instances the tags matched at the last discovery
        self.owner: dict[str, str] = {}  # instance -> db id (kept after the DB leaves)
        self._resource: dict[str, str] = {}  # instance -> the DbiResourceId seen last
        self._missing: dict[str, float] = {}  # named DB not found -> its back-off (seconds)
        self._recreated: list[str] = []  # instances recreated, not told to the recorder yet

    @property
    def dbs(self) -> dict[str, Db]:
        return dict(self._dbs)

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Ends the background read of the retention before the clients close (a read cut short
        by a closed client is not an error to report)."""
        reading, self._retention_reading = self._retention_reading, None
        if reading is not None and not reading.done():
            reading.remove_done_callback(_said)
            reading.cancel()
            await asyncio.wait([reading])

    def instances_now(self) -> tuple[str, ...]:
        return tuple(sorted({i for db in self._dbs.values() for i in db.instances}))

    async def start(self) -> dict[str, Db]:
        """The first resolution (preflight): every explicit id must exist."""
        for ident in self._targets:
            target = await self._rds.resolve(ident)
            self._explicit[ident] = Db(ident, target.kind, target.instances)
            if target.kind == "instance":
                self._seen(target.instances[0], target.resource_id)
            if target.kind == "instance" and target.parameter_group is not None:
                self._groups[target.instances[0]] = target.parameter_group
        self._apply(await self._select(just_resolved=True))
        self._next_refresh_s = self._clock.now() + self._refresh_s
        if self._shard.count > 1:
            log.info(
                "shard %s: %d DB(s) of this shard: %s",
                self._shard,
                len(self._dbs),
                ", ".join(sorted(self._dbs)) or "none",
            )
        return self.dbs

    def attach(self, manifests: ManifestOpener) -> None:
        self._manifests = manifests

    # -- incarnations and missing DBs -------------------------------------------------------------
    def incarnation(self, instance: str) -> str:
        """The instance's DbiResourceId as last seen ("" when not known)."""
        return self._resource.get(instance, "")

    def recreated(self) -> list[str]:
        """The instances recreated since the last call."""
        out, self._recreated = self._recreated, []
        return out

    def lost(self, instance: str) -> None:
        """A listing said ``instance`` does not exist: the DBs are looked for at the next call."""
        self._next_refresh_s = min(self._next_refresh_s, self._clock.now())

    def _seen(self, instance: str, resource_id: str) -> None:
        if not resource_id:
            return
        old = self._resource.get(instance)
        self._resource[instance] = resource_id
        if old is not None and old != resource_id:
            log.warning(
                "%s was deleted and recreated (DbiResourceId %s, was %s): following the new "
                "one; its files go beside the old one's, never over them",
                instance,
                resource_id,
                old,
            )
            self._hooks.db_recreated(instance)
            self._recreated.append(instance)

    def _lose(self, ident: str) -> None:
        """A named DB is not found: kept in the follow set as missing, looked for again."""
        delay_s = self._missing.get(ident)
        if delay_s is None:
            delay_s = MISSING_FIRST_S
            log.warning(
                "DB %s (named with -d) is not found: missing until it is back; looking for it "
                "again in %.0f s, then less often",
                ident,
                delay_s,
            )
            self._hooks.db_missing(ident, True)
        else:
            delay_s = min(2 * delay_s, max(MISSING_FIRST_S, self._refresh_s))
        self._missing[ident] = delay_s

    def _found(self, ident: str) -> None:
        if self._missing.pop(ident, None) is not None:
            log.warning("DB %s (named with -d) is back: following it again", ident)
            self._hooks.db_missing(ident, False)

    async def _named_instances(self) -> dict[str, DbInstance]:
        """The named instances that exist now, by lower-cased name: one DescribeDBInstances
        each, or for many of them one paged listing of the region (100 a call)."""
        named = [db.instances[0] for db in self._explicit.values() if db.kind == "instance"]
        if len(named) > ONE_BY_ONE_MAX:
            wanted = {n.lower() for n in named}
            return {
                i.identifier.lower(): i
                async for i in self._rds.all_instances()
                if i.identifier.lower() in wanted
            }
        found: dict[str, DbInstance] = {}
        for name in named:
            try:
                found[name.lower()] = await self._rds.instance(name)
            except AwsError as exc:
                if exc.code not in INSTANCE_NOT_FOUND:
                    raise
        return found

    async def _select(self, just_resolved: bool = False) -> dict[str, Db]:
        dbs: dict[str, Db] = {}
        named = {} if just_resolved else await self._named_instances()
        for ident, db in self._explicit.items():
            if db.kind == "cluster" and not just_resolved:
                try:
                    db = Db(ident, "cluster", (await self._rds.resolve(ident)).instances)
                except DbNotFoundError:
                    log.warning("cluster %s no longer exists", ident)
                    continue
            elif not just_resolved:
                inst = named.get(db.instances[0].lower())
                if inst is None:
                    self._lose(ident)
                    continue
                self._found(ident)
                self._seen(inst.identifier, inst.resource_id)
            dbs[db.id] = db
        if self._tags:
            members: dict[str, set[str]] = {}
            matched = await discover(self._rds, self._tags)
            self._say_matches(len(matched))
            for inst in matched:
                self._seen(inst.identifier, inst.resource_id)
                self._groups.setdefault(inst.identifier, inst.parameter_group)
                db_id = inst.cluster_id or inst.identifier
                members.setdefault(db_id, set()).add(inst.identifier)
                if inst.cluster_id is None:
                    dbs.setdefault(db_id, Db(db_id, "instance", (inst.identifier,)))
            for db_id, found in members.items():
                if db_id in dbs and dbs[db_id].kind == "instance":
                    continue
                known = set(dbs[db_id].instances) if db_id in dbs else set()
                dbs[db_id] = Db(db_id, "cluster", tuple(sorted(found | known)))
        return {k: v for k, v in sorted(dbs.items()) if owns(self._shard, k)}

    def _say_matches(self, count: int) -> None:
        """A discovery that matches nothing is most likely a mistyped tag or the wrong region: a
        warning when it starts or becomes so (``rdsrecorder_dbs_followed`` then says 0)."""
        if count == 0 and self._matched != 0:
            log.warning(
                "--discover-tag %s matches no PostgreSQL instance in this region: following none "
                "(every KEY=VALUE must match, case included; check the tags and --region)",
                ",".join(f"{k}={v}" for k, v in self._tags),
            )
        self._matched = count

    def _apply(self, selected: dict[str, Db]) -> None:
        for db_id in sorted(set(selected) - set(self._dbs)):
            db = selected[db_id]
            if self._dbs or self._next_refresh_s != float("inf"):
                log.info("DB %s appeared: following %s", db_id, ", ".join(db.instances) or "-")
                self._hooks.db_change(db_id, "added")
        for db_id in sorted(set(self._dbs) - set(selected)):
            log.info(
                "DB %s is gone (deleted, untagged or no longer this shard's): finishing what "
                "was listed",
                db_id,
            )
            self._hooks.db_change(db_id, "removed")
        for db_id in sorted(set(self._dbs) & set(selected)):
            old, new = set(self._dbs[db_id].instances), set(selected[db_id].instances)
            for joined in sorted(new - old):
                log.info("cluster %s: member %s joined", db_id, joined)
            for left in sorted(old - new):
                log.info("cluster %s: member %s left", db_id, left)
        self._dbs = selected
        for db in selected.values():
            for inst in db.instances:
                self.owner[inst] = db.id
        self._hooks.dbs_followed(len(selected))

    async def instances(self) -> tuple[str, ...]:
        if self._clock.now() >= self._next_refresh_s:
            try:
                self._apply(await self._select())
                self._next_refresh_s = self._clock.now() + min(
                    [self._refresh_s, *self._missing.values()]
                )
            except AwsError as exc:
                log.warning("looking for DBs failed (%s): keeping the current set", exc)
                self._next_refresh_s = self._clock.now() + min(self._refresh_s, RETRY_REFRESH_S)
        await self._open_manifests()
        # The retention (only the headroom gauge needs it) is read beside the copies: until it
        # is known, a DB's headroom is reckoned with the default.
        if self._retention_reading is None or self._retention_reading.done():
            self._retention_reading = asyncio.ensure_future(self._learn_retention())
            self._retention_reading.add_done_callback(_said)
        return self.instances_now()

    async def _open_manifests(self) -> None:
        if self._manifests is not None:
            for db_id, db in list(self._dbs.items()):
                if db_id not in self._opened:
                    await self._manifests.open(db)
                    self._opened.add(db_id)

    # -- retention -------------------------------------------------------------------------------
    async def _learn_retention(self) -> None:
        if self._retention_override_s is not None or self._retention_denied:
            return
        for inst in self.instances_now():
            if inst not in self._groups:
                try:
                    self._groups[inst] = (await self._rds.instance(inst)).parameter_group
                except AwsError as exc:
                    log.debug("no parameter group for %s: %s", inst, exc)
                    self._groups[inst] = None
            group = self._groups[inst]
            if group is None or group in self._retention:
                continue
            try:
                found = await self._rds.log_retention_s(group)
            except AwsError as exc:
                log.warning(
                    "cannot read rds.log_retention_period of %s (%s): assuming %.0f h "
                    "(--retention-hours sets it)",
                    group,
                    exc.code or exc,
                    DEFAULT_RETENTION_S / 3600,
                )
                self._retention_denied = True
                return
            self._retention[group] = found or DEFAULT_RETENTION_S

    def retention_s(self, instance: str) -> float:
        if self._retention_override_s is not None:
            return self._retention_override_s
        group = self._groups.get(instance)
        return self._retention.get(group or "", DEFAULT_RETENTION_S)


class FleetManifests:
    """The Recorder's manifest sink for one or many DBs: each DB's outcomes go to its own
    ``ManifestStore`` (``<RUNID>/<db>/manifest.json`` in a fleet run, ``<RUNID>/manifest.json``
    for a single DB). Processes that copy the same DB at once (an overlapping reshard, a second
    container) share its manifest: each store merges the others' writes into its own."""

    def __init__(
        self,
        storage: ManifestStorage,
        settings: SyncSettings,
        mode: Mode,
        clock: Clock,
        owner: dict[str, str],
    ) -> None:
        self._storage = storage
        self._settings = settings
        self._mode = mode
        self._clock = clock
        self._owner = owner
        self._stores: dict[str, ManifestStore] = {}
        self._dbs: dict[str, Db] = {}

    def key(self, db_id: str) -> str:
        return manifest_key(self._settings.run_id, db_id if self._settings.fleet else None)

    @property
    def stores(self) -> dict[str, ManifestStore]:
        return dict(self._stores)

    async def open(self, db: Db) -> None:
        if db.id in self._stores:
            return
        s = self._settings
        store = ManifestStore(self._storage, s.run_id, self._clock, key=self.key(db.id))
        existing = await store.load()
        now_iso = iso(self._clock.now())
        if existing is not None:
            if existing.db_identifier != db.id:
                raise OwnerError(
                    f"run id {s.run_id!r} already holds logs of {existing.db_identifier!r} in "
                    f"s3://{s.bucket}; choose another --run-id"
                )
            log.info(
                "resuming run %s of %s (manifest has %d file(s))",
                s.run_id,
                db.id,
                len(existing.files),
            )
            existing.finished_at = None
            existing.updated_at = now_iso
            existing.instances = sorted(set(existing.instances) | set(db.instances))
            if parse_iso(existing.window_start) > s.start.timestamp():
                existing.window_start = iso(s.start)  # an earlier --start widens the window
            manifest = existing
        else:
            manifest = Manifest(
                run_id=s.run_id,
                db_identifier=db.id,
                bucket=s.bucket,
                window_start=iso(s.start),
                window_finish=iso(s.finish) if s.finish else None,
                mode=self._mode.value,
                version=__version__,
                started_at=now_iso,
                updated_at=now_iso,
                finished_at=None,
                files={},
                gaps=[],
                instances=list(db.instances),
                summary={},
            )
        store.start(manifest)
        self._stores[db.id] = store
        self._dbs[db.id] = db

    def _store(self, instance: str) -> ManifestStore:
        db_id = self._owner.get(instance)
        if db_id is None or db_id not in self._stores:
            # Only instances of opened DBs are ever listed; this is a bug, said loudly.
            raise RuntimeError(f"no manifest for instance {instance!r}")
        store = self._stores[db_id]
        m = store.manifest
        if m is not None and instance not in m.instances:
            m.instances.append(instance)
        return store

    def earliest_start(self) -> pendulum.DateTime | None:
        """The earliest window start of the opened manifests (resume: no gap at a restart)."""
        starts = [
            parse_iso(st.manifest.window_start)
            for st in self._stores.values()
            if st.manifest is not None
        ]
        return pendulum.from_timestamp(min(starts), tz="UTC") if starts else None

    async def check_owner(self, instance: str) -> None:
        """Before a write of a file of ``instance``: its manifest in S3 still names its DB."""
        await self._store(instance).check_owner()

    async def check_owners(self) -> None:
        await bounded(MANIFEST_CONCURRENCY, (s.check_owner() for s in list(self._stores.values())))

    def known(self, key: str) -> FileEntry | None:
        """What a manifest of this run already says of the object ``key`` (resume)."""
        for store in self._stores.values():
            m = store.manifest
            if m is not None and key in m.files:
                return m.files[key]
        return None

    def record(self, entry: FileEntry) -> None:
        self._store(entry.instance).record(entry)

    def add_gap(self, instance: str, start: str, end: str, reason: str) -> None:
        self._store(instance).add_gap(instance, start, end, reason)

    def note(self, name: str, value: object) -> None:
        for store in self._stores.values():
            store.note(name, value)

    async def flush(self, force: bool = False) -> None:
        await bounded(MANIFEST_CONCURRENCY, (s.flush(force) for s in list(self._stores.values())))

    def set_summaries(self, entries: Iterable[FileEntry], extra: dict[str, int]) -> None:
        per_db: dict[str, dict[str, int]] = {
            db_id: dict.fromkeys(
                (
                    "copied",
                    "partial",
                    "skipped",
                    "failed",
                    "lost",
                    "changed",
                    "bytes",
                    "truncated_lines",
                ),
                0,
            )
            for db_id in self._stores
        }
        for e in entries:
            counts = per_db.get(self._owner.get(e.instance, ""))
            if counts is None:
                continue
            status = FileStatus(e.status)
            name = status.value if status.value in counts else "failed"
            counts[name] += 1
            if status in (FileStatus.COPIED, FileStatus.PARTIAL):
                counts["bytes"] += e.size
            counts["truncated_lines"] += e.truncated_lines
        for db_id, store in self._stores.items():
            store.set_summary({**per_db[db_id], **extra})

    async def close(self, finished: bool) -> None:
        await bounded(
            MANIFEST_CONCURRENCY,
            (s.close(finished=finished) for s in list(self._stores.values())),
        )
