"""What the lab serves, read from disk on every call: instances and files added at runtime appear.

Layout of a lab root::

    <root>/
      lab.json                         optional: {"clusters": {"my-aurora": {
                                           "members": ["my-aurora-1", "my-aurora-2"],
                                           "writer": "my-aurora-1"}}}
      <instance>/error/postgresql.log.2024-03-04-19.csv
      <instance>/error/postgresql.log.2024-03-04-19
      ...

Every sub-directory of the root is a DB instance (engine ``postgres``); every member named in
``lab.json`` is one too (engine ``aurora-postgresql``, with its ``DBClusterIdentifier``), with or
without a directory. Identifiers match case-insensitively, as on RDS. A log file's name is its
path relative to the instance directory (``error/...``); hidden files are not listed. Symbolic
links are followed (the lab's PostgreSQL writes its logs through one).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from rdsrecorder.lab.awsxml import QueryError

log = logging.getLogger(__name__)

ACCOUNT_ID = "123456789012"
CLUSTERS_FILE = "lab.json"
_MAX_DEPTH = 4  # error/ is one level; a bound keeps a symlink loop from walking forever


@dataclass(frozen=True, slots=True)
class Instance:
    identifier: str
    engine: str  # "postgres" or "aurora-postgresql"
    cluster: str | None
    path: Path


@dataclass(frozen=True, slots=True)
class Cluster:
    identifier: str
    members: tuple[str, ...]
    writer: str | None


@dataclass(frozen=True, slots=True)
class LogFileEntry:
    name: str  # "error/postgresql.log.2024-03-04-19.csv"
    path: Path
    last_written_ms: int
    size: int


def db_not_found(identifier: str) -> QueryError:
    return QueryError(404, "DBInstanceNotFound", f"DBInstance {identifier} not found.")


class Catalog:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._clusters_key: tuple[int, int] | None = None
        self._clusters: dict[str, Cluster] = {}

    # -- clusters and instances --------------------------------------------------------------------
    def clusters(self) -> dict[str, Cluster]:
        path = self.root / CLUSTERS_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            self._clusters_key, self._clusters = None, {}
            return {}
        key = (st.st_mtime_ns, st.st_size)
        if key != self._clusters_key:
            self._clusters_key = key
            self._clusters = _read_clusters(path)
        return self._clusters

    def instances(self) -> dict[str, Instance]:
        out: dict[str, Instance] = {}
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.name.startswith((".", "_")) or not entry.is_dir():
                continue
            out[entry.name] = Instance(entry.name, "postgres", None, Path(entry.path))
        for cluster in self.clusters().values():
            for member in cluster.members:
                existing = self._find(out, member)
                name = existing.identifier if existing else member
                out[name] = Instance(
                    name, "aurora-postgresql", cluster.identifier, self.root / name
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
        parts = log_file_name.split("/")
        bad = (
            not log_file_name
            or "\\" in log_file_name
            or "\x00" in log_file_name
            or any(p in ("", ".", "..") or p.startswith(".") for p in parts)
        )
        path = instance.path.joinpath(*parts)
        if bad or not path.is_file():
            raise QueryError(
                404,
                "DBLogFileNotFoundFault",
                f"DBLog File: {log_file_name}, is not found on the DB instance",
            )
        return path


def _strip_arn(identifier: str, kind: str) -> str:
    # arn:aws:rds:us-east-1:123456789012:db:my-db
    parts = identifier.split(":")
    if len(parts) == 7 and parts[0] == "arn" and parts[5] == kind:
        return parts[6]
    return identifier


def _read_clusters(path: Path) -> dict[str, Cluster]:
    try:
        data = json.loads(path.read_text())
        raw = data.get("clusters", {})
        out: dict[str, Cluster] = {}
        for name, spec in raw.items():
            members = tuple(str(m) for m in spec.get("members", []))
            writer = spec.get("writer", members[0] if members else None)
            if writer is not None and writer not in members:
                raise ValueError(f"writer {writer!r} of {name!r} is not a member")
            out[str(name)] = Cluster(str(name), members, writer)
        return out
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
