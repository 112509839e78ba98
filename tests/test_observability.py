"""Metrics, dashboard, alerts and compose, checked with the real tools: a real Prometheus scrapes
a real `rdsrecorder sync` process running against the lab; every PromQL expression of the
dashboard and the alert rules is evaluated through Prometheus's HTTP API."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pendulum
import pytest
import yaml

from rdsrecorder_lab import LabThread, generate

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.prometheus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout_s: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def dashboard_exprs() -> list[str]:
    dash = json.loads((ROOT / "grafana" / "dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def substitute(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", "1m").replace('"$db"', '".*"').replace('"$run_id"', '".*"')
    )


def test_dashboard_is_portable() -> None:
    dash = json.loads((ROOT / "grafana" / "dashboard.json").read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"db", "run_id"} <= set(variables)
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    text = json.dumps(dash)
    for forbidden in ("kubernetes", "namespace", "pod=", "loki"):
        assert forbidden not in text.lower()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not shutil.which("prometheus") or not shutil.which("promtool"):
        pytest.skip("Debian prometheus is not installed (make test installs it)")
    root = tmp_path_factory.mktemp("obs")
    files = generate(root, "obs-db", hours=3, size_mb=(0.5, 3.0), seed=3)
    with LabThread(root, s3="moto") as lab:
        lab.set_faults(throttle_every_n=4)  # so that the throttle/retry panels have data
        port = free_port()
        start = pendulum.from_timestamp(files[0].start_s, tz="UTC")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rdsrecorder",
                "sync",
                "--db-identifier",
                "obs-db",
                "--start",
                start.to_iso8601_string(),
                "--run-id",
                "obs-run",
                "--metrics-address",
                "127.0.0.1",
                "--metrics-port",
                str(port),
                "--poll-interval",
                "2",
                "--log-format",
                "json",
                "--max-api-rps",
                "50",
            ],
            env={**os.environ, **lab.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        prom_dir = tmp_path_factory.mktemp("prom")
        shutil.copy(ROOT / "prometheus" / "alerts.yml", prom_dir / "alerts.yml")
        (prom_dir / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": ["alerts.yml"],
                    "scrape_configs": [
                        {
                            "job_name": "rdsrecorder",
                            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                        }
                    ],
                }
            )
        )
        prom_port = free_port()
        prom = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={prom_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={prom_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield {
                "proc": proc,
                "port": port,
                "prom": f"http://127.0.0.1:{prom_port}",
                "files": files[:-1],
                "lab": lab,
            }
        finally:
            prom.terminate()
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(20)
            finally:
                prom.wait(20)


def query(prom: str, expr: str) -> dict[str, Any]:
    status, body = get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert status == 200, (expr, body)
    data: dict[str, Any] = json.loads(body)
    return data


def wait_for(prom: str, expr: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if query(prom, expr)["data"]["result"]:
                return
        except (OSError, AssertionError):
            pass
        time.sleep(0.5)
    pytest.fail(f"no data for {expr}")


@pytest.mark.timeout(180)
@pytest.mark.realtime
def test_metrics_dashboard_and_alerts_with_real_prometheus(daemon: dict[str, Any]) -> None:
    port, prom, files = daemon["port"], daemon["prom"], daemon["files"]
    n = len(files)
    wait_for(prom, f'rdsrecorder_uploaded_s3_logs_total{{run_id="obs-run"}} >= {n}')
    # two scrapes after the copy, so that rate() has data
    time.sleep(3)
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    health_status, health = get(f"http://127.0.0.1:{port}/healthz")
    assert health_status == 200 and json.loads(health)["status"] == "ok"

    def value(expr: str) -> float:
        return float(query(prom, expr)["data"]["result"][0]["value"][1])

    # metric values equal what happened
    assert value('sum(rdsrecorder_uploaded_s3_logs_total{run_id="obs-run"})') == n
    assert value('sum(rdsrecorder_downloaded_logs_total{run_id="obs-run"})') == n
    assert value('sum(rdsrecorder_uploaded_bytes_total{run_id="obs-run"})') == sum(
        f.size for f in files
    )
    assert value('sum(rdsrecorder_files_total{outcome="copied"})') == n
    assert value("max(rdsrecorder_newest_log_timestamp_seconds)") == files[-1].start_s
    assert value("sum(rdsrecorder_aws_throttles_total)") > 0
    assert value('rdsrecorder_mode{mode="download-interval-and-sync"}') == 1
    assert value('max(rdsrecorder_log_rotation_period_seconds{db_instance="obs-db"})') == 3600
    assert value("max(rdsrecorder_dbs_followed)") == 1

    for expr in dashboard_exprs():
        result = query(prom, substitute(expr))
        assert result["status"] == "success", expr
        assert result["data"]["result"], f"dashboard expr has no data: {expr}"
    for expr in alert_exprs():
        assert query(prom, expr)["status"] == "success", expr
    status, rules = get(f"{prom}/api/v1/rules")
    assert status == 200
    groups = json.loads(rules)["data"]["groups"]
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups

    # the daemon follows forever: SIGTERM ends it, and its logs are JSON, one object per line
    proc = daemon["proc"]
    proc.terminate()
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines
    for line in lines:
        record = json.loads(line)
        assert {"ts", "level", "logger", "message"} <= set(record)
    assert any("run id: obs-run" in json.loads(line)["message"] for line in lines)
    assert "labsecret" not in stderr


def test_promtool_accepts_shipped_config_and_rules() -> None:
    if not shutil.which("promtool"):
        pytest.skip("promtool is not installed (make test installs prometheus)")
    for args in (
        ["check", "config", "prometheus/prometheus.yml"],
        ["check", "rules", "prometheus/alerts.yml"],
    ):
        proc = subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    """prometheus/alerts_test.yml: RdsRecorderDown under Kubernetes annotation-based scraping (a
    job that is not "rdsrecorder") and with no rdsrecorder scraped at all, the lag alert against
    each DB's rotation period (daily logs do not fire all day), a run that follows no DB."""
    if not shutil.which("promtool"):
        pytest.skip("promtool is not installed (make test installs prometheus)")
    proc = subprocess.run(
        ["promtool", "test", "rules", "prometheus/alerts_test.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = set(re.findall(r"alertname: (\w+)", (ROOT / "prometheus/alerts_test.yml").read_text()))
    assert {"RdsRecorderDown", "RdsRecorderLagHigh", "RdsRecorderNothingFollowed"} <= tested


def test_compose_validates_and_is_wired() -> None:
    checker = shutil.which("check-jsonschema") or str(
        Path(sys.executable).parent / "check-jsonschema"
    )
    proc = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"rdsrecorder", "prometheus", "grafana", "lab", "rdsrecorder-lab"} <= set(services)
    assert services["lab"]["profiles"] == ["lab"]
    for svc in services.values():
        for volume in svc.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("./"):
                assert (ROOT / host).exists(), host
    prom = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    target = prom["scrape_configs"][0]["static_configs"][0]["targets"][0]
    host, port = target.split(":")
    assert (
        host == "rdsrecorder"
        and "rdsrecorder" in services["rdsrecorder-lab"]["networks"]["default"]["aliases"]
    )
    assert f"{port}:{port}" in services["rdsrecorder"]["ports"]
    lab_env = services["rdsrecorder-lab"]["environment"]
    assert lab_env["AWS_ENDPOINT_URL_RDS"] == "http://lab:8080"
    assert "8080" in services["lab"]["command"] and "0.0.0.0" in services["lab"]["command"]
    ds = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (ROOT / "grafana/provisioning/dashboards/rdsrecorder.yml").read_text()
    )
    mounted = [v.split(":")[1] for v in services["grafana"]["volumes"]]
    assert any(m.startswith(provider["providers"][0]["options"]["path"]) for m in mounted)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert re.search(r"^EXPOSE 9445", dockerfile, re.M)
