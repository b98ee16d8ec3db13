"""Signed HTTP subscribers: each matching event is POSTed per the Standard Webhooks specification.

Delivery is an RQ job (``workers.fanout.webhooks.deliver``) on ``bridge_http_subscribers_queue``. The first
attempt is enqueued by the publisher's Lua script, atomically with the stream append. A failed attempt
enqueues the next one itself (``Queue.enqueue_at``, due time rounded up to RQ's whole seconds; the
worker that runs this queue runs RQ's scheduler, with the project's worker class for the JSON
serializer) after the configured schedule with jitter, never before the subscriber's ``Retry-After``.
``410 Gone`` disables the subscriber (flag in Redis, reason kept) until ``enable()`` is called.

SSRF guard: the host is resolved at every attempt (DNS may change) and every address it resolves to
must be public unless private destinations are allowed; the request then goes to the checked address
(``Host`` header and TLS SNI keep the name), so a second lookup cannot swap it. Redirects are not followed.
"""

from __future__ import annotations

import ipaddress
import math
import random
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import orjson
import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus, get_current_job
from rq.utils import now as rq_now
from standardwebhooks.webhooks import Webhook

from workers.core import keys, tracing
from workers.core.contract import JOB_SERIALIZER
from workers.core.errors import DestinationRefusedError
from workers.core.events import Event
from workers.core.log import get_logger
from workers.core.metrics import count_webhook_delivery
from workers.core.redis_client import redis_from_settings
from workers.core.settings import HttpSubscriber, Settings, get_settings
from workers.vendors.http import parse_retry_after

log = get_logger(__name__)

DELIVER_FUNC = "workers.fanout.webhooks.deliver"
USER_AGENT = "workfloo-bridge-webhooks/1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
MAX_RESPONSE_BYTES = 4096
"""Most of a subscriber's answer body ever read: the status and Retry-After are all a delivery needs."""

# IANA special-purpose blocks that are not globally reachable but which ``is_global`` of some Python
# versions (3.11: site-local fec0::/10, 192.0.0.0/24, ...) still calls global.
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(block)
    for block in (
        "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32",
        "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16", "fc00::/7",
        "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip


# --- Redis keys (subscriber state) -----------------------------------------------------------------


# --- SSRF guard ------------------------------------------------------------------------------------


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a globally routable unicast address, or None when it is: only global addresses
    pass (``is_global`` and outside every special-purpose block of ``_NOT_GLOBAL``)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            reason = forbidden_reason(embedded)
            return f"embedded {reason}" if reason else None
    for attr in (
        "is_unspecified",
        "is_loopback",
        "is_link_local",
        "is_multicast",
        "is_private",
        "is_reserved",
    ):
        if getattr(ip, attr):
            return attr.removeprefix("is_")
    if getattr(ip, "is_site_local", False):
        return "site_local"
    if not ip.is_global or any(ip in block for block in _NOT_GLOBAL if block.version == ip.version):
        return "not_global"
    return None


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to ``ip`` while presenting ``host`` (Host header, TLS SNI)."""

    scheme: str
    host: str
    port: int
    ip: IPAddress


def resolve_destination(url: str, *, allow_private: bool) -> Target:
    """Resolve the URL's host now and refuse non-public addresses unless ``allow_private``."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise DestinationRefusedError("not an absolute http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DestinationRefusedError(f"cannot resolve host: {exc.strerror}") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise DestinationRefusedError("host resolves to no address")
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(address)
            if reason:
                raise DestinationRefusedError(f"address {address} is {reason}")
    return Target(parts.scheme, host, port, addresses[0])


# --- signing ---------------------------------------------------------------------------------------


def signature_headers(
    secret: str, msg_id: str, body: str, timestamp: datetime | None = None
) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for ``body`` (Standard Webhooks)."""
    when = timestamp or datetime.now(UTC)
    signature: str = Webhook(secret).sign(msg_id=msg_id, timestamp=when, data=body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }


# --- enqueueing (used by the publisher's Lua call) -------------------------------------------------


@dataclass(frozen=True)
class PreparedDelivery:
    """An RQ job hash ready to be stored by the publisher's script (built by RQ's own ``Job.to_dict``)."""

    subscriber_key: str
    job_id: str
    job_key: str
    mapping: dict[str, Any]
    disabled_key: str
    queue_key: str
    queues_key: str


def delivery_job_id(subscriber_key: str, event_id: str, attempt: int) -> str:
    return f"wh_{subscriber_key}_{event_id}_{attempt}"


def _job_timeout(settings: Settings) -> int:
    return int(settings.bridge_http_subscribers_timeout_seconds) + 30


def _crash_retry() -> Retry:
    """RQ-level retries, only for a worker that died mid-job or an unexpected error (e.g. Redis down while
    scheduling the next attempt): HTTP failures never raise, they follow the delivery schedule."""
    return Retry(max=3, interval=[10, 60, 300])


def prepare_deliveries(
    connection: redis.Redis, settings: Settings, event: Event, envelope: bytes
) -> list[PreparedDelivery]:
    """First-attempt jobs for every configured subscriber whose patterns match ``event.type``."""
    wanted = [s for s in settings.bridge_http_subscribers if s.wants(event.type)]
    if not wanted:
        return []
    queue = Queue(settings.bridge_http_subscribers_queue, connection=connection, serializer=JOB_SERIALIZER)
    body = envelope.decode()
    prepared = []
    for subscriber in wanted:
        job_id = delivery_job_id(subscriber.key, event.id, 0)
        job = Job.create(
            DELIVER_FUNC,
            args=(subscriber.key, body, 0),
            connection=connection,
            id=job_id,
            timeout=_job_timeout(settings),
            result_ttl=settings.job_result_ttl_seconds,
            failure_ttl=settings.job_failure_ttl_seconds,
            retry=_crash_retry(),
            origin=queue.name,
            status=JobStatus.QUEUED,
            description=f"webhook {subscriber.key} {event.type} {event.id}",
            serializer=JOB_SERIALIZER,
            meta=tracing.job_meta(),
        )
        job.enqueued_at = rq_now()
        prepared.append(
            PreparedDelivery(
                subscriber_key=subscriber.key,
                job_id=job_id,
                job_key=job.key,
                mapping=job.to_dict(),
                disabled_key=keys.subscriber_disabled(subscriber.key),
                queue_key=queue.key,
                queues_key=Queue.redis_queues_keys,
            )
        )
    return prepared


# --- delivery (the RQ job) -------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    retry_after: float | None
    error: str


def attempt_delivery(
    subscriber: HttpSubscriber, msg_id: str, body: str, settings: Settings, *, allow_private: bool
) -> AttemptResult:
    """One signed POST to the subscriber's checked address; never raises for network errors."""
    try:
        target = resolve_destination(subscriber.url, allow_private=allow_private)
    except DestinationRefusedError as exc:
        return AttemptResult(None, None, f"refused: {exc}")
    url = httpx.URL(subscriber.url)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "host": urlsplit(subscriber.url).netloc,
        **signature_headers(subscriber.secret.get_secret_value(), msg_id, body),
    }
    pinned = url.copy_with(host=str(target.ip))
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        with httpx.Client(
            timeout=settings.bridge_http_subscribers_timeout_seconds, follow_redirects=False, trust_env=False
        ) as client:
            request = client.build_request(
                "POST", pinned, content=body.encode(), headers=headers, extensions=extensions
            )
            # Streamed, and at most MAX_RESPONSE_BYTES of the body read: a subscriber answering hundreds
            # of MiB must not grow the worker (closing the response drops the connection).
            response = client.send(request, stream=True)
            try:
                read = 0
                for part in response.iter_raw(MAX_RESPONSE_BYTES):
                    read += len(part)
                    if read >= MAX_RESPONSE_BYTES:
                        break
            finally:
                response.close()
    except httpx.HTTPError as exc:
        return AttemptResult(None, None, f"{type(exc).__name__}")
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    return AttemptResult(response.status_code, retry_after, f"HTTP {response.status_code}")


