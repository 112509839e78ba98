"""An emulator of the RDS log APIs (and the bits of RDS and STS around them), served by aiohttp.

It speaks the AWS query protocol (``POST /`` with ``Action=...``, XML answers) on one port, so
``AWS_ENDPOINT_URL_RDS`` and ``AWS_ENDPOINT_URL_STS`` can both point at it, plus the REST
whole-file download. Log files come from a directory (see ``catalog``); snapshots and tags live in
memory.

Endpoints
---------
``POST /`` (or ``GET /?Action=...``)
    RDS 2014-10-31: DescribeDBInstances, DescribeDBClusters, DescribeDBParameters,
    DescribeDBLogFiles,
    DownloadDBLogFilePortion, CreateDBSnapshot, CreateDBClusterSnapshot, DescribeDBSnapshots,
    DescribeDBClusterSnapshots, AddTagsToResource, ListTagsForResource.
    STS 2011-06-15: GetCallerIdentity, AssumeRole (temporary credentials the lab then accepts).
``GET /v19/downloadCompleteLogFile/{DBInstanceIdentifier}/{LogFileName}`` (and ``/v13/``)
    The whole file, streamed chunked, gzip when ``Accept-Encoding`` allows it.
``GET|POST|PATCH /_lab/faults``, ``GET /_lab/stats``, ``POST /_lab/stats/reset``
    The lab's own JSON control plane (not AWS): read, replace (POST) or update (PATCH) the fault
    knobs (see ``faults``), read or reset the counters (``calls``, ``calls_by_instance``
    {instance: {action: n}}, ``throttled``, ``throttled_by_action``, ``faults``, per-file counters).
``POST /_lab/files``
    Change a log file while the lab runs: ``{"instance", "name", "action": "append" | "truncate"
    | "replace" | "delete", "data" (text) or "data_base64", "size" (truncate),
    "last_written_ms"}``; answers ``{"instance", "name", "size", "last_written_ms"}`` or
    ``{"instance", "name", "deleted": true}`` (see ``Catalog.change_file``).
``GET|POST /_lab/instances``
    List instances, or ``{"action": "add", "instance", "engine", "tags", "cluster",
    "log_retention_period_min", "parameter_group"}`` / ``{"action": "remove", "instance"}``.

Every AWS request must be signed (SigV4) with the lab's credentials (``LAB_ACCESS_KEY_ID`` /
``LAB_SECRET_ACCESS_KEY``, or extra ones given to the emulator): unsigned or wrongly signed
requests get 403 like on AWS. ``verify_signatures=False`` turns the check off for the query API;
the whole-file endpoint always checks, as it is the one place where clients sign by hand.

Behaviour emulated (see ``portion`` for the portion API's details)
-------------------------------------------------------------------
* DescribeDBLogFiles: filters ``FilenameContains`` (substring), ``FileLastWritten`` (LastWritten
  >= the value, epoch ms), ``FileSize`` (Size > the value, as documented: "larger than");
  ``MaxRecords`` (default 100 here; AWS documents no default) with ``Marker`` paging. The order
  is a fixed hash order, neither by name nor by time: the real API promises no order. A file
  created between two pages may be missed by that listing, as on RDS.
* LastWritten is the file's mtime in epoch milliseconds; Size its current size.
* Errors: unknown instance ``DBInstanceNotFound`` (404), unknown cluster
  ``DBClusterNotFoundFault`` (404), unknown log file ``DBLogFileNotFoundFault`` (404), invalid
  parameters ``InvalidParameterValue`` (400). Passing a cluster id to the log APIs gives
  ``DBInstanceNotFound``, as on Aurora.
* Snapshots: ids are validated like RDS does (a letter first; letters, digits and hyphens; no
  trailing hyphen, no ``--``; 1-255 characters for DB snapshots, 1-63 for cluster snapshots) and
  stored lower-cased; duplicates are refused. Status is ``creating`` until ``snapshot_delay_s``
  has passed, then ``available``. An instance that belongs to a cluster cannot have a DB
  snapshot (use the cluster snapshot). The instance does not go through ``backing-up``.
* Whole-file endpoint: 403 for a missing or bad signature, 403 ``AccessDenied`` when the
  ``complete_endpoint`` knob is off, 404 ``DBInstanceNotFound`` / ``DBLogFileNotFoundFault``.
  Errors are XML ``ErrorResponse`` bodies. The file is read to its end at the time of reading,
  so a growing file yields what has been written so far.

* DescribeDBInstances / DescribeDBClusters without an identifier list everything, 100 per page
  (``MaxRecords`` 20-100, ``Marker``), with ``Engine``, ``TagList`` (lab.json's tags, then those
  added with AddTagsToResource), ``DBParameterGroups``; DescribeDBParameters gives each group's
  ``rds.log_retention_period`` (lab.json, default 4320 minutes).

Not emulated: IAM policies (beyond the knobs), quotas other than the account token bucket,
instance state changes, retention (files are served until someone deletes them: the retention
parameter is reported, not applied), regions (any region in the credential scope is accepted and
echoed in ARNs; the lab's env says ``eu-west-1``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as dt
import email.utils
import hashlib
import logging
import math
import os
import random
import re
import secrets
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from rdsrecorder_lab import awsxml, sigv4
from rdsrecorder_lab.awsxml import QueryError, XmlList, invalid
from rdsrecorder_lab.catalog import (
    ACCOUNT_ID,
    DEFAULT_LOG_RETENTION_MIN,
    Catalog,
    Instance,
    LogFileEntry,
)
from rdsrecorder_lab.faults import Faults
from rdsrecorder_lab.portion import (
    BINARY_DATA_MESSAGE,
    MAX_LINES_PER_PORTION,
    BinaryDataError,
    MarkerError,
    Portion,
    format_marker,
    parse_marker,
    read_overlap,
    read_portion,
    read_tail,
    to_xml_text,
)

log = logging.getLogger(__name__)

LAB_ACCESS_KEY_ID = "LABACCESSKEY"
LAB_SECRET_ACCESS_KEY = "labsecret"  # fixed and documented: the lab is not a security boundary
# Not us-east-1: there the AWS CLI v1 sends RDS calls to the global endpoint whatever
# AWS_ENDPOINT_URL_RDS says. Clients may sign for any region; the lab echoes it in ARNs.
LAB_REGION = "eu-west-1"
ENGINE_VERSION = "15.5"
DEFAULT_LOG_FILES_PAGE = 100
MAX_LOG_FILES_PAGE = 1000
COMPLETE_CHUNK_BYTES = 256 * 1024
_STS_ACTIONS = frozenset({"GetCallerIdentity", "AssumeRole"})
_ROLE_ARN_RE = re.compile(r"arn:aws:iam::(\d{12}):role/([\w+=,.@/-]{1,64})")
_LAB_USER_ARN = f"arn:aws:iam::{ACCOUNT_ID}:user/rdsrecorder-lab"
_LAB_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)  # InstanceCreateTime of every lab instance
_SHUTDOWN_TIMEOUT_S = 2.0

Handler = Callable[["_Call"], Awaitable[web.StreamResponse | Mapping[str, Any] | None]]


@dataclass(slots=True)
class _Call:
    """One query-protocol request being answered."""

    request: web.Request
    params: dict[str, str]
    action: str
    request_id: str
    region: str
    access_key: str = ""  # who signed it (empty when signatures are not checked)
    arrived: float = field(default_factory=time.monotonic)  # when its body had been read


@dataclass(slots=True)
class _Snapshot:
    identifier: str
    source: str  # DB instance or DB cluster identifier
    cluster: bool
    engine: str
    created_at: dt.datetime

    def arn(self, region: str) -> str:
        kind = "cluster-snapshot" if self.cluster else "snapshot"
        return f"arn:aws:rds:{region}:{ACCOUNT_ID}:{kind}:{self.identifier}"


@dataclass(slots=True)
class LabStats:
    """Counters for tests and benchmarks (``GET /_lab/stats``). Keys of per-file counters are
    ``<instance>/<LogFileName>``."""

    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    portion_calls_by_file: Counter[str] = field(default_factory=Counter)
    portion_bytes_by_file: Counter[str] = field(default_factory=Counter)
    truncated_portions_by_file: Counter[str] = field(default_factory=Counter)
    complete_downloads: Counter[str] = field(default_factory=Counter)
    complete_bytes_by_file: Counter[str] = field(default_factory=Counter)
    max_concurrent_downloads: int = 0
    first_call_at: float | None = None  # epoch seconds of the first request (start-up figures)
    calls_by_instance: dict[str, Counter[str]] = field(default_factory=dict)
    # Who signed each call: the lab's user or an assumed role's ARN -> action -> count.
    calls_by_caller: dict[str, Counter[str]] = field(default_factory=dict)
    throttled_by_action: Counter[str] = field(default_factory=Counter)
    # The seconds each time knob asked for (latency_ms, portion_ms_per_mb, bandwidth_mbps,
    # stream_mbps), as computed from the knob and the bytes, not as measured: tests check what a
    # knob did without timing the machine.
    delay_s: dict[str, float] = field(default_factory=dict)
    _portion_in_flight: set[str] = field(default_factory=set)
    _complete_in_flight: Counter[str] = field(default_factory=Counter)

    def instance_call(self, instance: str, action: str) -> None:
        self.calls_by_instance.setdefault(instance, Counter())[action] += 1

    def in_flight(self) -> set[str]:
        return self._portion_in_flight | {k for k, n in self._complete_in_flight.items() if n > 0}

    def called(self) -> None:
        if self.first_call_at is None:
            self.first_call_at = time.time()

    def portion_started(self, key: str) -> None:
        self._portion_in_flight.add(key)
        self._update_max()

    def portion_finished(self, key: str) -> None:
        self._portion_in_flight.discard(key)

    def complete_started(self, key: str) -> None:
        self._complete_in_flight[key] += 1
        self._update_max()

    def complete_finished(self, key: str) -> None:
        self._complete_in_flight[key] -= 1
        if self._complete_in_flight[key] <= 0:
            del self._complete_in_flight[key]

    def delayed(self, knob: str, seconds: float) -> None:
        if seconds > 0:
            self.delay_s[knob] = self.delay_s.get(knob, 0.0) + seconds

    def _update_max(self) -> None:
        self.max_concurrent_downloads = max(self.max_concurrent_downloads, len(self.in_flight()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "errors": dict(self.errors),
            "faults": dict(self.faults),
            "first_call_at": self.first_call_at,
            "portion_calls_by_file": dict(self.portion_calls_by_file),
            "portion_bytes_by_file": dict(self.portion_bytes_by_file),
            "truncated_portions_by_file": dict(self.truncated_portions_by_file),
            "complete_downloads": dict(self.complete_downloads),
            "complete_bytes_by_file": dict(self.complete_bytes_by_file),
            "calls_by_caller": {k: dict(v) for k, v in self.calls_by_caller.items()},
            "in_flight": sorted(self.in_flight()),
            "max_concurrent_downloads": self.max_concurrent_downloads,
            "calls_by_instance": {k: dict(v) for k, v in sorted(self.calls_by_instance.items())},
            "throttled": sum(self.throttled_by_action.values()),
            "throttled_by_action": dict(self.throttled_by_action),
            "delay_s": dict(self.delay_s),
        }


class _Pacer:
    """One link: the bytes of the responses that share it queue for it when a bandwidth cap is
    set. An idle shared link saves no credit. A ``stream`` pacer (one response's own rate) keeps
    its schedule from its first byte: a chunk the lab's own loop sent late does not push back the
    ones after it, so a loaded lab still serves the rate its knob says."""

    def __init__(
        self,
        *,
        stream: bool = False,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._free_at = 0.0
        self._stream = stream
        self._now = now
        self._sleep = sleep

    async def take(self, nbytes: int, mbps: float | None) -> float:
        """Waits for the link; returns the seconds these bytes occupy it (0 without a cap)."""
        if not mbps or nbytes <= 0:
            return 0.0
        now = self._now()
        start = self._free_at if self._stream and self._free_at else max(now, self._free_at)
        occupy_s = nbytes * 8 / (mbps * 1_000_000)
        self._free_at = start + occupy_s
        if self._free_at > now:
            await self._sleep(self._free_at - now)
        return occupy_s


class _TokenBucket:
    """The account's request budget: ``burst`` tokens, ``refill_per_s`` back per second, on the
    emulator's clock (a test's fake clock refills it only when the test moves it)."""

    def __init__(self, burst: int, refill_per_s: float, now: Callable[[], float]) -> None:
        self.burst = burst
        self.refill_per_s = refill_per_s
        self._now = now
        self._tokens = float(burst)
        self._at = now()

    def take(self) -> bool:
        now = self._now()
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.refill_per_s)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class RdsEmulator:
    """The aiohttp application and its state. Run it with ``Lab`` (or any aiohttp runner)."""

    def __init__(
        self,
        root: Path,
        *,
        faults: Faults | None = None,
        snapshot_delay_s: float = 2.0,
        credentials: Mapping[str, str] | None = None,
        verify_signatures: bool = True,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = Catalog(root)
        self.snapshot_delay_s = snapshot_delay_s
        self.credentials = {LAB_ACCESS_KEY_ID: LAB_SECRET_ACCESS_KEY, **(credentials or {})}
        self._roles: dict[str, str] = {}  # access key -> assumed-role ARN (STS AssumeRole)
        self.verify_signatures = verify_signatures
        self._now = now
        self._stats = LabStats()
        self._pacer = _Pacer()
        self._faults = faults or Faults()
        self._rng = random.Random(self._faults.seed)
        self._rds_calls = 0
        self._bucket = _TokenBucket(
            self._faults.account_burst, self._faults.account_refill_per_s, now
        )
        self._snapshots: dict[str, _Snapshot] = {}
        self._cluster_snapshots: dict[str, _Snapshot] = {}
        self._tags: dict[str, dict[str, str]] = {}  # "<kind>:<id>" -> tags
        self._actions: dict[str, Handler] = {
            "GetCallerIdentity": self._get_caller_identity,
            "AssumeRole": self._assume_role,
            "DescribeDBInstances": self._describe_db_instances,
            "DescribeDBClusters": self._describe_db_clusters,
            "DescribeDBLogFiles": self._describe_db_log_files,
            "DescribeDBParameters": self._describe_db_parameters,
            "DownloadDBLogFilePortion": self._download_portion,
            "CreateDBSnapshot": self._create_db_snapshot,
            "CreateDBClusterSnapshot": self._create_db_cluster_snapshot,
            "DescribeDBSnapshots": self._describe_db_snapshots,
            "DescribeDBClusterSnapshots": self._describe_db_cluster_snapshots,
            "AddTagsToResource": self._add_tags_to_resource,
            "ListTagsForResource": self._list_tags_for_resource,
        }
        self.app = web.Application(client_max_size=1024 * 1024)
        self.app.router.add_route("*", "/", self._query)
        for version in ("v19", "v13"):
            self.app.router.add_get(
                f"/{version}/downloadCompleteLogFile/{{instance}}/{{name:.+}}", self._complete
            )
        self.app.on_response_prepare.append(self._date_header)
        self.app.router.add_get("/_lab/faults", self._get_faults)
        self.app.router.add_post("/_lab/faults", self._post_faults)
        self.app.router.add_patch("/_lab/faults", self._post_faults)
        self.app.router.add_get("/_lab/stats", self._get_stats)
        self.app.router.add_post("/_lab/stats/reset", self._reset_stats)
        self.app.router.add_post("/_lab/files", self._post_files)
        self.app.router.add_get("/_lab/instances", self._get_instances)
        self.app.router.add_post("/_lab/instances", self._post_instances)

    # -- control -----------------------------------------------------------------------------------
    @property
    def faults(self) -> Faults:
        return self._faults

    def set_faults(self, faults: Faults) -> None:
        self._faults = faults
        self._rng = random.Random(faults.seed)
        self._rds_calls = 0
        self._bucket = _TokenBucket(faults.account_burst, faults.account_refill_per_s, self._now)
        log.info("lab faults set: %s", faults.to_dict())

    def stats(self) -> dict[str, Any]:
        return self._stats.to_dict()

    def reset_stats(self) -> None:
        self._stats = LabStats()

    @staticmethod
    def runner(app: web.Application) -> web.AppRunner:
        return web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)

    # -- query protocol ----------------------------------------------------------------------------
    async def _query(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        self._stats.called()
        body = await request.read()
        params = dict(request.query)
        if request.method == "POST":
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        action = params.get("Action", "")
        sts = action in _STS_ACTIONS
        namespace = awsxml.STS_NAMESPACE if sts else awsxml.RDS_NAMESPACE
        self._stats.calls[action or "(none)"] += 1
        if instance_param := params.get("DBInstanceIdentifier"):
            self._stats.instance_call(instance_param, action)
        region = sigv4.credential_region(request.headers, request.query_string) or LAB_REGION
        call = _Call(request, params, action, request_id, region)
        return await self._answer(call, body, sts, namespace)

    async def _answer(
        self, call: _Call, body: bytes, sts: bool, namespace: str
    ) -> web.StreamResponse:
        request, action, request_id = call.request, call.action, call.request_id
        try:
            await self._latency()
            if self.verify_signatures:
                call.access_key = self._verify(request, body, ("sts",) if sts else ("rds",))
                self._count_caller(call.access_key, action)
                self._check_expired(call.access_key)
            handler = self._actions.get(action)
            if handler is None:
                raise QueryError(
                    400, "InvalidAction", f"The action {action or '(none)'} is not valid."
                )
            if not sts:
                self._inject_call_faults(action)
            result = await handler(call)
        except QueryError as exc:
            return self._error(exc, request_id, namespace)
        except Exception:
            log.exception("lab: %s failed", action)
            failure = QueryError(500, "InternalFailure", "Internal error in the lab.", sender=False)
            return self._error(failure, request_id, namespace)
        if isinstance(result, web.StreamResponse):
            return result
        return _xml(awsxml.response(action, result, request_id, namespace), request_id)

    def _count_caller(self, access_key: str, action: str) -> None:
        caller = self._roles.get(access_key, _LAB_USER_ARN)
        self._stats.calls_by_caller.setdefault(caller, Counter())[action] += 1

    def _verify(self, request: web.Request, body: bytes, services: tuple[str, ...]) -> str:
        """The access key that signed the request (a ``QueryError`` if the signature is bad)."""
        try:
            return sigv4.verify(
                method=request.method,
                raw_path_and_query=request.raw_path,
                headers=request.headers,
                body=body,
                credentials=self.credentials,
                # Clients sign with the real time, whatever clock a test gives the lab.
                now=dt.datetime.fromtimestamp(time.time() + self._faults.clock_offset_s, dt.UTC),
                services=services,
            ).access_key
        except sigv4.SignatureError as exc:
            raise QueryError(403, exc.code, exc.message) from None

    def _check_expired(self, access_key: str) -> None:
        if access_key in self._faults.expired_access_keys:
            self._stats.faults["expired_token"] += 1
            raise QueryError(
                403, "ExpiredToken", "The security token included in the request is expired"
            )

    async def _latency(self) -> None:
        if self._faults.latency_ms > 0:
            self._stats.faults["latency"] += 1
            self._stats.delayed("latency_ms", self._faults.latency_ms / 1000)
            await asyncio.sleep(self._faults.latency_ms / 1000)

    def _inject_call_faults(self, action: str) -> None:
        faults = self._faults
        self._rds_calls += 1
        if faults.account_burst and not self._bucket.take():
            self._stats.faults["account_throttled"] += 1
            self._stats.throttled_by_action[action] += 1
            raise QueryError(400, "Throttling", "Rate exceeded")
        if faults.throttle_every_n and self._rds_calls % faults.throttle_every_n == 0:
            self._stats.faults["throttled"] += 1
            self._stats.throttled_by_action[action] += 1
            raise QueryError(400, "Throttling", "Rate exceeded")
        if faults.error_rate and self._rng.random() < faults.error_rate:
            self._stats.faults["internal_errors"] += 1
            raise QueryError(
                500, "InternalFailure", "The request processing has failed.", sender=False
            )

    def _error(self, exc: QueryError, request_id: str, namespace: str) -> web.Response:
        self._stats.errors[exc.code] += 1
        return _xml(awsxml.error(exc, request_id, namespace), request_id, status=exc.status)

    # -- STS ---------------------------------------------------------------------------------------
    async def _get_caller_identity(self, call: _Call) -> Mapping[str, Any]:
        return {
            "Arn": self._roles.get(call.access_key, _LAB_USER_ARN),
            "UserId": "AIDALABUSERRDSRECORDER",
            "Account": ACCOUNT_ID,
        }

    async def _assume_role(self, call: _Call) -> Mapping[str, Any]:
        """STS AssumeRole: temporary credentials the lab then accepts, for any role of the lab's
        account (``ExternalId`` is required when the role name ends in ``-external``, as a trust
        policy with an ``sts:ExternalId`` condition would)."""
        role_arn = call.params.get("RoleArn", "")
        session = call.params.get("RoleSessionName", "")
        match = _ROLE_ARN_RE.fullmatch(role_arn)
        if match is None or not re.fullmatch(r"[\w+=,.@-]{2,64}", session):
            raise QueryError(400, "ValidationError", "RoleArn or RoleSessionName is not valid.")
        if match.group(1) != ACCOUNT_ID or (
            match.group(2).endswith("-external") and not call.params.get("ExternalId")
        ):
            raise QueryError(
                403, "AccessDenied", f"User: {_LAB_USER_ARN} is not authorized to assume {role_arn}"
            )
        duration_s = int(call.params.get("DurationSeconds", "3600") or 3600)
        if not 900 <= duration_s <= 43200:
            raise QueryError(400, "ValidationError", "DurationSeconds must be 900 to 43200.")
        key = "ASIA" + secrets.token_hex(8).upper()
        secret = secrets.token_urlsafe(30)
        assumed = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{match.group(2)}/{session}"
        self.credentials[key] = secret
        self._roles[key] = assumed
        expires = self._utcnow() + dt.timedelta(seconds=duration_s)
        return {
            "Credentials": {
                "AccessKeyId": key,
                "SecretAccessKey": secret,
                "SessionToken": secrets.token_urlsafe(48),
                "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "AssumedRoleUser": {"AssumedRoleId": f"AROALAB:{session}", "Arn": assumed},
        }

    # -- instances and clusters --------------------------------------------------------------------
    async def _describe_db_instances(self, call: _Call) -> Mapping[str, Any]:
        wanted = call.params.get("DBInstanceIdentifier")
        found = (
            [self.catalog.instance(wanted)] if wanted else list(self.catalog.instances().values())
        )
        for name, accepted in awsxml.filters(call.params).items():
            found = [i for i in found if _instance_matches(i, name, accepted)]
        page, marker = _page(found, call.params, default=100, minimum=20, maximum=100)
        return {
            "Marker": marker,
            "DBInstances": XmlList("DBInstance", [self._instance_xml(i, call) for i in page]),
        }

    def _instance_xml(self, instance: Instance, call: _Call) -> Mapping[str, Any]:
        ident = instance.identifier
        aurora = instance.cluster is not None
        arn = f"arn:aws:rds:{call.region}:{ACCOUNT_ID}:db:{ident}"
        group = {
            "DBParameterGroupName": instance.parameter_group,
            "ParameterApplyStatus": "in-sync",
        }
        return {
            "DBInstanceIdentifier": ident,
            "DBInstanceClass": "db.r6g.large" if aurora else "db.t4g.micro",
            "Engine": instance.engine,
            "DBInstanceStatus": "available",
            "MasterUsername": "postgres",
            "Endpoint": {"Address": f"{ident}.lab.rds.localhost", "Port": 5432},
            "AllocatedStorage": 1 if aurora else 20,
            "InstanceCreateTime": _LAB_EPOCH,
            "AvailabilityZone": f"{call.region}a",
            "MultiAZ": False,
            "EngineVersion": ENGINE_VERSION,
            "StorageType": "aurora" if aurora else "gp3",
            "DbInstancePort": 0,
            "DBClusterIdentifier": instance.cluster,
            "DbiResourceId": instance.resource_id or "db-" + _resource_id(ident),
            "DBParameterGroups": XmlList("DBParameterGroup", [group]),
            "DBInstanceArn": arn,
            "TagList": _tag_list(self._resource_tags(f"db:{ident.lower()}", instance.tags)),
        }

    async def _describe_db_clusters(self, call: _Call) -> Mapping[str, Any]:
        wanted = call.params.get("DBClusterIdentifier")
        clusters = (
            [self.catalog.cluster(wanted)] if wanted else list(self.catalog.clusters().values())
        )
        page, marker = _page(clusters, call.params, default=100, minimum=20, maximum=100)
        items = []
        for cluster in page:
            ident = cluster.identifier
            items.append(
                {
                    "AllocatedStorage": 1,
                    "AvailabilityZones": XmlList(
                        "AvailabilityZone", [f"{call.region}{z}" for z in "abc"]
                    ),
                    "BackupRetentionPeriod": 7,
                    "DBClusterIdentifier": ident,
                    "Status": "available",
                    "Endpoint": f"{ident}.cluster.lab.rds.localhost",
                    "ReaderEndpoint": f"{ident}.cluster-ro.lab.rds.localhost",
                    "MultiAZ": len(cluster.members) > 1,
                    "Engine": cluster.engine,
                    "EngineVersion": ENGINE_VERSION,
                    "Port": 5432,
                    "MasterUsername": "postgres",
                    "DBClusterMembers": XmlList(
                        "DBClusterMember",
                        [
                            {
                                "DBInstanceIdentifier": member,
                                "IsClusterWriter": member == cluster.writer,
                                "DBClusterParameterGroupStatus": "in-sync",
                                "PromotionTier": 1,
                            }
                            for member in cluster.members
                        ],
                    ),
                    "StorageEncrypted": False,
                    "DbClusterResourceId": "cluster-" + _resource_id(ident),
                    "DBClusterArn": f"arn:aws:rds:{call.region}:{ACCOUNT_ID}:cluster:{ident}",
                    "ClusterCreateTime": _LAB_EPOCH,
                    "EngineMode": "provisioned",
                    "TagList": _tag_list(
                        self._resource_tags(f"cluster:{ident.lower()}", cluster.tags)
                    ),
                }
            )
        return {"Marker": marker, "DBClusters": XmlList("DBCluster", items)}

    async def _describe_db_parameters(self, call: _Call) -> Mapping[str, Any]:
        group = awsxml.required(call.params, "DBParameterGroupName")
        owners = [
            i
            for i in self.catalog.instances().values()
            if i.parameter_group.lower() == group.lower()
        ]
        if not owners:
            raise QueryError(
                404, "DBParameterGroupNotFound", f"DBParameterGroup not found: {group}"
            )
        instance = owners[0]  # instances sharing a group share its settings: the first one's
        source = call.params.get("Source")
        params = [p for p in _parameters(instance) if source in (None, "", p["Source"])]
        page, marker = _page(params, call.params, default=100, minimum=20, maximum=100)
        return {"Parameters": XmlList("Parameter", page), "Marker": marker}

    # -- log files ---------------------------------------------------------------------------------
    async def _describe_db_log_files(self, call: _Call) -> Mapping[str, Any]:
        params = call.params
        instance = self.catalog.instance(awsxml.required(params, "DBInstanceIdentifier"))
        self._inject_list_error(instance, call.region)
        offset_ms = round(self._faults.clock_offset_s * 1000)
        files = [
            dataclasses.replace(f, last_written_ms=f.last_written_ms + offset_ms)
            for f in self.catalog.log_files(instance)
        ]
        contains = params.get("FilenameContains")
        if contains:
            files = [f for f in files if contains in f.name]
        since_ms = awsxml.int_param(params, "FileLastWritten")
        if since_ms is not None:
            files = [f for f in files if f.last_written_ms >= since_ms]
        larger_than = awsxml.int_param(params, "FileSize")
        if larger_than is not None:
            files = [f for f in files if f.size > larger_than]
        page_size = awsxml.int_param(params, "MaxRecords", DEFAULT_LOG_FILES_PAGE)
        assert page_size is not None
        if page_size < 1:
            raise invalid("MaxRecords must be at least 1.")
        page_size = min(page_size, MAX_LOG_FILES_PAGE)
        keyed = sorted((_order_key(f.name), f) for f in files)
        after = params.get("Marker")
        if after:
            if not re.fullmatch(r"[0-9a-f]{64}", after):
                raise invalid(f"Invalid marker: {after!r}")
            keyed = [(k, f) for k, f in keyed if k > after]
        page = keyed[:page_size]
        return {
            "DescribeDBLogFiles": XmlList(
                "DescribeDBLogFilesDetails", [_file_xml(f) for _, f in page]
            ),
            "Marker": page[-1][0] if len(keyed) > page_size else None,
        }

    def _inject_list_error(self, instance: Instance, region: str) -> None:
        faults = self._faults
        if not faults.list_fails(instance.identifier):
            return
        self._stats.faults["list_errors"] += 1
        ident = instance.identifier
        if faults.list_error == "AccessDenied":
            raise QueryError(
                403,
                "AccessDenied",
                f"User: arn:aws:iam::{ACCOUNT_ID}:user/rdsrecorder-lab is not authorized to "
                "perform: rds:DescribeDBLogFiles on resource: "
                f"arn:aws:rds:{region}:{ACCOUNT_ID}:db:{ident} because no identity-based "
                "policy allows the rds:DescribeDBLogFiles action",
            )
        if faults.list_error == "DBInstanceNotFound":
            raise QueryError(404, "DBInstanceNotFound", f"DBInstance {ident} not found.")
        raise QueryError(500, "InternalFailure", "The request processing has failed.", sender=False)

    async def _download_portion(self, call: _Call) -> web.StreamResponse:
        params = call.params
        instance = self.catalog.instance(awsxml.required(params, "DBInstanceIdentifier"))
        name = awsxml.required(params, "LogFileName")
        key = f"{instance.identifier}/{name}"
        stats = self._stats
        stats.portion_calls_by_file[key] += 1
        try:
            path = self.catalog.log_file_path(instance, name)
        except QueryError:
            stats.portion_finished(key)
            raise
        lines = awsxml.int_param(params, "NumberOfLines", MAX_LINES_PER_PORTION)
        assert lines is not None
        if not 1 <= lines <= MAX_LINES_PER_PORTION:
            raise invalid(f"NumberOfLines must be between 1 and {MAX_LINES_PER_PORTION}.")
        marker = params.get("Marker")
        faults = self._faults
        if faults.names_file(faults.binary_files, instance.identifier, name):
            stats.faults["binary"] += 1
            raise invalid(BINARY_DATA_MESSAGE)
        portion, data = self._portion_data(path, marker, lines)
        try:
            text = to_xml_text(data)
        except BinaryDataError as exc:
            raise invalid(str(exc)) from None
        out_marker = format_marker(name, portion.next_offset)
        pending = portion.pending
        if pending and marker is not None and self._early_eof(instance, name, portion):
            pending = False
        stuck = marker not in (None, "0") and faults.names_file(
            faults.stuck_marker_files, instance.identifier, name
        )
        if stuck:
            assert marker is not None
            stats.faults["stuck"] += 1
            out_marker, pending = marker, True
        if marker is not None:
            if pending:
                stats.portion_started(key)
            else:
                stats.portion_finished(key)
        stats.portion_bytes_by_file[key] += len(data)
        if portion.truncated:
            stats.truncated_portions_by_file[key] += 1
        result = {
            "LogFileData": awsxml.Raw(text) if text else None,
            "Marker": out_marker,
            "AdditionalDataPending": pending,
        }
        body = awsxml.response(call.action, result, call.request_id, awsxml.RDS_NAMESPACE)
        await self._portion_time(call, len(data))
        stats.delayed("bandwidth_mbps", await self._pacer.take(len(data), faults.bandwidth_mbps))
        if faults.reset_rate and self._rng.random() < faults.reset_rate:
            stats.faults["resets"] += 1
            return await _reset_midway(call.request, body.encode())
        return _xml(body, call.request_id)

    async def _portion_time(self, call: _Call, nbytes: int) -> None:
        """A portion takes latency_ms + portion_ms_per_mb a MB from its arrival: the lab's own work
        (signature check, XML) is part of that time, not added to it, so a lab loaded by its
        neighbours on the same cores still answers as slowly as its knobs say, no slower."""
        faults = self._faults
        if faults.portion_ms_per_mb:
            self._stats.delayed("portion_ms_per_mb", nbytes / 1e6 * faults.portion_ms_per_mb / 1000)
            ms = faults.latency_ms + nbytes / 1e6 * faults.portion_ms_per_mb
            wait_s = call.arrived + ms / 1000 - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)

    def _portion_data(self, path: Path, marker: str | None, lines: int) -> tuple[Portion, bytes]:
        """The portion and the LogFileData it sends (with the overlap_bytes fault, some bytes
        before the marker come first)."""
        overlap = self._faults.overlap_bytes if marker not in (None, "0") else 0
        portion = self._read(path, marker, lines, self._faults.portion_max_bytes - overlap)
        if not overlap:
            return portion, portion.data
        self._stats.faults["overlaps"] += 1
        return portion, read_overlap(path, portion.start_offset, overlap) + portion.data

    def _early_eof(self, instance: Instance, name: str, portion: Portion) -> bool:
        eof_at = self._faults.early_eof_at(instance.identifier, name)
        if eof_at is None or not portion.start_offset <= eof_at < portion.next_offset:
            return False
        self._stats.faults["early_eof"] += 1
        return True

    @staticmethod
    def _read(path: Path, marker: str | None, lines: int, limit_bytes: int) -> Portion:
        try:
            if marker is None:
                return read_tail(path, lines, limit_bytes=limit_bytes)
            return read_portion(path, parse_marker(marker), lines, limit_bytes=limit_bytes)
        except MarkerError as exc:
            raise invalid(str(exc)) from None
        except FileNotFoundError:
            raise QueryError(
                404, "DBLogFileNotFoundFault", f"DBLog File: {path.name}, is not found"
            ) from None

    # -- whole-file REST endpoint ------------------------------------------------------------------
    async def _complete(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        self._stats.called()
        self._stats.calls["DownloadCompleteLogFile"] += 1
        instance_id = request.match_info["instance"]
        self._stats.instance_call(instance_id, "DownloadCompleteLogFile")
        name = request.match_info["name"]
        faults = self._faults
        try:
            await self._latency()
            # Always verified, whatever verify_signatures says: hand-made signing is exactly
            # what clients of this endpoint get wrong.
            access_key = self._verify(request, b"", ("rds",))
            self._count_caller(access_key, "DownloadCompleteLogFile")
            self._check_expired(access_key)
            self._inject_call_faults("DownloadCompleteLogFile")
            if not faults.complete_endpoint:
                self._stats.faults["complete_denied"] += 1
                raise QueryError(
                    403,
                    "AccessDenied",
                    f"User: arn:aws:iam::{ACCOUNT_ID}:user/rdsrecorder-lab is not authorized to "
                    "perform: rds:DownloadCompleteDBLogFile on resource: "
                    f"arn:aws:rds:{LAB_REGION}:{ACCOUNT_ID}:db:{instance_id}",
                )
            instance = self.catalog.instance(instance_id)
            path = self.catalog.log_file_path(instance, name)
            handle = path.open("rb")
        except QueryError as exc:
            return self._error(exc, request_id, awsxml.RDS_NAMESPACE)
        except FileNotFoundError:  # expired between the check and the open
            gone = QueryError(404, "DBLogFileNotFoundFault", f"DBLog File: {name}, is not found")
            return self._error(gone, request_id, awsxml.RDS_NAMESPACE)
        key = f"{instance.identifier}/{name}"
        self._stats.complete_downloads[key] += 1
        self._stats.complete_started(key)
        limit: int | None = None
        if faults.names_file(faults.short_body_files, instance.identifier, name):
            limit = int(os.fstat(handle.fileno()).st_size * faults.short_body_fraction)
        try:
            with handle:
                return await self._stream(request, request_id, handle, key, limit)
        finally:
            self._stats.complete_finished(key)

    async def _stream(
        self, request: web.Request, request_id: str, handle: Any, key: str, limit: int | None
    ) -> web.StreamResponse:
        """Stream the file; with ``limit``, end cleanly after that many bytes (a short body)."""
        faults = self._faults
        own_link = _Pacer(stream=True)  # stream_mbps: this stream's rate, whatever the others do
        gzip = "gzip" in request.headers.get("Accept-Encoding", "").lower()
        reset = bool(faults.reset_rate) and self._rng.random() < faults.reset_rate
        response = web.StreamResponse(
            headers={"Content-Type": "text/plain; charset=utf-8", "x-amzn-RequestId": request_id}
        )
        if gzip:
            response.headers["Content-Encoding"] = "gzip"
        response.enable_chunked_encoding()
        await response.prepare(request)
        compressor = zlib.compressobj(faults.gzip_level, zlib.DEFLATED, 31) if gzip else None
        left = limit
        while chunk := handle.read(
            COMPLETE_CHUNK_BYTES if left is None else min(left, COMPLETE_CHUNK_BYTES)
        ):
            if left is not None:
                left -= len(chunk)
            self._stats.delayed("stream_mbps", await own_link.take(len(chunk), faults.stream_mbps))
            shared_s = await self._pacer.take(len(chunk), faults.bandwidth_mbps)
            self._stats.delayed("bandwidth_mbps", shared_s)
            self._stats.complete_bytes_by_file[key] += len(chunk)
            await response.write(compressor.compress(chunk) if compressor else chunk)
            if reset:
                self._stats.faults["resets"] += 1
                _drop(request)
                return response
        if limit is not None:
            self._stats.faults["short_bodies"] += 1
        if compressor:
            await response.write(compressor.flush())
        await response.write_eof()
        return response

    # -- snapshots and tags ------------------------------------------------------------------------
    async def _create_db_snapshot(self, call: _Call) -> Mapping[str, Any]:
        params = call.params
        ident = _identifier(params, "DBSnapshotIdentifier", 255)
        instance = self.catalog.instance(awsxml.required(params, "DBInstanceIdentifier"))
        if instance.cluster is not None:
            raise invalid(
                f"The instance {instance.identifier} is a member of DB cluster "
                f"{instance.cluster}: snapshot the cluster with CreateDBClusterSnapshot."
            )
        if ident in self._snapshots:
            raise QueryError(
                400, "DBSnapshotAlreadyExists", f"Cannot create the snapshot {ident}: it exists."
            )
        tags = _tags_param(params)
        snap = _Snapshot(ident, instance.identifier, False, instance.engine, self._utcnow())
        self._snapshots[ident] = snap
        self._tags[f"snapshot:{ident}"] = tags
        return {"DBSnapshot": self._snapshot_xml(snap, call)}

    async def _create_db_cluster_snapshot(self, call: _Call) -> Mapping[str, Any]:
        params = call.params
        ident = _identifier(params, "DBClusterSnapshotIdentifier", 63)
        cluster = self.catalog.cluster(awsxml.required(params, "DBClusterIdentifier"))
        if ident in self._cluster_snapshots:
            raise QueryError(
                400,
                "DBClusterSnapshotAlreadyExistsFault",
                f"Cannot create the cluster snapshot {ident}: it exists.",
            )
        tags = _tags_param(params)
        snap = _Snapshot(ident, cluster.identifier, True, "aurora-postgresql", self._utcnow())
        self._cluster_snapshots[ident] = snap
        self._tags[f"cluster-snapshot:{ident}"] = tags
        return {"DBClusterSnapshot": self._snapshot_xml(snap, call)}

    async def _describe_db_snapshots(self, call: _Call) -> Mapping[str, Any]:
        found = self._find_snapshots(
            call.params, self._snapshots, "DBSnapshotIdentifier", "DBInstanceIdentifier"
        )
        page, marker = _page(found, call.params, default=100, minimum=20, maximum=100)
        items = [self._snapshot_xml(s, call) for s in page]
        return {"Marker": marker, "DBSnapshots": XmlList("DBSnapshot", items)}

    async def _describe_db_cluster_snapshots(self, call: _Call) -> Mapping[str, Any]:
        found = self._find_snapshots(
            call.params,
            self._cluster_snapshots,
            "DBClusterSnapshotIdentifier",
            "DBClusterIdentifier",
        )
        page, marker = _page(found, call.params, default=100, minimum=20, maximum=100)
        items = [self._snapshot_xml(s, call) for s in page]
        return {"Marker": marker, "DBClusterSnapshots": XmlList("DBClusterSnapshot", items)}

    def _find_snapshots(
        self,
        params: Mapping[str, str],
        store: Mapping[str, _Snapshot],
        id_param: str,
        source_param: str,
    ) -> list[_Snapshot]:
        ident = params.get(id_param)
        source = params.get(source_param)
        kind = params.get("SnapshotType")
        found = sorted(store.values(), key=lambda s: (s.created_at, s.identifier))
        if ident:
            found = [s for s in found if s.identifier == ident.lower()]
            if not found:
                code = (
                    "DBClusterSnapshotNotFoundFault"
                    if "Cluster" in id_param
                    else ("DBSnapshotNotFound")
                )
                raise QueryError(404, code, f"Snapshot {ident} not found.")
        if source:
            wanted = source.split(":")[-1].lower()
            found = [s for s in found if s.source.lower() == wanted]
        if kind and kind != "manual":
            found = []  # the lab has manual snapshots only
        return found

    def _snapshot_xml(self, snap: _Snapshot, call: _Call) -> Mapping[str, Any]:
        elapsed_s = (self._utcnow() - snap.created_at).total_seconds()
        done = elapsed_s >= self.snapshot_delay_s
        progress = 100 if done else int(100 * elapsed_s / max(self.snapshot_delay_s, 1e-9))
        kind = "cluster-snapshot" if snap.cluster else "snapshot"
        common: dict[str, Any] = {
            "SnapshotCreateTime": snap.created_at,
            "Engine": snap.engine,
            "AllocatedStorage": 1 if snap.cluster else 20,
            "Status": "available" if done else "creating",
            "Port": 5432,
            "MasterUsername": "postgres",
            "EngineVersion": ENGINE_VERSION,
            "LicenseModel": "postgresql-license",
            "SnapshotType": "manual",
            "PercentProgress": progress,
        }
        tags = _tag_list(self._tags.get(f"{kind}:{snap.identifier}", {}))
        if snap.cluster:
            return {
                "DBClusterSnapshotIdentifier": snap.identifier,
                "DBClusterIdentifier": snap.source,
                **common,
                "ClusterCreateTime": _LAB_EPOCH,
                "StorageEncrypted": False,
                "DBClusterSnapshotArn": snap.arn(call.region),
                "EngineMode": "provisioned",
                "TagList": tags,
            }
        return {
            "DBSnapshotIdentifier": snap.identifier,
            "DBInstanceIdentifier": snap.source,
            **common,
            "AvailabilityZone": f"{call.region}a",
            "InstanceCreateTime": _LAB_EPOCH,
            "StorageType": "gp3",
            "Encrypted": False,
            "DBSnapshotArn": snap.arn(call.region),
            "DbiResourceId": "db-" + _resource_id(snap.source),
            "TagList": tags,
        }

    async def _add_tags_to_resource(self, call: _Call) -> None:
        key = self._resource_key(awsxml.required(call.params, "ResourceName"))
        tags = _tags_param(call.params)
        if not tags:
            raise QueryError(400, "MissingParameter", "The request must contain the parameter Tags")
        self._tags.setdefault(key, {}).update(tags)

    async def _list_tags_for_resource(self, call: _Call) -> Mapping[str, Any]:
        key = self._resource_key(awsxml.required(call.params, "ResourceName"))
        kind, _, ident = key.partition(":")
        base: tuple[tuple[str, str], ...] = ()
        if kind == "db":
            base = self.catalog.instance(ident).tags
        elif kind == "cluster":
            base = self.catalog.cluster(ident).tags
        return {"TagList": _tag_list(self._resource_tags(key, base))}

    def _resource_tags(self, key: str, base: tuple[tuple[str, str], ...]) -> dict[str, str]:
        """Tags from lab.json, overridden by those added with AddTagsToResource."""
        return {**dict(base), **self._tags.get(key, {})}

    def _resource_key(self, arn: str) -> str:
        parts = arn.split(":")
        if len(parts) != 7 or parts[0] != "arn" or parts[2] != "rds":
            raise invalid(f"The specified resource name does not match an RDS resource: {arn}")
        kind, ident = parts[5], parts[6]
        if kind == "db":
            ident = self.catalog.instance(ident).identifier
        elif kind == "cluster":
            ident = self.catalog.cluster(ident).identifier
        elif kind == "snapshot":
            if ident.lower() not in self._snapshots:
                raise QueryError(404, "DBSnapshotNotFound", f"DBSnapshot {ident} not found.")
        elif kind == "cluster-snapshot":
            if ident.lower() not in self._cluster_snapshots:
                raise QueryError(
                    404, "DBClusterSnapshotNotFoundFault", f"DBClusterSnapshot {ident} not found."
                )
        else:
            raise invalid(f"The lab does not keep tags for resources of type {kind!r}.")
        return f"{kind}:{ident.lower()}"

    def _utcnow(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._aws_now(), dt.UTC)

    def _aws_now(self) -> float:
        """The lab's AWS clock: ``now`` plus the ``clock_offset_s`` knob."""
        return self._now() + self._faults.clock_offset_s

    async def _date_header(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer's ``Date`` on the lab's AWS clock (aiohttp would put the host's)."""
        response.headers["Date"] = email.utils.formatdate(self._aws_now(), usegmt=True)

    # -- lab control plane (JSON) ------------------------------------------------------------------
    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self._faults.to_dict())

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            data = await request.json() if request.can_read_body else {}
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            if request.method == "PATCH":
                self.set_faults(self._faults.replace(**data))
            else:
                self.set_faults(Faults.from_mapping(data))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self._faults.to_dict())

    async def _post_files(self, request: web.Request) -> web.Response:
        try:
            data = await _json_object(request)
            content = data.get("data", "")
            if "data_base64" in data:
                content = base64.b64decode(str(data["data_base64"]), validate=True)
            elif isinstance(content, str):
                content = content.encode()
            else:
                raise ValueError("data must be a string (or use data_base64)")
            stamp_ms = data.get("last_written_ms")
            if stamp_ms is not None and not _finite_number(stamp_ms):
                raise ValueError("last_written_ms must be a number")
            size = data.get("size")
            if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
                raise ValueError("size must be an integer")
            instance, name = _str_field(data, "instance"), _str_field(data, "name")
            entry = self.catalog.change_file(
                instance,
                name,
                _str_field(data, "action"),
                data=content,
                size=size,
                last_written_s=None if stamp_ms is None else stamp_ms / 1000,
            )
        except QueryError as exc:
            return web.json_response({"error": exc.message, "code": exc.code}, status=exc.status)
        except (ValueError, binascii.Error) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if entry is None:
            return web.json_response({"instance": instance, "name": name, "deleted": True})
        return web.json_response(
            {
                "instance": instance,
                "name": name,
                "size": entry.size,
                "last_written_ms": entry.last_written_ms,
            }
        )

    async def _get_instances(self, request: web.Request) -> web.Response:
        return web.json_response([_instance_json(i) for i in self.catalog.instances().values()])

    async def _post_instances(self, request: web.Request) -> web.Response:
        try:
            data = await _json_object(request)
            action = _str_field(data, "action")
            ident = _str_field(data, "instance")
            known = {"action", "instance", "engine", "tags", "cluster"}
            known |= {"log_retention_period_min", "parameter_group"}
            unknown = sorted(set(data) - known)
            if unknown:
                raise ValueError(f"unknown field(s): {', '.join(unknown)}")
            if action == "remove":
                self.catalog.remove_instance(ident)
                return web.json_response({"instance": ident, "removed": True})
            if action != "add":
                raise ValueError("action must be add or remove")
            tags = data.get("tags") or {}
            if not isinstance(tags, dict):
                raise ValueError("tags must be an object")
            instance = self.catalog.add_instance(
                ident,
                engine=str(data.get("engine") or "postgres"),
                tags={str(k): str(v) for k, v in tags.items()},
                cluster=data.get("cluster"),
                log_retention_period_min=data.get(
                    "log_retention_period_min", DEFAULT_LOG_RETENTION_MIN
                ),
                parameter_group=data.get("parameter_group"),
            )
        except QueryError as exc:
            return web.json_response({"error": exc.message, "code": exc.code}, status=exc.status)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(_instance_json(instance))

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset_stats(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response({"reset": True})


# -- helpers ---------------------------------------------------------------------------------------
async def _json_object(request: web.Request) -> dict[str, Any]:
    data = await request.json() if request.can_read_body else {}
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _str_field(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _instance_json(instance: Instance) -> dict[str, Any]:
    return {
        "instance": instance.identifier,
        "engine": instance.engine,
        "cluster": instance.cluster,
        "tags": dict(instance.tags),
        "log_retention_period_min": instance.log_retention_period_min,
        "parameter_group": instance.parameter_group,
    }


def _xml(body: str, request_id: str, status: int = 200) -> web.Response:
    return web.Response(
        body=body.encode(),
        status=status,
        content_type="text/xml",
        charset="utf-8",
        headers={"x-amzn-RequestId": request_id},
    )


async def _reset_midway(request: web.Request, body: bytes) -> web.StreamResponse:
    """Send the headers and half the body, then drop the connection (a reset mid-response)."""
    response = web.StreamResponse(headers={"Content-Type": "text/xml; charset=utf-8"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    _drop(request)
    return response


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


def _page(
    items: list[Any], params: Mapping[str, str], *, default: int, minimum: int, maximum: int
) -> tuple[list[Any], str | None]:
    size = awsxml.int_param(params, "MaxRecords", default)
    assert size is not None
    if not minimum <= size <= maximum:
        raise invalid(f"MaxRecords must be between {minimum} and {maximum}.")
    start = awsxml.int_param(params, "Marker", 0)
    assert start is not None
    if start < 0:
        raise invalid("Invalid marker.")
    page = items[start : start + size]
    return page, str(start + size) if start + size < len(items) else None


def _order_key(name: str) -> str:
    return hashlib.sha256(b"rdsrecorder-lab:" + name.encode()).hexdigest()


def _file_xml(entry: LogFileEntry) -> Mapping[str, Any]:
    return {"LogFileName": entry.name, "LastWritten": entry.last_written_ms, "Size": entry.size}


def _resource_id(identifier: str) -> str:
    return hashlib.sha256(identifier.lower().encode()).hexdigest()[:26].upper()


def _instance_matches(instance: Instance, name: str, accepted: list[str]) -> bool:
    wanted = {a.split(":")[-1].lower() for a in accepted}
    if name == "db-instance-id":
        return instance.identifier.lower() in wanted
    if name == "db-cluster-id":
        return (instance.cluster or "").lower() in wanted
    if name == "engine":
        return instance.engine in accepted
    raise invalid(f"Unrecognized filter name: {name}")


def _identifier(params: Mapping[str, str], name: str, max_len: int) -> str:
    value = awsxml.required(params, name)
    valid = (
        len(value) <= max_len
        and value[0].isascii()
        and value[0].isalpha()
        and all(c.isascii() and (c.isalnum() or c == "-") for c in value)
        and not value.endswith("-")
        and "--" not in value
    )
    if not valid:
        raise invalid(
            f"The parameter {name} is not a valid identifier: it must be 1 to {max_len} "
            "letters, digits or hyphens, begin with a letter, and neither end with a hyphen "
            "nor contain two consecutive hyphens."
        )
    return value.lower()


def _tags_param(params: Mapping[str, str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in awsxml.members(params, "Tags.Tag"):
        key = item.get("Key", "")
        if not key or len(key) > 128 or key.lower().startswith(("aws:", "rds:")):
            raise invalid(f"Invalid tag key: {key!r}")
        tags[key] = item.get("Value", "")
    return tags


def _tag_list(tags: Mapping[str, str]) -> XmlList:
    return XmlList("Tag", [{"Key": k, "Value": v} for k, v in tags.items()])


def _parameters(instance: Instance) -> list[dict[str, Any]]:
    """The log-related parameters of an instance's parameter group, as DescribeDBParameters
    lists them."""
    retention = instance.log_retention_period_min
    rows: list[tuple[str, str, str, str, str, str]] = [
        # name, value, source, type, allowed, description
        (
            "log_destination",
            "csvlog",
            "user",
            "string",
            "stderr,csvlog",
            "Sets the destination for server log output.",
        ),
        (
            "rds.log_retention_period",
            str(retention),
            "engine-default" if retention == DEFAULT_LOG_RETENTION_MIN else "user",
            "integer",
            "1440-10080",
            "PostgreSQL log files older than this many minutes are deleted.",
        ),
    ]
    return [
        {
            "ParameterName": name,
            "ParameterValue": value,
            "Description": description,
            "Source": source,
            "ApplyType": "dynamic",
            "DataType": kind,
            "AllowedValues": allowed,
            "IsModifiable": True,
            "ApplyMethod": "pending-reboot",
        }
        for name, value, source, kind, allowed, description in rows
    ]
