"""What each command does, given its settings: ``run_sync`` (preflight checks, the mode, the wait,
the snapshot timer, the recorder), ``run_snapshot``, ``run_verify``, ``run_get`` and ``run_ls``.

``rdsrecorder.runtime`` calls these coroutines with the settings, the hooks and the stop event;
they never read env vars and never print (they log)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pendulum

from rdsrecorder.athena import ParquetTwins, athena_ddl
from rdsrecorder.aws import Aws
from rdsrecorder.clock import Clock
from rdsrecorder.config import (
    AthenaDdlSettings,
    AwsSettings,
    GetSettings,
    LsSettings,
    SnapshotSettings,
    SyncSettings,
    VerifySettings,
)
from rdsrecorder.errors import (
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SNAPSHOT,
    RdsRecorderError,
    SnapshotError,
    StoppedError,
    VerifyError,
)
from rdsrecorder.fleet import Db, Fleet, FleetManifests
from rdsrecorder.get import GetReport, get_window
from rdsrecorder.hooks import Hooks
from rdsrecorder.pgbadger import write_report
from rdsrecorder.rds.control import RdsControl
from rdsrecorder.rds.download import RdsDownloader
from rdsrecorder.recorder import Recorder, RecorderSettings, RunTotals, summary_line
from rdsrecorder.s3.bucket import Bucket
from rdsrecorder.s3.upload import Uploader, resolve_spool_dir
from rdsrecorder.snapshots import SnapshotResult, create_snapshot, wait_available
from rdsrecorder.times import human
from rdsrecorder.transfer import Copier
from rdsrecorder.verify import RunSummary, VerifyReport, list_runs, run_manifests, verify_run
from rdsrecorder.window import Mode, Window, classify

log = logging.getLogger(__name__)

COUNTDOWN_EVERY_S = 60.0
SNAPSHOT_WAIT_TIMEOUT_S = 6 * 3600.0
# Of --shutdown-grace, what the end of a stopped run keeps for itself after the copies in flight
# were cut: aborting their multipart uploads and the last manifest write (each one round trip).
SHUTDOWN_CLEANUP_S = 2.0


def copies_grace_s(grace_s: float) -> float:
    """How long copies in flight may go on after a stop, so that the whole shutdown, cleanup
    included, fits in ``grace_s``: AWS calls still unanswered then end (``Aws.end_after``)."""
    return grace_s - min(SHUTDOWN_CLEANUP_S, grace_s / 2)


@dataclass
class SyncReport:
    run_id: str
    mode: Mode
    totals: RunTotals
    instances: tuple[str, ...] = ()
    snapshot: SnapshotResult | None = None
    snapshot_error: str = ""
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted or self.totals.interrupted:
            return EXIT_INTERRUPTED
        if not self.totals.ok:
            return EXIT_INCOMPLETE
        if self.snapshot_error:
            return EXIT_SNAPSHOT
        return EXIT_OK


async def wait_until(
    clock: Clock, deadline: pendulum.DateTime, stop: asyncio.Event, what: str
) -> bool:
    """Interruptible wait with a countdown in the log. False if stopped first."""
    deadline_s = deadline.timestamp()
    while True:
        remaining_s = deadline_s - clock.now()
        if remaining_s <= 0:
            return True
        minutes, seconds = divmod(int(remaining_s), 60)
        hours, minutes = divmod(minutes, 60)
        log.info("%s at %s: in %dh%02dm%02ds", what, human(deadline), hours, minutes, seconds)
        step_s = min(remaining_s, COUNTDOWN_EVERY_S)
        if not await clock.sleep_until(clock.now() + step_s, stop):
            return False


async def _fire_snapshot(
    aws: Aws,
    rds: RdsControl,
    settings: SyncSettings,
    at: pendulum.DateTime,
    hooks: Hooks,
    report: SyncReport,
    store: FleetManifests,
) -> None:
    try:
        result = await create_snapshot(aws, rds, settings.db_identifier, at, settings.run_id, hooks)
    except RdsRecorderError as exc:
        report.snapshot_error = str(exc)
        log.error("snapshot failed: %s", exc)
        return
    report.snapshot = result
    log.info("snapshot %s (%s) requested: %s", result.snapshot_id, result.kind, result.arn)
    store.note("snapshot", {"id": result.snapshot_id, "arn": result.arn, "kind": result.kind})


async def _preflight(aws: Aws, bucket: Bucket, fleet: Fleet) -> dict[str, Db]:
    """Credentials, bucket and DBs checked at once (one round trip each), failures reported in
    the order a user fixes them: credentials first, then the bucket, then the DBs."""
    identity, checked, dbs = await asyncio.gather(
        aws.check_credentials(),
        bucket.check_bucket(),
        fleet.start(),
        return_exceptions=True,
    )
    outcomes = (identity, checked, dbs)
    for outcome in sorted(outcomes, key=lambda o: not isinstance(o, StoppedError)):
        if isinstance(outcome, BaseException):
            raise outcome  # a stop first: what the calls cut short said is moot
    assert isinstance(identity, str) and isinstance(dbs, dict)
    log.debug("credentials ok: %s", identity)
    return dbs


def _bucket(aws: Aws, name: str, settings: AwsSettings) -> Bucket:
    return Bucket(
        aws,
        name,
        expected_bucket_owner=settings.expected_bucket_owner,
        sse=settings.sse,
        sse_kms_key_id=settings.sse_kms_key_id,
    )


def _what(settings: SyncSettings) -> str:
    parts = list(settings.targets)
    if settings.discover_tags:
        parts.append(
            "the PostgreSQL instances tagged "
            + " ".join(f"{k}={v}" for k, v in settings.discover_tags)
        )
    what = ", ".join(parts)
    return f"{what} (shard {settings.shard})" if settings.shard.count > 1 else what


async def run_sync(
    settings: SyncSettings,
    *,
    hooks: Hooks | None = None,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
) -> SyncReport:
    hooks = hooks or Hooks()
    clock = clock or Clock()
    stop = stop or asyncio.Event()
    now = pendulum.from_timestamp(clock.now(), tz="UTC")
    mode = classify(settings.start, settings.finish, now)
    hooks.mode(mode.value)
    log.info(
        "run %s: %s for %s, window %s .. %s",
        settings.run_id,
        mode.label,
        _what(settings),
        human(settings.start),
        human(settings.finish) if settings.finish else "forever (no --finish)",
    )
    # Per file: one UploadPart (while the next part fills) and its HEAD; plus the manifest and
    # the checks.
    pool = max(10, settings.concurrency * 3 + 4)
    spool_dir = resolve_spool_dir(settings.spool_dir)
    async with Aws(settings.aws, hooks, max_pool_connections=pool, clock=clock) as aws:
        aws.end_after(stop, settings.shutdown_grace_s)
        bucket = _bucket(aws, settings.bucket, settings.aws)
        uploader = Uploader(bucket, hooks, settings.upload, spool_dir=spool_dir)
        rds = RdsControl(aws)
        fleet = Fleet(
            rds,
            targets=settings.targets,
            tags=settings.discover_tags,
            shard=settings.shard,
            # One DB: a cluster is re-read every look (members join and leave); a fleet every
            # --discover-interval.
            refresh_s=settings.discover_interval_s if settings.fleet else settings.poll_interval_s,
            clock=clock,
            hooks=hooks,
            retention_s=settings.retention_hours * 3600 if settings.retention_hours else None,
        )
        async with (
            RdsDownloader(aws, hooks, method=settings.download_method) as downloader,
            fleet,  # its background reads end before the clients close
        ):
            dbs = await _preflight(aws, bucket, fleet)
            for db in dbs.values():
                log.info(
                    "%s %s: instance(s) %s",
                    db.kind,
                    db.id,
                    ", ".join(db.instances) or "none yet",
                )
            if settings.fleet:
                log.info(
                    "following %d DB(s) (%d instance(s))", len(dbs), len(fleet.instances_now())
                )
            store = FleetManifests(bucket, settings, mode, clock, fleet.owner)
            fleet.attach(store)
            await fleet.instances()  # opens (or resumes) every DB's manifest before any copy
            start = resumed_start(store, settings)
            if start != settings.start:
                mode = classify(start, settings.finish, now)
                hooks.mode(mode.value)
            owned = _owned_prefixes(settings, fleet.instances_now())

            # The first writes record each run id's DB, before any log file is written.
            await store.flush(force=True)
            await store.check_owners()
            await abort_stale_uploads(bucket, settings.run_id, owned, hooks)

            report = SyncReport(run_id=settings.run_id, mode=mode, totals=RunTotals())
            report.instances = fleet.instances_now()
            twins = ParquetTwins(store, bucket, settings.run_id) if settings.parquet_twins else None
            single_cluster = not settings.fleet and any(d.kind == "cluster" for d in dbs.values())
            recorder = Recorder(
                RecorderSettings(
                    window=Window(
                        start_s=start.timestamp(),
                        finish_s=settings.finish.timestamp() if settings.finish else None,
                        mode=mode,
                    ),
                    run_id=settings.run_id,
                    per_instance_keys=settings.fleet or single_cluster,
                    concurrency=settings.concurrency,
                    poll_interval_s=settings.poll_interval_s,
                    finish_grace_s=settings.finish_grace_s,
                    shutdown_grace_s=copies_grace_s(settings.shutdown_grace_s),
                    include_plain=settings.include_plain,
                    include_series=settings.include_series,
                    fleet=settings.fleet,
                ),
                lister=rds,
                resolver=fleet,
                copier=Copier(
                    downloader,
                    bucket,
                    uploader,
                    hooks,
                    clock,
                    settings.run_id,
                    compression=settings.compress,
                    known=store.known,
                    lister=rds,
                    owner_check=store.check_owner,
                ),
                manifest=twins or store,
                hooks=hooks,
                # Readiness, listing times, lag and headroom on AWS's time, not the host's.
                clock=aws.time,
                stop=stop,
                retention_s=fleet.retention_s,
            )
            try:
                await _record(aws, rds, recorder, store, settings, mode, hooks, clock, stop, report)
            finally:
                report.interrupted = report.interrupted or stop.is_set()
                store.set_summaries(
                    report.totals.entries,
                    {} if settings.fleet else {"aborted": report.totals.aborted},
                )
                await _close_manifests(aws, store, report)
                if twins is not None:  # the twins are beside the run, not in its manifest
                    await twins.drain()
    log.info("run %s done: %s", settings.run_id, summary_line(report.totals))
    return report


async def _close_manifests(aws: Aws, store: FleetManifests, report: SyncReport) -> None:
    """The last manifest writes, which a stop bounds like any AWS call (``Aws.end_after``)."""
    try:
        async with aws.bounded("writing the manifests"):
            await store.close(finished=not report.interrupted)
    except StoppedError as exc:
        report.interrupted = True
        log.error("%s: the manifests keep their last state", exc)


def resumed_start(store: FleetManifests, settings: SyncSettings) -> pendulum.DateTime:
    """Where a run starts: a resumed run id goes on from its manifests' earliest window start when
    that is earlier than ``--start`` (a relative start such as ``now-1h`` evaluated at a restart
    would skip what rotated while nothing ran); an earlier ``--start`` widened them on opening."""
    recorded = store.earliest_start()
    if recorded is None or recorded >= settings.start:
        return settings.start
    log.info(
        "run %s resumes from its manifest's window start %s (--start says %s): nothing that "
        "rotated while no process ran is skipped",
        settings.run_id,
        human(recorded),
        human(settings.start),
    )
    return recorded


def _owned_prefixes(settings: SyncSettings, instances: Iterable[str]) -> list[str]:
    """The key prefixes only this process writes: the run's for one DB; in a fleet (shards of
    one run id in other processes) each of its own instances'."""
    if not settings.fleet:
        return [f"{settings.run_id}/"]
    return [f"{settings.run_id}/{instance}/" for instance in sorted(set(instances))]


