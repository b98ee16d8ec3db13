"""`status`, `check` and `timeline` against a real Redis (no vendor needed for these cases)."""

from __future__ import annotations

import json

import pytest
import redis
from click.testing import CliRunner
from rq import Queue, SimpleWorker

from workers.core import keys
from workers.core.contract import JOB_SERIALIZER
from workers.core.crypto import KeyRing, generate_entry, parse_entry
from workers.core.events import Event
from workers.core.settings import load_settings
from workers.ops.cli import main
from workers.sandbox.redis_server import free_port


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_status_reports_queues_failed_jobs_events_and_group_lag(
    clean_env: pytest.MonkeyPatch, redis_url: str, redis_client: redis.Redis
) -> None:
    clean_env.setenv("REDIS_URL", redis_url)
    queue = Queue("workfloo", connection=redis_client, serializer=JOB_SERIALIZER)
    queue.enqueue("json.loads", "{not json")  # fails when run
    SimpleWorker([queue], connection=redis_client, serializer=JOB_SERIALIZER).work(burst=True)
    queue.enqueue("json.loads", "[]")  # stays queued: no worker
    for i in range(3):
        event = Event(type="nip.sent", execution_id=f"e{i}")
        redis_client.xadd(
            "workfloo:events", {"type": event.type, "execution_id": f"e{i}", "event": event.to_json()}
        )
    redis_client.xgroup_create("workfloo:events", "crm-sync", id="0")
    redis_client.xreadgroup("crm-sync", "c1", {"workfloo:events": ">"}, count=1)
    redis_client.zadd(keys.FOLLOWUP_PENDING, {"e-approved": 1.0})  # a hand-off not done yet

    code, out, _ = _invoke("status", "--json")
    assert code == 0
    report = json.loads(out)
    workfloo = next(q for q in report["queues"] if q["name"] == "workfloo")
    assert workfloo["queued"] == 1
    assert workfloo["failed"] == 1
    assert report["stream"]["length"] == 3
    assert [e["execution_id"] for e in report["recent_events"]] == ["e2", "e1", "e0"]
    group = report["consumer_groups"][0]
    assert (group["name"], group["pending"], group["lag"]) == ("crm-sync", 1, 2)
    assert report["followup_pending"] == 1

    code, out, _ = _invoke("status")
    assert code == 0
    assert "crm-sync" in out and "workfloo" in out and "nip.sent" in out
    assert "hand-offs pending: 1" in out


def test_status_exit_codes_without_config_and_without_redis(clean_env: pytest.MonkeyPatch) -> None:
    code, _, err = _invoke("status")
    assert code == 2 and "REDIS_URL is not set" in err
    clean_env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, _, err = _invoke("status")
    assert code == 1 and "cannot reach Redis" in err


def test_invalid_setting_is_a_usage_error_naming_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", "http://nope")
    for command in ("status", "check", "timeline"):
        args = [command, "x"] if command == "timeline" else [command]
        code, _, err = _invoke(*args)
        assert code == 2, command
        assert "REDIS_URL" in err


