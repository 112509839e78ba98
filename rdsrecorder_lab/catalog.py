"""What the lab serves, read from disk on every call: instances and files added at runtime appear.

Layout of a lab root::

    <root>/
      lab.json                         optional, see below
      <instance>/error/postgresql.log.2024-03-04-19.csv
      <instance>/error/postgresql.log.2024-03-04-19
      ...

Every sub-directory of the root is a DB instance; so is every instance named in ``lab.json``
(as a cluster member or under ``instances``), with or without a directory (then it has no log
files). Identifiers match case-insensitively, as on RDS. A log file's name is its path relative
to the instance directory (``error/...``); hidden files are not listed; names may hold spaces,
``%`` and non-ASCII characters, never a ``.``/``..`` part. Symbolic links are followed (the lab's
PostgreSQL writes its logs through one).

``lab.json`` (every key optional)::

    {"instances": {"db-1": {"engine": "postgres",            # default: postgres, or the
                            "tags": {"team": "shop"},        #   cluster's engine for members
                            "log_retention_period_min": 4320,  # rds.log_retention_period
                            "parameter_group": "shop-pg",      # default: "lab-<identifier>"
                            "resource_id": "db-..."}},         # DbiResourceId (see below)
     "clusters": {"my-aurora": {"members": ["my-aurora-1", "my-aurora-2"],
                                "writer": "my-aurora-1",     # default: the first member
                                "engine": "aurora-postgresql",
                                "tags": {"team": "shop"}}}}

An instance's ``DbiResourceId`` is ``resource_id`` when given, else derived from its name.
``add_instance`` gives every instance it creates a new random one, so an instance removed and
added again under its name is a new incarnation, as on RDS.

``Catalog.add_instance`` / ``remove_instance`` / ``change_file`` change the root while the lab
runs (the emulator's ``/_lab/instances`` and ``/_lab/files`` endpoints call them). A broken
``lab.json`` is ignored with a warning (the directories still serve).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rdsrecorder_lab.awsxml import QueryError, invalid

log = logging.getLogger(__name__)

ACCOUNT_ID = "123456789012"
CLUSTERS_FILE = "lab.json"
DEFAULT_ENGINE = "postgres"
DEFAULT_CLUSTER_ENGINE = "aurora-postgresql"
DEFAULT_LOG_RETENTION_MIN = 4320  # rds.log_retention_period: 3 days
FILE_ACTIONS = ("append", "truncate", "replace", "delete")
_MAX_DEPTH = 4  # error/ is one level; a bound keeps a symlink loop from walking forever
IDENTIFIER_RE = re.compile(r"^[A-Za-z](?:[A-Za-z0-9]|-(?!-))*(?<!-)$")


@dataclass(frozen=True, slots=True)
class Instance:
    identifier: str
    engine: str  # "postgres", "aurora-postgresql", "mysql" ...
    cluster: str | None
    path: Path
    tags: tuple[tuple[str, str], ...] = ()
    log_retention_period_min: int = DEFAULT_LOG_RETENTION_MIN
    parameter_group: str = ""
    resource_id: str = ""  # lab.json's, or "" (the emulator derives one from the name)


@dataclass(frozen=True, slots=True)
class Cluster:
    identifier: str
    members: tuple[str, ...]
    writer: str | None
    engine: str = DEFAULT_CLUSTER_ENGINE
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """An entry of ``lab.json``'s ``instances``."""

    engine: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    log_retention_period_min: int = DEFAULT_LOG_RETENTION_MIN
    parameter_group: str | None = None
    resource_id: str | None = None


@dataclass(frozen=True, slots=True)
class LabConfig:
    clusters: dict[str, Cluster] = field(default_factory=dict)
    instances: dict[str, InstanceSpec] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LogFileEntry:
    name: str  # "error/postgresql.log.2024-03-04-19.csv"
    path: Path
    last_written_ms: int
    size: int


def db_not_found(identifier: str) -> QueryError:
    return QueryError(404, "DBInstanceNotFound", f"DBInstance {identifier} not found.")


def file_not_found(log_file_name: str) -> QueryError:
    return QueryError(
        404,
        "DBLogFileNotFoundFault",
        f"DBLog File: {log_file_name}, is not found on the DB instance",
    )


