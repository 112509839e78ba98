"""SIGTERM while AWS does not answer: a real `rdsrecorder sync` process whose RDS, STS and S3
endpoints accept connections and never reply must still exit within --shutdown-grace, with the
exit code of a stop. Two moments: stuck in the preflight (every endpoint a black hole from the
start), and following, after the backfill landed, once the endpoints went silent (a relay to the
lab that stops relaying): the last manifest write then has no answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pendulum
import pytest

from rdsrecorder.errors import EXIT_INTERRUPTED
from rdsrecorder_lab import LabThread
from tests.e2e import s3_client, write_hourly

pytestmark = pytest.mark.realtime  # real processes, real signals, real seconds

GRACE_S = 2.0
# What a process needs around the grace to start its exit and end (interpreter teardown, a
# 2-core machine loaded by the other test workers): about the process, not a performance
# target. Well under the 60 s read timeout that a process waiting on the silence would take.
PROCESS_MARGIN_S = 20.0


class Relay:
    """A TCP relay on 127.0.0.1 to ``target`` (host, port), or with ``target`` None a black hole.
    ``silence()`` turns it into a black hole: connections are still accepted, nothing more is
    relayed either way, nothing is closed. ``held`` counts connections that reached it silent."""

    def __init__(self, target: tuple[str, int] | None) -> None:
        self._target = target
        self._silent = threading.Event()
        if target is None:
            self._silent.set()
        self.held = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="relay")
        self.port = 0

    def __enter__(self) -> Relay:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def silence(self) -> None:
        self._silent.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        for writer in self._writers:
            writer.close()
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self._silent.is_set() or self._target is None:
            self.held += 1
            await asyncio.Event().wait()  # accepted, never answered
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers.append(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await src.read(65536):
                if self._silent.is_set():
                    self.held += 1
                    await asyncio.Event().wait()
                dst.write(chunk)
                await dst.drain()
        dst.close()


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    return host, int(port)


def sync(env: dict[str, str], start: pendulum.DateTime, run_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "rdsrecorder", "sync", "--db-identifier", "bh-db"),
            *("--start", start.to_iso8601_string(), "--run-id", run_id),
            *("--shutdown-grace", str(GRACE_S), "--poll-interval", "1"),
            *("--metrics-port", "0", "--no-progress"),
        ],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_and_time(proc: subprocess.Popen[str]) -> tuple[float, str]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=GRACE_S + PROCESS_MARGIN_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"still running {GRACE_S + PROCESS_MARGIN_S} s after SIGTERM:\n{stderr}")
    return time.monotonic() - t0, stderr


def wait_for(what: str, check: object, proc: subprocess.Popen[str], limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if callable(check) and check():
            return
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{what}: not within {limit_s} s\n{proc.communicate()[1]}")


@pytest.fixture
def env() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "AKIDBLACKHOLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_S3_BUCKET_NAME": "bh-bucket",
    }


@pytest.mark.timeout(60)
def test_sigterm_in_the_preflight_with_aws_silent(env: dict[str, str]) -> None:
    with Relay(None) as hole:
        endpoints = {f"AWS_ENDPOINT_URL_{s}": hole.url for s in ("RDS", "STS", "S3")}
        proc = sync({**env, **endpoints}, pendulum.now("UTC").subtract(hours=1), "bh-pre")
        wait_for("the preflight's calls reach the black hole", lambda: hole.held >= 2, proc)
        _elapsed_s, stderr = stop_and_time(proc)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "SIGTERM" in stderr
    assert "no answer before the shutdown deadline" in stderr
    assert "Traceback" not in stderr


@pytest.fixture
def lab_root(tmp_path: Path) -> tuple[Path, pendulum.DateTime]:
    now = pendulum.now("UTC")
    first = now.start_of("hour").subtract(hours=3)
    write_hourly(tmp_path, "bh-db", first, [20_000, 20_000, 20_000, 1000], now)
    return tmp_path, first


@pytest.mark.timeout(120)
def test_sigterm_while_following_once_aws_went_silent(
    lab_root: tuple[Path, pendulum.DateTime],
) -> None:
    root, first = lab_root
    with LabThread(root, s3="moto") as lab:
        lab_env = lab.env
        with (
            Relay(host_port(lab_env["AWS_ENDPOINT_URL_RDS"])) as rds,
            Relay(host_port(lab_env["AWS_ENDPOINT_URL_S3"])) as s3,
        ):
            relayed = {
                **lab_env,
                "AWS_ENDPOINT_URL_RDS": rds.url,
                "AWS_ENDPOINT_URL_STS": rds.url,
                "AWS_ENDPOINT_URL_S3": s3.url,
            }
            proc = sync(relayed, first, "bh-follow")
            client = s3_client(lab_env)  # straight to the lab's S3, not through the relay

            def landed() -> bool:
                listed = client.list_objects_v2(Bucket=lab.bucket, Prefix="bh-follow/rds_log_")
                return int(listed.get("KeyCount", 0)) >= 3

            wait_for("the backfill lands", landed, proc)
            rds.silence()
            s3.silence()
            _elapsed_s, stderr = stop_and_time(proc)
            held = s3.held
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert held >= 1  # the last manifest write went into the silence
    assert "the manifests keep their last state" in stderr
    assert "SIGTERM" in stderr
    assert "Traceback" not in stderr
