"""Publisher: one atomic step appends to the stream, the timeline and pub/sub, once per once_key."""

from __future__ import annotations

import time

import orjson
import pytest
import redis

from workers.core import keys
from workers.core.events import Event, EventType, Source
from workers.core.settings import load_settings
from workers.fanout.publisher import Publisher, PublishItem
from workers.sandbox.wait import wait_until


def _event(execution_id: str | None = "exec1", type_: str = EventType.NIP_SENT, **data: object) -> Event:
    return Event(type=type_, execution_id=execution_id, source=Source.KIBAN, data=dict(data))


def test_publish_appends_stream_timeline_and_state(redis_client: redis.Redis) -> None:
    settings = load_settings()
    publisher = Publisher(redis_client, settings)
    event = _event(link_id="L1")

    assert publisher.publish(event, state_key=keys.execution("exec1"), state_fields={"nip_status": "SENT"})

    entries = redis_client.xrange(settings.events_stream)
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"type"] == b"nip.sent"
    assert fields[b"execution_id"] == b"exec1"
    assert orjson.loads(fields[b"event"]) == orjson.loads(event.to_json())
    assert redis_client.hget(keys.execution("exec1"), "nip_status") == b"SENT"
    assert publisher.timeline("exec1") == [event]
    ttl = redis_client.ttl(keys.timeline("exec1"))
    assert 0 < ttl <= settings.events_timeline_ttl_seconds


def test_state_fields_set_the_state_hash_ttl_and_once_keys_expire(redis_client: redis.Redis) -> None:
    settings = load_settings(
        bridge_execution_retention_seconds=7200, bridge_dedupe_ttl_seconds=600, job_failure_ttl_seconds=3600
    )
    publisher = Publisher(redis_client, settings)

    publisher.publish(_event(), once_key="o1", state_key=keys.execution("exec1"), state_fields={"a": "1"})

    assert 7190 <= redis_client.ttl(keys.execution("exec1")) <= 7200
    assert 4190 <= redis_client.ttl(keys.event_once("o1")) <= 4200


def test_once_key_makes_second_publish_a_no_op(redis_client: redis.Redis) -> None:
    settings = load_settings()
    publisher = Publisher(redis_client, settings)
    state = keys.execution("exec1")

    assert publisher.publish(_event(), once_key="nip-sent-exec1", state_key=state, state_fields={"a": "1"})
    assert not publisher.publish(
        _event(), once_key="nip-sent-exec1", state_key=state, state_fields={"a": "2"}
    )

    assert redis_client.xlen(settings.events_stream) == 1
    assert redis_client.llen(keys.timeline("exec1")) == 1
    assert redis_client.hget(state, "a") == b"1"  # the no-op left the state alone
    ttl = redis_client.ttl(keys.event_once("nip-sent-exec1"))
    assert 0 < ttl <= settings.event_once_ttl_seconds
    # A different once_key publishes.
    assert publisher.publish(_event(), once_key="nip-sent-exec1-2")
    assert redis_client.xlen(settings.events_stream) == 2


def test_event_without_execution_has_no_timeline(redis_client: redis.Redis) -> None:
    publisher = Publisher(redis_client, load_settings())
    assert publisher.publish(_event(execution_id=None, type_=EventType.ACTION_FAILED))
    assert redis_client.xrange(publisher.settings.events_stream)[0][1][b"execution_id"] == b""
    assert redis_client.keys(keys.timeline("*")) == []


def test_pubsub_receives_live_events_of_its_type(redis_client: redis.Redis) -> None:
    publisher = Publisher(redis_client, load_settings())
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.channel("nip.sent"))
    assert pubsub.get_message(timeout=1.0)["type"] == "subscribe"  # type: ignore[index]

    sent = _event()
    publisher.publish(_event(type_=EventType.NIP_PENDING))
    publisher.publish(sent)

    deadline = time.monotonic() + 2.0
    message = None
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
    assert message is not None
    assert Event.from_json(message["data"]) == sent
    assert pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1) is None
    pubsub.close()


def test_stream_is_bounded_only_by_the_backstop_above_the_hard_cap(redis_client: redis.Redis) -> None:
    # Trimming to the soft cap (and reporting losses) is the retention job's; the publisher only keeps
    # the stream under a tenth (at least 1000 entries) above the hard cap.
    settings = load_settings(events_stream_maxlen=100, bridge_events_stream_hard_maxlen=100)
    assert settings.events_stream_bound == 1100
    publisher = Publisher(redis_client, settings)
    publisher.publish_many(_event(n=i) for i in range(2000))
    length = redis_client.xlen(settings.events_stream)
    assert 1100 <= length < 2000


