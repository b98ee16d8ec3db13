"""Every shipped topology (compose, the Kubernetes manifests, the Procfile, the systemd units) has a
consumer for every queue the code enqueues to, and exposes only the receiver's public listener."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import ROOT
from workers.core.settings import Settings

DEPLOY = ROOT / "deploy"
DEFAULTS = Settings()
# Every queue the bridge enqueues to is a setting named *_queue (callbacks and commands, webhooks).
QUEUES = {value for name, value in DEFAULTS.model_dump().items() if name.endswith("_queue")}


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def _consumed(commands: list[list[str]]) -> set[str]:
    """Queues taken by the ``worker`` commands among ``commands`` (argument lists after the program)."""
    queues: set[str] = set()
    for args in commands:
        if args and args[0] == "worker":
            named = [args[i + 1] for i, arg in enumerate(args) if arg == "--queue"]
            queues.update(named or [DEFAULTS.bridge_queue])
    return queues


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def _manifests() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        if path.name != "secret.example.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _containers(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        container
        for doc in manifests
        if doc["kind"] == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]


def _procfile() -> list[list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return [shlex.split(line.split(":", 1)[1])[1:] for line in lines if line.strip()]


def _systemd() -> list[list[str]]:
    found = []
    for unit in (DEPLOY / "systemd").glob("*.service"):
        match = re.search(r"^ExecStart=(.+)$", unit.read_text(), re.M)
        assert match, unit
        found.append(shlex.split(match.group(1))[1:])
    return found


TOPOLOGIES = {
    "compose": lambda: [s.get("command", []) for s in _compose()["services"].values()],
    "kubernetes": lambda: [c.get("args", []) for c in _containers(_manifests())],
    "procfile": _procfile,
    "systemd": _systemd,
}


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_every_queue_the_code_enqueues_to_has_a_consumer(topology: str) -> None:
    commands = TOPOLOGIES[topology]()
    assert {DEFAULTS.bridge_queue, DEFAULTS.bridge_http_subscribers_queue} == QUEUES
    missing = QUEUES - _consumed(commands)
    assert not missing, f"{topology}: nothing consumes {sorted(missing)}"
    assert sum(1 for args in commands if args[:1] == ["scheduler"]) == 1, f"{topology}: one scheduler"
    assert any(args[:1] == ["serve"] for args in commands), f"{topology}: no receiver"


def test_compose_exposes_only_the_proxy_and_the_proxy_only_the_public_listener() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            if name != "proxy":
                assert str(port).startswith("127.0.0.1:"), f"{name} binds {port} on every interface"
    receivers = {n: s["command"] for n, s in services.items() if s.get("command", [None])[0] == "serve"}
    conf = (DEPLOY / "nginx.conf").read_text()
    upstreams = dict(re.findall(r"server (receiver-\d+):(\d+)", conf))
    assert set(upstreams) == set(receivers)
    for name, command in receivers.items():
        public, internal = _option(command, "--port"), _option(command, "--internal-port")
        assert public and internal and public != internal
        assert upstreams[name] == public, f"nginx sends {name}'s traffic to a listener other than the public"
        healthcheck = " ".join(services[name]["healthcheck"]["test"])
        assert f":{internal}/readyz" in healthcheck
        for port in services[name].get("ports", []):
            assert str(port).endswith(f":{internal}"), f"{name} publishes {port}, not its internal listener"


def test_kubernetes_puts_only_the_public_listener_behind_the_ingress() -> None:
    manifests = _manifests()
    (receiver,) = [c for c in _containers(manifests) if c.get("args", [None])[0] == "serve"]
    ports = {p["name"]: p["containerPort"] for p in receiver["ports"]}
    public = int(_option(receiver["args"], "--port") or 0)
    internal = int(_option(receiver["args"], "--internal-port") or 0)
    assert ports == {"http": public, "internal": internal}
    assert receiver["readinessProbe"]["httpGet"]["port"] == "internal"  # /readyz is internal
    assert receiver["livenessProbe"]["httpGet"]["port"] == "http"  # /healthz is public
    services = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "Service"}
    # The Service an Ingress points at (docs/operations.md) carries the public port only.
    assert [p["targetPort"] for p in services["workfloo-bridge-receiver"]["spec"]["ports"]] == ["http"]
    assert [p["targetPort"] for p in services["workfloo-bridge-receiver-internal"]["spec"]["ports"]] == [
        "internal"
    ]
    for doc in manifests:
        if doc["kind"] == "Ingress":
            for rule in doc["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    assert path["backend"]["service"]["name"] == "workfloo-bridge-receiver"
    policies = [d for d in manifests if d["kind"] == "NetworkPolicy"]
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            sources = str(rule.get("from"))
            if "ingress-nginx" in sources:
                assert rule["ports"] == [{"protocol": "TCP", "port": public}]


def test_worker_egress_is_dns_redis_and_the_vendors() -> None:
    (policy,) = [
        d for d in _manifests() if d["kind"] == "NetworkPolicy" and d["spec"].get("policyTypes") == ["Egress"]
    ]
    assert set(policy["spec"]["podSelector"]["matchExpressions"][0]["values"]) == {"worker", "scheduler"}
    ports = [{p["port"] for p in rule["ports"]} for rule in policy["spec"]["egress"]]
    assert ports == [{53}, {6379}, {443}]


def test_the_vm_units_and_procfile_name_real_commands() -> None:
    for args in _procfile() + _systemd():
        assert args[0] in {"serve", "worker", "scheduler"}, args
    assert Path(DEPLOY / "systemd" / "workfloo-bridge.target").exists()


def test_nginx_proxies_only_the_public_routes() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    proxied = re.findall(r"location ([=~^ ]*\S+) \{\s*(?:#[^\n]*\n\s*)*proxy_pass", conf)
    assert sorted(p.replace("= ", "") for p in proxied) == ["/healthz", "/v1/kiban/"]


@pytest.mark.parametrize("topology", ["compose", "procfile", "systemd"])
def test_every_worker_serves_its_metrics_on_a_port_of_its_own(topology: str) -> None:
    """Each worker process serves its own registry (docs/operations.md, Metrics): every worker line passes
    ``--metrics-port``, and the topologies that run several workers on one host give each its own port
    (compose runs one per container)."""
    workers = [args for args in TOPOLOGIES[topology]() if args[:1] == ["worker"]]
    assert workers, topology
    ports = [args[args.index("--metrics-port") + 1] for args in workers if "--metrics-port" in args]
    assert len(ports) == len(workers), f"{topology}: a worker without --metrics-port: {workers}"
    assert all(port.rstrip("%i").isdigit() and port != "0" for port in ports), ports
    if topology != "compose":
        assert len(set(ports)) == len(ports), f"{topology}: two workers on one port: {ports}"
