"""Every exposition parses, and every metric the docs and the alert rules name is there with its labels:
the receiver's and a real worker process's after real jobs ran through the process stack and the fakes."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from tests.support.workers_stack import INTERNAL_KEY, Bridge, make_bridge
from workers.core.contract import JOB_SERIALIZER
from workers.core.events import EventType as T
from workers.sandbox.demo.model import EXPECTED_OUTCOME, AppRun
from workers.sandbox.demo.scenario import ScenarioRunner
from workers.sandbox.redis_server import free_port
from workers.sandbox.stack import Stack, StackConfig
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


class _Subscriber(BaseHTTPRequestHandler):
    """A tiny HTTP subscriber: takes every delivery with 204."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def subscriber_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Subscriber)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook"
    finally:
        server.shutdown()
        server.server_close()


def test_every_metric_the_issue_names_is_there_after_a_demo_run(subscriber_url: str) -> None:
    """The demo's own stack (processes, a scheduler, a worker serving its metrics) and the demo's scenario
    runner through the receiver's command API: an approved application and a NIP resend, one HTTP
    subscriber taking deliveries, one consumer group, one Kompliant 503 (a retry) and one poison job (a dead
    letter); then both expositions carry every family with its
    labels, no ``_created`` series and no NaN."""
    subscriber = {
        "id": "demo-hook",
        "url": subscriber_url,
        "types": ["workfloo.*", "kompliant.*"],
        "secret": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "allow_private": True,
    }
    config = StackConfig(workers=1, extra_env={"BRIDGE_HTTP_SUBSCRIBERS": json.dumps([subscriber])})
    with Stack(config) as stack:
        client = stack.redis()
        settings = stack.settings()
        client.xgroup_create(settings.events_stream, GROUP, id="0", mkstream=True)
        stack.set_faults("kompliant", fail_next=1, fail_status=503, fail_retry_after=None)  # one retry
        runs = [AppRun(index=1, scenario="approved"), AppRun(index=2, scenario="nip-error")]
        runner = ScenarioRunner(stack, runs, timeout=25)
        try:
            runner.run()
        finally:
            runner.close()
        assert all(run.outcome == EXPECTED_OUTCOME[run.scenario] for run in runs), [
            (run.scenario, run.outcome, run.error, run.checks) for run in runs
        ]
        queue = Queue(settings.bridge_queue, connection=client, serializer=JOB_SERIALIZER)
        queue.enqueue("workers.jobs.commands.validate_nip", {}, job_id="demo-metrics-poison")  # dead letter
        queue.enqueue("workers.jobs.reconcile.reconcile_open_executions", job_id="demo-metrics-sweep")
        [url] = stack.worker_metrics_urls.values()

        def scraped() -> dict[str, list[tuple[str, dict[str, str], float]]] | None:
            parsed = parse(httpx.get(url, timeout=5).text)
            functions = {s[1]["function"] for s in parsed.get("bridge_job_runs", [])}
            deliveries = {s[1]["outcome"] for s in parsed.get("bridge_webhook_deliveries", [])}
            sweep = "workers.jobs.reconcile.reconcile_open_executions" in functions
            done = sweep and "delivered" in deliveries and parsed.get("bridge_dead_letters")
            return parsed if done else None

        worker = wait_until(scraped, timeout=15, what="the worker's metrics after the demo")
        check_families(worker, WORKER_FAMILIES)
        nan = [(n, s) for n, samples in worker.items() for s in samples if math.isnan(s[2])]
        assert not nan, nan
        outcomes = {(s[1]["function"], s[1]["outcome"]) for s in worker["bridge_job_runs"]}
        assert ("workers.jobs.commands.start_application", "succeeded") in outcomes
        assert ("workers.jobs.commands.validate_nip", "failed") in outcomes
        assert worker["bridge_job_retries"] and worker["bridge_dead_letters"]
        assert any("resend" in function for function, _o in outcomes), outcomes
        operations = {(s[1]["vendor"], s[1]["operation"]) for s in worker["bridge_vendor_requests"]}
        assert {"kiban", "kompliant"} == {vendor for vendor, _op in operations}
        latency = {
            (s[1]["vendor"], s[1]["operation"]) for s in worker["bridge_vendor_request_duration_seconds"]
        }
        assert latency == operations
        deliveries = {(s[1]["subscriber"], s[1]["outcome"]) for s in worker["bridge_webhook_deliveries"]}
        assert ("demo-hook", "delivered") in deliveries
        assert {s[1]["group"] for s in worker["bridge_consumer_group_pending"]} == {GROUP}
        [(_n, _l, age)] = worker["bridge_reconciler_last_sweep_age_seconds"]
        assert 0 <= age < 60
        for family in ("bridge_open_executions", "bridge_followup_pending_executions"):
            assert [value for _n, _l, value in worker[family]] == [0.0], family

        answer = httpx.get(
            f"{stack.internal_url}/metrics", headers={"x-api-key": stack.keys.internal}, timeout=5
        )
        receiver = parse(answer.text)
        check_families(receiver, RECEIVER_FAMILIES)
        assert {s[1]["queue"] for s in receiver["receiver_queue_depth"]} == {"workfloo", "workfloo-webhooks"}
        client.close()
