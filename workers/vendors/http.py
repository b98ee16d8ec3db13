"""HTTP plumbing both vendor clients share: how their ``httpx.Client`` is built, the per-process cache
of clients (pooled sockets must never cross a fork), and the ``Retry-After`` parser.

The vendor settings (``BRIDGE_VENDOR_CONNECT_TIMEOUT_SECONDS``, ``BRIDGE_VENDOR_READ_TIMEOUT_SECONDS``,
``BRIDGE_VENDOR_MAX_CONNECTIONS``) are read here only, so the two clients cannot drift apart.
"""

from __future__ import annotations

import email.utils
import math
import os
import threading
from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import httpx

from workers.core import tracing
from workers.core.settings import Settings

T = TypeVar("T")
C = TypeVar("C")

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
"""For a client built without settings (tests, the CLI): the settings' defaults."""

DEFAULT_MAX_CONNECTIONS = 20


def timeout_from_settings(settings: Settings) -> httpx.Timeout:
    """Connect timeout, and the read timeout for read, write and pool waits alike."""
    read = settings.vendor_read_timeout_seconds
    return httpx.Timeout(connect=settings.vendor_connect_timeout_seconds, read=read, write=read, pool=read)


def pool_options(settings: Settings) -> dict[str, Any]:
    """The ``timeout`` and ``max_connections`` keyword arguments of a vendor client's constructor."""
    return {"timeout": timeout_from_settings(settings), "max_connections": settings.vendor_max_connections}


def vendor_http_client(
    base_url: str,
    headers: Mapping[str, str],
    *,
    timeout: httpx.Timeout | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    transport: httpx.BaseTransport | None = None,
    event_hooks: Mapping[str, list[Any]] | None = None,
    vendor: str = "vendor",
) -> httpx.Client:
    """A keep-alive pool of ``max_connections`` to one vendor; redirects are never followed (a vendor
    redirect is an error to classify, not a place to send credentials). Each request is a client span
    named after ``vendor`` while tracing is on (``TracedTransport``)."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.Client(
        base_url=base_url,
        headers=dict(headers),
        timeout=timeout or DEFAULT_TIMEOUT,
        limits=limits,
        transport=TracedTransport(transport or httpx.HTTPTransport(limits=limits), vendor),
        event_hooks=dict(event_hooks or {}),
        follow_redirects=False,
    )


class TracedTransport(httpx.BaseTransport):
    """A client span around each vendor request (``workers.core.tracing``): method, path, status code;
    never the body, the query or a header. No trace context is sent to the vendor (Kompliant signs its
    requests, and the vendors do not join the bridge's traces). One check per request when tracing is off."""

    def __init__(self, inner: httpx.BaseTransport, vendor: str) -> None:
        self.inner = inner
        self.vendor = vendor

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not tracing.active():
            return self.inner.handle_request(request)
        attributes = {
            "http.request.method": request.method,
            "url.path": request.url.path,
            "server.address": request.url.host,
            "workfloo.vendor": self.vendor,
        }
        name = f"{self.vendor} {request.method}"
        with tracing.span(name, kind=tracing.SpanKind.CLIENT, attributes=attributes) as current:
            response = self.inner.handle_request(request)
            if current is not None:
                current.set_attribute("http.response.status_code", response.status_code)
            return response

    def close(self) -> None:
        self.inner.close()


class ProcessLocal(Generic[T]):
    """``get(key, factory)``: one object per key for the current process.

    A forked RQ work-horse must not reuse its parent's sockets, so entries made by another pid are
    dropped (without closing: the parent still owns them) the first time the child asks.
    """

    def __init__(self) -> None:
        self._items: dict[tuple[int, Hashable], T] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, factory: Callable[[], T]) -> T:
        pid = os.getpid()
        with self._lock:
            item = self._items.get((pid, key))
            if item is None:
                for stale in [k for k in self._items if k[0] != pid]:
                    del self._items[stale]
                item = factory()
                self._items[(pid, key)] = item
            return item


class SharedClients(Generic[C]):
    """One vendor client per process for each distinct configuration.

    ``identity(settings)`` names the vendor settings the client is built from (URL, credentials, flags);
    the shared HTTP settings are added to the key here, so a change to any of them builds a new client.
    """

    def __init__(
        self, build: Callable[[Settings], C], identity: Callable[[Settings], tuple[Hashable, ...]]
    ) -> None:
        self._build = build
        self._identity = identity
        self._cache: ProcessLocal[C] = ProcessLocal()

    def get(self, settings: Settings) -> C:
        key = (
            *self._identity(settings),
            settings.vendor_connect_timeout_seconds,
            settings.vendor_read_timeout_seconds,
            settings.vendor_max_connections,
        )
        return self._cache.get(key, lambda: self._build(settings))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).

    Returns None when absent or unparseable; a date in the past gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isnan(seconds) or math.isinf(seconds):
            return None
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())
