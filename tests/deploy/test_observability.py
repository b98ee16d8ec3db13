"""deploy/observability: the alert rules (plain file and PrometheusRule) and the Grafana dashboard, checked
offline. promtool is not at hand; instead every expression must name only series the bridge's code
exports (read from the real registries and the Redis collector run against a real redis-server), which
also catches a renamed metric."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml

from receiver.metrics import ReceiverMetrics
from tests import ROOT
from workers.core.metrics import REGISTRY
from workers.core.settings import load_settings
from workers.runtime.metrics import RedisCollector

OBS = ROOT / "deploy" / "observability"
PROMETHEUS_OWN = {"up"}  # written by Prometheus for every scrape target
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "inf", "nan",
}  # fmt: skip
DURATION = r"^(\d+(ms|s|m|h|d|w|y))+$"
RULES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "interval": {"type": "string", "pattern": DURATION},
                    "rules": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["alert", "expr", "labels", "annotations"],
                            "additionalProperties": False,
                            "properties": {
                                "alert": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                                "expr": {"type": "string", "minLength": 1},
                                "for": {"type": "string", "pattern": DURATION},
                                "labels": {
                                    "type": "object",
                                    "required": ["severity"],
                                    "properties": {"severity": {"enum": ["warning", "critical"]}},
                                },
                                "annotations": {
                                    "type": "object",
                                    "required": ["summary", "description"],
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


@pytest.fixture
def exported(redis_url: str) -> set[str]:
    """Every series name the receiver and the workers expose."""
    client = redis.Redis.from_url(redis_url)
    settings = load_settings(redis_url=redis_url)
    client.xgroup_create(settings.events_stream, "names", id="0", mkstream=True)
    families = [
        *ReceiverMetrics().registry.collect(),
        *REGISTRY.collect(),
        *RedisCollector(client, settings).collect(),
    ]
    client.delete(settings.events_stream)
    client.close()
    names = {family.name + suffix for family in families for suffix in SUFFIXES.get(family.type, ("",))}
    assert "process_resident_memory_bytes" in names and "bridge_consumer_group_lag" in names
    return names | PROMETHEUS_OWN


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, ranges, grouping and function
    names taken out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?\b", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group() in KEYWORDS:
            continue  # a function or aggregation
        names.add(match.group())
    return names


def _rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((OBS / "alerts.rules.yaml").read_text())
    return data


def _exprs_of_rules() -> list[str]:
    return [rule["expr"] for group in _rules()["groups"] for rule in group["rules"]]


def test_series_names_reads_promql() -> None:
    expr = 'sum by (le) (rate(a_total{x="b c"}[5m])) / on() group_left scalar(max(b)) > 1e-9 or absent(up)'
    assert series_names(expr) == {"a_total", "b", "up"}


def test_rules_file_is_well_formed_and_covers_every_alert() -> None:
    rules = _rules()
    jsonschema.validate(rules, RULES_SCHEMA)
    names = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    assert len(names) == len(set(names))
    for wanted in (
        "BridgeDeadLetters", "BridgeFollowupPendingTooLong", "BridgeReconcilerStale", "BridgeReceiver503Rate",
        "BridgeSubscriberDisabled", "BridgeConsumerLagNearRetention", "BridgeConsumerLagNearHardCap",
        "BridgeWorkerAbsent",
    ):  # fmt: skip
        assert wanted in names, wanted


def test_prometheus_rule_is_the_rules_file_in_a_valid_object() -> None:
    [doc] = [d for d in yaml.safe_load_all((OBS / "prometheus-rule.yaml").read_text()) if d]
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert doc["spec"] == _rules()
    # The CRD's schema is not shipped offline; its metadata is Kubernetes' ObjectMeta: check that strictly.
    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"], "data": {}}
    kubernetes_validate.validate(probe, kubernetes_validate.utils.latest_version(), strict=True)


def test_every_alert_expression_names_only_exported_series(exported: set[str]) -> None:
    for expr in _exprs_of_rules():
        unknown = series_names(expr) - exported
        assert not unknown, (expr, unknown)
    assert series_names("rate(bridge_job_run_total[5m])") - exported  # a misspelt name is caught


def test_dashboard_queries_name_only_exported_series(exported: set[str]) -> None:
    dashboard = json.loads((OBS / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs
    for expr in exprs:
        unknown = series_names(expr) - exported
        assert not unknown, (expr, unknown)


def test_scrape_config_names_the_jobs_the_rules_use_and_the_ports_the_pods_open() -> None:
    scrape = yaml.safe_load((OBS / "scrape-config.yaml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    used = {name for expr in _exprs_of_rules() for name in re.findall(r'job=~?"([^"]+)"', expr)}
    assert used and used <= set(jobs)
    k8s = ROOT / "deploy" / "k8s"
    ports = {
        port["name"]: port["containerPort"]
        for name in ("receiver-deployment.yaml", "worker-deployment.yaml")
        for port in next(yaml.safe_load_all((k8s / name).read_text()))["spec"]["template"]["spec"][
            "containers"
        ][0]["ports"]
    }
    kept = {
        job: {r["regex"] for r in config["relabel_configs"] if r.get("action") == "keep"}
        for job, config in jobs.items()
    }
    assert str(ports["internal"]) in kept["workfloo-bridge-receiver"]
    assert "metrics" in kept["workfloo-bridge-worker"]
