"""Prometheus metrics. The only module that imports aioprometheus: the core reports through
``rdsrecorder.hooks.Hooks`` and ``PrometheusHooks`` turns those calls into metrics.

Served by ``MetricsServer`` at ``/metrics`` (text exposition) and ``/healthz`` (200 / 503 JSON).
Every series carries ``run_id``; per-database series carry ``db_instance``. Series the dashboard
uses are created at 0 on start, so panels have data before the first event."""

from __future__ import annotations

import json
import platform
import time
from types import TracebackType
from typing import Any

from aiohttp import web
from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
from aioprometheus.renderer import render

from rdsrecorder import __version__
from rdsrecorder.hooks import Hooks
from rdsrecorder.models import FileStatus
from rdsrecorder.window import Mode

FILE_OUTCOMES = tuple(dict.fromkeys(status.outcome for status in FileStatus))
SNAPSHOT_OUTCOMES = ("created", "available", "failed")
MODES = tuple(mode.value for mode in Mode)
DB_CHANGES = ("added", "removed")
DURATION_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))


class PrometheusHooks(Hooks):
    def __init__(self, run_id: str, registry: Registry | None = None) -> None:
        self.registry = registry or Registry()
        self.run_id = run_id
        self.healthy_state: tuple[bool, str] = (True, "")
        labels = {"run_id": run_id}
        r = self.registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, const_labels=labels, registry=r)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, const_labels=labels, registry=r)

        self.downloaded_logs = counter(
            "rdsrecorder_downloaded_logs_total", "Log files downloaded completely from RDS."
        )
        self.uploaded_logs = counter(
            "rdsrecorder_uploaded_s3_logs_total", "Log files landed in S3."
        )
        self.downloaded_bytes = counter(
            "rdsrecorder_downloaded_bytes_total", "Bytes of log data downloaded from RDS."
        )
        self.uploaded_bytes = counter("rdsrecorder_uploaded_bytes_total", "Bytes uploaded to S3.")
        self.aws_calls = counter(
            "rdsrecorder_aws_calls_total", "AWS calls by service, operation and outcome."
        )
        self.retries = counter("rdsrecorder_aws_retries_total", "AWS calls retried, by reason.")
        self.throttles = counter("rdsrecorder_aws_throttles_total", "AWS calls throttled.")
        self.api_rate_gauge = gauge(
            "rdsrecorder_rds_api_rate",
            "RDS calls per second this process allows itself now (halved on throttling, then "
            "climbing back to rdsrecorder_rds_api_rate_max).",
        )
        self.api_rate_max = gauge(
            "rdsrecorder_rds_api_rate_max",
            "This process's share of the fleet's RDS API budget, calls per second.",
        )
        self.api_fleet_budget = gauge(
            "rdsrecorder_rds_api_fleet_budget",
            "The fleet's RDS API budget (--fleet-max-api-rps), calls per second.",
        )
        self.truncated = counter(
            "rdsrecorder_truncated_lines_total",
            "Lines longer than DownloadDBLogFilePortion's cap (their tail is lost).",
        )
        self.truncated_lost = counter(
            "rdsrecorder_truncated_bytes_total",
            "Bytes of those lines lost (the whole-file download would recover them).",
        )
        self.abort_denied = counter(
            "rdsrecorder_multipart_abort_denied_total",
            "AbortMultipartUpload calls S3 denied (uploads left for the lifecycle rule).",
        )
        self.abort_denied.set({}, 0)
        self.files = counter("rdsrecorder_files_total", "Files handled, by outcome.")
        self.conflicts = counter(
            "rdsrecorder_conflicts_total",
            "Files written beside a finished copy of another file under their key (kept).",
        )
        self.retries_scheduled = counter(
            "rdsrecorder_file_retries_total",
            "Files that failed and are copied again in a later round (follow mode).",
        )
        self.pending = gauge("rdsrecorder_files_pending", "Files of the window not copied yet.")
        self.in_flight = gauge("rdsrecorder_files_in_flight", "Files being copied now.")
        self.duration = Histogram(
            "rdsrecorder_file_transfer_duration_seconds",
            "Time to copy one file, RDS to S3.",
            const_labels=labels,
            registry=r,
            buckets=DURATION_BUCKETS_S,
        )
        self.newest = gauge(
            "rdsrecorder_newest_log_timestamp_seconds",
            "Timestamp in the name of the newest log file copied (alert on time() - this).",
        )
        self.snapshots = counter("rdsrecorder_snapshots_total", "DB snapshots, by outcome.")
        self.headroom = gauge(
            "rdsrecorder_retention_headroom_seconds",
            "Time until the oldest log file of the DB not copied yet expires (RDS deletes it); "
            "the retention period when nothing waits.",
        )
        self.lag_gauge = gauge(
            "rdsrecorder_lag_seconds",
            "How long the oldest rotated log file of the DB not copied yet has waited (0: none).",
        )
        self.rotation = gauge(
            "rdsrecorder_log_rotation_period_seconds",
            "How often the DB's csvlog rotates (hourly 3600, daily 86400): the lag alert's scale.",
        )
        self.dbs = gauge("rdsrecorder_dbs_followed", "DBs (instances or clusters) followed now.")
        self.db_changes = counter(
            "rdsrecorder_db_changes_total", "DBs that joined or left the followed set, by change."
        )
        self.recreated = counter(
            "rdsrecorder_db_recreated_total",
            "Instances deleted and recreated under their name (a new DbiResourceId).",
        )
        self.missing = gauge(
            "rdsrecorder_db_missing",
            "1 while a DB named with -d is not found (looked for again on a back-off).",
        )
        self.mode_gauge = gauge("rdsrecorder_mode", "Current sync mode (1 for the active one).")
        self.build = gauge("rdsrecorder_build_info", "Build information.")
        self.healthy_gauge = gauge("rdsrecorder_healthy", "1 when the run is healthy.")
        self.start_time = gauge("rdsrecorder_start_time_seconds", "Process start time.")
        self.clock_offset_gauge = gauge(
            "rdsrecorder_clock_offset_seconds",
            "How far AWS's clock (the Date of the service's answers) is ahead of the host's "
            "(negative: behind); readiness is reckoned on AWS's time.",
        )
        self._in_flight: dict[str, int] = {}
        self._newest: dict[str, float] = {}
        self.build.set({"version": __version__, "python": platform.python_version()}, 1)
        self.start_time.set({}, time.time())
        self.healthy_gauge.set({}, 1)
        for mode in MODES:
            self.mode_gauge.set({"mode": mode}, 0)
        self.dbs.set({}, 0)
        for change in DB_CHANGES:
            self.db_changes.add({"change": change}, 0)

    def _init_instance(self, instance: str) -> None:
        if instance in self._in_flight:
            return
        self._in_flight[instance] = 0
        db = {"db_instance": instance}
        for c in (
            self.downloaded_logs,
            self.uploaded_logs,
            self.downloaded_bytes,
            self.uploaded_bytes,
            self.truncated,
            self.truncated_lost,
            self.conflicts,
            self.retries_scheduled,
        ):
            c.add(db, 0)
        for outcome in FILE_OUTCOMES:
            self.files.add({**db, "outcome": outcome}, 0)
        for outcome in SNAPSHOT_OUTCOMES:
            self.snapshots.add({**db, "outcome": outcome}, 0)
        self.in_flight.set(db, 0)
        self.pending.set(db, 0)
        self.lag_gauge.set(db, 0)
        # No headroom series until the instance is listed: 0 would fire the headroom alert.

    # -- hooks -------------------------------------------------------------------------------
    def aws_call(self, service: str, operation: str, outcome: str) -> None:
        self.aws_calls.inc({"service": service, "operation": operation, "outcome": outcome})
        if outcome == "throttled":
            self.throttles.inc({"service": service, "operation": operation})

    def retry(self, service: str, operation: str, reason: str) -> None:
        self.retries.inc({"service": service, "operation": operation, "reason": reason})

    def api_budget(self, fleet_rps: float, process_rps: float) -> None:
        self.api_fleet_budget.set({}, fleet_rps)
        self.api_rate_max.set({}, process_rps)

    def api_rate(self, rps: float) -> None:
        self.api_rate_gauge.set({}, rps)

    def files_pending(self, instance: str, count: int) -> None:
        self._init_instance(instance)
        self.pending.set({"db_instance": instance}, count)

    def retention_headroom(self, instance: str, seconds: float) -> None:
        self._init_instance(instance)
        self.headroom.set({"db_instance": instance}, seconds)

    def rotation_period(self, instance: str, seconds: float) -> None:
        self.rotation.set({"db_instance": instance}, seconds)

    def lag(self, instance: str, seconds: float) -> None:
        self._init_instance(instance)
        self.lag_gauge.set({"db_instance": instance}, seconds)

    def db_change(self, db: str, change: str) -> None:
        self.db_changes.inc({"change": change})

    def dbs_followed(self, count: int) -> None:
        self.dbs.set({}, count)

    def file_started(self, instance: str) -> None:
        self._init_instance(instance)
        self._in_flight[instance] += 1
        self.in_flight.set({"db_instance": instance}, self._in_flight[instance])

    def file_finished(
        self, instance: str, outcome: str, duration_s: float, log_timestamp_s: float
    ) -> None:
        self._init_instance(instance)
        db = {"db_instance": instance}
        self._in_flight[instance] = max(0, self._in_flight[instance] - 1)
        self.in_flight.set(db, self._in_flight[instance])
        self.files.inc({**db, "outcome": outcome})
        if outcome == FileStatus.COPIED:
            self.downloaded_logs.inc(db)
            self.uploaded_logs.inc(db)
            self.duration.observe(db, duration_s)
        if outcome in (
            FileStatus.COPIED,
            FileStatus.SKIPPED,
        ) and log_timestamp_s > self._newest.get(instance, 0):
            self._newest[instance] = log_timestamp_s
            self.newest.set(db, log_timestamp_s)

    def bytes_downloaded(self, instance: str, count: int) -> None:
        self._init_instance(instance)
        self.downloaded_bytes.add({"db_instance": instance}, count)

    def bytes_uploaded(self, instance: str, count: int) -> None:
        self._init_instance(instance)
        self.uploaded_bytes.add({"db_instance": instance}, count)

    def truncated_lines(self, instance: str, count: int) -> None:
        self._init_instance(instance)
        self.truncated.add({"db_instance": instance}, count)

    def truncated_bytes(self, instance: str, count: int) -> None:
        self._init_instance(instance)
        self.truncated_lost.add({"db_instance": instance}, count)

    def conflict(self, instance: str) -> None:
        self._init_instance(instance)
        self.conflicts.inc({"db_instance": instance})

    def retry_scheduled(self, instance: str) -> None:
        self._init_instance(instance)
        self.retries_scheduled.inc({"db_instance": instance})

    def multipart_abort_denied(self) -> None:
        self.abort_denied.inc({})

    def mode(self, mode: str) -> None:
        for m in MODES:
            self.mode_gauge.set({"mode": m}, 1 if m == mode else 0)

    def snapshot(self, instance: str, outcome: str) -> None:
        self._init_instance(instance)
        self.snapshots.inc({"db_instance": instance, "outcome": outcome})

    def healthy(self, ok: bool, reason: str = "") -> None:
        self.healthy_state = (ok, reason)
        self.healthy_gauge.set({}, 1 if ok else 0)

    def db_recreated(self, instance: str) -> None:
        self.recreated.inc({"db_instance": instance})

    def db_missing(self, db: str, missing: bool) -> None:
        self.missing.set({"db": db}, 1 if missing else 0)

    def clock_offset(self, service: str, seconds: float) -> None:
        self.clock_offset_gauge.set({"service": service}, seconds)

    def render(self) -> bytes:
        content, _ = render(self.registry, ["text/plain"])
        return bytes(content)


class MetricsServer:
    """``/metrics`` and ``/healthz`` on address:port (port 0: a free port, see ``.port``)."""

    def __init__(self, hooks: PrometheusHooks, address: str, port: int) -> None:
        self.hooks = hooks
        self.address = address
        self.port = port
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.hooks.render(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, reason = self.hooks.healthy_state
        body: dict[str, Any] = {"status": "ok" if ok else "unhealthy", "run_id": self.hooks.run_id}
        if reason:
            body["reason"] = reason
        return web.Response(
            text=json.dumps(body), status=200 if ok else 503, content_type="application/json"
        )

    async def __aenter__(self) -> MetricsServer:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address, self.port)
        await site.start()
        addresses = self._runner.addresses  # (host, port, ...) of each bound socket
        if addresses:
            self.port = int(addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