def next_delay(settings: Settings, next_attempt: int, retry_after: float | None) -> float:
    """Seconds before attempt ``next_attempt`` (0-based): schedule ± jitter, at least ``Retry-After``."""
    base = settings.bridge_http_subscribers_retry_schedule[next_attempt]
    jitter = settings.bridge_http_subscribers_jitter
    delay = base * (1 + random.uniform(-jitter, jitter)) if base > 0 else 0.0
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.bridge_http_subscribers_max_retry_after_seconds))
    return delay


def due_at(delay: float, now: float | None = None) -> datetime:
    """When a retry ``delay`` seconds from ``now`` is due, rounded UP to a whole second: RQ's scheduled
    registry drops the fraction (``enqueue_in`` could start a retry up to 1 s before a subscriber's
    ``Retry-After``); rounded up it starts at most 1 s late, never early."""
    return datetime.fromtimestamp(math.ceil((time.time() if now is None else now) + delay), UTC)


def find_subscriber(settings: Settings, subscriber_key: str) -> HttpSubscriber | None:
    for subscriber in settings.bridge_http_subscribers:
        if subscriber.key == subscriber_key:
            return subscriber
    return None


def _connection(settings: Settings) -> redis.Redis:
    job = get_current_job()
    if job is not None:
        connection: redis.Redis = job.connection
        return connection
    return redis_from_settings(settings)


def deliver(subscriber_key: str, envelope: str, attempt: int = 0, settings: Settings | None = None) -> str:
    """RQ job: one delivery attempt of ``envelope`` to a subscriber; schedules the next one on failure.

    Returns ``delivered``, ``disabled``, ``retry_scheduled``, ``gave_up`` (the schedule is exhausted;
    recorded in the subscriber's state hash) or ``unknown_subscriber``, and counts it
    (``bridge_webhook_deliveries_total``).
    """
    outcome = _deliver(subscriber_key, envelope, attempt, settings or get_settings())
    count_webhook_delivery(subscriber_key, outcome)
    return outcome


