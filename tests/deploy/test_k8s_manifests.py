"""deploy/k8s validates against the Kubernetes schemas (kubernetes-validate, offline, strict) and keeps
the operational properties docs/operations.md relies on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests import ROOT
from workers.core.settings import Settings, env_name

K8S = ROOT / "deploy" / "k8s"
EXAMPLE_ONLY = {"secret.example.yaml"}
# Oldest and newest Kubernetes minor versions the manifests are checked against.
VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for name in _kustomization()["resources"]:
        for doc in _docs(K8S / name):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    for doc in _docs(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    doc = _docs(K8S / "worker-deployment.yaml")[0]
    spec = doc["spec"]["template"]["spec"]
    spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriodSecond"):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in _manifest_files()}
    assert listed == on_disk - EXAMPLE_ONLY
    assert not listed & EXAMPLE_ONLY


def test_no_secret_is_applied_or_inlined(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert not [key for key in objects if key[0] == "Secret"], "Secrets are created outside the kustomization"
    configmap = objects[("ConfigMap", "workfloo-bridge")]
    secret_names = {env_name(n) for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
    assert not (secret_names | {"REDIS_URL"}) & configmap["data"].keys()
    for (kind, _), obj in objects.items():
        if kind != "Deployment":
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            assert {"secretRef": {"name": "workfloo-bridge"}} in container["envFrom"]
            for env in container.get("env", []):
                assert env["name"] not in secret_names | {"REDIS_URL"} or "valueFrom" in env


def test_example_secret_holds_only_placeholders() -> None:
    (secret,) = _docs(K8S / "secret.example.yaml")
    assert secret["kind"] == "Secret"
    for key, value in secret["stringData"].items():
        assert "change-me" in value, key


def _deployment(objects: dict[tuple[str, str], dict[str, Any]], role: str) -> dict[str, Any]:
    return objects[("Deployment", f"workfloo-bridge-{role}")]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_receiver_probes_prestop_and_grace_period(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    receiver = _deployment(objects, "receiver")
    container = _container(receiver)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    graceful = int(objects[("ConfigMap", "workfloo-bridge")]["data"]["BRIDGE_GRACEFUL_SHUTDOWN_SECONDS"])
    grace = receiver["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > sleep + graceful
    assert receiver["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_worker_grace_period_outlasts_the_longest_job(
    objects: dict[tuple[str, str], dict[str, Any]], job_timeout_seconds: int
) -> None:
    worker = _deployment(objects, "worker")
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > job_timeout_seconds
    assert _container(worker)["args"] == ["worker"]


def test_scheduler_is_a_single_replica_never_two(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    scheduler = _deployment(objects, "scheduler")
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"] == {"type": "Recreate"}
    autoscaled = {o["spec"]["scaleTargetRef"]["name"] for k, o in objects.items() if k[0].startswith("Horiz")}
    assert "workfloo-bridge-scheduler" not in autoscaled


def test_every_role_uses_the_same_image_non_root_with_memory_limits(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    images = set()
    for role in ("receiver", "worker", "scheduler"):
        deployment = _deployment(objects, role)
        pod = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        images.add(container["image"])
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys()
        assert "memory" in resources["limits"]
    assert len(images) == 1
    assert _kustomization()["images"][0]["name"] == images.pop().split(":")[0]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_hpa_and_pdb_point_at_the_receiver(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    receiver = _deployment(objects, "receiver")
    labels = receiver["spec"]["template"]["metadata"]["labels"]
    service = objects[("Service", "workfloo-bridge-receiver")]
    assert _selects(service["spec"]["selector"], labels)
    assert service["spec"]["ports"][0]["targetPort"] == _container(receiver)["ports"][0]["name"]
    hpa = objects[("HorizontalPodAutoscaler", "workfloo-bridge-receiver")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == receiver["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = objects[("PodDisruptionBudget", "workfloo-bridge-receiver")]
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # a node drain can still proceed


def test_only_the_ingress_namespace_reaches_the_public_listener(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    receiver_labels = _deployment(objects, "receiver")["spec"]["template"]["metadata"]["labels"]
    policies = [o for k, o in objects.items() if k[0] == "NetworkPolicy"]
    covering = [
        p
        for p in policies
        if p["spec"]["podSelector"].get("matchLabels")
        and _selects(p["spec"]["podSelector"]["matchLabels"], receiver_labels)
    ]
    assert len(covering) == 1
    public, internal = covering[0]["spec"]["ingress"]
    assert public["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    assert public["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert internal["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        {"namespaceSelector": {"matchLabels": {"workfloo-bridge.kiban.io/internal-client": "true"}}},
    ]
    assert internal["ports"] == [{"protocol": "TCP", "port": 8001}]


def test_each_worker_pod_serves_its_metrics_to_prometheus_only(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    policies = [o for k, o in objects.items() if k[0] == "NetworkPolicy"]
    for component in ("worker", "webhook-worker"):
        container = _container(_deployment(objects, component))
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        [port] = container["ports"]
        assert port["name"] == "metrics" and str(port["containerPort"]) == env["BRIDGE_WORKER_METRICS_PORT"]
        ingress = [
            rule
            for p in policies
            for expr in p["spec"]["podSelector"].get("matchExpressions", [])
            if component in expr["values"]
            for rule in p["spec"].get("ingress", [])
        ]
        assert ingress == [
            {
                "from": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
                ],
                "ports": [{"protocol": "TCP", "port": port["containerPort"]}],
            }
        ]
