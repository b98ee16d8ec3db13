"""GET /v1/applications/{execution_id}/timeline over real HTTP and real Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import redis

from workers.core import keys
from workers.core.events import Event
from workers.core.settings import load_settings
from workers.sandbox.redis_server import RedisServer

INTERNAL = "in-78a13d5afb4bcba7cd911f8e562eff196e4fa61d"
OLD_INTERNAL = "in-old-c25fb7b0234307a5f0cb6f17778787d4a86a28fc"
CALLBACK = "cb-22e24bfedf784ec71be6bc9ddab7526c21482513"
T0 = datetime(2026, 11, 22, 23, 0, tzinfo=UTC)


def _settings(redis_url: str):  # type: ignore[no-untyped-def]
    return load_settings(
        redis_url=redis_url,
        bridge_callback_keys=CALLBACK,
        bridge_internal_keys=f"{OLD_INTERNAL},{INTERNAL}",
        redis_timeout_seconds=0.5,
    )


def test_timeline_in_order_with_steps(serve_receiver, redis_url: str, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    for offset, event_type in ((0, "nip.sent"), (300, "nip.delivered"), (1300, "workfloo.completed")):
        event = Event(type=event_type, execution_id="e1", occurred_at=T0 + timedelta(milliseconds=offset))
        redis_client.rpush(keys.timeline("e1"), event.to_json())
    server = serve_receiver(_settings(redis_url))
    url = f"{server.internal_url}/v1/applications/e1/timeline"

    response = httpx.get(url, headers={"x-api-key": INTERNAL})
    assert response.status_code == 200
    body = response.json()
    assert body["execution_id"] == "e1" and body["count"] == 3 and body["duration_ms"] == 1300.0
    assert [e["type"] for e in body["events"]] == ["nip.sent", "nip.delivered", "workfloo.completed"]
    assert [e["since_previous_ms"] for e in body["events"]] == [0.0, 300.0, 1000.0]
    assert httpx.get(url, headers={"x-api-key": OLD_INTERNAL}).status_code == 200  # rotation

    for headers in ({}, {"x-api-key": "nope"}, {"x-api-key": CALLBACK}, {"xApiKeyCallback": INTERNAL}):
        denied = httpx.get(url, headers=headers)
        assert denied.status_code == 401
        assert denied.json() == {"error": "unauthorized", "detail": "missing or invalid API key"}

    missing = httpx.get(f"{server.internal_url}/v1/applications/e2/timeline", headers={"x-api-key": INTERNAL})
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    bad = httpx.get(f"{server.internal_url}/v1/applications/a%20b/timeline", headers={"x-api-key": INTERNAL})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "execution_id"
    # One id rule for every endpoint (workers.core.contract.EXECUTION_ID_RE, whole string).
    for wrong in ("e1%0A", "x" * 65):
        url_wrong = f"{server.internal_url}/v1/applications/{wrong}/timeline"
        assert httpx.get(url_wrong, headers={"x-api-key": INTERNAL}).status_code == 422
    assert (
        "/v1/applications/{execution_id}/timeline"
        in httpx.get(f"{server.internal_url}/openapi.json").json()["paths"]
    )


def test_timeline_answers_503_while_redis_is_down_and_recovers(
    serve_receiver, private_redis: RedisServer
) -> None:  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(private_redis.url)
    client.rpush(keys.timeline("e1"), Event(type="nip.sent", execution_id="e1").to_json())
    client.close()
    server = serve_receiver(_settings(private_redis.url))
    url = f"{server.internal_url}/v1/applications/e1/timeline"
    assert httpx.get(url, headers={"x-api-key": INTERNAL}).status_code == 200

    private_redis.stop()
    down = httpx.get(url, headers={"x-api-key": INTERNAL}, timeout=10)
    assert down.status_code == 503
    assert down.headers["retry-after"] == "5"  # BRIDGE_RETRY_AFTER_SECONDS, as on every endpoint
    assert down.json()["error"] == "redis_unavailable"

    private_redis.start()
    ok = httpx.get(url, headers={"x-api-key": INTERNAL}, timeout=10)
    assert ok.status_code == 200 and ok.json()["count"] == 1
