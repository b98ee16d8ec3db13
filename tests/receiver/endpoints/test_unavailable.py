"""One 503 on every endpoint while Redis is down: ``redis_unavailable`` with ``Retry-After``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from workers.core.settings import load_settings
from workers.sandbox.redis_server import RedisServer
from workers.sandbox.serving import ServerThread

CALLBACK = "cb-d1b8149407d892256f8ca08981636ff39a153544"
INTERNAL = "in-3eb7de49dc9317efde60f753152c65245744fe69"
EXECUTION_ID = "657118e1d511b6e54fe2a969"
NIP = {"event": "SENT", "date": "2026-11-22T23:00:00Z", "linkId": "L1"}

REQUESTS = [
    ("POST", f"/v1/kiban/executions/{EXECUTION_ID}/nip-events", NIP, CALLBACK),
    ("POST", "/v1/kiban/nip-events", NIP, CALLBACK),
    ("POST", "/v1/kiban/status", {"id": EXECUTION_ID, "status": "PROGRESS"}, CALLBACK),
    ("POST", f"/v1/kiban/executions/{EXECUTION_ID}/finished", {}, CALLBACK),
    ("POST", "/v1/kiban/finished", {"id": EXECUTION_ID}, CALLBACK),
    ("POST", "/v1/applications", {"form": {"a": "b"}}, INTERNAL),
    ("POST", f"/v1/applications/{EXECUTION_ID}/nip", {"nip": "1234"}, INTERNAL),
    ("POST", f"/v1/applications/{EXECUTION_ID}/nip/resend", {}, INTERNAL),
    ("GET", f"/v1/applications/{EXECUTION_ID}/timeline", None, INTERNAL),
]


@pytest.fixture
def down_receiver(
    serve_receiver: Callable[..., ServerThread], private_redis: RedisServer
) -> Iterator[ServerThread]:
    settings = load_settings(
        redis_url=private_redis.url,
        bridge_callback_keys=CALLBACK,
        bridge_internal_keys=INTERNAL,
        bridge_retry_after_seconds=9,
    )
    server = serve_receiver(settings)
    private_redis.stop(kill=True)
    yield server


@pytest.mark.parametrize(("method", "path", "body", "key"), REQUESTS)
def test_every_endpoint_answers_the_same_503(
    down_receiver: ServerThread, method: str, path: str, body: object, key: str
) -> None:
    base = down_receiver.internal_url if key == INTERNAL else down_receiver.url  # the route's listener
    response = httpx.request(method, base + path, json=body, headers={"x-api-key": key}, timeout=10)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "9"
    assert response.json()["error"] == "redis_unavailable"
    assert set(response.json()) == {"error", "detail"}
