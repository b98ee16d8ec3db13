"""Execution state on real Redis: open set never reopened after terminal, resend claims, the lock, and
the retention TTL every write sets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from workers.core import keys
from workers.core.events import Event, EventType
from workers.core.settings import load_settings
from workers.fanout.publisher import Publisher
from workers.jobs import state


def test_terminal_execution_is_not_reopened(redis_client: redis.Redis) -> None:
    assert state.touch_open(redis_client, "e1", at=100.0)
    assert redis_client.zscore(keys.OPEN_EXECUTIONS, "e1") == 100.0
    state.set_fields(redis_client, "e1", {state.TERMINAL: "1"})
    state.close(redis_client, "e1")
    assert not state.touch_open(redis_client, "e1", at=200.0)
    assert redis_client.zscore(keys.OPEN_EXECUTIONS, "e1") is None


def test_touch_without_refresh_keeps_the_backoff_score(redis_client: redis.Redis) -> None:
    state.touch_open(redis_client, "e1", at=500.0)
    state.touch_open(redis_client, "e1", at=100.0, refresh=False)
    assert redis_client.zscore(keys.OPEN_EXECUTIONS, "e1") == 500.0
    assert state.due_for_reconcile(redis_client, 600.0, 10) == ["e1"]
    assert state.due_for_reconcile(redis_client, 400.0, 10) == []


def test_one_resend_number_per_error_event(redis_client: redis.Redis) -> None:
    first = state.claim_nip_resend(redis_client, "e1", "2026-01-01T00:00:00Z")
    again = state.claim_nip_resend(redis_client, "e1", "2026-01-01T00:00:00Z")
    second = state.claim_nip_resend(redis_client, "e1", "2026-01-01T00:05:00Z")
    assert (first, again, second) == (1, 1, 2)


def test_set_once_keeps_the_first_writer(redis_client: redis.Redis) -> None:
    assert state.set_once(redis_client, "e1", state.KOMPLIANT_SUBJECT_RECORD, "sr_a") == "sr_a"
    assert state.set_once(redis_client, "e1", state.KOMPLIANT_SUBJECT_RECORD, "sr_b") == "sr_a"


def test_lock_is_exclusive_and_only_the_owner_releases(redis_client: redis.Redis) -> None:
    a = state.Lock(redis_client, "workfloo:lock:t", 5)
    b = state.Lock(redis_client, "workfloo:lock:t", 5)
    assert a.acquire()
    assert not b.acquire(wait_seconds=0.1)
    assert not b.release()
    assert a.release()
    assert b.acquire()


def test_link_mapping(redis_client: redis.Redis) -> None:
    state.map_link(redis_client, "l1", "e1")
    assert state.resolve_link(redis_client, "l1") == "e1"
    assert state.get_field(redis_client, "e1", state.LINK_ID) == "l1"


RETENTION = 4000


@pytest.fixture
def retention(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    from workers.core.settings import get_settings

    monkeypatch.setenv("BRIDGE_EXECUTION_RETENTION_SECONDS", str(RETENTION))
    get_settings.cache_clear()
    yield RETENTION
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "write",
    [
        lambda r: state.set_fields(r, "e1", {state.STATUS: "PROGRESS"}),
        lambda r: state.set_once(r, "e1", state.KOMPLIANT_SUBJECT_RECORD, "sr"),
        lambda r: state.map_link(r, "l1", "e1"),
        lambda r: state.claim_nip_resend(r, "e1", "2026-01-01T00:00:00Z"),
        lambda r: state.count_reconcile_poll(r, "e1"),
    ],
    ids=["set_fields", "set_once", "map_link", "claim_nip_resend", "count_reconcile_poll"],
)
def test_every_write_sets_the_retention_ttl(redis_client: redis.Redis, retention: int, write: Any) -> None:
    write(redis_client)
    written = [key.decode() for key in redis_client.scan_iter("workfloo:*")]
    assert keys.execution("e1") in written
    for key in written:
        assert retention - 10 <= redis_client.ttl(key) <= retention, key


def test_retention_counts_from_the_terminal_write(redis_client: redis.Redis, retention: int) -> None:
    key = keys.execution("e1")
    redis_client.hset(key, "x", "1")
    redis_client.expire(key, 50)
    state.touch_open(redis_client, "e1")
    assert redis_client.ttl(key) > 50
    redis_client.expire(key, 50)
    state.set_fields(redis_client, "e1", {state.TERMINAL: "1"})  # the terminal write: retention from now
    assert redis_client.ttl(key) > retention - 10
    redis_client.expire(key, 50)
    # Late callbacks, the hand-off and reconciler writes do not extend a finished execution.
    state.touch_open(redis_client, "e1")
    state.set_fields(redis_client, "e1", {state.KOMPLIANT_WORKFLOW: "wf"})
    state.set_once(redis_client, "e1", state.KOMPLIANT_SUBJECT_RECORD, "sr")
    state.map_link(redis_client, "l1", "e1")
    state.claim_nip_resend(redis_client, "e1", "late")
    state.count_reconcile_poll(redis_client, "e1")
    settings = load_settings(bridge_execution_retention_seconds=retention)
    Publisher(redis_client, settings).publish(
        Event(type=EventType.NIP_DELIVERED, execution_id="e1"), state_key=key, state_fields={"a": "1"}
    )
    assert 0 < redis_client.ttl(key) <= 50
    assert redis_client.hget(key, state.KOMPLIANT_WORKFLOW) == b"wf"
