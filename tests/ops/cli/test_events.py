"""`workfloo-bridge events tail` over a real Redis."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis
from click.testing import CliRunner

from workers.core.events import Event, EventType, Source
from workers.core.settings import load_settings
from workers.fanout.publisher import Publisher
from workers.ops.cli import main
from workers.ops.cli.events import parse_since


@pytest.fixture
def env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("BRIDGE_LOG_LEVEL", "WARNING")
    return {"REDIS_URL": redis_url}


def _publish(client: redis.Redis, *events: Event) -> None:
    assert all(Publisher(client, load_settings()).publish_many(events))


def _events() -> list[Event]:
    at = datetime(2026, 11, 22, 23, 0, 0, tzinfo=UTC)
    return [
        Event(type=EventType.NIP_SENT, execution_id="exec-a", source=Source.KIBAN, occurred_at=at,
              data={"link_id": "L1", "attempt": 1}),
        Event(type=EventType.WORKFLOO_COMPLETED, execution_id="exec-a", occurred_at=at,
              data={"status": "SUCCESS"}),
        Event(type=EventType.NIP_FAILED, execution_id="exec-b", occurred_at=at,
              data={"error": "bad destination", "recoverable": False}),
    ]  # fmt: skip


def test_tail_prints_human_lines_filtered_by_type(env: dict[str, str], redis_client: redis.Redis) -> None:
    _publish(redis_client, *_events())
    result = CliRunner().invoke(main, ["events", "tail", "--type", "nip.*"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2
    assert lines[0].split() == ["2026-11-22T23:00:00Z", "nip.sent", "exec-a", "link_id=L1", "attempt=1"]
    assert lines[1].startswith("2026-11-22T23:00:00Z  nip.failed")
    assert 'error="bad destination" recoverable=false' in lines[1]


def test_tail_json_prints_envelopes(env: dict[str, str], redis_client: redis.Redis) -> None:
    events = _events()
    _publish(redis_client, *events)
    result = CliRunner().invoke(
        main, ["events", "tail", "--json", "--type", "workfloo.*", "--type", "nip.failed"]
    )
    assert result.exit_code == 0, result.output
    printed = [Event.from_json(line) for line in result.output.splitlines()]
    assert printed == [events[1], events[2]]


def test_tail_since_stream_id_is_exclusive_and_lines_limits_recent(
    env: dict[str, str], redis_client: redis.Redis
) -> None:
    events = _events()
    _publish(redis_client, *events)
    stream = load_settings().events_stream
    first_id = redis_client.xrange(stream)[0][0].decode()
    result = CliRunner().invoke(main, ["events", "tail", "--json", "--since", first_id])
    assert [orjson.loads(x)["id"] for x in result.output.splitlines()] == [events[1].id, events[2].id]
    result = CliRunner().invoke(main, ["events", "tail", "--json", "-n", "1"])
    assert [orjson.loads(x)["id"] for x in result.output.splitlines()] == [events[2].id]
    result = CliRunner().invoke(main, ["events", "tail", "--json", "--since", "10m"])
    assert len(result.output.splitlines()) == 3
    result = CliRunner().invoke(main, ["events", "tail", "--json", "--since", "2999-01-01T00:00:00Z"])
    assert result.output == ""


def test_lines_counts_the_events_that_pass_the_type_filter(
    env: dict[str, str], redis_client: redis.Redis
) -> None:
    """``-n 2 --type nip.*`` prints the two latest NIP events, however many others came after them."""
    nip_sent, completed, nip_failed = _events()
    later = [completed.model_copy(update={"id": f"later-{n}"}) for n in range(12)]
    _publish(redis_client, nip_sent, nip_failed, *later)
    result = CliRunner().invoke(main, ["events", "tail", "--json", "-n", "2", "--type", "nip.*"])
    assert result.exit_code == 0, result.output
    assert [orjson.loads(x)["id"] for x in result.output.splitlines()] == [nip_sent.id, nip_failed.id]
    result = CliRunner().invoke(main, ["events", "tail", "--json", "-n", "1", "--type", "nip.*"])
    assert [orjson.loads(x)["id"] for x in result.output.splitlines()] == [nip_failed.id]


def test_parse_since_forms() -> None:
    now = datetime(2026, 11, 22, 23, 0, 0, tzinfo=UTC)
    assert parse_since("1700000000000-3") == ("1700000000000-3", True)
    assert parse_since("10m", now) == (f"{int(now.timestamp() * 1000) - 600_000}-0", False)
    assert parse_since("2h", now) == (f"{int(now.timestamp() * 1000) - 7_200_000}-0", False)
    assert parse_since("2026-11-22T22:00:00Z") == (f"{int(now.timestamp() * 1000) - 3_600_000}-0", False)
    assert parse_since("2026-11-22T18:00:00-05:00") == (f"{int(now.timestamp() * 1000)}-0", False)


def test_bad_since_is_a_clear_usage_error(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["events", "tail", "--since", "yesterday"])
    assert result.exit_code == 2
    assert "RFC 3339" in result.output


def test_follow_prints_events_published_later(env: dict[str, str], redis_client: redis.Redis) -> None:
    _publish(redis_client, _events()[0])
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "workfloo-bridge"),
            "events",
            "tail",
            "-f",
            "--json",
            "--limit",
            "3",
        ],
        stdout=subprocess.PIPE,
        env={**env, "PATH": "/usr/bin:/bin", "BRIDGE_LOG_LEVEL": "WARNING"},
    )
    try:
        time.sleep(1.5)  # let it print history and start blocking
        later = [Event(type=EventType.NIP_RESENT, data={"n": i}) for i in range(2)]
        _publish(redis_client, *later)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    ids = [orjson.loads(line)["id"] for line in out.decode().splitlines()]
    assert ids[1:] == [e.id for e in later]
    assert proc.returncode == 0
