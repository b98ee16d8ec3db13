"""workers.core.timeline: one application's events in order, with the time between steps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis

from workers.core import keys
from workers.core.events import Event
from workers.core.timeline import build_timeline, read_timeline

T0 = datetime(2026, 11, 22, 23, 0, 0, tzinfo=UTC)


def _event(event_type: str, offset_ms: int) -> bytes:
    return Event(
        type=event_type, execution_id="e1", occurred_at=T0 + timedelta(milliseconds=offset_ms)
    ).to_json()


def test_deltas_between_steps_and_since_start() -> None:
    result = build_timeline("e1", [_event("nip.sent", 0), _event("nip.delivered", 250), _event("x", 1250)])
    assert result["count"] == 3
    assert [e["type"] for e in result["events"]] == ["nip.sent", "nip.delivered", "x"]
    assert [e["since_previous_ms"] for e in result["events"]] == [0.0, 250.0, 1000.0]
    assert [e["since_start_ms"] for e in result["events"]] == [0.0, 250.0, 1250.0]
    assert result["duration_ms"] == 1250.0


def test_events_are_ordered_by_time_with_publish_order_breaking_ties() -> None:
    raw = [_event("late", 500), _event("first", 0), _event("tie-a", 100), _event("tie-b", 100)]
    assert [e["type"] for e in build_timeline("e1", raw)["events"]] == ["first", "tie-a", "tie-b", "late"]


def test_a_corrupt_entry_is_shown_not_hidden() -> None:
    result = build_timeline("e1", [_event("ok", 0), b"{not json", b"[1, 2]"])
    types = [e["type"] for e in result["events"]]
    assert types == ["ok", "invalid", "invalid"]
    assert result["events"][1]["since_previous_ms"] is None


def test_empty_timeline() -> None:
    assert build_timeline("nope", []) == {
        "execution_id": "nope",
        "count": 0,
        "duration_ms": 0.0,
        "events": [],
    }


def test_read_timeline_from_redis(redis_client: redis.Redis) -> None:
    redis_client.rpush(keys.timeline("e1"), _event("nip.sent", 0), _event("nip.delivered", 40))
    result = read_timeline(redis_client, "e1")
    assert [e["type"] for e in result["events"]] == ["nip.sent", "nip.delivered"]
    assert result["events"][1]["since_previous_ms"] == 40.0
    assert read_timeline(redis_client, "other")["count"] == 0
