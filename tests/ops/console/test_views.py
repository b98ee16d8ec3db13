"""What the console's pages show, read from a real redis-server."""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Callable

import httpx
import itsdangerous
import orjson
import redis
from starlette.applications import Starlette

from workers.core import keys
from workers.core.settings import load_settings
from workers.ops.console import console_routes, views
from workers.ops.console.app import key_id, session_secret
from workers.sandbox.serving import ServerThread


def test_reasons_are_redacted_of_anything_shaped_like_applicant_data() -> None:
    raw = (
        "ValueError: ana.lopez@example.com GOMA800101HDFRRN09 LOMA800101AB1 +52 55 1234 5678 "
        "KompliantError: subjectRecord.create: http 400: SERVICE_UNAVAILABLE"
    )
    shown = views.redact(raw)
    for private in ("ana.lopez", "GOMA800101", "LOMA800101", "1234 5678"):
        assert private not in shown
    assert "KompliantError: subjectRecord.create: http 400: SERVICE_UNAVAILABLE" in shown


def test_find_application_by_execution_id_only_when_it_has_a_timeline(
    redis_client: redis.Redis, redis_url: str
) -> None:
    assert views.find_application(redis_client, "657118e1d511b6e54fe2a969") is None
    redis_client.rpush(keys.timeline("657118e1d511b6e54fe2a969"), b"{}")
    assert views.find_application(redis_client, " 657118e1d511b6e54fe2a969 ") == "657118e1d511b6e54fe2a969"
    assert views.find_application(redis_client, "") is None
    settings = load_settings(redis_url=redis_url)
    assert views.recent_applications(redis_client, settings) == []


def test_without_internal_keys_nobody_signs_in_not_even_with_a_forged_cookie(
    redis_url: str, serve: Callable[..., ServerThread]
) -> None:
    """The session key derives from the internal keys: with none it is public, so a session must also
    name a configured key."""
    settings = load_settings(redis_url=redis_url, bridge_internal_keys="")
    signer = itsdangerous.TimestampSigner(session_secret(settings))
    forged = signer.sign(b64encode(orjson.dumps({"key_id": key_id("anything"), "csrf": "x"}))).decode()
    server = serve(Starlette(routes=console_routes(settings)))
    answer = httpx.get(
        f"{server.url}/console/dead-letters", cookies={"bridge_console": forged}, follow_redirects=False
    )
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/login")


def test_an_applications_state_follows_its_latest_event_operators_aside(redis_client: redis.Redis) -> None:
    from workers.core.events import EventType as T

    settings = load_settings()
    stream = settings.events_stream
    for execution_id, types in {
        "e-open": [T.APPLICATION_STARTED, T.NIP_SENT],
        "e-handed": [T.WORKFLOO_COMPLETED, T.KOMPLIANT_WORKFLOW_STARTED, T.OPERATOR_ACTION],
        "e-failed": [T.APPLICATION_STARTED, T.ACTION_FAILED],
    }.items():
        for event_type in types:
            redis_client.xadd(stream, {"type": event_type.value, "execution_id": execution_id, "event": "{}"})
    states = {a["execution_id"]: a["state"] for a in views.recent_applications(redis_client, settings)}
    assert states == {"e-open": "open", "e-handed": "handed off", "e-failed": "failed"}
    assert views.state_of(T.WORKFLOO_COMPLETED) == "completed" and views.state_of("unknown") == "open"
