"""Tracing with OpenTelemetry: one trace from a callback or command through its jobs to the vendor calls
and the publish.

Off unless configured: with ``BRIDGE_OTLP_ENDPOINT`` (or the SDK's own ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, ``configure`` builds a tracer provider (parent-based ratio
sampler, ``BRIDGE_TRACE_SAMPLE_RATIO``; batching OTLP/HTTP exporter) for this process. Otherwise no
provider exists, nothing is exported, ``span`` yields None at the cost of one check and ``traceparent``
is None, so no job carries a context.

The W3C trace context travels in the job: the receiver puts ``traceparent`` into the job's payload
(``CALLBACK``/command argument key ``traceparent``, only when tracing is on) and jobs the workers enqueue
carry it in their meta (``job_meta``); the worker opens the job's span as a child of it
(``workers.runtime.worker``). Spans carry ids, codes and statuses, never applicant data. The provider
is this module's, not the global one, so tests install the SDK's in-memory exporter with ``install``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from workers.core.settings import Settings

TRACEPARENT: Final = "traceparent"
"""Key of the W3C context in a job's payload or meta."""

SpanKind = trace.SpanKind

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_STANDARD_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


def configured_endpoint(settings: Settings) -> str | None:
    """Where spans go: ``BRIDGE_OTLP_ENDPOINT``, else the SDK's standard variables; None: tracing off."""
    if settings.bridge_otlp_endpoint:
        return settings.bridge_otlp_endpoint
    return next((os.environ[name] for name in _STANDARD_ENDPOINTS if os.environ.get(name)), None)


def configure(settings: Settings, service: str) -> bool:
    """Turn tracing on for this process when an endpoint is configured; True when it is on. Called once
    by each process at start-up (``service``: ``receiver``, ``worker``)."""
    if _tracer is not None:
        return True
    endpoint = configured_endpoint(settings)
    if endpoint is None:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": f"workfloo-bridge-{service}"}),
        sampler=ParentBased(TraceIdRatioBased(settings.bridge_trace_sample_ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=settings.bridge_otlp_endpoint or None)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    return True


def install(provider: TracerProvider | None) -> None:
    """Use ``provider`` for this process's spans (None: tracing off). Tests pass one with the SDK's
    ``InMemorySpanExporter``."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("workfloo-bridge") if provider is not None else None


def active() -> bool:
    return _tracer is not None


def flush(timeout_ms: int = 5000) -> None:
    """Export what is batched (a forked work-horse exits without running the exporter's thread again)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


@contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span | None]:
    """A span named ``name`` (child of ``parent``, a ``traceparent``, when given; else of the current
    span); yields None, and costs one check, when tracing is off."""
    if _tracer is None:
        yield None
        return
    context = _PROPAGATOR.extract({TRACEPARENT: parent}) if parent else None
    with _tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes) as current:
        yield current


def set_error(span: trace.Span | None, description: str) -> None:
    """Mark ``span`` failed (``description``: a code, never vendor text or applicant data)."""
    if span is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, description))


def traceparent() -> str | None:
    """The current span's W3C ``traceparent``, or None when tracing is off or no span is open."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT)


def job_meta(meta: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """``meta`` for a job enqueued now, with the current ``traceparent`` added when there is one."""
    parent = traceparent()
    if parent is None:
        return dict(meta) if meta else None
    return {**(meta or {}), TRACEPARENT: parent}