def _deliver(subscriber_key: str, envelope: str, attempt: int, settings: Settings) -> str:
    connection = _connection(settings)
    subscriber = find_subscriber(settings, subscriber_key)
    if subscriber is None:
        log.warning("webhook_subscriber_unknown", subscriber=subscriber_key)
        return "unknown_subscriber"
    if connection.exists(keys.subscriber_disabled(subscriber_key)):
        return "disabled"
    event_id = str(orjson.loads(envelope)["id"])
    allow_private = subscriber.allow_private or settings.bridge_http_subscribers_allow_private
    result = attempt_delivery(subscriber, event_id, envelope, settings, allow_private=allow_private)
    now = datetime.now(UTC).isoformat()
    state = keys.subscriber_state(subscriber_key)
    fields: dict[Any, Any] = {
        "last_attempt_at": now,
        "last_event_id": event_id,
        "last_result": result.error,
        "last_status": str(result.status_code or ""),
    }
    pipe = connection.pipeline(transaction=False)
    pipe.hset(state, mapping=fields)
    code = result.status_code
    if code is not None and 200 <= code < 300:
        pipe.hincrby(state, "delivered", 1)
        pipe.execute()
        return "delivered"
    if code == 410:
        reason = orjson.dumps({"reason": "410 Gone", "at": now, "event_id": event_id})
        pipe.set(keys.subscriber_disabled(subscriber_key), reason)
        pipe.hincrby(state, "failed_attempts", 1)
        pipe.execute()
        log.warning("webhook_subscriber_disabled", subscriber=subscriber_key, reason="410 Gone")
        return "disabled"
    pipe.hincrby(state, "failed_attempts", 1)
    pipe.execute()
    next_attempt = attempt + 1
    schedule = settings.bridge_http_subscribers_retry_schedule
    if next_attempt >= len(schedule):
        connection.hset(state, mapping={"last_gave_up_event_id": event_id, "last_gave_up_at": now})
        connection.hincrby(state, "gave_up", 1)
        log.warning("webhook_gave_up", subscriber=subscriber_key, event_id=event_id, attempts=next_attempt)
        return "gave_up"
    delay = next_delay(settings, next_attempt, result.retry_after)
    queue = Queue(settings.bridge_http_subscribers_queue, connection=connection, serializer=JOB_SERIALIZER)
    job_id = delivery_job_id(subscriber_key, event_id, next_attempt)
    options: dict[str, Any] = {
        "job_id": job_id,
        "job_timeout": _job_timeout(settings),
        "result_ttl": settings.job_result_ttl_seconds,
        "failure_ttl": settings.job_failure_ttl_seconds,
        "retry": _crash_retry(),
        "description": f"webhook {subscriber_key} {event_id} attempt {next_attempt}",
        "meta": tracing.job_meta(),
    }
    args = (subscriber_key, envelope, next_attempt)
    if delay <= 0:
        queue.enqueue(DELIVER_FUNC, *args, **options)
    else:
        queue.enqueue_at(due_at(delay), DELIVER_FUNC, *args, **options)
    log.info(
        "webhook_retry_scheduled",
        subscriber=subscriber_key,
        event_id=event_id,
        attempt=next_attempt,
        delay_seconds=round(delay, 3),
        result=result.error,
    )
    return "retry_scheduled"


def disable(connection: redis.Redis, subscriber_key: str, reason: str = "operator") -> bool:
    """Disable a subscriber as ``410 Gone`` does (deliveries return ``disabled`` until ``enable``); True
    when it was enabled. ``reason`` is a code (``operator``), kept with the time."""
    record = orjson.dumps({"reason": reason, "at": datetime.now(UTC).isoformat()})
    return bool(connection.set(keys.subscriber_disabled(subscriber_key), record, nx=True))


def subscribers(connection: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """Each configured HTTP subscriber for operators: key, destination (scheme, host, path: no query),
    types, whether and why it is disabled, and its delivery counters and last attempt."""
    rows: list[dict[str, Any]] = []
    for subscriber in settings.bridge_http_subscribers:
        parts = urlsplit(subscriber.url)
        counters = {
            k.decode(): v.decode()
            for k, v in cast(
                dict[bytes, bytes], connection.hgetall(keys.subscriber_state(subscriber.key))
            ).items()
        }
        rows.append(
            {
                "key": subscriber.key,
                "url": f"{parts.scheme}://{parts.netloc}{parts.path}",
                "types": list(subscriber.types),
                "disabled": disabled_reason(connection, subscriber.key),
                "delivered": int(counters.get("delivered", 0)),
                "failed_attempts": int(counters.get("failed_attempts", 0)),
                "last_attempt_at": counters.get("last_attempt_at"),
                "last_status": counters.get("last_status") or None,
                "last_result": counters.get("last_result") or None,
            }
        )
    return rows


def enable(connection: redis.Redis, subscriber_key: str) -> bool:
    """Re-enable a subscriber disabled by ``410 Gone`` or ``disable``; True when it was disabled."""
    return bool(connection.delete(keys.subscriber_disabled(subscriber_key)))


def disabled_reason(connection: redis.Redis, subscriber_key: str) -> dict[str, Any] | None:
    raw = connection.get(keys.subscriber_disabled(subscriber_key))
    if raw is None:
        return None
    reason: dict[str, Any] = orjson.loads(raw)
    return reason
