"""Many DBs from one process against the lab: discovery by tag (engines filtered out), explicit
lists, two shards side by side with one run id, resharding N -> N+1, per-DB manifests read by
verify and ls; and the Fleet re-reading the region while following."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pendulum
import pytest

from rdsrecorder.clock import FakeClock
from rdsrecorder.commands import run_sync, run_verify
from rdsrecorder.config import Shard, VerifySettings
from rdsrecorder.fleet import Fleet, owns, shard_of
from rdsrecorder.hooks import Hooks
from rdsrecorder.verify import list_runs
from rdsrecorder_lab import Lab, LabThread
from rdsrecorder_lab.generate import Rotation, generate, generate_fleet
from tests.e2e import objects, s3_client, sync_settings


def cli(env: dict[str, str], log: IO[str], *args: str) -> subprocess.Popen[str]:
    """Output to a file: two processes writing to pipes read one after the other can block."""
    return subprocess.Popen(
        [sys.executable, "-m", "rdsrecorder", *args],
        env={**os.environ, **env, "RDSRECORDER_METRICS_PORT": "0"},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def payments_fleet(root: Path) -> dict[str, list[Any]]:
    """8 tagged PostgreSQL instances, 3 untagged, a tagged MySQL instance, and a tagged Aurora
    cluster (its members untagged: they match through the cluster). Files end an hour ago, so
    every one has rotated."""
    end = pendulum.now("UTC").subtract(hours=1)
    tagged = generate_fleet(root, 8, prefix="pay", tags={"team": "payments"}, end=end)
    other = generate_fleet(root, 3, prefix="shop", tags={"team": "shop"}, end=end, seed=50)
    config = json.loads((root / "lab.json").read_text())
    config["instances"].update(
        {f"pay-{i:03d}": {"tags": {"fleet": "pay", "team": "payments"}} for i in range(8)}
    )
    config["instances"].update({f"shop-{i:03d}": {"tags": {"team": "shop"}} for i in range(3)})
    generate(root, "legacy-mysql", files=2, end=end, size_mb=(0.002, 0.004), seed=9)
    config["instances"]["legacy-mysql"] = {"engine": "mysql", "tags": {"team": "payments"}}
    for member in ("ledger-1", "ledger-2"):
        tagged[member] = generate(
            root,
            member,
            files=3,
            end=end,
            rotation=Rotation.MINUTE,
            size_mb=(0.002, 0.01),
            seed=70 + int(member[-1]),
        )
    config["clusters"] = {
        "ledger": {"members": ["ledger-1", "ledger-2"], "tags": {"team": "payments"}}
    }
    (root / "lab.json").write_text(json.dumps(config))
    assert len(other) == 3
    return tagged


def test_two_shards_side_by_side_copy_every_tagged_file_once(tmp_path: Path) -> None:
    tagged = payments_fleet(tmp_path)
    with LabThread(tmp_path, s3="moto") as lab:
        env = dict(lab.env)
        common = ["--discover-tag", "team=payments", "--start", "earliest", "--finish", "now"]
        logs = [tmp_path / f"shard-{i}.log" for i in range(2)]
        with logs[0].open("w") as log0, logs[1].open("w") as log1:
            procs = [
                cli(env, log, "sync", *common, "--shard", f"{i}/2", "--run-id", "fleet-logs")
                for i, log in enumerate((log0, log1))
            ]
            for p in procs:
                p.wait(timeout=120)
        outs = [("", log.read_text()) for log in logs]
        for p, (_out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        got = objects(s3_client(env), lab.bucket, "fleet-logs/")
        stats = lab.stats()
        verify = subprocess.run(
            [sys.executable, "-m", "rdsrecorder", "verify", "--run-id", "fleet-logs"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        listing = subprocess.run(
            [sys.executable, "-m", "rdsrecorder", "ls"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    expected: dict[str, str] = {}
    for instance, files in tagged.items():
        for f in files:
            expected[f"fleet-logs/{instance}/rds_log_fleet-logs_{int(f.start_s)}"] = f.sha256
    logs = {k: v for k, v in got.items() if not k.endswith("/manifest.json")}
    assert {k: hashlib.sha256(v).hexdigest() for k, v in logs.items()} == expected
    # One manifest per DB (the cluster's members share the cluster's), none at the run root.
    manifests = {k for k in got if k.endswith("/manifest.json")}
    assert manifests == {f"fleet-logs/pay-{i:03d}/manifest.json" for i in range(8)} | {
        "fleet-logs/ledger/manifest.json"
    }
    for key in manifests:
        assert json.loads(got[key])["db_identifier"] == key.split("/")[1]
    # Both shards worked: each says how many DBs it follows.
    for i, (_, err) in enumerate(outs):
        mine = [
            db for db in ("ledger", *(f"pay-{n:03d}" for n in range(8))) if owns(Shard(i, 2), db)
        ]
        assert f"following {len(mine)} DB(s)" in err
    # Other engines and untagged DBs: never listed, never read.
    calls = stats["calls_by_instance"]
    for instance in ("legacy-mysql", "shop-000", "shop-001", "shop-002"):
        assert not calls.get(instance), instance
    # Only Describe* for discovery (no ListTagsForResource).
    assert not any("ListTagsForResource" in c for c in calls.values())
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "OK" in verify.stdout
    assert listing.returncode == 0, listing.stderr
    assert "ledger" in listing.stdout and "pay-007" in listing.stdout


async def test_resharding_resumes_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    end = pendulum.now("UTC").subtract(hours=1)
    generate_fleet(tmp_path, 12, prefix="rs", tags={"team": "payments"}, end=end)
    start = end.subtract(hours=2)
    with LabThread(tmp_path, s3="moto") as lab:
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)

        def settings(shard: Shard) -> Any:
            return sync_settings(
                db="",
                bucket=lab.bucket,
                start=start,
                finish=end.add(minutes=5),
                run_id="rs",
                discover_tags=(("team", "payments"),),
                shard=shard,
                snapshot=False,
            )

        two = await asyncio.gather(*(run_sync(settings(Shard(i, 2))) for i in range(2)))
        assert [r.exit_code for r in two] == [0, 0]
        first = objects(s3_client(lab.env), lab.bucket, "rs/")
        assert sum(r.totals.copied for r in two) == 36
        three = await asyncio.gather(*(run_sync(settings(Shard(i, 3))) for i in range(3)))
        assert [r.exit_code for r in three] == [0, 0, 0]
        assert sum(r.totals.copied for r in three) == 0  # every DB moved or not: all skipped
        assert sum(r.totals.skipped for r in three) == 36
        again = objects(s3_client(lab.env), lab.bucket, "rs/")
        report = await run_verify(
            VerifySettings(bucket=lab.bucket, run_id="rs", aws=settings(Shard()).aws)
        )
    assert {k: v for k, v in again.items() if "manifest" not in k} == {
        k: v for k, v in first.items() if "manifest" not in k
    }
    assert report.ok, (report.holes, report.counts())
    assert len(report.manifests) == 12


async def test_explicit_list_cluster_and_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    end = pendulum.now("UTC").subtract(hours=1)
    generate_fleet(tmp_path, 3, prefix="ex", end=end)
    for member in ("aur-1", "aur-2"):
        generate(tmp_path, member, hours=2, end=end, size_mb=(0.002, 0.004), seed=3)
    config = json.loads((tmp_path / "lab.json").read_text())
    config["clusters"] = {"aur": {"members": ["aur-1", "aur-2"]}}
    (tmp_path / "lab.json").write_text(json.dumps(config))
    with LabThread(tmp_path, s3="moto") as lab:
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)
        report = await run_sync(
            sync_settings(
                db="ex-000",
                db_identifiers=("ex-000", "ex-002", "aur"),
                bucket=lab.bucket,
                start=end.subtract(hours=3),
                finish=end.add(minutes=5),
                run_id="ex",
            )
        )
        assert report.exit_code == 0
        got = objects(s3_client(lab.env), lab.bucket, "ex/")
        from rdsrecorder.commands import open_bucket

        async with open_bucket(
            lab.bucket,
            sync_settings(db="x", bucket=lab.bucket, start=end, finish=None, run_id="x").aws,
            Hooks(),
        ) as bucket:
            runs = await list_runs(bucket)
    folders = {k.split("/")[1] for k in got}
    assert folders == {"ex-000", "ex-002", "aur-1", "aur-2", "aur"}
    assert {k for k in got if k.endswith("manifest.json")} == {
        "ex/ex-000/manifest.json",
        "ex/ex-002/manifest.json",
        "ex/aur/manifest.json",
    }
    assert not any(k.startswith("ex/ex-001") for k in got)
    assert sorted((r.run_id, r.db_identifier, r.status) for r in runs if r.run_id == "ex") == [
        ("ex", "aur", "complete"),
        ("ex", "ex-000", "complete"),
        ("ex", "ex-002", "complete"),
    ]


class Changes(Hooks):
    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []
        self.followed: list[int] = []

    def db_change(self, db: str, change: str) -> None:
        self.changes.append((db, change))

    def dbs_followed(self, count: int) -> None:
        self.followed.append(count)


async def test_discovery_picks_up_new_dbs_and_drops_gone_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rdsrecorder.aws import Aws
    from rdsrecorder.rds.control import RdsControl

    caplog.set_level("INFO")
    generate_fleet(tmp_path, 2, prefix="dy", tags={"team": "payments"})
    async with Lab(tmp_path, s3="none") as lab:
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)
        clock = FakeClock(pendulum.now("UTC").timestamp())
        hooks = Changes()
        settings = sync_settings(db="", bucket="b-1", start=pendulum.now(), finish=None, run_id="r")
        async with Aws(settings.aws, hooks, clock=clock) as aws:
            fleet = Fleet(
                RdsControl(aws),
                targets=(),
                tags=(("team", "payments"),),
                shard=Shard(),
                refresh_s=300,
                clock=clock,
                hooks=hooks,
            )
            assert set(await fleet.start()) == {"dy-000", "dy-001"}
            lab.add_instance("dy-new", tags={"team": "payments"})
            lab.add_instance("dy-mysql", engine="mysql", tags={"team": "payments"})
            lab.remove_instance("dy-000")
            assert await fleet.instances() == ("dy-000", "dy-001")  # not due yet
            clock.advance(301)
            assert await fleet.instances() == ("dy-001", "dy-new")
            retention = fleet.retention_s("dy-001")
    assert hooks.changes == [("dy-new", "added"), ("dy-000", "removed")]
    assert hooks.followed[-1] == 2
    assert "DB dy-new appeared" in caplog.text and "DB dy-000 is gone" in caplog.text
    assert retention == 4320 * 60  # the lab's rds.log_retention_period


async def test_discovery_that_matches_nothing_warns_and_follows_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rdsrecorder.aws import Aws
    from rdsrecorder.rds.control import RdsControl

    generate_fleet(tmp_path, 1, prefix="nm", tags={"team": "payments"})
    async with Lab(tmp_path, s3="none") as lab:
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)
        clock = FakeClock(pendulum.now("UTC").timestamp())
        hooks = Changes()
        settings = sync_settings(db="", bucket="b-1", start=pendulum.now(), finish=None, run_id="r")
        async with Aws(settings.aws, hooks, clock=clock) as aws:
            fleet = Fleet(
                RdsControl(aws),
                targets=(),
                tags=(("team", "Payments"),),  # the case differs: no match
                shard=Shard(),
                refresh_s=300,
                clock=clock,
                hooks=hooks,
            )
            with caplog.at_level("WARNING"):
                assert await fleet.start() == {}
                clock.advance(301)
                assert await fleet.instances() == ()  # still nothing: said once
                lab.add_instance("nm-new", tags={"team": "Payments"})
                clock.advance(301)
                assert await fleet.instances() == ("nm-new",)
    warnings = [r.getMessage() for r in caplog.records if "matches no" in r.getMessage()]
    assert warnings == [
        "--discover-tag team=Payments matches no PostgreSQL instance in this region: following "
        "none (every KEY=VALUE must match, case included; check the tags and --region)"
    ]
    assert hooks.followed == [0, 0, 1]


def test_rendezvous_shards_cover_once_and_move_little() -> None:
    dbs = [f"db-{i:04d}" for i in range(2000)]
    for n in (1, 2, 3, 5):
        owners = [[db for db in dbs if owns(Shard(i, n), db)] for i in range(n)]
        assert sorted(db for part in owners for db in part) == sorted(dbs)  # once each
        assert min(len(p) for p in owners) > len(dbs) / n * 0.8  # roughly even
        moved = [db for db in dbs if shard_of(db, n) != shard_of(db, n + 1)]
        assert all(shard_of(db, n + 1) == n for db in moved)  # only to the new shard
        assert abs(len(moved) / len(dbs) - 1 / (n + 1)) < 0.05


FLEET_BAD_INPUT = [
    (["-d", "db", "--shard", "2/2"], "invalid --shard '2/2': needs N >= 1 and 0 <= I < N"),
    (["-d", "db", "--shard", "1/0"], "invalid --shard '1/0'"),
    (["-d", "db", "--shard", "one"], "invalid --shard 'one': expected I/N"),
    (["--discover-tag", "team"], "invalid --discover-tag 'team': expected KEY=VALUE"),
    (["-d", "ok-db,bad_id"], "invalid --db-identifier 'bad_id'"),
    (["--discover-tag", "a=b", "--discover-interval", "1"], "--discover-interval must be"),
    (["-d", "db", "--retention-hours", "200"], "--retention-hours must be more than 0"),
    ([], "missing --db-identifier (or env RDSRECORDER_DB_IDENTIFIER) or --discover-tag"),
]


@pytest.mark.parametrize(("args", "message"), FLEET_BAD_INPUT)
def test_bad_fleet_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rdsrecorder",
            "sync",
            "--bucket",
            "b-1",
            "--start",
            "now-1h",
            *args,
        ],
        env={**os.environ, "RDSRECORDER_METRICS_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert message in errors[0]


def test_ids_from_repeats_commas_and_the_env_var() -> None:
    from rdsrecorder.config import db_identifiers, discover_tags, shard

    assert db_identifiers(["a", "b,c", " c , d "]) == ("a", "b", "c", "d")
    assert db_identifiers(["a,b,c"]) == ("a", "b", "c")  # RDSRECORDER_DB_IDENTIFIER=a,b,c
    assert discover_tags(["team=payments,env=prod", "team=payments"]) == (
        ("team", "payments"),
        ("env", "prod"),
    )
    assert shard("1/3") == Shard(1, 3) and shard(None) == Shard(0, 1)


async def test_the_retention_is_read_in_the_background_and_the_read_ends_with_the_fleet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rdsrecorder.aws import Aws
    from rdsrecorder.rds.control import RdsControl
    from tests.waits import until

    generate_fleet(tmp_path, 1, prefix="rt")
    async with Lab(tmp_path, s3="none") as lab:
        lab.add_instance("rt-week", log_retention_period_min=7 * 1440)
        for k, v in lab.env.items():
            monkeypatch.setenv(k, v)
        clock = FakeClock(pendulum.now("UTC").timestamp())
        settings = sync_settings(db="", bucket="b-1", start=pendulum.now(), finish=None, run_id="r")

        def fleet_of(aws: Aws) -> Fleet:
            return Fleet(
                RdsControl(aws),
                targets=("rt-week",),
                tags=(),
                shard=Shard(),
                refresh_s=300,
                clock=clock,
                hooks=Hooks(),
            )

        async with Aws(settings.aws, Hooks(), clock=clock) as aws:
            async with fleet_of(aws) as fleet:
                await fleet.start()
                assert await fleet.instances() == ("rt-week",)  # did not wait for the read
                assert fleet.retention_s("rt-week") == 72 * 3600  # the default meanwhile
                await until(lambda: fleet.retention_s("rt-week") == 7 * 86400, "the retention")
            async with fleet_of(aws) as slow:
                await slow.start()
                # A read that would outlast the test: leaving the fleet must not wait for it.
                lab.set_faults(latency_ms=600_000)
                await slow.instances()
            # Left: the read was ended, quietly, and the clients close after it.
            lab.set_faults()
    assert "reading the log retention failed" not in caplog.text
