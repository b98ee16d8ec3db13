"""Prometheus metrics of one receiver app (own ``CollectorRegistry``, so tests can build many apps)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# ``*_created`` doubles every counter and histogram with a gauge nobody graphs; off for the process.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ReceiverMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # process_*, python_*
            self.registry.register(collector)
        self.requests = Counter(
            "receiver_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.intake_seconds = Histogram(
            "receiver_intake_seconds",
            "Time from request start to the callback answer (accepted or duplicate).",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.accepted = Counter(
            "receiver_callbacks_accepted", "Callbacks stored as new jobs.", ["kind"], registry=self.registry
        )
        self.duplicates = Counter(
            "receiver_callbacks_duplicate",
            "Callbacks already seen within the dedupe TTL.",
            ["kind"],
            registry=self.registry,
        )
        self.unavailable = Counter(
            "receiver_redis_unavailable",
            "Callbacks answered 503 because Redis did not confirm the write.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "receiver_queue_depth",
            "Jobs waiting in each RQ queue of the bridge (LLEN read at scrape time; NaN when Redis is "
            "unavailable).",
            ["queue"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], Any] = {}
        self._kinds: dict[str, tuple[Any, Any, Any]] = {}
        self.round_trip_counts: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.registry.register(_RoundTrips(self))

    def count_callback(self, kind: str, accepted: bool, seconds: float) -> None:
        children = self._kinds.get(kind)
        if children is None:
            children = self._kinds[kind] = (
                self.accepted.labels(kind),
                self.duplicates.labels(kind),
                self.intake_seconds.labels(kind),
            )
        (children[0] if accepted else children[1]).inc()
        children[2].observe(seconds)

    def count_request(self, route: str, method: str, status: int) -> None:
        key = (route, method, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(route, method, str(status))
        child.inc()


class _RoundTrips(Collector):
    """Group-commit effect, read from the intake at scrape time: commands / round trips = batch size."""

    def __init__(self, metrics: ReceiverMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        round_trips, commands = self.metrics.round_trip_counts()
        yield CounterMetricFamily(
            "receiver_redis_round_trips", "Redis round trips made by the intake.", value=round_trips
        )
        yield CounterMetricFamily(
            "receiver_redis_commands", "Redis commands sent by the intake.", value=commands
        )


class RequestMetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): counts every response by route template and status."""

    def __init__(self, app: ASGIApp, metrics: ReceiverMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.count_request(template, scope["method"], status)
