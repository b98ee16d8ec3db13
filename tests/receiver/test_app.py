"""The two listeners over real HTTP: each route answers on its own listener only."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from receiver.app import create_app
from workers.core.settings import api_key_problems, load_settings
from workers.sandbox.serving import ServerThread

EXECUTION_ID = "657118e1d511b6e54fe2a969"
COMMAND_ID = "cmd-start-01jzzzzzzzzzzzzzzzzzzzzzzz"
PUBLIC = [
    ("POST", f"/v1/kiban/executions/{EXECUTION_ID}/nip-events"),
    ("POST", "/v1/kiban/nip-events"),
    ("POST", "/v1/kiban/status"),
    ("POST", f"/v1/kiban/executions/{EXECUTION_ID}/finished"),
    ("POST", "/v1/kiban/finished"),
    ("GET", "/healthz"),
]
INTERNAL = [
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/applications"),
    ("POST", f"/v1/applications/{EXECUTION_ID}/nip"),
    ("POST", f"/v1/applications/{EXECUTION_ID}/nip/resend"),
    ("DELETE", f"/v1/applications/{EXECUTION_ID}"),
    ("GET", f"/v1/applications/{EXECUTION_ID}/timeline"),
    ("GET", f"/v1/commands/{COMMAND_ID}"),
]


def test_each_route_answers_only_on_its_listener(
    serve_receiver: Callable[..., ServerThread], redis_url: str
) -> None:
    server = serve_receiver(load_settings(redis_url=redis_url))
    table: dict[str, tuple[int, int]] = {}
    for listener, requests in (("public", PUBLIC), ("internal", INTERNAL)):
        for method, path in requests:
            on_public = httpx.request(method, server.url + path, timeout=10).status_code
            on_internal = httpx.request(method, server.internal_url + path, timeout=10).status_code
            table[f"{method} {path}"] = (on_public, on_internal)
            own, other = (on_public, on_internal) if listener == "public" else (on_internal, on_public)
            assert own != 404, f"{method} {path} does not answer on the {listener} listener"
            assert other == 404, f"{method} {path} answers on the wrong listener: {table}"
    # Every served route is in the table above (a new route must be placed on a listener here).
    served = {r.path for r in create_app(load_settings(redis_url=redis_url)).routes}  # type: ignore[attr-defined]
    tested = {
        p.replace(EXECUTION_ID, "{execution_id}").replace(COMMAND_ID, "{command_id}")
        for _m, p in PUBLIC + INTERNAL
    }
    assert served == tested


def test_no_trailing_slash_redirect(serve_receiver: Callable[..., ServerThread], redis_url: str) -> None:
    """A redirect would echo the client's Host header into Location."""
    server = serve_receiver(load_settings(redis_url=redis_url))
    response = httpx.get(server.url + "/healthz/", headers={"host": "evil.example"}, timeout=10)
    assert response.status_code == 404 and "location" not in response.headers


def test_the_listeners_need_two_ports(redis_url: str) -> None:
    with pytest.raises(SystemExit):
        create_app(load_settings(redis_url=redis_url, bridge_public_port=9000, bridge_internal_port=9000))


STRONG = "cb-9f1c2e7a5b3d8c6e4f0a1b2c3d4e5f6a7b8c9d0e"


def test_a_random_key_that_happens_to_hold_a_digit_run_is_accepted() -> None:
    """``secrets.token_hex(24)`` holds "1234" in about one key of 1,500: a generated key is no placeholder
    (the demo once refused its own key this way)."""
    settings = load_settings(bridge_internal_keys="in_9d0c1234a7e55f0b6c2d8e4f1a3b5c7d9e0f2a4b6c8d0e1f")
    assert api_key_problems(settings) == []
    assert api_key_problems(load_settings(bridge_internal_keys="key-12345678-abcdefghijklmnopqrstuv"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bridge_callback_keys": "k"}, "BRIDGE_CALLBACK_KEYS key 1 is shorter than 32 characters"),
        ({"bridge_internal_keys": f"{STRONG}x,short"}, "BRIDGE_INTERNAL_KEYS key 2 is shorter"),
        ({"bridge_callback_keys": "changeme-changeme-changeme-changeme"}, "key 1 looks like a placeholder"),
        ({"bridge_internal_keys": "my-TEST-key-that-is-long-enough-0f9e8d"}, "looks like a placeholder"),
        ({"bridge_callback_keys": "ab" * 20}, "fewer than 8 distinct characters"),
        (
            {"bridge_callback_keys": STRONG, "bridge_internal_keys": STRONG},
            "in both BRIDGE_CALLBACK_KEYS and",
        ),
    ],
)
def test_weak_or_shared_keys_refuse_to_start(
    redis_url: str, overrides: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        create_app(load_settings(redis_url=redis_url, **overrides))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    for value in overrides.values():  # the keys themselves never reach the output
        assert all(key not in err for key in value.split(",") if len(key) > 8)
