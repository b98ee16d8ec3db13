"""HTTP subscribers over real HTTP: Standard Webhooks signatures, retries, Retry-After, 410, SSRF guard."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.scheduler import RQScheduler
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from workers.core import keys
from workers.core.contract import JOB_SERIALIZER
from workers.core.errors import DestinationRefusedError
from workers.core.events import Event, EventType, fact_event_id
from workers.core.settings import HttpSubscriber, Settings, env_name, get_settings, load_settings
from workers.fanout import webhooks as subscribers
from workers.fanout.publisher import Publisher
from workers.fanout.webhooks import forbidden_reason, next_delay, resolve_destination
from workers.sandbox.serving import ServerThread
from workers.sandbox.wait import wait_until

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def independent_verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks v1, written from the spec (not the library): base64(HMAC-SHA256(key, id.ts.body))."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(part.split(",", 1) == ["v1", expected] for part in headers["webhook-signature"].split(" "))


@dataclass
class Hook:
    """A receiving endpoint whose answers are scripted: one (status, headers) per request, then 200."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)
    redirected_to: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            self.received.append((dict(request.headers), await request.body()))
            status, headers = self.answers.pop(0) if self.answers else (200, {})
            self.answered_at.append(time.time())
            return Response(status_code=status, headers=headers)

        async def elsewhere(request: Request) -> Response:
            self.redirected_to.append(request.url.path)
            return Response(status_code=200)

        return Starlette(
            routes=[Route("/hook", hook, methods=["POST"]), Route("/other", elsewhere, methods=["POST"])]
        )


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """Point the process settings (what RQ jobs read) at the given subscribers."""

    def _configure(subs: list[dict[str, Any]], **env: str) -> Settings:
        monkeypatch.setenv("BRIDGE_HTTP_SUBSCRIBERS", json.dumps(subs))
        monkeypatch.setenv("BRIDGE_HTTP_SUBSCRIBERS_RETRY_SCHEDULE", env.pop("schedule", "0,0,0"))
        for name, value in env.items():
            monkeypatch.setenv(env_name(name), value)
        get_settings.cache_clear()
        return get_settings()

    yield _configure
    get_settings.cache_clear()


def _sub(server: ServerThread, path: str = "/hook", **extra: Any) -> dict[str, Any]:
    return {"url": server.url + path, "types": ["nip.*"], "secret": SECRET, "id": "crm", **extra}


def _work(client: redis.Redis, settings: Settings) -> None:
    queue = Queue(settings.bridge_http_subscribers_queue, connection=client, serializer=JOB_SERIALIZER)
    SimpleWorker([queue], connection=client, serializer=JOB_SERIALIZER).work(
        burst=True, logging_level="WARNING"
    )


def _perform(queue: Queue) -> None:
    """Run the queued jobs with RQ's own ``Job.perform``, without a worker: a burst worker's teardown can
    wait up to a minute for its pub/sub thread, longer than the delays timing tests measure."""
    for job in queue.jobs:
        queue.remove(job)
        job.perform()


def _nip_event(n: int = 0) -> Event:
    return Event(type=EventType.NIP_DELIVERED, execution_id="exec1", data={"n": n})


def test_delivery_is_signed_per_standard_webhooks(
    redis_client: redis.Redis, serve: Callable[..., ServerThread], configure: Callable[..., Settings]
) -> None:
    hook = Hook()
    server = serve(hook.app())
    settings = configure([_sub(server, allow_private=True)])
    publisher = Publisher(redis_client, settings)
    event = _nip_event()

    assert publisher.publish(event)
    assert publisher.publish(Event(type=EventType.WORKFLOO_COMPLETED, execution_id="exec1"))  # not matched
    _work(redis_client, settings)

    assert len(hook.received) == 1
    headers, body = hook.received[0]
    assert body == event.to_json()
    assert headers["webhook-id"] == event.id
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["content-type"] == "application/json"
    assert independent_verify(SECRET, headers, body)
    assert not independent_verify(SECRET, headers, body.replace(b"exec1", b"exec2"))
    other = "whsec_" + base64.b64encode(b"another-secret-of-32-bytes-long!").decode()
    assert not independent_verify(other, headers, body)
    assert redis_client.hget(keys.subscriber_state("crm"), "delivered") == b"1"


