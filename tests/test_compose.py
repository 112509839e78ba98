"""docker-compose.yml as shipped, without Docker: each profile's rdsrecorder service (its command,
its environment interpolated the way compose does, the image's ENV from the Dockerfile) runs as a
process against the lab and copies the lab's files. What differs from a container is only where
things are: the lab's endpoints instead of ``lab:8080``/AWS, and /metrics on a free loopback port
instead of the container's 9445."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from rdsrecorder_lab import LabThread, generate
from tests.e2e import objects, s3_client

pytestmark = pytest.mark.realtime  # real processes

ROOT = Path(__file__).resolve().parents[1]
_VAR = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*))?\}|\$(\w+)")


def interpolate(value: str, shell: Mapping[str, str]) -> str:
    """Compose's interpolation: ``${X}``, ``$X``, ``${X:-default}`` (unset or empty) and
    ``${X-default}`` (unset only); an unset variable without a default becomes ""."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3) or ""
        if op == ":-":
            return shell.get(name) or default
        if op == "-":
            return shell.get(name, default)
        return shell.get(name, "")

    return _VAR.sub(one, value)


def image_env() -> dict[str, str]:
    """The ENV of the Dockerfile's base stage (what every container of the image starts with)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                name, _, value = pair.partition("=")
                env[name] = value
    env.pop("PATH", None)
    return env


def process_env(env: dict[str, str]) -> dict[str, str]:
    """The image's HOME is the container's; here the test's own stays."""
    return {k: v for k, v in env.items() if k != "HOME"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def services() -> dict[str, dict[str, Any]]:
    """The services that run the rdsrecorder image, by profile."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    out = {}
    for svc in compose["services"].values():
        if svc.get("image") == "rdsrecorder:latest":
            (profile,) = svc["profiles"]
            out[profile] = svc
    return out


def test_every_profile_has_an_rdsrecorder_service() -> None:
    assert set(services()) == {"aws", "lab"}


def test_the_aws_profile_runs_as_the_image_user_unless_told() -> None:
    """A 0600 ~/.aws/credentials needs its owner's uid (docs/operations.md): the aws service's
    user comes from RDSRECORDER_CONTAINER_USER, by default the image's own user."""
    user = services()["aws"]["user"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    (image_user,) = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert interpolate(user, {}) == image_user
    assert interpolate(user, {"RDSRECORDER_CONTAINER_USER": "1000:1000"}) == "1000:1000"
    assert image_env()["HOME"] == "/home/rdsrecorder"  # kept whatever the user
    (mount,) = services()["aws"]["volumes"]
    assert interpolate(mount, {"HOME": "/home/me"}).split(":")[1] == "/home/rdsrecorder/.aws"


def test_interpolation_follows_compose() -> None:
    shell = {"A": "a", "E": ""}
    assert interpolate("${A:-x} ${E:-x} ${E-x} ${U-x} ${U} $A", shell) == "a x  x  a"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabThread, int]]:
    root = tmp_path_factory.mktemp("compose")
    files = []
    # the lab profile's DB, and the one the aws profile's .env names
    for db in ("lab-db", "prod-db"):
        files = generate(root, db, hours=2, size_mb=(0.05, 0.2), seed=5, plain_twins=False)
    with LabThread(root, s3="moto") as lab:
        yield lab, len(files) - 1  # the newest file is still being written: copied at rotation


@pytest.mark.timeout(180)
@pytest.mark.parametrize("profile", ["aws", "lab"])
def test_compose_service_runs_as_shipped_against_the_lab(
    lab: tuple[LabThread, int], profile: str
) -> None:
    the_lab, rotated = lab
    svc = services()[profile]
    env_lab = the_lab.env
    # What a user puts in .env for the aws profile (docs/operations.md); nothing for the lab one.
    shell = (
        {
            "AWS_REGION": "us-east-1",
            "AWS_S3_BUCKET_NAME": the_lab.bucket,
            "RDSRECORDER_DB_IDENTIFIER": "prod-db",
            "AWS_ACCESS_KEY_ID": env_lab["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": env_lab["AWS_SECRET_ACCESS_KEY"],
        }
        if profile == "aws"
        else {}
    )
    env = {**image_env()}
    for name, value in svc["environment"].items():
        env[name] = interpolate(str(value), shell)
    if profile == "aws":
        assert env["AWS_PROFILE"] == ""  # as compose passes it when unset: must mean unset
        assert env["RDSRECORDER_FINISH"] == ""
    # Where the lab and AWS are, seen from this host instead of the compose network.
    hosts = {
        "http://lab:8080": env_lab["AWS_ENDPOINT_URL_RDS"],
        "http://lab:9000": env_lab["AWS_ENDPOINT_URL_S3"],
    }
    env = {k: hosts.get(v, v) for k, v in env.items()}
    for name in ("AWS_ENDPOINT_URL_RDS", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_S3"):
        env.setdefault(name, env_lab[name])
    port = free_port()
    env["RDSRECORDER_METRICS_ADDRESS"] = "127.0.0.1"
    env["RDSRECORDER_METRICS_PORT"] = str(port)
    run_id = env["RDSRECORDER_RUN_ID"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RDSRECORDER_"))}
    base["AWS_CONFIG_FILE"] = os.environ["AWS_CONFIG_FILE"]  # the test's empty ~/.aws
    base["AWS_SHARED_CREDENTIALS_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rdsrecorder", *svc["command"]],
        env={**base, **process_env(env)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = s3_client(env_lab)
    try:
        deadline = time.monotonic() + 120
        landed: dict[str, bytes] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            landed = objects(client, the_lab.bucket, f"{run_id}/rds_log_")
            if len(landed) >= rotated:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert len(landed) == rotated, err
    assert proc.returncode == 130, err
    # The image logs JSON lines (RDSRECORDER_LOG_FORMAT=json): nothing else on stderr or stdout.
    for line in (out + err).splitlines():
        if line.strip():
            json.loads(line)