async def abort_stale_uploads(
    bucket: Bucket, run_id: str, owned: Sequence[str], hooks: Hooks | None = None
) -> int:
    """Aborts the multipart uploads left under the ``owned`` prefixes of the run (a process
    killed with -9): one listing of the run's prefix, whatever the number of DBs.
    AbortMultipartUpload may be denied (it is not in the seed's IAM list): said once. Returns
    how many were aborted."""
    prefix = f"{run_id}/"
    try:
        listed = await bucket.list_multipart_uploads(prefix)
    except RdsRecorderError as exc:
        log.warning("cannot list the multipart uploads under %s (%s)", prefix, exc)
        return 0
    uploads = [u for u in listed if u["Key"].startswith(tuple(owned))]
    aborted = 0
    for upload in uploads:
        try:
            await bucket.call(
                "abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"]
            )
        except RdsRecorderError as exc:
            if hooks is not None and getattr(exc, "code", "") in ("AccessDenied", "403"):
                hooks.multipart_abort_denied()
            log.warning(
                "%d unfinished multipart upload(s) under s3://%s/%s stay billed: aborting "
                "them failed (%s); allow s3:AbortMultipartUpload or add an "
                "AbortIncompleteMultipartUpload lifecycle rule",
                len(uploads) - aborted,
                bucket.name,
                prefix,
                exc,
            )
            return aborted
        aborted += 1
    if aborted:
        log.info("aborted %d unfinished multipart upload(s) of an earlier process", aborted)
    return aborted