def test_503_is_retried_then_succeeds_with_same_webhook_id(
    redis_client: redis.Redis, serve: Callable[..., ServerThread], configure: Callable[..., Settings]
) -> None:
    hook = Hook(answers=[(503, {}), (500, {})])
    server = serve(hook.app())
    settings = configure([_sub(server, allow_private=True)])
    event = _nip_event()
    Publisher(redis_client, settings).publish(event)
    _work(redis_client, settings)

    assert len(hook.received) == 3
    assert {h["webhook-id"] for h, _ in hook.received} == {event.id}
    assert all(independent_verify(SECRET, h, b) for h, b in hook.received)
    last = Job.fetch(
        subscribers.delivery_job_id("crm", event.id, 2), connection=redis_client, serializer=JOB_SERIALIZER
    )
    assert last.get_status() == JobStatus.FINISHED
    assert last.return_value() == "delivered"


def test_delivery_jobs_and_their_results_expire(
    redis_client: redis.Redis, serve: Callable[..., ServerThread], configure: Callable[..., Settings]
) -> None:
    hook = Hook(answers=[(503, {})])
    server = serve(hook.app())
    settings = configure(
        [_sub(server, allow_private=True)], job_result_ttl_seconds="900", job_failure_ttl_seconds="1800"
    )
    event = _nip_event()
    Publisher(redis_client, settings).publish(event)
    _work(redis_client, settings)

    assert len(hook.received) == 2
    for attempt in (0, 1):
        job = Job.fetch(
            subscribers.delivery_job_id("crm", event.id, attempt),
            connection=redis_client,
            serializer=JOB_SERIALIZER,
        )
        assert (job.result_ttl, job.failure_ttl) == (900, 1800)
        assert job.retries_left  # RQ's abandoned-job cleanup retries a delivery instead of failing it
        assert job.timeout == settings.bridge_http_subscribers_timeout_seconds + 30
    per_job = [k for k in redis_client.scan_iter("rq:*") if b"wh_crm_" in k]
    assert len(per_job) >= 4  # two job hashes, two result records
    assert {k: redis_client.ttl(k) for k in per_job if not 0 < redis_client.ttl(k) <= 1800} == {}


def test_gives_up_after_the_last_attempt_of_the_schedule(
    redis_client: redis.Redis, serve: Callable[..., ServerThread], configure: Callable[..., Settings]
) -> None:
    hook = Hook(answers=[(500, {})] * 10)
    server = serve(hook.app())
    settings = configure([_sub(server, allow_private=True)], schedule="0,0")
    event = _nip_event()
    Publisher(redis_client, settings).publish(event)
    _work(redis_client, settings)

    assert len(hook.received) == 2
    last = Job.fetch(
        subscribers.delivery_job_id("crm", event.id, 1), connection=redis_client, serializer=JOB_SERIALIZER
    )
    assert last.return_value() == "gave_up"
    state = redis_client.hgetall(keys.subscriber_state("crm"))
    assert state[b"failed_attempts"] == b"2"
    assert state[b"gave_up"] == b"1"
    assert state[b"last_gave_up_event_id"] == event.id.encode()


def test_retry_after_is_honoured(
    redis_client: redis.Redis, serve: Callable[..., ServerThread], configure: Callable[..., Settings]
) -> None:
    hook = Hook(answers=[(429, {"retry-after": "2"})])
    server = serve(hook.app())
    settings = configure([_sub(server, allow_private=True)])
    event = _nip_event()
    before = time.time()
    queue = Queue(settings.bridge_http_subscribers_queue, connection=redis_client, serializer=JOB_SERIALIZER)
    Publisher(redis_client, settings).publish(event)
    _perform(queue)

    assert len(hook.received) == 1  # the retry waits in RQ's scheduled registry
    retry_id = subscribers.delivery_job_id("crm", event.id, 1)
    scheduled_at = queue.scheduled_job_registry.get_scheduled_time(retry_id)
    assert scheduled_at.timestamp() >= before + 1  # whole seconds in RQ's registry

    scheduler = RQScheduler([queue], connection=redis_client, serializer=JOB_SERIALIZER)
    scheduler.acquire_locks()
    scheduler.enqueue_scheduled_jobs()
    assert queue.count == 0  # not due yet
    time.sleep(max(0.0, scheduled_at.timestamp() - time.time()) + 0.05)
    scheduler.enqueue_scheduled_jobs()
    _perform(queue)
    assert len(hook.received) == 2