class Catalog:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._config_key: tuple[int, int] | None = None
        self._config = LabConfig()

    # -- lab.json ----------------------------------------------------------------------------------
    def config(self) -> LabConfig:
        path = self.root / CLUSTERS_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            self._config_key, self._config = None, LabConfig()
            return self._config
        key = (st.st_mtime_ns, st.st_size)
        if key != self._config_key:
            self._config_key = key
            self._config = _read_config(path)
        return self._config

    def clusters(self) -> dict[str, Cluster]:
        return self.config().clusters

    # -- clusters and instances --------------------------------------------------------------------
    def instances(self) -> dict[str, Instance]:
        config = self.config()
        paths: dict[str, Path] = {}
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.name.startswith((".", "_")) or not entry.is_dir():
                continue
            paths[entry.name] = Path(entry.path)
        member_of: dict[str, Cluster] = {}
        for cluster in config.clusters.values():
            for member in cluster.members:
                member_of[member.lower()] = cluster
        names = {n.lower(): n for n in paths}
        for name in [*config.instances, *member_of]:
            names.setdefault(name.lower(), name)
        specs = {k.lower(): v for k, v in config.instances.items()}
        out: dict[str, Instance] = {}
        for lowered, name in sorted(names.items(), key=lambda kv: kv[1]):
            owner = member_of.get(lowered)
            spec = specs.get(lowered, InstanceSpec())
            engine = spec.engine or (owner.engine if owner else DEFAULT_ENGINE)
            out[name] = Instance(
                name,
                engine,
                owner.identifier if owner else None,
                paths.get(name, self.root / name),
                spec.tags,
                spec.log_retention_period_min,
                spec.parameter_group or f"lab-{name.lower()}",
                spec.resource_id or "",
            )
        return out

    def instance(self, identifier: str) -> Instance:
        found = self._find(self.instances(), _strip_arn(identifier, "db"))
        if found is None:
            raise db_not_found(identifier)
        return found

    def cluster(self, identifier: str) -> Cluster:
        wanted = _strip_arn(identifier, "cluster").lower()
        for cluster in self.clusters().values():
            if cluster.identifier.lower() == wanted:
                return cluster
        raise QueryError(404, "DBClusterNotFoundFault", f"DBCluster {identifier} not found.")

    @staticmethod
    def _find(instances: dict[str, Instance], identifier: str) -> Instance | None:
        if identifier in instances:
            return instances[identifier]
        lowered = identifier.lower()
        for name, instance in instances.items():
            if name.lower() == lowered:
                return instance
        return None

    def add_instance(
        self,
        identifier: str,
        *,
        engine: str = DEFAULT_ENGINE,
        tags: Mapping[str, str] | None = None,
        cluster: str | None = None,
        log_retention_period_min: int = DEFAULT_LOG_RETENTION_MIN,
        parameter_group: str | None = None,
    ) -> Instance:
        """Create an instance (its directory and its ``lab.json`` entry); with ``cluster`` it
        joins that cluster (created when missing; its first member is the writer)."""
        if not IDENTIFIER_RE.match(identifier) or len(identifier) > 63:
            raise invalid(
                f"The parameter DBInstanceIdentifier is not a valid identifier: {identifier!r}"
            )
        if self._find(self.instances(), identifier) is not None:
            raise QueryError(
                400, "DBInstanceAlreadyExists", f"DB instance {identifier} already exists."
            )
        spec: dict[str, Any] = {
            "engine": engine,
            "tags": dict(tags or {}),
            "log_retention_period_min": log_retention_period_min,
        }
        if parameter_group:
            spec["parameter_group"] = parameter_group
        # A new incarnation, whatever the name had before (RDS: a new DbiResourceId).
        spec["resource_id"] = "db-" + base64.b32encode(secrets.token_bytes(16)).decode()[:26]
        _check_spec(identifier, spec)

        def change(raw: dict[str, Any]) -> None:
            raw.setdefault("instances", {})[identifier] = spec
            if cluster is not None:
                entry = raw.setdefault("clusters", {}).setdefault(cluster, {"members": []})
                entry.setdefault("members", []).append(identifier)

        (self.root / identifier).mkdir(parents=True, exist_ok=True)
        self.update_config(change)
        return self.instance(identifier)

    def remove_instance(self, identifier: str) -> None:
        """Delete an instance: its ``lab.json`` entries, its cluster membership (a cluster left
        without members goes too) and its directory with its log files."""
        instance = self.instance(identifier)
        name = instance.identifier

        def change(raw: dict[str, Any]) -> None:
            instances = raw.get("instances", {})
            for key in [k for k in instances if k.lower() == name.lower()]:
                del instances[key]
            clusters = raw.get("clusters", {})
            for cluster_id in list(clusters):
                spec = clusters[cluster_id]
                members = [m for m in spec.get("members", []) if m.lower() != name.lower()]
                if not members:
                    del clusters[cluster_id]
                    continue
                spec["members"] = members
                if spec.get("writer", "").lower() == name.lower():
                    spec["writer"] = members[0]

        if (self.root / CLUSTERS_FILE).exists():
            self.update_config(change)
        path = instance.path
        if path.parent == self.root and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)

    def update_config(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply ``change`` to the JSON of ``lab.json`` (``{}`` when missing) and write it back
        atomically."""
        path = self.root / CLUSTERS_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raw = {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path} does not hold a JSON object")
        change(raw)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".lab.json.")
        with os.fdopen(fd, "w") as f:
            json.dump(raw, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
        self._config_key = None  # same size within the same tick must not hide the change

    # -- log files ---------------------------------------------------------------------------------
    def log_files(self, instance: Instance) -> list[LogFileEntry]:
        out: list[LogFileEntry] = []
        base = instance.path
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            rel_dir = Path(dirpath).relative_to(base)
            if len(rel_dir.parts) >= _MAX_DEPTH:
                dirnames[:] = []
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for filename in filenames:
                if filename.startswith("."):
                    continue
                path = Path(dirpath, filename)
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # rotated away or expired between listing and stat
                name = (rel_dir / filename).as_posix()
                out.append(LogFileEntry(name, path, st.st_mtime_ns // 1_000_000, st.st_size))
        return out

    def log_file_path(self, instance: Instance, log_file_name: str) -> Path:
        path = _safe_path(instance.path, log_file_name)
        if path is None or not path.is_file():
            raise file_not_found(log_file_name)
        return path

    def change_file(
        self,
        instance_id: str,
        log_file_name: str,
        action: str,
        *,
        data: bytes = b"",
        size: int | None = None,
        last_written_s: float | None = None,
    ) -> LogFileEntry | None:
        """Change a log file under a running lab; returns the file as listed now (None once
        deleted).

        ``append`` adds ``data`` (creating the file), ``truncate`` cuts it to ``size`` bytes,
        ``replace`` gives the name new content (a new file moved over the old one, so a stream
        already open goes on reading the old content, as on a real file system; it also creates
        a file), ``delete`` removes it. An unknown instance gets a directory (it appears as a
        ``postgres`` instance). ``last_written_s`` sets the mtime (LastWritten) afterwards.
        """
        if action not in FILE_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(FILE_ACTIONS)}, not {action!r}")
        found = self._find(self.instances(), instance_id)
        if found is not None:
            base = found.path
        elif IDENTIFIER_RE.match(instance_id):
            base = self.root / instance_id
        else:
            raise db_not_found(instance_id)
        path = _safe_path(base, log_file_name)
        if path is None:
            raise ValueError(f"refusing the log file name {log_file_name!r}")
        exists = path.is_file()
        if action in ("truncate", "delete") and not exists:
            raise file_not_found(log_file_name)
        if action == "delete":
            path.unlink()
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        if action == "append":
            with path.open("ab") as f:
                f.write(data)
        elif action == "truncate":
            if size is None or size < 0:
                raise ValueError("truncate needs a size >= 0")
            os.truncate(path, size)
        else:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".replace.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        if last_written_s is not None:
            os.utime(path, (last_written_s, last_written_s))
        st = path.stat()
        return LogFileEntry(log_file_name, path, st.st_mtime_ns // 1_000_000, st.st_size)


def _safe_path(base: Path, log_file_name: str) -> Path | None:
    """The file a LogFileName names inside ``base``, or None when the name could leave it
    (a ``..`` part, absolute, backslashes, NUL) or names a hidden file."""
    parts = log_file_name.split("/")
    bad = (
        not log_file_name
        or "\\" in log_file_name
        or "\x00" in log_file_name
        or any(p in ("", ".", "..") or p.startswith(".") for p in parts)
    )
    if bad:
        return None
    # Symbolic links inside the data directory are followed (the lab's PostgreSQL puts its log
    # directory behind one): whoever owns the directory chose them; a request cannot add one.
    return base.joinpath(*parts)


def _strip_arn(identifier: str, kind: str) -> str:
    # arn:aws:rds:us-east-1:123456789012:db:my-db
    parts = identifier.split(":")
    if len(parts) == 7 and parts[0] == "arn" and parts[5] == kind:
        return parts[6]
    return identifier


def _tags(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"tags of {where} must be an object of strings")
    return tuple((str(k), v) for k, v in value.items())


def _check_spec(name: str, spec: Any) -> InstanceSpec:
    if not isinstance(spec, dict):
        raise ValueError(f"instance {name!r} must be an object")
    engine = spec.get("engine")
    if engine is not None and (not isinstance(engine, str) or not engine):
        raise ValueError(f"engine of {name!r} must be a non-empty string")
    retention = spec.get("log_retention_period_min", DEFAULT_LOG_RETENTION_MIN)
    if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
        raise ValueError(f"log_retention_period_min of {name!r} must be an integer >= 1")
    group = spec.get("parameter_group")
    if group is not None and (not isinstance(group, str) or not group):
        raise ValueError(f"parameter_group of {name!r} must be a non-empty string")
    resource_id = spec.get("resource_id")
    if resource_id is not None and (not isinstance(resource_id, str) or not resource_id):
        raise ValueError(f"resource_id of {name!r} must be a non-empty string")
    tags = _tags(spec.get("tags", {}), repr(name))
    return InstanceSpec(engine, tags, retention, group, resource_id)


def _read_config(path: Path) -> LabConfig:
    try:
        data = json.loads(path.read_text())
        clusters: dict[str, Cluster] = {}
        for name, spec in data.get("clusters", {}).items():
            members = tuple(str(m) for m in spec.get("members", []))
            writer = spec.get("writer", members[0] if members else None)
            if writer is not None and writer not in members:
                raise ValueError(f"writer {writer!r} of {name!r} is not a member")
            engine = str(spec.get("engine", DEFAULT_CLUSTER_ENGINE))
            tags = _tags(spec.get("tags", {}), repr(name))
            clusters[str(name)] = Cluster(str(name), members, writer, engine, tags)
        instances = {
            str(name): _check_spec(str(name), spec)
            for name, spec in data.get("instances", {}).items()
        }
        return LabConfig(clusters, instances)
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return LabConfig()
