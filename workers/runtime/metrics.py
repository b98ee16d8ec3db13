"""A worker process's metrics endpoint: the counters of ``workers.core.metrics``, the process metrics,
and the gauges read from Redis at scrape time.

Each worker process serves its own registry on ``BRIDGE_WORKER_METRICS_PORT`` (0: off), so several
processes in one pod or host need one port each (``worker --metrics-port``). prometheus_client's
multiprocess mode was the other way; it is not used because its files are per pid: RQ's fork-per-job
worker would leave a new set of files for every job (scrapes slow down for ever, the directory must be
wiped by hand), and it gives up the process collector and live gauges. With one port per process,
Prometheus's own ``up`` tells a missing worker from an idle one.

The Redis gauges (``RedisCollector``) cost one pipeline of O(1) commands plus ``XINFO GROUPS`` per scrape,
bounded by the configured queues, subscribers and consumer groups. Every worker answers them alike; sum
nothing across instances (use ``max``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from workers.core import keys
from workers.core.contract import JOB_SERIALIZER
from workers.core.log import get_logger
from workers.core.metrics import REGISTRY, observe_job_run
from workers.core.settings import Settings
from workers.fanout.retention import group_positions

log = get_logger(__name__)

_OUTCOMES = {
    JobStatus.FINISHED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.SCHEDULED: "retried",
    JobStatus.QUEUED: "retried",
}


def record_job_run(job: Job, seconds: float, *, stood_down: bool = False) -> None:
    """One run of ``job``: its outcome from the status RQ left it in, and its wall time."""
    try:
        function = job.func_name or "unknown"
    except Exception:  # an undeserialisable job still counts
        function = "unknown"
    status = job.get_status(refresh=False)
    outcome = "stood_down" if stood_down else _OUTCOMES.get(status, "failed") if status else "failed"
    observe_job_run(function, outcome, seconds)


class RedisCollector(Collector):
    """Gauges that need Redis, read when Prometheus scrapes: queues, dead letters, the event stream and its
    consumer groups, executions, the reconciler and the HTTP subscribers."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        try:
            metrics = self._read()
        except redis.RedisError:
            log.warning("metrics_redis_unavailable")
            metrics = []
        up = GaugeMetricFamily("bridge_metrics_redis_up", "1 when the scrape could read Redis, else 0.")
        up.add_metric([], 1.0 if metrics else 0.0)
        yield up
        yield from metrics

    def _read(self) -> list[Metric]:
        s = self.settings
        queues = [s.bridge_queue, s.bridge_http_subscribers_queue]
        subscribers = [sub.key for sub in s.bridge_http_subscribers]
        pipe = self.connection.pipeline(transaction=False)
        for name in queues:
            pipe.llen(Queue(name, connection=self.connection, serializer=JOB_SERIALIZER).key)
            pipe.zcard(FailedJobRegistry(name, connection=self.connection, serializer=JOB_SERIALIZER).key)
        pipe.xlen(s.events_stream)
        pipe.zcard(keys.OPEN_EXECUTIONS)
        pipe.zcard(keys.FOLLOWUP_PENDING)
        pipe.get(keys.RECONCILE_LAST_SWEEP)
        for key in subscribers:
            pipe.exists(keys.subscriber_disabled(key))
        answers: list[Any] = pipe.execute()
        now = time.time()

        waiting = GaugeMetricFamily("bridge_queue_jobs", "Jobs waiting in each RQ queue.", labels=["queue"])
        failed = GaugeMetricFamily(
            "bridge_dead_letter_jobs",
            "Jobs in each queue's failed registry (dead letters).",
            labels=["queue"],
        )
        for name in queues:
            waiting.add_metric([name], float(answers.pop(0)))
            failed.add_metric([name], float(answers.pop(0)))
        length = GaugeMetricFamily("bridge_events_stream_length", "Entries in the event stream.")
        length.add_metric([], float(answers.pop(0)))
        cap = GaugeMetricFamily(
            "bridge_events_stream_max_length",
            "The stream's length caps: retention target (BRIDGE_EVENTS_STREAM_MAXLEN) and hard cap.",
            labels=["cap"],
        )
        cap.add_metric(["target"], float(s.events_stream_maxlen))
        cap.add_metric(["hard"], float(s.bridge_events_stream_hard_maxlen))
        open_ = GaugeMetricFamily("bridge_open_executions", "Executions with no terminal event yet.")
        open_.add_metric([], float(answers.pop(0)))
        followup = GaugeMetricFamily(
            "bridge_followup_pending_executions",
            "Approved executions whose Kompliant hand-off is not done (the follow-up set).",
        )
        followup.add_metric([], float(answers.pop(0)))
        last = answers.pop(0)
        age = GaugeMetricFamily(
            "bridge_reconciler_last_sweep_age_seconds",
            "Seconds since the last reconciler sweep ended (NaN before the first sweep).",
        )
        age.add_metric([], max(0.0, now - float(last)) if last is not None else float("nan"))
        disabled = GaugeMetricFamily(
            "bridge_http_subscriber_disabled",
            "1 while an HTTP subscriber is disabled (it answered 410 Gone), else 0.",
            labels=["subscriber"],
        )
        for key in subscribers:
            disabled.add_metric([key], float(bool(answers.pop(0))))

        lag = GaugeMetricFamily(
            "bridge_consumer_group_lag", "Entries still in the stream a group has not read.", labels=["group"]
        )
        pending = GaugeMetricFamily(
            "bridge_consumer_group_pending",
            "Entries a group read and has not acknowledged.",
            labels=["group"],
        )
        lost = CounterMetricFamily(
            "bridge_events_trimmed_unacked",
            "Entries a group never acknowledged that retention trimmed or deleted "
            "(workfloo:events:trimmed_unacked).",
            labels=["group"],
        )
        for group in group_positions(self.connection, s):
            lag.add_metric([group.name], float("nan") if group.lag is None else float(group.lag))
            pending.add_metric([group.name], float(group.pending))
            lost.add_metric([group.name], float(group.trimmed_unacked))
        return [waiting, failed, length, cap, open_, followup, age, disabled, lag, pending, lost]


_lock = threading.Lock()
_served: dict[str, Any] = {}


def serve(
    connection: redis.Redis, settings: Settings, port: int | None = None, host: str | None = None
) -> int | None:
    """Serve this process's metrics on ``port`` (default ``BRIDGE_WORKER_METRICS_PORT``; 0: off) at
    ``host`` (default ``BRIDGE_WORKER_METRICS_ADDRESS``), once per process; returns the port bound (None
    when off)."""
    port = settings.bridge_worker_metrics_port if port is None else port
    if not port:
        return None
    with _lock:
        if "port" in _served:
            return int(_served["port"])
        ProcessCollector(registry=REGISTRY)
        PlatformCollector(registry=REGISTRY)
        GCCollector(registry=REGISTRY)
        REGISTRY.register(RedisCollector(connection, settings))
        server, _thread = start_http_server(
            port, host or settings.bridge_worker_metrics_address, registry=REGISTRY
        )
        _served["port"] = server.server_port
        log.info("metrics_serving", port=server.server_port)
        return int(server.server_port)