def test_a_retry_never_starts_before_the_subscribers_retry_after(
    redis_client: redis.Redis, serve: Callable[..., ServerThread], configure: Callable[..., Settings]
) -> None:
    """RQ keeps scheduled times in whole seconds, dropping the fraction: a retry due 2 s after an answer at
    x.5 s would start 0.5 s early. The attempt that asked for ``Retry-After: 2`` is started at least 2 s
    after the answer, whatever the fraction of the clock."""
    hook = Hook(answers=[(503, {"retry-after": "2"})])
    server = serve(hook.app())
    settings = configure([_sub(server, allow_private=True)])
    queue = Queue(settings.bridge_http_subscribers_queue, connection=redis_client, serializer=JOB_SERIALIZER)
    scheduler = RQScheduler([queue], connection=redis_client, serializer=JOB_SERIALIZER)
    scheduler.acquire_locks()

    time.sleep((0.5 - time.time() % 1) % 1)  # the answer comes at about x.5 s
    Publisher(redis_client, settings).publish(_nip_event())
    _perform(queue)
    assert len(hook.received) == 1

    def second_attempt() -> bool:
        scheduler.enqueue_scheduled_jobs()
        _perform(queue)
        return len(hook.received) == 2

    wait_until(second_attempt, timeout=5, interval=0.02, what="the retry")
    assert hook.answered_at[1] - hook.answered_at[0] >= 2.0


def test_410_disables_the_subscriber(
    redis_client: redis.Redis, serve: Callable[..., ServerThread], configure: Callable[..., Settings]
) -> None:
    hook = Hook(answers=[(410, {})])
    server = serve(hook.app())
    settings = configure([_sub(server, allow_private=True)])
    publisher = Publisher(redis_client, settings)
    first, second, third = _nip_event(1), _nip_event(2), _nip_event(3)
    publisher.publish(first)
    publisher.publish(second)  # queued before the 410 is seen: skipped when its turn comes
    _work(redis_client, settings)

    assert len(hook.received) == 1
    reason = subscribers.disabled_reason(redis_client, "crm")
    assert reason is not None
    assert reason["reason"] == "410 Gone"
    assert reason["event_id"] == first.id

    publisher.publish(third)  # nothing is enqueued for a disabled subscriber
    queue = Queue(settings.bridge_http_subscribers_queue, connection=redis_client, serializer=JOB_SERIALIZER)
    assert queue.count == 0
    assert redis_client.xlen(settings.events_stream) == 3  # the stream itself is unaffected

    assert subscribers.enable(redis_client, "crm")
    publisher.publish(_nip_event(4))
    _work(redis_client, settings)
    assert len(hook.received) == 2


def test_redirects_are_not_followed(
    redis_client: redis.Redis, serve: Callable[..., ServerThread], configure: Callable[..., Settings]
) -> None:
    hook = Hook(answers=[(307, {"location": "/other"})] * 3)
    server = serve(hook.app())
    settings = configure([_sub(server, allow_private=True)], schedule="0")
    Publisher(redis_client, settings).publish(_nip_event())
    _work(redis_client, settings)
    assert len(hook.received) == 1
    assert hook.redirected_to == []


def test_ssrf_guard_refuses_loopback_delivery_by_default(
    redis_client: redis.Redis, serve: Callable[..., ServerThread], configure: Callable[..., Settings]
) -> None:
    hook = Hook()
    server = serve(hook.app())
    settings = configure([_sub(server)], schedule="0,0")
    event = _nip_event()
    Publisher(redis_client, settings).publish(event)
    _work(redis_client, settings)

    assert hook.received == []  # checked at delivery time: never connected
    result = redis_client.hget(keys.subscriber_state("crm"), "last_result")
    assert result is not None
    assert result.startswith(b"refused: address 127.0.0.1 is loopback")


def test_global_allow_private_setting_allows_loopback(
    redis_client: redis.Redis, serve: Callable[..., ServerThread], configure: Callable[..., Settings]
) -> None:
    hook = Hook()
    server = serve(hook.app())
    settings = configure([_sub(server)], bridge_http_subscribers_allow_private="true")
    Publisher(redis_client, settings).publish(_nip_event())
    _work(redis_client, settings)
    assert len(hook.received) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:8080/",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://172.16.0.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://[::1]/",
        "http://[::]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[ff02::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:7f00:1::]/",
        "http://[fec0::1]/",  # site-local: is_global says True on Python 3.11
        "http://192.0.0.8/",  # IETF protocol assignments
        "http://[64:ff9b:1::a9fe:a9fe]/",  # local-use NAT64
        "http://198.51.100.7/",
        "http://[2001:db8::1]/",
        "http://[3fff::1]/",  # documentation (RFC 9637)
    ],
)
def test_ssrf_guard_refuses_non_public_addresses(url: str) -> None:
    with pytest.raises(DestinationRefusedError):
        resolve_destination(url, allow_private=False)
    assert resolve_destination(url, allow_private=True).port in (80, 8080)


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None
    host = f"[{address}]" if ":" in address else address
    target = resolve_destination(f"https://{host}/hook", allow_private=False)
    assert str(target.ip) == address
    assert target.port == 443