async def _record(
    aws: Aws,
    rds: RdsControl,
    recorder: Recorder,
    store: FleetManifests,
    settings: SyncSettings,
    mode: Mode,
    hooks: Hooks,
    clock: Clock,
    stop: asyncio.Event,
    report: SyncReport,
) -> None:
    if mode is Mode.WAIT_AND_SYNC and not await wait_until(
        clock, settings.start, stop, "sync starts"
    ):
        report.interrupted = True
        return
    async with asyncio.TaskGroup() as tg:
        if mode is Mode.WAIT_AND_SYNC and settings.snapshot and settings.fleet:
            log.info("no snapshot: snapshots are taken for a run over one DB only")
        elif mode is Mode.WAIT_AND_SYNC and settings.snapshot:
            # Fired at start, beside the recorder: a slow CreateDBSnapshot must not delay copying.
            tg.create_task(_fire_snapshot(aws, rds, settings, settings.start, hooks, report, store))
        report.totals = await recorder.run()


async def run_snapshot(
    settings: SnapshotSettings,
    *,
    hooks: Hooks | None = None,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
) -> SnapshotResult | None:
    """Wait until start, then create the snapshot. None when stopped before start."""
    hooks = hooks or Hooks()
    clock = clock or Clock()
    stop = stop or asyncio.Event()
    async with Aws(settings.aws, hooks, clock=clock) as aws:
        await aws.check_credentials()
        rds = RdsControl(aws)
        target = await rds.resolve(settings.db_identifier)
        log.info(
            "snapshot of %s %s scheduled at %s",
            target.kind,
            target.identifier,
            human(settings.start),
        )
        if not await wait_until(clock, settings.start, stop, "snapshot"):
            return None
        result = await create_snapshot(
            aws, rds, settings.db_identifier, settings.start, settings.run_id, hooks
        )
        log.info("snapshot %s (%s) created: %s", result.snapshot_id, result.kind, result.arn)
        if settings.wait:
            result = await wait_available(
                aws, result, timeout_s=SNAPSHOT_WAIT_TIMEOUT_S, hooks=hooks
            )
            if result.status != "available":
                raise SnapshotError(f"snapshot {result.snapshot_id} ended as {result.status}")
        return result


