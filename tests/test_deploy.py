"""Deployment files: the Kubernetes manifests of deploy/k8s validated offline against the
Kubernetes JSON schemas (kubernetes-validate, strict: an unknown or misspelt field fails), the
things a fleet depends on checked one by one, `kubectl kustomize` rendering them when kubectl is
there, and docker-compose.yml, the Dockerfile and scripts/system-deps.sh checked for the same
promises: a restart resumes the same run and never skips a file."""

from __future__ import annotations

import copy
import glob
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
# Kubernetes 1.30, an old release the manifests must still fit (the pod-index label needs 1.28+),
# and the newest schema set the installed kubernetes-validate ships.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
METRICS_PORT = 9445
SHUTDOWN_GRACE_DEFAULT_S = 5
# RDS API calls per second all pods together may make, under the account's ~12/s refill.
FLEET_API_RPS_BUDGET = 8.0
ECR_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rdsrecorder"


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_docs() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in load_docs(path)]


def one(kind: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    found = [d for d in (all_docs() if docs is None else docs) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["rdsrecorder"]
    return dict(containers[0])


def env_of(sts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(sts)["env"]}


def env_value(sts: dict[str, Any], name: str) -> str:
    entry = env_of(sts)[name]
    assert "value" in entry, f"{name} must be a literal value"
    return str(entry["value"])


def shard_count(sts: dict[str, Any]) -> int:
    match = re.fullmatch(r"\$\(POD_INDEX\)/(\d+)", env_value(sts, "RDSRECORDER_SHARD"))
    assert match, env_value(sts, "RDSRECORDER_SHARD")
    return int(match.group(1))


def port_number(ctr: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    return int(named[port])


def validate_strict(docs: list[dict[str, Any]], version: str) -> None:
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


# --- schemas -------------------------------------------------------------------------------------


def test_manifests_are_the_expected_set() -> None:
    kinds = sorted(d["kind"] for d in all_docs())
    assert kinds == [
        "Namespace",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_against_kubernetes_schema(path: Path, version: str) -> None:
    docs = load_docs(path)
    assert docs, f"{path.name} is empty"
    validate_strict(docs, version)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The check above would be worthless if the schemas let anything through."""
    sts = one("StatefulSet")
    bad = copy.deepcopy(sts)
    bad["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"memory": "1Gi"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)
    bad = copy.deepcopy(sts)
    bad["spec"]["replicas"] = "2"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


# --- what the fleet depends on -------------------------------------------------------------------


def test_shard_comes_from_the_pod_index_label_and_n_equals_replicas() -> None:
    sts = one("StatefulSet")
    env_list = [e["name"] for e in container(sts)["env"]]
    pod_index = env_of(sts)["POD_INDEX"]
    assert pod_index["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    # Dependent env vars only expand references to variables defined earlier in the list.
    assert env_list.index("POD_INDEX") < env_list.index("RDSRECORDER_SHARD")
    assert shard_count(sts) == sts["spec"]["replicas"] == 2


def test_run_is_stable_and_starts_at_the_earliest_file() -> None:
    sts = one("StatefulSet")
    run_id = env_value(sts, "RDSRECORDER_RUN_ID")
    # Nothing that differs between pods or restarts: no pod name, index or time in it.
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", run_id), run_id
    assert "$(" not in run_id
    assert env_value(sts, "RDSRECORDER_START") == "earliest"
    assert "RDSRECORDER_FINISH" not in env_of(sts)  # follows forever
    assert container(sts)["args"] == ["sync"]


def test_configuration_uses_the_cli_env_names() -> None:
    sts = one("StatefulSet")
    env = env_of(sts)
    for tag in env_value(sts, "RDSRECORDER_DISCOVER_TAG").split(","):
        assert re.fullmatch(r"[^=,\s]+=[^=,\s]*", tag), tag
    assert env_value(sts, "RDSRECORDER_BUCKET")
    assert env_value(sts, "RDSRECORDER_REGION")
    assert env_value(sts, "RDSRECORDER_LOG_FORMAT") == "json"
    assert env_value(sts, "RDSRECORDER_PROGRESS") == "false"
    assert env_value(sts, "RDSRECORDER_METRICS_PORT") == str(METRICS_PORT)
    # Discovery replaces a fixed DB; both at once would be ambiguous.
    assert "RDSRECORDER_DB_IDENTIFIER" not in env


def test_the_fleet_shares_the_account_rds_api_budget() -> None:
    """The fleet's budget is set once; each pod takes 1/N of it (no per-pod rate to keep in step
    with the replica count)."""
    sts = one("StatefulSet")
    env = env_of(sts)
    assert float(env_value(sts, "RDSRECORDER_FLEET_MAX_API_RPS")) <= FLEET_API_RPS_BUDGET
    assert "RDSRECORDER_MAX_API_RPS" not in env and "RDSRECORDER_MAX_API_BURST" not in env


def test_resources_are_requested_and_limited() -> None:
    res = container(one("StatefulSet"))["resources"]
    mib = {"Mi": 1, "Gi": 1024}

    def to_mib(quantity: str) -> int:
        match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
        assert match, quantity
        return int(match.group(1)) * mib[match.group(2)]

    request, limit = to_mib(res["requests"]["memory"]), to_mib(res["limits"]["memory"])
    # The fleet target is <= 150 MB (143 MiB) per pod; parts falling back to memory peak at
    # 240 MB (229 MiB): the request covers the first, the limit the second.
    assert 143 <= request <= limit
    assert limit >= 229
    assert res["requests"]["cpu"] == "100m"
    assert "cpu" in res["limits"]


def test_pdb_and_service_select_the_pods() -> None:
    sts, pdb, svc = one("StatefulSet"), one("PodDisruptionBudget"), one("Service")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    for selector in (
        pdb["spec"]["selector"]["matchLabels"],
        sts["spec"]["selector"]["matchLabels"],
    ):
        assert selector and selector.items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert svc["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    ctr = container(sts)
    assert [port_number(ctr, p["targetPort"]) for p in svc["spec"]["ports"]] == [METRICS_PORT]


def test_scrape_annotations_point_at_the_metrics_port() -> None:
    sts = one("StatefulSet")
    ann = sts["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/path"] == "/metrics"
    ctr = container(sts)
    assert int(ann["prometheus.io/port"]) == port_number(ctr, "metrics") == METRICS_PORT
    assert int(env_value(sts, "RDSRECORDER_METRICS_PORT")) == METRICS_PORT


def test_read_only_root_with_a_writable_tmp() -> None:
    sts = one("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    ctr = container(sts)
    sec = ctr["securityContext"]
    assert sec["readOnlyRootFilesystem"] is True
    assert sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = volumes[mounts["/tmp"]]
    assert "emptyDir" in tmp
    # On disk: a memory-backed emptyDir would count against the memory limit.
    assert tmp["emptyDir"].get("medium", "") != "Memory"
    # Room for concurrency x 2 x part size of spooled parts.
    concurrency = int(env_value(sts, "RDSRECORDER_CONCURRENCY"))
    assert int(tmp["emptyDir"]["sizeLimit"].removesuffix("Mi")) >= concurrency * 2 * 8


def test_pod_runs_as_the_image_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"useradd .*--uid (\d+)", dockerfile)
    user = re.search(r"^USER (\d+)(?::(\d+))?$", dockerfile, re.M)
    assert uid and user, "the image needs a numeric USER so that runAsNonRoot can check it"
    assert user.group(1) == uid.group(1)
    pod_sec = one("StatefulSet")["spec"]["template"]["spec"]["securityContext"]
    assert pod_sec["runAsUser"] == int(uid.group(1))
    assert int(user.group(1)) != 0
    assert re.search(r"chmod 1777 /tmp", dockerfile)


def test_probes_use_healthz_on_the_metrics_port() -> None:
    ctr = container(one("StatefulSet"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = ctr[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        assert port_number(ctr, get["port"]) == METRICS_PORT, probe
    live = ctr["livenessProbe"]
    # /healthz turns 503 while AWS listing fails: a restart must not come at the first blip.
    assert live["periodSeconds"] * live["failureThreshold"] >= 120


def test_termination_grace_outlasts_the_shutdown_grace() -> None:
    sts = one("StatefulSet")
    grace_s = int(env_value(sts, "RDSRECORDER_SHUTDOWN_GRACE"))
    assert grace_s > SHUTDOWN_GRACE_DEFAULT_S
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= grace_s + 5


def test_service_account_is_annotated_for_irsa() -> None:
    sa, sts = one("ServiceAccount"), one("StatefulSet")
    arn = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::(<ACCOUNT_ID>|\d{12}):role/[\w+=,.@-]+", arn), arn
    pod = sts["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True


def test_kustomization_lists_every_manifest_and_owns_n() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in manifest_files())
    assert kust["namespace"]
    sts = one("StatefulSet")
    image = container(sts)["image"]
    assert image == "rdsrecorder:latest"  # what `docker build -t rdsrecorder .` produces
    [entry] = kust["images"]
    assert entry["name"] == image.split(":")[0]
    [replicas] = kust["replicas"]
    assert replicas == {"name": sts["metadata"]["name"], "count": sts["spec"]["replicas"]}
    [replacement] = kust["replacements"]
    assert replacement["source"]["fieldPath"] == "spec.replicas"
    [target] = replacement["targets"]
    assert target["fieldPaths"] == [
        "spec.template.spec.containers.[name=rdsrecorder].env.[name=RDSRECORDER_SHARD].value"
    ]
    assert target["options"] == {"delimiter": "/", "index": 1}


# --- kustomize, for real, when kubectl is installed ---------------------------------------------


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomization is checked statically only")
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_kustomize_renders_valid_manifests_in_the_namespace() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = kustomize(K8S)
    validate_strict(docs, K8S_VERSIONS[-1])
    assert sorted(d["kind"] for d in docs) == sorted(d["kind"] for d in all_docs())
    for doc in docs:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == kust["namespace"]
        else:
            assert doc["metadata"]["namespace"] == kust["namespace"], doc["kind"]
    sts = one("StatefulSet", docs)
    assert shard_count(sts) == sts["spec"]["replicas"] == 2


def test_kustomize_changes_replicas_image_and_namespace_together(tmp_path: Path) -> None:
    overlay = tmp_path / "k8s"
    shutil.copytree(K8S, overlay)
    kust_path = overlay / "kustomization.yaml"
    kust = yaml.safe_load(kust_path.read_text())
    kust["replicas"][0]["count"] = 3
    kust["images"][0].update(newName=ECR_IMAGE, newTag="1.2.3")
    kust["namespace"] = "logs-prod"
    kust_path.write_text(yaml.safe_dump(kust))
    docs = kustomize(overlay)
    validate_strict(docs, K8S_VERSIONS[0])
    sts = one("StatefulSet", docs)
    assert sts["spec"]["replicas"] == 3
    assert shard_count(sts) == 3
    assert container(sts)["image"] == f"{ECR_IMAGE}:1.2.3"
    assert one("Namespace", docs)["metadata"]["name"] == "logs-prod"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "logs-prod"
    }


# --- docker compose ------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, str]:
    """The Dockerfile's stages by name (the last one, the default target, also as "")."""
    stages: dict[str, str] = {}
    for block in re.split(r"^(?=FROM )", (ROOT / "Dockerfile").read_text(), flags=re.M)[1:]:
        match = re.match(r"FROM \S+(?: AS (\S+))?", block)
        assert match and match.group(1), "every stage is named"
        stages[match.group(1)] = stages[""] = block
    return stages


def stage_chain(stages: dict[str, str], name: str) -> str:
    """A stage's text with every stage it is built on or copies its venv from."""
    text = stages[name]
    parents = re.findall(r"^FROM (\S+)", text, re.M) + re.findall(r"--from=(\S+)", text)
    return text + "".join(stage_chain(stages, p) for p in parents if p in stages)


def test_the_default_image_carries_no_lab_and_a_lab_target_does() -> None:
    stages = dockerfile_stages()
    default = stage_chain(stages, "")
    assert "pip install" in default
    assert not re.search(r"\[lab\]|moto|seaweed|weed", default, re.I)
    lab = stage_chain(stages, "lab")
    assert re.search(r'pip install .*"\.\[lab\]"', lab)
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    # The lab service runs the lab image; the recorder next to it the product image.
    assert services["lab"]["build"]["target"] == "lab"
    assert services["lab"]["image"] != services["rdsrecorder-lab"]["image"]
    assert services["rdsrecorder-lab"]["image"] == services["rdsrecorder"]["image"]


def compose_value(raw: object) -> str:
    """What compose gives the container when the variable is not set in .env: the default of
    `${VAR:-default}`, or the literal."""
    text = str(raw)
    match = re.fullmatch(r"\$\{(\w+):?-(.*)\}", text)
    return match.group(2) if match else text


def test_compose_resumes_the_same_run_from_the_earliest_file() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("rdsrecorder", "rdsrecorder-lab"):
        svc = services[name]
        env = {k: compose_value(v) for k, v in svc["environment"].items()}
        assert env["RDSRECORDER_START"] == "earliest", name
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", env["RDSRECORDER_RUN_ID"]), name
        # A flag on the command line would override the env var.
        assert not {"--start", "--run-id"} & set(svc["command"]), name
        assert svc["command"][0] == "sync"
        assert svc["restart"] == "unless-stopped"
    grace = services["rdsrecorder"]["stop_grace_period"]
    assert int(grace.removesuffix("s")) > SHUTDOWN_GRACE_DEFAULT_S


def test_compose_profiles_are_as_the_readme_says() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["rdsrecorder"]["profiles"] == ["aws"]
    assert services["lab"]["profiles"] == ["lab"]
    assert services["rdsrecorder-lab"]["profiles"] == ["lab"]
    assert services["rdsrecorder-lab"]["depends_on"]["lab"]["condition"] == "service_healthy"
    # Prometheus and Grafana run with either profile.
    assert "profiles" not in services["prometheus"] and "profiles" not in services["grafana"]


# --- system packages -----------------------------------------------------------------------------


def test_system_deps_is_a_no_op_once_everything_is_installed() -> None:
    """Each tool the script looks for is the one its package installs: with all of them present
    (after `make test` ran it once) a second run installs nothing."""
    tools = ["prometheus", "promtool", "pgbadger", "runuser"]
    missing = [t for t in tools if shutil.which(t) is None]
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        missing.append("postgresql")
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (scripts/system-deps.sh installs them)")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "system-deps.sh")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    version = subprocess.run(["pgbadger", "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and "pgBadger" in version.stdout