def test_retry_delay_has_bounded_jitter_and_respects_retry_after() -> None:
    settings = load_settings(
        bridge_http_subscribers_retry_schedule="0,10,100", bridge_http_subscribers_jitter=0.2
    )
    delays = {next_delay(settings, 1, None) for _ in range(50)}
    assert all(8 <= d <= 12 for d in delays)
    assert len(delays) > 1  # jittered
    assert next_delay(settings, 0, None) == 0
    assert next_delay(settings, 1, 500.0) == 500.0
    capped = load_settings(bridge_http_subscribers_max_retry_after_seconds=60)
    assert next_delay(capped, 1, 10_000.0) == 60


def test_subscriber_config_is_validated() -> None:
    from workers.core.errors import SettingsError

    with pytest.raises(SettingsError, match="BRIDGE_HTTP_SUBSCRIBERS"):
        load_settings(bridge_http_subscribers=[{"url": "ftp://x", "secret": SECRET}])
    with pytest.raises(SettingsError, match="BRIDGE_HTTP_SUBSCRIBERS"):
        load_settings(bridge_http_subscribers=[{"url": "https://x.example", "secret": "plain"}])
    settings = load_settings(bridge_http_subscribers=[{"url": "https://x.example/h", "secret": SECRET}])
    assert settings.bridge_http_subscribers[0].types == ["*"]
    assert SECRET not in repr(settings)


def test_delivery_jobs_are_enqueued_with_the_event_and_only_once(
    redis_client: redis.Redis, configure: Callable[..., Settings]
) -> None:
    settings = configure(
        [
            {"url": "https://a.example/h", "types": ["nip.*"], "secret": SECRET, "id": "a"},
            {"url": "https://b.example/h", "types": ["workfloo.*"], "secret": SECRET, "id": "b"},
            {"url": "https://c.example/h", "secret": SECRET, "id": "c"},
        ]
    )
    publisher = Publisher(redis_client, settings)
    assert publisher.publish(_nip_event(), once_key="same")
    assert not publisher.publish(_nip_event(), once_key="same")
    event = publisher.timeline("exec1")[0]  # as published: the fact's id
    assert event.id == fact_event_id("same")
    queue = Queue(settings.bridge_http_subscribers_queue, connection=redis_client, serializer=JOB_SERIALIZER)
    assert sorted(queue.job_ids) == sorted(subscribers.delivery_job_id(k, event.id, 0) for k in ("a", "c"))
    job = queue.jobs[0]
    assert job.func_name == subscribers.DELIVER_FUNC
    assert job.args[1] == event.to_json().decode()
    assert SECRET not in str(job.args)  # the secret never goes into Redis


BIG_BODY = 200 * 1024 * 1024


def test_a_huge_subscriber_answer_is_not_read(serve: Callable[..., ServerThread]) -> None:
    """A subscriber answering 200 MiB drove a worker from 52 to 455 MiB (an OOM kill under its limit):
    only the status and headers are read now, whatever the body."""
    import threading

    import psutil
    from starlette.responses import StreamingResponse

    chunk = b"x" * (1024 * 1024)

    async def huge(request: Request) -> Response:
        await request.body()

        async def body() -> Any:
            for _ in range(BIG_BODY // len(chunk)):
                yield chunk

        return StreamingResponse(body(), headers={"content-length": str(BIG_BODY)})

    server = serve(Starlette(routes=[Route("/hook", huge, methods=["POST"])]))
    subscriber = HttpSubscriber(url=server.url + "/hook", secret=SECRET, allow_private=True)
    process = psutil.Process()
    before = peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = subscribers.attempt_delivery(subscriber, "msg_1", "{}", load_settings(), allow_private=True)
    finally:
        done.set()
        sampler.join()
    grown = (peak - before) / 2**20
    assert result.status_code == 200
    assert grown < 32, f"RSS grew {grown:.0f} MiB while a 200 MiB answer came in"