def test_publish_many_keeps_order_and_once_keys(redis_client: redis.Redis) -> None:
    publisher = Publisher(redis_client, load_settings())
    events = [_event(n=i) for i in range(5)]
    results = publisher.publish_many(
        [PublishItem(events[0], once_key="k0"), PublishItem(events[1], once_key="k0"), *events[2:]]
    )
    assert results == [True, False, True, True, True]
    assert [e.data["n"] for e in publisher.timeline("exec1")] == [0, 2, 3, 4]


def _stream_ids(client: redis.Redis, stream: str) -> list[str]:
    return [orjson.loads(fields[b"event"])["id"] for _id, fields in client.xrange(stream)]


def test_a_fact_republished_after_its_once_key_expired_keeps_its_event_id(redis_client: redis.Redis) -> None:
    """A dead letter replayed after the once-key TTL publishes its fact again: consumers dedupe on ``id``,
    so the second copy must carry the first one's id (a fresh ``Event`` object is built each time)."""
    settings = load_settings()
    publisher = Publisher(redis_client, settings)
    assert publisher.publish(_event(), once_key="started:exec1")
    redis_client.pexpire(keys.event_once("started:exec1"), 1)  # the once-key TTL runs out
    wait_until(lambda: not redis_client.exists(keys.event_once("started:exec1")), what="once-key expiry")

    assert publisher.publish(_event(), once_key="started:exec1")

    ids = _stream_ids(redis_client, settings.events_stream)
    assert len(ids) == 2
    assert ids[0] == ids[1]
    assert [event.id for event in publisher.timeline("exec1")] == ids
    assert publisher.publish(_event(), once_key="other:exec1")
    assert _stream_ids(redis_client, settings.events_stream)[2] != ids[0]  # another fact, another id


def test_once_keys_outlive_every_dead_letter_that_can_republish_them(redis_client: redis.Redis) -> None:
    """Dead letters (receiver-written, worker-enqueued and webhook jobs alike) live
    ``BRIDGE_JOB_FAILURE_TTL_SECONDS`` after their last failure, which comes after the job's publishes."""
    settings = load_settings(job_failure_ttl_seconds=90 * 24 * 3600, bridge_dedupe_ttl_seconds=600)
    Publisher(redis_client, settings).publish(_event(), once_key="o1")
    assert redis_client.ttl(keys.event_once("o1")) > settings.job_failure_ttl_seconds
    assert settings.event_once_ttl_seconds > settings.job_failure_ttl_seconds
    assert settings.event_once_ttl_seconds >= settings.bridge_dedupe_ttl_seconds


def test_a_publish_found_done_keeps_its_once_key_alive(redis_client: redis.Redis) -> None:
    """A replayed job that meets its once-key again renews it: a dead letter replayed and failed again
    lives another failure TTL, and so must the once-keys its replays run into."""
    publisher = Publisher(redis_client, load_settings())
    assert publisher.publish(_event(), once_key="o1")
    redis_client.expire(keys.event_once("o1"), 100)
    assert not publisher.publish(_event(), once_key="o1")
    assert redis_client.ttl(keys.event_once("o1")) > 100


def test_a_script_failing_half_way_can_be_published_again(redis_client: redis.Redis) -> None:
    """The once-key is written last: a command that fails inside the script (here a wrong-type key
    planted on purpose as the state hash) leaves no once-key, so the retried job publishes the event."""
    settings = load_settings()
    publisher = Publisher(redis_client, settings)
    state = keys.execution("exec1")
    redis_client.set(state, "not a hash")

    with pytest.raises(redis.ResponseError):
        publisher.publish(_event(), once_key="nip-sent-exec1", state_key=state, state_fields={"a": "1"})
    assert not redis_client.exists(keys.event_once("nip-sent-exec1"))

    redis_client.delete(state)
    assert publisher.publish(_event(), once_key="nip-sent-exec1", state_key=state, state_fields={"a": "1"})
    assert redis_client.exists(keys.event_once("nip-sent-exec1"))
    assert redis_client.hget(state, "a") == b"1"
    assert len(_stream_ids(redis_client, settings.events_stream)) == 1


def test_a_script_failing_after_the_stream_append_republishes_under_the_same_id(
    redis_client: redis.Redis,
) -> None:
    """Failing after ``XADD`` (a wrong-type timeline key) leaves the entry in the stream: the retry appends
    it again with the same ``id``, which consumers dedupe on (at-least-once, never lost)."""
    settings = load_settings()
    publisher = Publisher(redis_client, settings)
    redis_client.set(keys.timeline("exec1"), "not a list")

    with pytest.raises(redis.ResponseError):
        publisher.publish(_event(), once_key="nip-sent-exec1")
    redis_client.delete(keys.timeline("exec1"))
    assert publisher.publish(_event(), once_key="nip-sent-exec1")

    ids = _stream_ids(redis_client, settings.events_stream)
    assert len(ids) == 2 and ids[0] == ids[1]
    assert publisher.timeline("exec1")[0].id == ids[0]
