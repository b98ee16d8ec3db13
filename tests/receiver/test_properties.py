"""Property: whatever the body and headers, the receiver never answers 5xx, and it enqueues a job only
when it answered 200 (and then exactly the job it named)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from receiver.app import create_app
from tests.receiver.conftest import KEY
from workers.core.settings import load_settings
from workers.sandbox.redis_server import RedisServer
from workers.sandbox.serving import receiver_thread

EXECUTION_ID = "657118e1d511b6e54fe2a969"

PATHS = [
    f"/v1/kiban/executions/{EXECUTION_ID}/nip-events",
    "/v1/kiban/executions/x%20y/nip-events",
    "/v1/kiban/nip-events",
    "/v1/kiban/status",
    f"/v1/kiban/executions/{EXECUTION_ID}/finished",
    "/v1/kiban/finished",
    "/v1/kiban/finished?execution_id=abc",
    "/v1/kiban/finished?execution_id=%00",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "event": st.sampled_from(["PENDING", "SENT", "SUCCESS", "ERROR", "sent", ""]) | json_values,
        "date": st.text(max_size=70) | json_values,
        "linkId": st.sampled_from(["L1", "a/b", "", "x" * 70]) | json_values,
        "errorMessage": st.text(max_size=10) | json_values,
        "id": st.sampled_from([EXECUTION_ID, "bad id", ""]) | json_values,
        "status": st.sampled_from(["PROGRESS", ""]) | json_values,
        "workflooId": st.sampled_from([EXECUTION_ID, "../x"]) | json_values,
        "executionId": json_values,
    },
)
valid = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["PENDING", "SENT", "SUCCESS", "ERROR"]),
        "date": st.text(min_size=1, max_size=20),
        "linkId": st.just("L1"),
    }
) | st.fixed_dictionaries(
    {
        "id": st.from_regex(r"[a-f0-9]{24}", fullmatch=True),
        "status": st.sampled_from(["PROGRESS", "SUCCESS"]),
    }
)
bodies = (
    valid.map(orjson.dumps)
    | near_valid.map(orjson.dumps)
    | json_values.map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS))
    | st.binary(max_size=300)
    | st.sampled_from(
        [
            b'{"event": "SENT", "date": 1e999}',
            b'{"id": 123456789012345678901234567890, "status": "X"}',
            b'{"event": "SENT", "date": "d", "linkId": "L1"}{}',
            b'{"event": "SENT", "date": "\\ud800", "linkId": "L1"}',
            b"\xef\xbb\xbf{}",
        ]
    )
)
# No content-length: httpx refuses to send a wrong one (lying lengths are tested over raw sockets).
header_names = st.sampled_from(
    [
        "x-api-key",
        "xapikeycallback",
        "content-type",
        "x-kiban-event-id",
        "x-kiban-event-type",
    ]
)
header_values = st.sampled_from(
    [
        KEY,
        "wrong",
        "",
        "application/json",
        "application/x+json; charset=utf-8",
        "text/plain",
        "-1",
        "99999999",
    ]
) | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30)
headers = st.dictionaries(header_names, header_values, max_size=3)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(PATHS),
    body=bodies,
    extra=headers,
    authorised=st.sampled_from([True, True, True, False]),
    json_type=st.sampled_from([True, True, True, False]),
)
def test_never_5xx_and_never_a_job_for_refused_input(
    redis_server: RedisServer,
    receiver_for_properties: tuple[httpx.Client, redis.Redis],
    path: str,
    body: bytes,
    extra: dict[str, str],
    authorised: bool,
    json_type: bool,
) -> None:
    client, connection = receiver_for_properties
    sent_headers = dict(extra)
    if authorised:
        sent_headers["x-api-key"] = KEY
    if json_type:
        sent_headers["content-type"] = "application/json"
    before = connection.llen("rq:queue:workfloo")
    response = client.post(path, content=body, headers=sent_headers)
    after = connection.llen("rq:queue:workfloo")

    event(f"status {response.status_code}")
    assert response.status_code < 500, response.text
    payload: dict[str, Any] = response.json()
    if response.status_code == 200:
        assert payload["status"] in {"accepted", "duplicate"}
        assert connection.exists(f"rq:job:{payload['event_id']}")
        assert after == before + (1 if payload["status"] == "accepted" else 0)
    else:
        assert set(payload) == {"error", "detail"}
        assert after == before


def test_properties_cover_every_callback_route() -> None:
    routes = create_app(load_settings()).routes
    served = {r.path for r in routes if r.path.startswith("/v1/kiban/")}  # type: ignore[attr-defined]
    exercised = {p.split("?")[0].replace(EXECUTION_ID, "{execution_id}") for p in PATHS}
    assert served <= exercised


@pytest.fixture(scope="module")
def receiver_for_properties(redis_server: RedisServer) -> Any:
    """One app for all examples (module scope keeps the run to a few seconds)."""
    settings = load_settings(redis_url=redis_server.url, bridge_callback_keys=KEY, bridge_max_body_bytes=200)
    with receiver_thread(settings) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client, redis.Redis.from_url(redis_server.url)