@asynccontextmanager
async def open_bucket(name: str, settings: AwsSettings, hooks: Hooks) -> AsyncIterator[Bucket]:
    """A checked bucket, for the commands that read one."""
    async with Aws(settings, hooks) as aws:
        bucket = _bucket(aws, name, settings)
        await bucket.check_bucket()
        yield bucket


async def run_verify(settings: VerifySettings, hooks: Hooks | None = None) -> VerifyReport:
    hooks = hooks or Hooks()
    async with open_bucket(settings.bucket, settings.aws, hooks) as bucket:
        return await verify_run(bucket, settings.run_id, hooks, download=settings.download)


async def run_get(settings: GetSettings, hooks: Hooks | None = None) -> GetReport:
    hooks = hooks or Hooks()
    async with open_bucket(settings.bucket, settings.aws, hooks) as bucket:
        report = await get_window(
            bucket,
            settings.db_identifier,
            settings.start.timestamp(),
            settings.finish.timestamp(),
            output_dir=settings.output_dir,
            stdout=sys.stdout.buffer if settings.stdout else None,
            concurrency=settings.concurrency,
            hooks=hooks,
        )
    if settings.pgbadger and report.files:
        await write_report([f.path for f in report.files], settings.pgbadger)
    return report


async def run_athena_ddl(settings: AthenaDdlSettings, hooks: Hooks | None = None) -> str:
    hooks = hooks or Hooks()
    async with open_bucket(settings.bucket, settings.aws, hooks) as bucket:
        manifests = await run_manifests(bucket, settings.run_id)
    if not manifests:
        raise VerifyError(f"no manifest for run {settings.run_id!r} in s3://{settings.bucket}")
    return athena_ddl(settings.bucket, settings.run_id, manifests, settings.table)


async def run_ls(settings: LsSettings, hooks: Hooks | None = None) -> list[RunSummary]:
    hooks = hooks or Hooks()
    async with open_bucket(settings.bucket, settings.aws, hooks) as bucket:
        return await list_runs(bucket)
