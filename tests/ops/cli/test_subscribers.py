"""`workfloo-bridge subscribers list|disable|enable` against a real Redis."""

from __future__ import annotations

import base64
import json

import orjson
import pytest
import redis
from click.testing import CliRunner

from workers.core.events import Event, EventType
from workers.core.settings import get_settings
from workers.fanout import webhooks
from workers.ops.cli import main

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.fixture
def env(clean_env: pytest.MonkeyPatch, redis_url: str) -> pytest.MonkeyPatch:
    clean_env.setenv("REDIS_URL", redis_url)
    clean_env.setenv("BRIDGE_LOG_LEVEL", "WARNING")
    subscriber = {
        "url": "https://crm.example.com/hook?token=t0p",
        "types": ["nip.*"],
        "secret": SECRET,
        "id": "crm",
    }
    clean_env.setenv("BRIDGE_HTTP_SUBSCRIBERS", json.dumps([subscriber]))
    get_settings.cache_clear()
    return clean_env


def _listed() -> dict[str, object]:
    result = CliRunner().invoke(main, ["subscribers", "list", "--json"])
    assert result.exit_code == 0, result.output
    [row] = orjson.loads(result.stdout)
    assert isinstance(row, dict)
    return row


def test_disable_stops_deliveries_and_enable_resumes_them(
    env: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    row = _listed()
    assert row["key"] == "crm" and row["url"] == "https://crm.example.com/hook"  # no query string
    assert row["disabled"] is None and row["delivered"] == 0

    result = CliRunner().invoke(main, ["subscribers", "disable", "crm"])
    assert result.exit_code == 0 and "disabled crm" in result.output
    assert _listed()["disabled"] == {"reason": "operator", "at": _listed()["disabled"]["at"]}  # type: ignore[index]
    envelope = Event(type=EventType.NIP_SENT, execution_id="exec-1").to_json().decode()
    assert webhooks.deliver("crm", envelope, settings=get_settings()) == "disabled"  # nothing sent
    assert "already disabled" in CliRunner().invoke(main, ["subscribers", "disable", "crm"]).output

    result = CliRunner().invoke(main, ["subscribers", "enable", "crm"])
    assert result.exit_code == 0 and "enabled crm" in result.output
    assert _listed()["disabled"] is None
    assert "was not disabled" in CliRunner().invoke(main, ["subscribers", "enable", "crm"]).output


def test_an_unknown_key_is_exit_1(env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["subscribers", "disable", "nobody"])
    assert result.exit_code == 1 and "no HTTP subscriber with key nobody" in result.stderr


def test_the_table_names_the_state(env: pytest.MonkeyPatch) -> None:
    CliRunner().invoke(main, ["subscribers", "disable", "crm"])
    result = CliRunner().invoke(main, ["subscribers", "list"])
    assert result.exit_code == 0 and "disabled (operator)" in result.output
