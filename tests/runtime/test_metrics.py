"""Every exposition parses, and every metric the docs and the alert rules name is there with its labels:
the receiver's and a real worker process's after real jobs ran through the process stack and the fakes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from tests.support.workers_stack import INTERNAL_KEY, Bridge, make_bridge
from workers.core.contract import JOB_SERIALIZER
from workers.core.events import EventType as T
from workers.sandbox.redis_server import free_port
from workers.sandbox.wait import wait_until

GROUP = "metrics-test"

# family name (as the parser reports it: counters without ``_total``) -> the label names of its samples
WORKER_FAMILIES: dict[str, set[str]] = {
    "bridge_job_runs": {"function", "outcome"},
    "bridge_job_duration_seconds": {"function"},
    "bridge_job_retries": {"function"},
    "bridge_dead_letters": {"function", "code"},
    "bridge_vendor_requests": {"vendor", "operation", "status"},
    "bridge_vendor_request_duration_seconds": {"vendor", "operation"},
    "bridge_webhook_deliveries": {"subscriber", "outcome"},
    "bridge_queue_jobs": {"queue"},
    "bridge_dead_letter_jobs": {"queue"},
    "bridge_events_stream_length": set(),
    "bridge_events_stream_max_length": {"cap"},
    "bridge_consumer_group_lag": {"group"},
    "bridge_consumer_group_pending": {"group"},
    "bridge_events_trimmed_unacked": {"group"},
    "bridge_reconciler_last_sweep_age_seconds": set(),
    "bridge_open_executions": set(),
    "bridge_followup_pending_executions": set(),
    "bridge_http_subscriber_disabled": {"subscriber"},
    "bridge_metrics_redis_up": set(),
    "process_resident_memory_bytes": set(),
}
RECEIVER_FAMILIES: dict[str, set[str]] = {
    "receiver_requests": {"route", "method", "status"},
    "receiver_intake_seconds": {"kind"},
    "receiver_callbacks_accepted": {"kind"},
    "receiver_queue_depth": {"queue"},
    "receiver_redis_unavailable": set(),
    "process_resident_memory_bytes": set(),
    "python_gc_objects_collected": {"generation"},
}
HISTOGRAM_LABELS = {"le"}


def parse(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Family name -> its samples; fails on anything the Prometheus parser rejects."""
    return {
        family.name: [(s.name, dict(s.labels), s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def check_families(parsed: dict[str, list[tuple[str, dict[str, str], float]]], wanted: dict[str, set[str]]):
    for name, labels in wanted.items():
        assert parsed.get(name), f"{name} missing"
        for sample, sample_labels, _value in parsed[name]:
            assert set(sample_labels) - HISTOGRAM_LABELS == labels, (sample, sample_labels)
    created = [s for samples in parsed.values() for s, _l, _v in samples if s.endswith("_created")]
    assert not created, created


@pytest.fixture(scope="module")
def metrics_bridge() -> Iterator[tuple[Bridge, str]]:
    for bridge in make_bridge():
        port = free_port()
        subscriber = {
            "id": "hook",
            "url": f"{bridge.receiver_url}/no-such-hook",  # answers 404: a retry is scheduled
            "types": ["workfloo.*"],
            "secret": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "allow_private": True,
        }
        settings = bridge.settings
        bridge.spawn(
            "worker", "--queue", settings.bridge_queue, "--queue", settings.bridge_http_subscribers_queue,
            extra_env={
                "BRIDGE_WORKER_METRICS_PORT": str(port),
                "BRIDGE_HTTP_SUBSCRIBERS": json.dumps([subscriber]),
                "BRIDGE_HTTP_SUBSCRIBERS_RETRY_SCHEDULE": "0,60",
            },
        )  # fmt: skip
        yield bridge, f"http://127.0.0.1:{port}/metrics"


def test_worker_exposition_after_real_jobs(metrics_bridge: tuple[Bridge, str]) -> None:
    bridge, url = metrics_bridge
    bridge.redis.xgroup_create(bridge.settings.events_stream, GROUP, id="0", mkstream=True)
    bridge.kompliant_faults(fail_next=1, fail_status=503, fail_retry_after=None)  # one retry
    execution_id = bridge.start_application("approved")
    bridge.validate_nip(execution_id)
    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED, timeout=30)
    queue = Queue(bridge.settings.bridge_queue, connection=bridge.redis, serializer=JOB_SERIALIZER)
    queue.enqueue("workers.jobs.commands.validate_nip", {}, job_id="metrics-poison")  # a dead letter
    queue.enqueue("workers.jobs.reconcile.reconcile_open_executions", job_id="metrics-sweep")

    def scraped() -> dict[str, list[tuple[str, dict[str, str], float]]] | None:
        parsed = parse(httpx.get(url, timeout=5).text)
        runs = {s[1]["function"] for s in parsed.get("bridge_job_runs", [])}
        done = (
            "workers.jobs.reconcile.reconcile_open_executions" in runs
            and parsed.get("bridge_dead_letters")
            and parsed.get("bridge_webhook_deliveries")
        )
        return parsed if done else None

    parsed = wait_until(scraped, timeout=20, what="the worker's metrics after the jobs")
    check_families(parsed, WORKER_FAMILIES)
    outcomes = {(s[1]["function"], s[1]["outcome"]) for s in parsed["bridge_job_runs"]}
    assert ("workers.jobs.commands.start_application", "succeeded") in outcomes
    assert ("workers.jobs.commands.validate_nip", "failed") in outcomes
    vendors = {(s[1]["vendor"], s[1]["status"]) for s in parsed["bridge_vendor_requests"]}
    assert {("kiban", "200"), ("kompliant", "503"), ("kompliant", "200")} <= vendors
    assert {s[1]["group"] for s in parsed["bridge_consumer_group_lag"]} == {GROUP}
    [(_n, _l, age)] = parsed["bridge_reconciler_last_sweep_age_seconds"]
    assert 0 <= age < 60
    assert {s[1]["queue"] for s in parsed["bridge_queue_jobs"]} == {"workfloo", "workfloo-webhooks"}


def test_receiver_exposition_counts_every_queue(metrics_bridge: tuple[Bridge, str]) -> None:
    bridge, _url = metrics_bridge
    answer = httpx.get(f"{bridge.internal_url}/metrics", headers={"x-api-key": INTERNAL_KEY}, timeout=5)
    parsed = parse(answer.text)
    check_families(parsed, RECEIVER_FAMILIES)
    queues = {labels["queue"]: value for _s, labels, value in parsed["receiver_queue_depth"]}
    assert set(queues) == {"workfloo", "workfloo-webhooks"}
    assert all(value >= 0 for value in queues.values())  # both read (the receiver's ACL allows it)


def test_a_forking_worker_keeps_what_its_work_horses_count(metrics_bridge: tuple[Bridge, str]) -> None:
    """``BridgeWorker`` runs each job in a forked work-horse; what the horse counts reaches the worker's
    endpoint through a pipe."""
    bridge, _url = metrics_bridge
    port = free_port()
    bridge.spawn(
        "worker", "--worker-class", "workers.runtime.worker.BridgeWorker", "--queue", "metrics-fork",
        "--no-scheduler", extra_env={"BRIDGE_WORKER_METRICS_PORT": str(port)},
    )  # fmt: skip
    queue = Queue("metrics-fork", connection=bridge.redis, serializer=JOB_SERIALIZER)
    queue.enqueue("workers.jobs.commands.validate_nip", {}, job_id="metrics-fork-poison")
    envelope = json.dumps({"id": "evt-metrics-fork", "type": "workfloo.completed"})
    queue.enqueue("workers.fanout.webhooks.deliver", "nobody", envelope, job_id="metrics-fork-hook")

    def scraped() -> dict[str, list[tuple[str, dict[str, str], float]]] | None:
        try:
            parsed = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        except httpx.TransportError:
            return None
        runs = {(s[1]["function"], s[1]["outcome"]) for s in parsed.get("bridge_job_runs", [])}
        return parsed if len(runs) == 2 else None

    parsed = wait_until(scraped, timeout=20, what="the forking worker's job runs")
    runs = {(s[1]["function"], s[1]["outcome"]) for s in parsed["bridge_job_runs"]}
    assert runs == {
        ("workers.jobs.commands.validate_nip", "failed"),
        ("workers.fanout.webhooks.deliver", "succeeded"),
    }
    assert {s[1]["function"] for s in parsed["bridge_dead_letters"]} == {"workers.jobs.commands.validate_nip"}
    deliveries = {(s[1]["subscriber"], s[1]["outcome"]) for s in parsed["bridge_webhook_deliveries"]}
    assert deliveries == {("nobody", "unknown_subscriber")}


def test_the_stack_gives_each_worker_a_metrics_port_of_its_own(metrics_bridge: tuple[Bridge, str]) -> None:
    bridge, url = metrics_bridge
    child = bridge.start_worker(scheduler=False)
    own = bridge.stack.worker_metrics_urls[child.name]
    assert own != url

    def answers() -> str | None:
        try:
            return httpx.get(own, timeout=5).text
        except httpx.TransportError:
            return None

    assert "bridge_metrics_redis_up 1.0" in wait_until(answers, timeout=15, what="the worker's metrics")
