"""`workfloo-bridge events dead list|replay`: the consumers' dead-letter stream, against a real Redis.
Dead entries are written with the fields a consumer group writes (``workfloo_bridge_consumer.group``)."""

from __future__ import annotations

import orjson
import pytest
import redis
from click.testing import CliRunner

from workers.core import keys
from workers.core.events import Event, EventType
from workers.core.settings import get_settings, load_settings
from workers.ops.cli import main


@pytest.fixture
def env(clean_env: pytest.MonkeyPatch, redis_url: str) -> pytest.MonkeyPatch:
    clean_env.setenv("REDIS_URL", redis_url)
    clean_env.setenv("BRIDGE_LOG_LEVEL", "WARNING")
    get_settings.cache_clear()
    return clean_env


def _dead(client: redis.Redis, event: Event | None) -> str:
    stream = load_settings().events_stream
    fields: dict[str, str | bytes | int] = {
        "original_stream": stream, "original_id": "1-0", "group": "crm", "consumer": "crm-1",
    }  # fmt: skip
    if event is None:
        fields["reason"] = "deleted_unacked"
    else:
        fields.update(
            type=event.type, execution_id=event.execution_id or "", event=event.to_json(),
            reason="delivered 5 times without ack", deliveries=6,
        )  # fmt: skip
    return bytes(client.xadd(keys.DEAD_LETTER_STREAM, fields)).decode()  # type: ignore[arg-type]


def test_list_then_replay_puts_the_same_event_back_on_the_stream(
    env: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    event = Event(type=EventType.NIP_SENT, execution_id="exec-d", data={"link_id": "L1"})
    entry = _dead(redis_client, event)
    lost = _dead(redis_client, None)

    result = CliRunner().invoke(main, ["events", "dead", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = orjson.loads(result.stdout)
    assert [(e["entry_id"], e["replayable"]) for e in listed] == [(entry, True), (lost, False)]
    assert listed[0]["group"] == "crm" and listed[0]["deliveries"] == 6 and listed[0]["type"] == "nip.sent"
    assert "L1" not in result.stdout  # the envelope is never shown
    assert "deleted_unacked" in CliRunner().invoke(main, ["events", "dead", "list"]).output

    result = CliRunner().invoke(main, ["events", "dead", "replay", entry])
    assert result.exit_code == 0, result.output
    [(_, fields)] = redis_client.xrange(load_settings().events_stream)  # type: ignore[misc]
    assert Event.from_json(fields[b"event"]) == event and fields[b"type"] == b"nip.sent"
    assert [e[0].decode() for e in redis_client.xrange(keys.DEAD_LETTER_STREAM)] == [lost]  # type: ignore[union-attr]

    again = CliRunner().invoke(main, ["events", "dead", "replay", entry])
    assert again.exit_code == 1 and "is not in" in again.stderr
    nothing = CliRunner().invoke(main, ["events", "dead", "replay", lost])
    assert nothing.exit_code == 1 and "holds no event" in nothing.stderr
    assert CliRunner().invoke(main, ["events", "dead", "replay"]).exit_code == 2


def test_replay_all_skips_records_without_an_event(
    env: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    first = _dead(redis_client, Event(type=EventType.NIP_SENT, execution_id="exec-1"))
    _dead(redis_client, None)
    second = _dead(redis_client, Event(type=EventType.NIP_FAILED, execution_id="exec-2"))
    result = CliRunner().invoke(main, ["events", "dead", "replay", "--all"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["replayed 2", first, second]
    assert redis_client.xlen(load_settings().events_stream) == 2
    assert redis_client.xlen(keys.DEAD_LETTER_STREAM) == 1
