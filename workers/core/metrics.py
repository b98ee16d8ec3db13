"""The worker processes' Prometheus metrics: one registry per process, counted where the work happens.

They live in the core so every layer can count without reaching up (a job or a vendor client must not
import the runtime): the runtime serves ``REGISTRY`` on ``BRIDGE_WORKER_METRICS_PORT`` and adds the
process metrics and the gauges read from Redis at scrape time (``workers.runtime.metrics``).

Labels are bounded: job function paths, outcome and vendor operation names are code constants, HTTP
status codes are three digits (or ``timeout``/``transport_error``), subscriber keys come from the
settings. Nothing here ever carries an id or applicant data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

# ``*_created`` doubles every counter and histogram with a gauge nobody graphs; off for the process.
disable_created_metrics()  # type: ignore[no-untyped-call]

JOB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
VENDOR_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REGISTRY = CollectorRegistry(auto_describe=True)
"""The worker process's registry (served by ``workers.runtime.metrics``)."""

JOB_RUNS = Counter(
    "bridge_job_runs",
    "Job runs by function and outcome (succeeded, retried, failed, stood_down).",
    ["function", "outcome"],
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "bridge_job_duration_seconds",
    "Wall time of one job run, by function.",
    ["function"],
    buckets=JOB_BUCKETS,
    registry=REGISTRY,
)
JOB_RETRIES = Counter(
    "bridge_job_retries",
    "Retries scheduled by the retry policy, by function.",
    ["function"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "bridge_dead_letters",
    "Jobs that landed in the failed registry (job.dead_lettered), by function and code.",
    ["function", "code"],
    registry=REGISTRY,
)
VENDOR_REQUESTS = Counter(
    "bridge_vendor_requests",
    "Vendor HTTP requests by vendor, operation and status (HTTP code, timeout or transport_error).",
    ["vendor", "operation", "status"],
    registry=REGISTRY,
)
VENDOR_DURATION = Histogram(
    "bridge_vendor_request_duration_seconds",
    "Vendor request latency, by vendor and operation (failed connections included).",
    ["vendor", "operation"],
    buckets=VENDOR_BUCKETS,
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "bridge_webhook_deliveries",
    "HTTP subscriber delivery attempts by subscriber and outcome "
    "(delivered, disabled, retry_scheduled, gave_up, unknown_subscriber).",
    ["subscriber", "outcome"],
    registry=REGISTRY,
)


def observe_vendor_call(vendor: str, operation: str, status: int | str, seconds: float) -> None:
    """One vendor call, whatever its end: the one hook both vendor clients' plumbing calls."""
    _record("vendor_call", vendor, operation, str(status), seconds)


def count_webhook_delivery(subscriber: str, outcome: str) -> None:
    _record("webhook_delivery", subscriber, outcome)


def count_retry(function: str) -> None:
    _record("retry", function)


def count_dead_letter(function: str, code: str) -> None:
    _record("dead_letter", function, code)


def observe_job_run(function: str, outcome: str, seconds: float) -> None:
    _record("job_run", function, outcome, seconds)


def _vendor_call(vendor: str, operation: str, status: str, seconds: float) -> None:
    VENDOR_REQUESTS.labels(vendor, operation, status).inc()
    VENDOR_DURATION.labels(vendor, operation).observe(seconds)


def _job_run(function: str, outcome: str, seconds: float) -> None:
    JOB_RUNS.labels(function, outcome).inc()
    JOB_DURATION.labels(function).observe(seconds)


_APPLY: dict[str, Callable[..., None]] = {
    "vendor_call": _vendor_call,
    "webhook_delivery": lambda subscriber, outcome: WEBHOOK_DELIVERIES.labels(subscriber, outcome).inc(),
    "retry": lambda function: JOB_RETRIES.labels(function).inc(),
    "dead_letter": lambda function, code: DEAD_LETTERS.labels(function, code).inc(),
    "job_run": _job_run,
}

JOURNAL_MAX = 300
"""Most records one forked work-horse hands back to its worker (a job makes a few dozen; 300 stay well
under the 60 kB the horse writes to its pipe)."""

_journal: list[list[Any]] | None = None


def _record(kind: str, *args: Any) -> None:
    _APPLY[kind](*args)
    if _journal is not None and len(_journal) < JOURNAL_MAX:
        _journal.append([kind, *args])


def start_journal() -> None:
    """From now on, keep what this process counts (a forked work-horse: its counts die with it)."""
    global _journal
    _journal = []


def take_journal() -> bytes:
    """What was counted since ``start_journal``, as JSON for ``replay``; stops journaling."""
    global _journal
    entries, _journal = _journal or [], None
    return json.dumps(entries, separators=(",", ":")).encode()


def replay(payload: bytes) -> int:
    """Count in this process what a work-horse's ``take_journal`` returned; unknown records are skipped.
    Returns how many records were applied."""
    try:
        entries = json.loads(payload) if payload else []
    except ValueError:
        return 0
    applied = 0
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, list) and entry and entry[0] in _APPLY:
            try:
                _APPLY[entry[0]](*entry[1:])
            except (TypeError, ValueError):
                continue
            applied += 1
    return applied
