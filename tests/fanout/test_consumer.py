"""Consumer groups: catch-up, claiming from a dead consumer, dead-lettering, type filtering."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from workers.core import keys
from workers.core.events import Event, EventType
from workers.core.settings import load_settings
from workers.fanout.consumer import Consumer
from workers.fanout.publisher import Publisher


class Killed(BaseException):
    """Stands in for the process dying mid-handler: not an Exception, so nothing catches it."""


def _publish(client: redis.Redis, n: int, type_: str = EventType.NIP_SENT) -> list[str]:
    events = [Event(type=type_, execution_id=f"e{i % 7}", data={"n": i}) for i in range(n)]
    assert all(Publisher(client, load_settings()).publish_many(events))
    return [e.id for e in events]


def _drain(consumer: Consumer, until: float = 10.0) -> None:
    """Run until a read returns nothing (bounded in time)."""
    deadline = time.monotonic() + until
    while consumer.run_once(block=False) and time.monotonic() < deadline:
        pass


def _pending(client: redis.Redis, group: str) -> int:
    return int(client.xpending(load_settings().events_stream, group)["pending"])


def test_subscriber_down_catches_up_and_sees_each_event_once(redis_client: redis.Redis) -> None:
    seen: list[str] = []
    consumer = Consumer(redis_client, "crm", "crm-1", lambda e: seen.append(e.id), settings=load_settings())
    consumer.ensure_group()  # the group exists, then the service goes down

    published = _publish(redis_client, 1000)
    _drain(consumer)

    assert seen == published  # every one, once, in order
    assert _pending(redis_client, "crm") == 0
    assert consumer.run_once(block=False) == 0  # nothing delivered again after acking
    assert len(seen) == 1000


def test_start_id_zero_reads_history_and_dollar_does_not(redis_client: redis.Redis) -> None:
    published = _publish(redis_client, 5)
    old: list[str] = []
    new: list[str] = []
    Consumer(redis_client, "audit", "a", lambda e: old.append(e.id), start_id="0").run_once(block=False)
    late = Consumer(redis_client, "live", "l", lambda e: new.append(e.id), start_id="$")
    late.ensure_group()
    assert late.run_once(block=False) == 0
    assert old == published
    assert new == []


def test_killed_consumer_entries_are_claimed_by_another(redis_client: redis.Redis) -> None:
    published = _publish(redis_client, 20)
    settings = load_settings()

    def die(event: Event) -> None:
        raise Killed

    first = Consumer(
        redis_client, "g", "dies", die, claim_idle_ms=100, count=100, start_id="0", settings=settings
    )
    with pytest.raises(Killed):
        first.run_once(block=False)
    assert _pending(redis_client, "g") == 20  # read, never acknowledged

    seen: list[str] = []
    second = Consumer(
        redis_client, "g", "rescuer", lambda e: seen.append(e.id), claim_idle_ms=100, settings=settings
    )
    assert second.run_once(block=False) == 0  # not idle long enough yet: nothing is stolen
    time.sleep(0.15)
    second._last_claim = float("-inf")  # the claim interval is time-based; do not wait for it
    _drain(second)

    assert sorted(seen) == sorted(published)
    assert second.stats.claimed == 20
    assert _pending(redis_client, "g") == 0


def test_poison_entry_goes_to_dead_letter_after_max_deliveries(redis_client: redis.Redis) -> None:
    settings = load_settings()
    [poison_id] = _publish(redis_client, 1)
    calls: list[str] = []

    def explode(event: Event) -> None:
        calls.append(event.id)
        raise ValueError("cannot handle")

    consumer = Consumer(
        redis_client,
        "g",
        "c",
        explode,
        claim_idle_ms=20,
        claim_interval_ms=0,
        max_deliveries=3,
        start_id="0",
        settings=settings,
    )
    deadline = time.monotonic() + 5
    while consumer.stats.dead_lettered == 0 and time.monotonic() < deadline:
        consumer.run_once(block=False)
        time.sleep(0.025)

    assert calls == [poison_id] * 3
    dead = redis_client.xrange(keys.DEAD_LETTER_STREAM)
    assert len(dead) == 1
    record = dead[0][1]
    original = redis_client.xrange(settings.events_stream)[0]
    assert record[b"original_id"] == original[0]
    assert record[b"group"] == b"g"
    assert record[b"deliveries"] == b"4"
    assert b"without ack" in record[b"reason"]
    assert Event.from_json(record[b"event"]).id == poison_id
    assert _pending(redis_client, "g") == 0


def test_unparseable_entry_is_dead_lettered_at_once(redis_client: redis.Redis) -> None:
    settings = load_settings()
    redis_client.xadd(settings.events_stream, {"type": "nip.sent", "execution_id": "", "event": "{not json"})
    consumer = Consumer(redis_client, "g", "c", lambda e: None, start_id="0", settings=settings)
    consumer.run_once(block=False)
    [(_, record)] = redis_client.xrange(keys.DEAD_LETTER_STREAM)
    assert record[b"reason"] == b"unparseable envelope"
    assert _pending(redis_client, "g") == 0


def test_type_filter_acks_other_types_without_calling_handler(redis_client: redis.Redis) -> None:
    nip = _publish(redis_client, 3, EventType.NIP_DELIVERED)
    _publish(redis_client, 3, EventType.WORKFLOO_COMPLETED)
    nip += _publish(redis_client, 2, EventType.NIP_FAILED)
    seen: list[Event] = []
    consumer = Consumer(redis_client, "nips", "n", seen.append, types=["nip.*"], start_id="0")
    _drain(consumer)
    assert [e.id for e in seen] == nip
    assert all(e.type.startswith("nip.") for e in seen)
    assert consumer.stats.filtered == 3
    assert _pending(redis_client, "nips") == 0


def test_run_stops_on_event_and_handles_live_events(redis_client: redis.Redis) -> None:
    seen: list[str] = []
    consumer = Consumer(redis_client, "live", "l", lambda e: seen.append(e.id), block_ms=50)
    consumer.ensure_group()
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    published = _publish(redis_client, 10)
    deadline = time.monotonic() + 5
    while len(seen) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert seen == published


def test_failed_handler_is_retried_after_claim_idle_and_then_acked(redis_client: redis.Redis) -> None:
    [event_id] = _publish(redis_client, 1)
    calls: list[str] = []

    def flaky(event: Event) -> None:
        calls.append(event.id)
        if len(calls) == 1:
            raise ConnectionError("downstream blip")

    consumer = Consumer(
        redis_client, "g", "c", flaky, claim_idle_ms=30, claim_interval_ms=0, max_deliveries=3, start_id="0"
    )
    consumer.run_once(block=False)
    assert _pending(redis_client, "g") == 1
    time.sleep(0.05)
    consumer.run_once(block=False)
    assert calls == [event_id, event_id]
    assert _pending(redis_client, "g") == 0
    assert redis_client.xlen(keys.DEAD_LETTER_STREAM) == 0