def test_check_names_every_missing_setting_and_unreachable_redis(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, out, _ = _invoke("check", "--json")
    assert code == 1
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert not checks["settings"]["ok"]
    for name in (
        "BRIDGE_CALLBACK_KEYS",
        "BRIDGE_KIBAN_API_KEY",
        "BRIDGE_KOMPLIANT_SECRET_KEY",
        "BRIDGE_KOMPLIANT_ACCOUNT_ID",
    ):
        assert name in checks["settings"]["message"]
    assert not checks["data-keys"]["ok"] and "BRIDGE_DATA_KEYS is not set" in checks["data-keys"]["message"]
    assert "cannot reach Redis" in checks["redis"]["message"]
    assert "BRIDGE_KIBAN_API_KEY is not set" in checks["kiban"]["message"]


def test_check_says_kiban_is_unreachable(clean_env: pytest.MonkeyPatch, redis_url: str) -> None:
    port = free_port()
    clean_env.setenv("REDIS_URL", redis_url)
    clean_env.setenv("BRIDGE_KIBAN_API_KEY", "kb_test")
    clean_env.setenv("BRIDGE_KIBAN_BASE_URL", f"http://127.0.0.1:{port}")
    code, out, _ = _invoke("check")
    assert code == 1
    assert f"cannot reach Kiban at http://127.0.0.1:{port}" in out
    assert "ok   redis" in out
    assert "some checks failed" in out


def test_timeline_prints_steps_or_says_none(
    clean_env: pytest.MonkeyPatch, redis_url: str, redis_client: redis.Redis
) -> None:
    clean_env.setenv("REDIS_URL", redis_url)
    for event_type in ("nip.sent", "nip.delivered", "workfloo.completed"):
        redis_client.rpush(keys.timeline("e9"), Event(type=event_type, execution_id="e9").to_json())
    code, out, _ = _invoke("timeline", "e9")
    assert code == 0
    assert out.index("nip.sent") < out.index("nip.delivered") < out.index("workfloo.completed")
    assert "3 events over" in out
    code, out, _ = _invoke("timeline", "e9", "--json")
    assert code == 0 and json.loads(out)["count"] == 3
    code, _, err = _invoke("timeline", "unknown")
    assert code == 1 and "no events for execution unknown" in err


def test_check_against_the_fake_vendors(clean_env: pytest.MonkeyPatch, redis_url: str, serve) -> None:  # type: ignore[no-untyped-def]
    from workers.sandbox.fakes import kiban as fake_kiban
    from workers.sandbox.fakes import kompliant as fake_kompliant

    kiban = serve(fake_kiban.create_app("kb-good"))
    kompliant = serve(fake_kompliant.create_app())
    for name, value in {
        "REDIS_URL": redis_url,
        "BRIDGE_CALLBACK_KEYS": "cb-8d5f0e7c9a3b1d2e4f6a8c0b2d4e6f8a0c2e4a6c",
        "BRIDGE_INTERNAL_KEYS": "in-1f3e5d7c9b0a2c4e6a8f0d2b4c6e8a0f2d4b6e8c",
        "BRIDGE_DATA_KEYS": generate_entry("k1"),
        "BRIDGE_KIBAN_BASE_URL": kiban.url,
        "BRIDGE_KIBAN_API_KEY": "kb-good",
        "BRIDGE_KIBAN_WORKFLOO_DEFINITION_ID": "def",
        "BRIDGE_KOMPLIANT_BASE_URL": kompliant.url,
        "BRIDGE_KOMPLIANT_API_KEY": fake_kompliant.DEFAULT_API_KEY,
        "BRIDGE_KOMPLIANT_SECRET_KEY": fake_kompliant.DEFAULT_SECRET_KEY,
        "BRIDGE_KOMPLIANT_AUTH_TOKEN": fake_kompliant.DEFAULT_AUTH_TOKEN,
        "BRIDGE_KOMPLIANT_ACCOUNT_ID": fake_kompliant.DEFAULT_ACCOUNT_ID,
    }.items():
        clean_env.setenv(name, value)
    code, out, _ = _invoke("check")
    assert code == 0, out
    assert "all checks passed" in out

    clean_env.setenv("BRIDGE_KIBAN_API_KEY", "kb-wrong")
    clean_env.setenv("BRIDGE_KOMPLIANT_SECRET_KEY", "d3Jvbmcgc2VjcmV0IGtleSBmb3IgdGVzdHM=")
    clean_env.setenv("BRIDGE_INTERNAL_KEYS", "changeme")
    code, out, _ = _invoke("check", "--json")
    assert code == 1
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["api-keys"]["message"] == "BRIDGE_INTERNAL_KEYS key 1 is shorter than 32 characters"
    assert checks["settings"]["ok"] and checks["redis"]["ok"]
    assert "rejected BRIDGE_KIBAN_API_KEY (HTTP 401)" in checks["kiban"]["message"]
    assert "rejected the credentials" in checks["kompliant"]["message"]

    kompliant.stop()
    code, out, _ = _invoke("check")
    assert code == 1
    assert f"cannot reach Kompliant at {kompliant.url}" in out


def test_keygen_prints_a_key_the_settings_accept(clean_env: pytest.MonkeyPatch) -> None:
    code, out, _ = _invoke("keygen", "--kid", "k2")
    assert code == 0
    entry = out.strip()
    assert parse_entry(entry)[0] == "k2" and len(parse_entry(entry)[1]) == 32
    clean_env.setenv("BRIDGE_DATA_KEYS", entry)
    assert KeyRing.from_settings(load_settings()).primary == "k2"
    assert _invoke("keygen")[1] != _invoke("keygen")[1]
    code, _, err = _invoke("keygen", "--kid", "no spaces")
    assert code == 2 and "--kid" in err
