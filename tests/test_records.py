"""Issue 23, the record side: a manifest several writers share (conditional writes, merged on a
conflict, nothing lost), records checked on read (format, types, run, DB), an empty run id
refused. In memory, and against moto and SeaweedFS (both honour If-Match and If-None-Match)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

import pytest

from rdsrecorder.aws import Aws
from rdsrecorder.clock import FakeClock
from rdsrecorder.config import AwsSettings
from rdsrecorder.errors import EXIT_PREFLIGHT, AwsError, OwnerError, RecordError
from rdsrecorder.hooks import Hooks
from rdsrecorder.manifest import Manifest, ManifestStore, manifest_key, merge
from rdsrecorder.verify import list_runs, run_manifests
from tests.fakes import MemoryStorage, manifest
from tests.s3_servers import MIB, BucketSink, S3Server
from tests.test_cli import BASE, run
from tests.test_manifest import T0, entry


# -- an empty run id ---------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["option", "env"])
def test_an_empty_run_id_is_refused_with_exit_2(where: str) -> None:
    args = [*BASE, "--start", "now-1h"]
    env = {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}  # nothing could be written anyway
    if where == "option":
        args += ["--run-id", ""]
    else:
        env["RDSRECORDER_RUN_ID"] = ""
    proc = run(*args, env=env)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: empty --run-id (or env RDSRECORDER_RUN_ID): give the run's id, or leave it "
        "unset for a new run"
    ]
    assert "Traceback" not in proc.stderr


# -- records checked on read -------------------------------------------------------------------
def _record(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(manifest().to_json())
    e = entry(20)
    data["files"] = {e.key: json.loads(json.dumps(e.__dict__))}
    for path, value in changes.items():
        target = data
        *parents, last = path.split(".")
        for name in parents:
            target = target["files"][e.key] if name == "file" else target[name]
        target[last] = value
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"file.size": "1020"}, "files['run1/rds_log_run1_1699992000'].size is \"1020\", not an "),
        ({"file.size": True}, ".size is true, not an integer"),
        ({"file.size": -1}, ".size is -1, below 0"),
        ({"file.status": "done"}, ".status is \"done\", not one of 'copied'"),
        ({"file.complete": "yes"}, '.complete is "yes", not true or false'),
        ({"file.sha256": "xyz"}, '.sha256 is "xyz", not a SHA-256 digest'),
        ({"file.span_start": "noon"}, '.span_start is "noon", not a date-time'),
        ({"file.key": "elsewhere"}, '.key is "elsewhere", not its own key'),
        ({"file.compression": "zstd"}, '.compression is "zstd"'),
        ({"files": []}, "files is a list, not an object"),
        ({"files": {"k": 3}}, "files['k'] is 3, not a JSON object"),
        ({"run_id": 7}, "run_id is 7, not a string"),
        ({"window_finish": 3}, "window_finish is 3, not a string or null"),
        ({"gaps": [{"instance": "db-1"}]}, "gaps[0].start is missing"),
        ({"gaps": [{"instance": "db-1", "start": 1}]}, "gaps[0]['start'] is 1, not a string"),
        ({"gaps": {}}, "gaps is an object, not a list"),
        ({"instances": "db-1"}, 'instances is "db-1", not a list'),
        ({"instances": ["db-1", None]}, "instances[1] is null, not a string"),
        ({"summary": {"copied": "2"}}, "summary['copied'] is \"2\", not an integer"),
        ({"schema": "1"}, 'schema is "1", not a format version'),
    ],
)
def test_mistyped_fields_are_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Manifest.from_json(json.dumps(_record(**changes)))
    assert message in str(caught.value)


def test_missing_fields_and_truncated_text_are_named() -> None:
    data = _record()
    del data["db_identifier"]
    with pytest.raises(ValueError, match=r"^db_identifier is missing$"):
        Manifest.from_json(json.dumps(data))
    with pytest.raises(ValueError, match=r"^not JSON \("):
        Manifest.from_json(json.dumps(_record())[:200])


async def test_a_record_of_another_run_or_a_bad_one_is_refused_at_load() -> None:
    storage = MemoryStorage()
    store = ManifestStore(storage, "run2", FakeClock(T0))
    storage.objects[manifest_key("run2")] = manifest("run1").to_json().encode()
    with pytest.raises(RecordError, match=r"^run2/manifest.json is the manifest of run 'run1'"):
        await store.load()
    bad = _record(run_id="run2", **{"file.size": "9"})
    storage.objects[manifest_key("run2")] = json.dumps(bad).encode()
    with pytest.raises(RecordError) as caught:
        await store.load()
    assert str(caught.value).startswith("run2/manifest.json is not a valid manifest: files[")
    assert caught.value.exit_code == EXIT_PREFLIGHT


class ListedStorage(MemoryStorage):
    async def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> list[str]:
        return sorted(
            {prefix + k[len(prefix) :].split(delimiter)[0] + delimiter for k in self.objects}
            - {prefix + "manifest.json/"}
        )


async def test_readers_check_the_run_and_the_db_of_each_record() -> None:
    storage = ListedStorage()
    other = manifest("run1")
    other.db_identifier = "db-9"
    storage.objects["run1/db-1/manifest.json"] = other.to_json().encode()
    with pytest.raises(RecordError, match=r"db-1/manifest.json is the manifest of 'db-9'"):
        await run_manifests(storage, "run1")  # type: ignore[arg-type]
    assert await run_manifests(storage, "run1", strict=False) == []  # type: ignore[arg-type]


# -- merging -----------------------------------------------------------------------------------
def test_merge_keeps_every_entry_and_the_better_founded_one_per_key() -> None:
    mine, theirs = manifest(), manifest()
    mine.files = {e.key: e for e in (entry(20, "failed"), entry(21), entry(22, "partial"))}
    mine.files[entry(22).key].complete = False
    theirs.files = {e.key: e for e in (entry(20), entry(21, "skipped"), entry(22), entry(23))}
    theirs.gaps = [{"instance": "db-1", "start": "2023-11-14T19:00:00Z", "end": "x", "r": "y"}]
    theirs.instances = ["db-1", "db-2"]
    theirs.window_start = "2023-11-14T19:00:00Z"
    taken = merge(mine, theirs)
    statuses = {k[-4:]: str(e.status) for k, e in sorted(mine.files.items())}
    # 20: their copy over my failure; 21: my copy over their skip; 22: complete over partial.
    assert list(statuses.values()) == ["copied", "copied", "copied", "copied"]
    assert mine.files[entry(21).key] is not theirs.files[entry(21).key]
    assert taken == 3
    assert mine.gaps == theirs.gaps and mine.instances == ["db-1", "db-2"]
    assert mine.window_start == "2023-11-14T19:00:00Z"


def test_a_failed_attempt_does_not_unrecord_a_complete_copy() -> None:
    store = ManifestStore(MemoryStorage(), "run1", FakeClock(T0))
    store.start(manifest())
    store.record(entry(20))
    store.record(entry(20, "failed", error="s3 500"))
    assert str(store.manifest.files[entry(20).key].status) == "copied"  # type: ignore[union-attr]
    store.record(entry(21, "partial", complete=False))
    store.record(entry(21, "failed"))
    assert str(store.manifest.files[entry(21).key].status) == "failed"  # type: ignore[union-attr]


async def test_two_writers_in_memory_lose_nothing() -> None:
    storage = MemoryStorage()
    a = ManifestStore(storage, "run1", FakeClock(T0), min_interval_s=0.0)
    b = ManifestStore(storage, "run1", FakeClock(T0), min_interval_s=0.0)
    a.start(manifest())
    assert await b.load() is None
    b.start(manifest())
    a.record(entry(20))
    await a.flush()  # created: If-None-Match
    b.record(entry(21))
    await b.flush()  # b found none at load: refused, reads a's, merges, writes over it
    a.record(entry(22))
    await a.flush()  # a's ETag is stale: refused, merged again
    saved = storage.saved()
    assert sorted(k[-10:] for k in saved.files) == sorted(entry(h).key[-10:] for h in (20, 21, 22))
    assert (a.conflicts, b.conflicts, storage.refused) == (1, 1, 2)
    assert a.writes == 2 and b.writes == 1


async def test_a_writer_of_another_db_found_on_merge_stops_the_store() -> None:
    storage = MemoryStorage()
    store = ManifestStore(storage, "run1", FakeClock(T0), min_interval_s=0.0)
    store.start(manifest())
    other = manifest()
    other.db_identifier = "db-2"
    storage.objects[manifest_key("run1")] = other.to_json().encode()
    store.record(entry(20))
    await store.flush()
    assert Manifest.from_json(storage.objects[manifest_key("run1")]).db_identifier == "db-2"
    with pytest.raises(OwnerError, match="db-2"):
        await store.check_owner()
    store.record(entry(21))
    await store.flush(force=True)
    await store.close(finished=True)
    assert storage.puts == 0  # another DB's record is never overwritten


class RacedStorage(MemoryStorage):
    """A store whose conditional writes are not atomic (moto's): the first write of the
    manifest is overwritten at once by another writer's that passed the same check."""

    def __init__(self, other: bytes) -> None:
        super().__init__()
        self.other: bytes | None = other

    async def put_bytes(self, key: str, data: bytes, content_type: str, **kw: Any) -> str:
        etag = await super().put_bytes(key, data, content_type, **kw)
        if self.other is not None:
            self.objects[key], self.other = self.other, None
        return etag


async def test_a_last_write_lost_to_a_racing_writer_is_written_again_at_close() -> None:
    theirs = manifest()
    theirs.files = {entry(21).key: entry(21)}
    storage = RacedStorage(theirs.to_json().encode())
    store = ManifestStore(storage, "run1", FakeClock(T0))
    store.start(manifest())
    store.record(entry(20))
    await store.close(finished=True)
    saved = storage.saved()
    assert set(saved.files) == {entry(20).key, entry(21).key}
    assert saved.finished_at is not None and storage.puts == 2


class UnconditionalStorage(MemoryStorage):
    """A store that refuses the conditional headers (501 NotImplemented)."""

    async def put_bytes(self, key: str, data: bytes, content_type: str, **kw: Any) -> str:
        if kw.get("if_match") is not None or kw.get("if_none_match"):
            raise AwsError("s3 PutObject failed: NotImplemented", code="NotImplemented")
        return await super().put_bytes(key, data, content_type)


async def test_a_store_without_conditional_writes_is_written_unconditionally_once_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = UnconditionalStorage()
    store = ManifestStore(storage, "run1", FakeClock(T0), min_interval_s=0.0)
    store.start(manifest())
    store.record(entry(20))
    with caplog.at_level(logging.WARNING):
        await store.flush()
        store.record(entry(21))
        await store.close(finished=True)
    assert set(storage.saved().files) == {entry(20).key, entry(21).key}
    assert caplog.text.count("refuses conditional writes") == 1
    assert store.failed_writes == 0


# -- the same on real servers ------------------------------------------------------------------
async def test_concurrent_writers_on_a_real_server_lose_no_entry(s3: S3Server) -> None:
    """Four stores (four processes' worth) record 40 entries each into one manifest, flushing
    at random moments; every entry of every writer is in the manifest at the end."""
    bucket = s3.new_bucket("records")
    writers, per_writer = 4, 40
    rng = random.Random(7)
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = BucketSink(aws, bucket, Hooks(), part_size_bytes=5 * MIB)
        stores = [ManifestStore(sink, "run1", FakeClock(T0), min_interval_s=0.0) for _ in "abcd"]
        for store in stores:
            store.start((await store.load()) or manifest())

        async def write(i: int, store: ManifestStore) -> None:
            for n in range(per_writer):
                e = entry(20)
                e.key = f"run1/w{i}-{n:03d}"
                store.record(e)
                if rng.random() < 0.5:
                    await store.flush()
            await store.close(finished=True)

        await asyncio.gather(*(write(i, st) for i, st in enumerate(stores)))
        saved = Manifest.from_json(await sink.get_bytes("run1/manifest.json") or b"")
    lost = {f"run1/w{i}-{n:03d}" for i in range(writers) for n in range(per_writer)}
    lost -= set(saved.files)
    conflicts = [st.conflicts for st in stores]
    assert not lost, (sorted(lost), conflicts, [st.failed_writes for st in stores])
    assert sum(conflicts) > 0  # they did collide


async def test_ls_skips_a_record_it_cannot_read_and_lists_the_rest(s3: S3Server) -> None:
    bucket = s3.new_bucket("records-ls")
    client = s3.client()
    client.put_object(Bucket=bucket, Key="good/manifest.json", Body=manifest("good").to_json())
    client.put_object(Bucket=bucket, Key="cut/manifest.json", Body=manifest("cut").to_json()[:90])
    foreign = manifest("elsewhere").to_json()
    client.put_object(Bucket=bucket, Key="copied/manifest.json", Body=foreign)
    mistyped = json.dumps(_record(run_id="typo", **{"file.size": "1020"}))
    client.put_object(Bucket=bucket, Key="typo/manifest.json", Body=mistyped)
    async with Aws(AwsSettings(region="us-east-1"), Hooks()) as aws:
        sink = BucketSink(aws, bucket, Hooks(), part_size_bytes=5 * MIB)
        runs = await list_runs(sink)  # type: ignore[arg-type]
    assert [r.run_id for r in runs] == ["good"]
