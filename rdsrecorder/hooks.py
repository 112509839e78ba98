"""The small hook through which the core reports what happens.

The core never imports a metrics library: it calls these methods. ``Hooks`` is a no-op base;
``rdsrecorder.metrics.PrometheusHooks`` overrides them. Every method must be cheap and must never
raise (it runs inside transfer loops).
"""

from __future__ import annotations


class Hooks:
    # -- AWS calls -------------------------------------------------------------------------
    def aws_call(self, service: str, operation: str, outcome: str) -> None:
        """One AWS call finished. outcome: "ok", "throttled", "error", "retry"."""

    def retry(self, service: str, operation: str, reason: str) -> None:
        """A call is retried (reason: the error code or exception class)."""

    def api_budget(self, fleet_rps: float, process_rps: float) -> None:
        """The RDS API budget: the fleet's (calls/s) and this process's ceiling, set once."""

    def api_rate(self, rps: float) -> None:
        """The RDS calls per second this process allows itself now (lowered on throttling)."""

    # -- files -------------------------------------------------------------------------------
    def files_pending(self, instance: str, count: int) -> None:
        """Files known to be in the window and not copied yet (gauge)."""

    def file_started(self, instance: str) -> None:
        """A file transfer started (in-flight gauge +1)."""

    def file_finished(
        self, instance: str, outcome: str, duration_s: float, log_timestamp_s: float
    ) -> None:
        """A file transfer ended (in-flight gauge -1).

        outcome: "copied", "skipped" (already in S3), "failed", "lost" (vanished / unrecoverable).
        log_timestamp_s: the timestamp in the log file's name (epoch seconds).
        """

    def retention_headroom(self, instance: str, seconds: float) -> None:
        """Time until the oldest file of the instance not copied yet expires (gauge)."""

    def rotation_period(self, instance: str, seconds: float) -> None:
        """How often the DB's csvlog rotates (gauge): the scale of the lag alert."""

    def lag(self, instance: str, seconds: float) -> None:
        """How long the oldest rotated file not copied yet has been waiting (gauge, 0: none)."""

    def bytes_downloaded(self, instance: str, count: int) -> None: ...

    def bytes_uploaded(self, instance: str, count: int) -> None: ...

    def truncated_lines(self, instance: str, count: int) -> None: ...

    def truncated_bytes(self, instance: str, count: int) -> None:
        """Bytes of those lines lost (the portion API never returns them)."""

    def conflict(self, instance: str) -> None:
        """A finished copy of another file held the key: kept, this file written beside it."""

    def retry_scheduled(self, instance: str) -> None:
        """A file that failed is to be copied again in a later round (follow mode)."""

    def multipart_abort_denied(self) -> None:
        """S3 refused an AbortMultipartUpload (AccessDenied): an upload stays open until the
        bucket's lifecycle rule removes it."""

    # -- run ---------------------------------------------------------------------------------
    def mode(self, mode: str) -> None:
        """The sync mode (see window.Mode), set once at start."""

    def db_change(self, db: str, change: str) -> None:
        """A DB joined ("added") or left ("removed") the set this process follows."""

    def dbs_followed(self, count: int) -> None:
        """DBs (instances or clusters) this process follows now (gauge)."""

    def db_recreated(self, instance: str) -> None:
        """An instance was deleted and recreated under its name (a new DbiResourceId)."""

    def db_missing(self, db: str, missing: bool) -> None:
        """A DB named with -d is not found (True) or found again (False) (gauge)."""

    def snapshot(self, instance: str, outcome: str) -> None:
        """outcome: "created", "available", "failed"."""

    def healthy(self, ok: bool, reason: str = "") -> None:
        """Run health for /healthz (False after repeated failures)."""

    def clock_offset(self, service: str, seconds: float) -> None:
        """How far AWS's clock (the ``Date`` of ``service``'s answers) is ahead of the host's
        (gauge; negative: behind)."""


class MultiHooks(Hooks):
    """Fans every call out to several hooks (metrics + progress bar, say)."""

    def __init__(self, *hooks: Hooks) -> None:
        self._hooks = hooks

    def aws_call(self, service: str, operation: str, outcome: str) -> None:
        for h in self._hooks:
            h.aws_call(service, operation, outcome)

    def retry(self, service: str, operation: str, reason: str) -> None:
        for h in self._hooks:
            h.retry(service, operation, reason)

    def api_budget(self, fleet_rps: float, process_rps: float) -> None:
        for h in self._hooks:
            h.api_budget(fleet_rps, process_rps)

    def api_rate(self, rps: float) -> None:
        for h in self._hooks:
            h.api_rate(rps)

    def files_pending(self, instance: str, count: int) -> None:
        for h in self._hooks:
            h.files_pending(instance, count)

    def file_started(self, instance: str) -> None:
        for h in self._hooks:
            h.file_started(instance)

    def file_finished(
        self, instance: str, outcome: str, duration_s: float, log_timestamp_s: float
    ) -> None:
        for h in self._hooks:
            h.file_finished(instance, outcome, duration_s, log_timestamp_s)

    def retention_headroom(self, instance: str, seconds: float) -> None:
        for h in self._hooks:
            h.retention_headroom(instance, seconds)

    def rotation_period(self, instance: str, seconds: float) -> None:
        for h in self._hooks:
            h.rotation_period(instance, seconds)

    def lag(self, instance: str, seconds: float) -> None:
        for h in self._hooks:
            h.lag(instance, seconds)

    def db_change(self, db: str, change: str) -> None:
        for h in self._hooks:
            h.db_change(db, change)

    def dbs_followed(self, count: int) -> None:
        for h in self._hooks:
            h.dbs_followed(count)

    def db_recreated(self, instance: str) -> None:
        for h in self._hooks:
            h.db_recreated(instance)

    def db_missing(self, db: str, missing: bool) -> None:
        for h in self._hooks:
            h.db_missing(db, missing)

    def bytes_downloaded(self, instance: str, count: int) -> None:
        for h in self._hooks:
            h.bytes_downloaded(instance, count)

    def bytes_uploaded(self, instance: str, count: int) -> None:
        for h in self._hooks:
            h.bytes_uploaded(instance, count)

    def truncated_lines(self, instance: str, count: int) -> None:
        for h in self._hooks:
            h.truncated_lines(instance, count)

    def truncated_bytes(self, instance: str, count: int) -> None:
        for h in self._hooks:
            h.truncated_bytes(instance, count)

    def conflict(self, instance: str) -> None:
        for h in self._hooks:
            h.conflict(instance)

    def retry_scheduled(self, instance: str) -> None:
        for h in self._hooks:
            h.retry_scheduled(instance)

    def multipart_abort_denied(self) -> None:
        for h in self._hooks:
            h.multipart_abort_denied()

    def mode(self, mode: str) -> None:
        for h in self._hooks:
            h.mode(mode)

    def snapshot(self, instance: str, outcome: str) -> None:
        for h in self._hooks:
            h.snapshot(instance, outcome)

    def healthy(self, ok: bool, reason: str = "") -> None:
        for h in self._hooks:
            h.healthy(ok, reason)

    def clock_offset(self, service: str, seconds: float) -> None:
        for h in self._hooks:
            h.clock_offset(service, seconds)
