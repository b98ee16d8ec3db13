"""Stream retention: consumer groups hold trimming back below the hard cap, losses past it are loud,
age trimming keeps what a group still needs, and ``status`` reports the real lag."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
import structlog

from workers.core import keys
from workers.core.events import Event, EventType
from workers.core.log import configure_logging
from workers.core.settings import Settings, load_settings
from workers.fanout.consumer import Consumer
from workers.fanout.publisher import Publisher
from workers.fanout.retention import group_positions, lost_counts, trim_events, trim_timelines
from workers.ops.status import collect_status

SOFT = 20
"""The stream length kept once every group has acknowledged (``BRIDGE_EVENTS_STREAM_MAXLEN``), small here."""


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"events_stream_maxlen": SOFT, "bridge_events_stream_hard_maxlen": 1000}
    values.update(overrides)
    return load_settings(**values)


def _publish(client: redis.Redis, settings: Settings, n: int, execution: str = "exec") -> list[str]:
    events = [
        Event(type=EventType.NIP_SENT, execution_id=f"{execution}{i % 3}", data={"n": i}) for i in range(n)
    ]
    publisher = Publisher(client, settings)
    for start in range(0, n, 200):
        assert all(publisher.publish_many(events[start : start + 200]))
    return [e.id for e in events]


def _failing(event: Event) -> None:
    raise RuntimeError("handler failed")


def _drain(consumer: Consumer, until: float = 10.0) -> None:
    deadline = time.monotonic() + until
    while consumer.run_once(block=False) and time.monotonic() < deadline:
        pass


def _dead_letters(client: redis.Redis, stream: str = keys.DEAD_LETTER_STREAM) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _id, fields in client.xrange(stream)  # type: ignore[union-attr]
    ]


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    configure_logging("INFO", "json")
    yield capsys
    structlog.reset_defaults()


def _records(capsys: pytest.CaptureFixture[str], name: str) -> list[dict[str, object]]:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    return [record for record in map(json.loads, lines) if record.get("event") == name]


def test_group_ten_times_the_cap_behind_loses_nothing_below_the_hard_cap(redis_client: redis.Redis) -> None:
    settings = _settings()
    slow = Consumer(
        redis_client, "slow", "s1", _failing, start_id="0", claim_idle_ms=60_000, settings=settings
    )
    slow.ensure_group()
    published = _publish(redis_client, settings, 10)
    slow.run_once(block=False)  # the handler fails: 10 entries stay pending
    assert int(redis_client.xpending(settings.events_stream, "slow")["pending"]) == 10
    published += _publish(redis_client, settings, 10 * SOFT)  # 10x the soft cap behind

    report = trim_events(redis_client, settings)

    assert report.lost == {}
    assert redis_client.xlen(settings.events_stream) == len(published)  # nothing the group needs is gone
    seen: list[str] = []
    healthy = Consumer(
        redis_client, "slow", "s2", lambda e: seen.append(e.id), claim_idle_ms=0, settings=settings
    )
    _drain(healthy)
    assert seen == published  # the pending ten (claimed) and the 200 never delivered, in order
    assert lost_counts(redis_client, settings) == {}

    # Every group has acknowledged: the stream goes back down to the soft cap.
    trim_events(redis_client, settings)
    assert redis_client.xlen(settings.events_stream) == SOFT


def test_past_the_hard_cap_the_loss_is_logged_counted_and_dead_lettered(
    redis_client: redis.Redis, json_logs: pytest.CaptureFixture[str]
) -> None:
    hard = 100
    settings = _settings(bridge_events_stream_hard_maxlen=hard)
    slow = Consumer(
        redis_client, "slow", "s1", _failing, start_id="0", claim_idle_ms=60_000, settings=settings
    )
    slow.ensure_group()
    published = _publish(redis_client, settings, 10)
    slow.run_once(block=False)  # 10 pending after a handler failure
    published += _publish(redis_client, settings, 300)

    report = trim_events(redis_client, settings)

    length = redis_client.xlen(settings.events_stream)
    assert length == hard
    lost = len(published) - hard  # 10 pending + 200 never delivered
    assert report.lost == {"slow": lost}
    assert lost_counts(redis_client, settings) == {"slow": lost}
    records = _records(json_logs, "events.trimmed_unacked")
    assert len(records) == 1
    assert records[0]["group"] == "slow"
    assert records[0]["undelivered"] == lost - 10
    assert records[0]["pending"] == 10
    letters = [d for d in _dead_letters(redis_client) if d.get("reason") == "trimmed_unacked"]
    assert len(letters) == 1
    letter = letters[0]
    assert letter["group"] == "slow"
    assert letter["original_stream"] == settings.events_stream
    assert int(letter["undelivered"]) + int(letter["pending"]) == lost
    first_kept = redis_client.xrange(settings.events_stream, count=1)[0][0].decode()  # type: ignore[index]
    assert letter["lost_before"] == first_kept
    assert letter["pending_first"] < letter["pending_last"] < first_kept
    assert int(redis_client.xpending(settings.events_stream, "slow")["pending"]) == 0  # lost ones acked

    # The group carries on with what is left, and the report is not repeated.
    assert group_positions(redis_client, settings)[0].lag == hard
    seen: list[str] = []
    Consumer(
        redis_client, "slow", "s2", lambda e: seen.append(e.id), claim_idle_ms=0, settings=settings
    ).run_once(block=False)
    assert seen == published[-hard:]
    assert trim_events(redis_client, settings).lost == {}
    assert lost_counts(redis_client, settings) == {"slow": lost}


def test_claimed_but_deleted_entries_go_to_the_dead_letter_stream(redis_client: redis.Redis) -> None:
    settings = _settings()
    first = Consumer(redis_client, "g", "c1", _failing, start_id="0", settings=settings)
    first.ensure_group()
    published = _publish(redis_client, settings, 5)
    first.run_once(block=False)
    redis_client.xdel(
        settings.events_stream, *[eid for eid, _ in redis_client.xrange(settings.events_stream, count=2)]
    )  # type: ignore[union-attr]

    seen: list[str] = []
    second = Consumer(
        redis_client, "g", "c2", lambda e: seen.append(e.id), claim_idle_ms=0, settings=settings
    )
    second.run_once(block=False)

    assert seen == published[2:]
    letters = _dead_letters(redis_client)
    assert [d["reason"] for d in letters] == ["deleted_unacked", "deleted_unacked"]
    assert {d["group"] for d in letters} == {"g"}
    assert all(d["original_id"] for d in letters)
    assert int(redis_client.xpending(settings.events_stream, "g")["pending"]) == 0
    assert lost_counts(redis_client, settings) == {"g": 2}


def test_custom_dead_letter_stream_of_a_group_receives_its_losses(redis_client: redis.Redis) -> None:
    settings = _settings(bridge_events_stream_hard_maxlen=SOFT)
    own = "crm:dead"
    Consumer(
        redis_client, "crm", "c", _failing, start_id="0", dead_letter_stream=own, settings=settings
    ).ensure_group()
    _publish(redis_client, settings, 3 * SOFT)
    trim_events(redis_client, settings)
    assert [d["group"] for d in _dead_letters(redis_client, own)] == ["crm"]
    assert _dead_letters(redis_client) == []


def test_age_trimming_removes_old_acknowledged_entries_and_keeps_unacknowledged_ones(
    redis_client: redis.Redis,
) -> None:
    settings = _settings(events_stream_maxlen=1000, bridge_events_retention_seconds=3600)
    group = Consumer(redis_client, "g", "c", lambda e: None, start_id="0", settings=settings)
    group.ensure_group()
    published = _publish(redis_client, settings, 30)
    group.count = 10
    group.run_once(block=False)  # the first ten acknowledged
    failing = Consumer(redis_client, "g", "c", _failing, start_id="0", count=5, settings=settings)
    failing.run_once(block=False)  # the next five pending; fifteen never delivered

    # Young entries stay whatever the groups did.
    trim_events(redis_client, settings)
    assert redis_client.xlen(settings.events_stream) == 30

    later = int(time.time() * 1000) + 3_601_000
    report = trim_events(redis_client, settings, now_ms=later)
    kept = [eid.decode() for eid, _ in redis_client.xrange(settings.events_stream)]  # type: ignore[union-attr]
    assert len(kept) == 20  # only the ten acknowledged ones are gone
    assert report.removed == 10
    assert report.lost == {}
    entries = redis_client.xrange(settings.events_stream)
    assert [json.loads(f[b"event"])["id"] for _, f in entries] == published[10:]  # type: ignore[union-attr]

    # Without any group, age alone decides: everything older than the retention goes.
    redis_client.xgroup_destroy(settings.events_stream, "g")
    trim_events(redis_client, settings, now_ms=later)
    assert redis_client.xlen(settings.events_stream) == 0
    assert not redis_client.exists(keys.stream_groups(settings.events_stream))  # the destroyed group too


def test_timelines_are_trimmed_by_age_behind_the_group_floor(redis_client: redis.Redis) -> None:
    settings = _settings(events_timeline_ttl_seconds=3600)
    group = Consumer(redis_client, "g", "c", lambda e: None, start_id="0", settings=settings)
    group.ensure_group()
    _publish(redis_client, settings, 6, execution="t")
    later = int(time.time() * 1000) + 3_601_000

    assert trim_timelines(redis_client, settings, now_ms=later) == 0  # the group has read none of them
    assert redis_client.llen(keys.timeline("t0")) == 2

    _drain(group)
    assert trim_timelines(redis_client, settings, now_ms=later) == 6
    assert not redis_client.exists(keys.timeline("t0"), keys.timeline("t1"), keys.timeline("t2"))


def test_status_reports_the_real_lag_after_trimming(redis_client: redis.Redis) -> None:
    settings = _settings(bridge_events_stream_hard_maxlen=SOFT)
    reader = Consumer(redis_client, "g", "c", lambda e: None, start_id="0", count=5, settings=settings)
    reader.ensure_group()
    _publish(redis_client, settings, 10)
    reader.run_once(block=False)  # 5 read and acknowledged
    _publish(redis_client, settings, 40)
    # Trimmed behind the group's back (the publisher's backstop, an operator's XTRIM): the oldest 30 of
    # the 50 entries go, 25 of them never delivered to the group.
    redis_client.xtrim(settings.events_stream, maxlen=SOFT, approximate=False)

    groups = {g["name"]: g for g in collect_status(redis_client, settings)["consumer_groups"]}
    assert groups["g"]["lag"] == SOFT

    trim_events(redis_client, settings)
    groups = {g["name"]: g for g in collect_status(redis_client, settings)["consumer_groups"]}
    assert groups["g"]["lag"] == SOFT
    assert groups["g"]["trimmed_unacked"] == 25
    reader.count = 100
    reader.run_once(block=False)
    groups = {g["name"]: g for g in collect_status(redis_client, settings)["consumer_groups"]}
    assert groups["g"]["lag"] == 0


def test_a_group_starting_at_zero_is_not_charged_for_history_trimmed_before_it_existed(
    redis_client: redis.Redis,
) -> None:
    settings = _settings()
    _publish(redis_client, settings, 50)
    redis_client.xtrim(settings.events_stream, maxlen=10, approximate=False)
    Consumer(redis_client, "late", "l", lambda e: None, start_id="0", settings=settings).ensure_group()

    assert trim_events(redis_client, settings).lost == {}
    assert lost_counts(redis_client, settings) == {}
    assert group_positions(redis_client, settings)[0].lag == 10
