"""Every rule of the callback endpoints over real HTTP against real Redis."""

from __future__ import annotations

import socket
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from tests.receiver.conftest import KEY, OLD_KEY, ReceiverClient
from workers.core import keys
from workers.core.contract import JOB_SERIALIZER, CallbackPayload, finished_event_id, nip_event_id

EXECUTION_ID = "657118e1d511b6e54fe2a969"
LINK_ID = "676b188a6ef8abaf775fef10"
NIP_PATH = f"/v1/kiban/executions/{EXECUTION_ID}/nip-events"
AUTH = {"x-api-key": KEY}
NIP = {"event": "SENT", "date": "2026-11-22T23:00:00Z", "linkId": LINK_ID}
STATUS = {
    "id": EXECUTION_ID,
    "status": "PROGRESS",
    "currentNodeType": "LINK",
    "link": {"phase": "SENT", "events": [{"status": "SENT", "date": "2026-11-22"}]},
}

ALL_CALLBACKS = [
    (NIP_PATH, NIP),
    ("/v1/kiban/nip-events", NIP),
    ("/v1/kiban/status", STATUS),
    (f"/v1/kiban/executions/{EXECUTION_ID}/finished", {}),
    ("/v1/kiban/finished", {"id": EXECUTION_ID}),
]


def queue(client: redis.Redis) -> Queue:
    return Queue("workfloo", connection=client, serializer=JOB_SERIALIZER)


def callback_payload(job: Job) -> CallbackPayload:
    """The job's argument, holding exactly the contract's keys."""
    payload: CallbackPayload = job.args[0]
    assert set(payload) == CallbackPayload.__required_keys__
    return payload


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "detail"}
    return body


# -- accepted deliveries become ordinary RQ jobs -----------------------------------------------------


def test_nip_callback_is_an_ordinary_rq_job(receiver: httpx.Client, redis_client: redis.Redis) -> None:
    response = receiver.post(NIP_PATH, json=NIP, headers=AUTH)

    assert response.status_code == 200
    event_id = nip_event_id(EXECUTION_ID, "SENT", NIP["date"])
    assert response.json() == {"status": "accepted", "event_id": event_id}
    q = queue(redis_client)
    assert q.job_ids == [event_id]
    assert redis_client.smembers("rq:queues") == {b"rq:queue:workfloo"}
    job = Job.fetch(event_id, connection=redis_client, serializer=JOB_SERIALIZER)
    assert job.func_name == "workers.jobs.callbacks.handle_nip_event"
    assert job.get_status() == JobStatus.QUEUED
    assert job.origin == "workfloo"
    assert job.enqueued_at is not None
    payload = callback_payload(job)
    assert (payload["kind"], payload["execution_id"], payload["link_id"]) == ("nip", EXECUTION_ID, LINK_ID)
    assert payload["body"] == NIP
    assert job.kwargs == {}
    assert redis_client.ttl(keys.dedupe(event_id)) > 71 * 3600


# A status object as Kiban sends it at the LINK node: the form and contact data must never be stored.
STATUS_WITH_APPLICANT_DATA = {
    **STATUS,
    "name": "Crédito simple",
    "currentNodeName": "Envío de NIP",
    "form": {"fields": {"nombre": "Canary Nombre", "rfc": "GODE-561231-GR8", "telefono": 5512345678}},
    "link": {
        **STATUS["link"],
        "phoneNumber": "+525512345678",
        "email": "canary@example.com",
        "key": LINK_ID,
        "events": [{"status": "ERROR", "date": "2026-11-22", "errorMessage": "unknown", "to": "+52551"}],
    },
    "future": {"anything": "Canary"},
}


def test_status_webhook_stores_only_what_the_job_reads(
    receiver: httpx.Client, redis_client: redis.Redis
) -> None:
    headers = {**AUTH, "x-kiban-event-id": "evt_pii", "x-kiban-event-type": "workfloo.status"}
    response = receiver.post("/v1/kiban/status", json=STATUS_WITH_APPLICANT_DATA, headers=headers)

    assert response.json() == {"status": "accepted", "event_id": "status-evt_pii"}
    body = callback_payload(Job.fetch("status-evt_pii", connection=redis_client, serializer=JOB_SERIALIZER))[
        "body"
    ]
    assert body == {
        "id": EXECUTION_ID,
        "status": "PROGRESS",
        "currentNodeType": "LINK",
        "currentNodeName": "Envío de NIP",
        "link": {
            "phase": "SENT",
            "events": [{"status": "ERROR", "date": "2026-11-22", "errorMessage": "unknown"}],
        },
    }
    stored = redis_client.hget("rq:job:status-evt_pii", "data")
    assert stored is not None
    raw = zlib.decompress(stored)
    for value in (b"Canary", b"GODE", b"5512345678", b"canary@example.com", b"+52551"):
        assert value not in raw


def test_nip_and_finished_bodies_keep_only_what_the_jobs_read(
    receiver: httpx.Client, redis_client: redis.Redis
) -> None:
    nip = {**NIP, "event": "ERROR", "errorMessage": "unknown destination", "phoneNumber": "+5255", "x": 1}
    nip_id = receiver.post(NIP_PATH, json=nip, headers=AUTH).json()["event_id"]
    finished = {"workflooId": EXECUTION_ID, "id": EXECUTION_ID, "form": {"curp": "GODE561231HDFRRN09"}}
    finished_id = receiver.post("/v1/kiban/finished", json=finished, headers=AUTH).json()["event_id"]

    nip_body = callback_payload(Job.fetch(nip_id, connection=redis_client, serializer=JOB_SERIALIZER))["body"]
    assert nip_body == {key: nip[key] for key in ("event", "date", "linkId", "errorMessage")}
    assert callback_payload(Job.fetch(finished_id, connection=redis_client, serializer=JOB_SERIALIZER))[
        "body"
    ] == {"id": EXECUTION_ID}


def test_status_webhook_keeps_the_event_headers(receiver: httpx.Client, redis_client: redis.Redis) -> None:
    headers = {**AUTH, "x-kiban-event-id": "evt_123", "x-kiban-event-type": "workfloo.status"}
    response = receiver.post("/v1/kiban/status", json=STATUS, headers=headers)

    assert response.json() == {"status": "accepted", "event_id": "status-evt_123"}
    job = Job.fetch("status-evt_123", connection=redis_client, serializer=JOB_SERIALIZER)
    assert job.func_name == "workers.jobs.callbacks.handle_status"
    payload = callback_payload(job)
    assert payload["execution_id"] == EXECUTION_ID
    assert payload["event_type_header"] == "workfloo.status"
    assert payload["body"] == STATUS  # everything the job reads reaches the worker


def test_status_without_event_id_dedupes_on_the_body(
    receiver: httpx.Client, redis_client: redis.Redis
) -> None:
    first = receiver.post("/v1/kiban/status", json=STATUS, headers=AUTH).json()
    # Same object, other key order and whitespace: the same delivery.
    raw = b'{ "status":"PROGRESS", "currentNodeType":"LINK", "link": ' + orjson.dumps(STATUS["link"])
    raw += b', "id": "' + EXECUTION_ID.encode() + b'" }'
    second = receiver.post(
        "/v1/kiban/status", content=raw, headers={**AUTH, "content-type": "application/json"}
    ).json()
    assert first["status"] == "accepted"
    assert second == {"status": "duplicate", "event_id": first["event_id"]}
    # An unsafe header value is hashed, never used raw as a job id.
    unsafe = receiver.post("/v1/kiban/status", json=STATUS, headers={**AUTH, "x-kiban-event-id": "a b/c"})
    assert unsafe.json()["event_id"].startswith("status-h")
    assert len(queue(redis_client).job_ids) == 2


@pytest.mark.parametrize(
    ("path", "body", "params"),
    [
        (f"/v1/kiban/executions/{EXECUTION_ID}/finished", None, None),
        (f"/v1/kiban/executions/{EXECUTION_ID}/finished", {"anything": 1}, None),
        ("/v1/kiban/finished", {"id": EXECUTION_ID}, None),
        ("/v1/kiban/finished", {"workflooId": EXECUTION_ID}, None),
        ("/v1/kiban/finished", {"idWorkfloo": EXECUTION_ID}, None),
        ("/v1/kiban/finished", {"executionId": EXECUTION_ID}, None),
        ("/v1/kiban/finished", {"other": "x"}, {"execution_id": EXECUTION_ID}),
    ],
)
def test_finished_execution_id_sources(
    receiver: httpx.Client,
    redis_client: redis.Redis,
    path: str,
    body: dict[str, Any] | None,
    params: dict[str, str] | None,
) -> None:
    response = receiver.post(path, json=body, headers=AUTH, params=params)

    event_id = finished_event_id(EXECUTION_ID)
    assert response.json() == {"status": "accepted", "event_id": event_id}
    job = Job.fetch(event_id, connection=redis_client, serializer=JOB_SERIALIZER)
    assert job.func_name == "workers.jobs.callbacks.handle_finished"
    assert callback_payload(job)["execution_id"] == EXECUTION_ID


def test_finished_without_any_execution_id_names_the_field(
    receiver: httpx.Client, redis_client: redis.Redis
) -> None:
    response = receiver.post("/v1/kiban/finished", json={"foo": "bar"}, headers=AUTH)
    assert response.status_code == 422
    assert error(response)["detail"][0]["field"] == "execution_id"
    bad = receiver.post("/v1/kiban/finished", json={"workflooId": "../etc"}, headers=AUTH)
    assert bad.status_code == 422
    assert error(bad)["detail"][0]["field"] == "workflooId"
    assert queue(redis_client).count == 0


def test_nip_without_execution_id_correlates_by_link(
    receiver: httpx.Client, redis_client: redis.Redis
) -> None:
    unknown = receiver.post("/v1/kiban/nip-events", json=NIP, headers=AUTH).json()
    redis_client.set(keys.link(LINK_ID), EXECUTION_ID)
    known = receiver.post("/v1/kiban/nip-events", json={**NIP, "event": "SUCCESS"}, headers=AUTH).json()
    missing_link = receiver.post("/v1/kiban/nip-events", json={"event": "SENT", "date": "d"}, headers=AUTH)

    first = callback_payload(
        Job.fetch(unknown["event_id"], connection=redis_client, serializer=JOB_SERIALIZER)
    )
    second = callback_payload(
        Job.fetch(known["event_id"], connection=redis_client, serializer=JOB_SERIALIZER)
    )
    assert (first["execution_id"], first["link_id"]) == (None, LINK_ID)
    assert (second["execution_id"], second["link_id"]) == (EXECUTION_ID, LINK_ID)
    assert missing_link.status_code == 422
    assert error(missing_link)["detail"][0]["field"] == "linkId"


# -- idempotency -------------------------------------------------------------------------------------


def test_ten_concurrent_copies_make_exactly_one_job(
    receiver: httpx.Client, redis_client: redis.Redis
) -> None:
    import concurrent.futures

    def deliver(_: int) -> dict[str, Any]:
        with httpx.Client(base_url=str(receiver.base_url)) as client:
            result: dict[str, Any] = client.post(NIP_PATH, json=NIP, headers=AUTH).json()
            return result

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(deliver, range(10)))

    assert sorted(a["status"] for a in answers) == ["accepted"] + ["duplicate"] * 9
    assert len({a["event_id"] for a in answers}) == 1
    assert queue(redis_client).job_ids == [answers[0]["event_id"]]
    assert redis_client.llen("rq:queue:workfloo") == 1


def test_duplicates_of_every_kind_enqueue_nothing(receiver: httpx.Client, redis_client: redis.Redis) -> None:
    for path, body in ALL_CALLBACKS:
        assert receiver.post(path, json=body, headers=AUTH).status_code == 200
    before = redis_client.llen("rq:queue:workfloo")
    for path, body in ALL_CALLBACKS:
        again = receiver.post(path, json=body, headers=AUTH)
        assert again.status_code == 200
        assert again.json()["status"] == "duplicate"
    assert redis_client.llen("rq:queue:workfloo") == before


def test_dedupe_ttl_is_a_setting(start_receiver: Callable[..., httpx.Client], redis_url: str) -> None:
    client = start_receiver(redis_url, bridge_dedupe_ttl_seconds=100)
    event_id = client.post(NIP_PATH, json=NIP, headers=AUTH).json()["event_id"]
    assert 0 < redis.Redis.from_url(redis_url).ttl(keys.dedupe(event_id)) <= 100


# -- auth --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": "wrong"},
        {"x-api-key": ""},
        {"authorization": KEY},
        {"x-api-key-other": KEY},
        {"x-api-key": KEY + "x"},
    ],
)
def test_missing_or_wrong_key_is_401_on_every_callback(
    receiver: httpx.Client, redis_client: redis.Redis, headers: dict[str, str]
) -> None:
    for path, body in ALL_CALLBACKS:
        response = receiver.post(path, json=body, headers=headers)
        assert response.status_code == 401
        assert error(response) == {"error": "unauthorized", "detail": "missing or invalid API key"}
    assert redis_client.llen("rq:queue:workfloo") == 0


def test_401_comes_before_reading_or_checking_the_body(receiver: httpx.Client) -> None:
    too_big = b"x" * 200_000
    assert receiver.post(NIP_PATH, content=too_big, headers={"content-type": "text/plain"}).status_code == 401


def test_key_rotation_and_both_headers(start_receiver: Callable[..., httpx.Client], redis_url: str) -> None:
    both = start_receiver(redis_url, bridge_callback_keys=f"{OLD_KEY},{KEY}")
    for n, headers in enumerate([{"x-api-key": OLD_KEY}, {"x-api-key": KEY}, {"xApiKeyCallback": KEY}]):
        assert both.post(NIP_PATH, json={**NIP, "date": str(n)}, headers=headers).status_code == 200
    rotated = start_receiver(redis_url, bridge_callback_keys=KEY)
    assert (
        rotated.post(NIP_PATH, json={**NIP, "date": "x"}, headers={"x-api-key": OLD_KEY}).status_code == 401
    )
    assert rotated.post(NIP_PATH, json={**NIP, "date": "x"}, headers={"x-api-key": KEY}).status_code == 200
    only_custom_header = start_receiver(redis_url, bridge_callback_key_headers="x-kiban-key")
    assert only_custom_header.post(NIP_PATH, json=NIP, headers={"x-api-key": KEY}).status_code == 401
    assert only_custom_header.post(NIP_PATH, json=NIP, headers={"X-Kiban-Key": KEY}).status_code == 200


def test_no_configured_key_refuses_everything(
    start_receiver: Callable[..., httpx.Client], redis_url: str
) -> None:
    client = start_receiver(redis_url, bridge_callback_keys="")
    for path, body in ALL_CALLBACKS:
        for headers in ({}, {"x-api-key": ""}, {"x-api-key": KEY}):
            assert client.post(path, json=body, headers=headers).status_code == 401


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "json", ""]
)
def test_wrong_content_type_is_415(
    receiver: httpx.Client, redis_client: redis.Redis, content_type: str
) -> None:
    for path, body in ALL_CALLBACKS:
        response = receiver.post(
            path, content=orjson.dumps(body), headers={**AUTH, "content-type": content_type}
        )
        assert response.status_code == 415
        assert error(response)["error"] == "unsupported_media_type"
    assert redis_client.llen("rq:queue:workfloo") == 0


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/vnd.kiban+json"]
)
def test_json_content_type_variants_are_accepted(receiver: httpx.Client, content_type: str) -> None:
    response = receiver.post(
        NIP_PATH, content=orjson.dumps(NIP), headers={**AUTH, "content-type": content_type}
    )
    assert response.status_code == 200


def test_finished_without_body_or_content_type_is_fine_but_not_with_a_body(receiver: httpx.Client) -> None:
    path = f"/v1/kiban/executions/{EXECUTION_ID}/finished"
    assert receiver.post(path, headers=AUTH).status_code == 200
    assert receiver.post(path, content=b"id=1", headers=AUTH).status_code == 415
    assert receiver.post(NIP_PATH, headers=AUTH).status_code == 415


@pytest.mark.parametrize("raw", [b"{", b"not json", b"\xff\xfe", b'{"event": NaN}', b""])
def test_invalid_json_is_400(receiver: httpx.Client, redis_client: redis.Redis, raw: bytes) -> None:
    response = receiver.post(NIP_PATH, content=raw, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 400
    assert error(response)["error"] == "invalid_json"
    assert redis_client.llen("rq:queue:workfloo") == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (NIP_PATH, {**NIP, "event": "DELIVERED"}, "event"),
        (NIP_PATH, {"date": "d"}, "event"),
        (NIP_PATH, {"event": "SENT"}, "date"),
        (NIP_PATH, {**NIP, "date": 5}, "date"),
        (NIP_PATH, {**NIP, "linkId": "a/b"}, "linkId"),
        (NIP_PATH, {**NIP, "errorMessage": ["x"]}, "errorMessage"),
        (NIP_PATH, [NIP], "body"),
        ("/v1/kiban/executions/bad%20id/nip-events", NIP, "execution_id"),
        ("/v1/kiban/executions/" + "a" * 65 + "/finished", {}, "execution_id"),
        ("/v1/kiban/status", {"status": "PROGRESS"}, "id"),
        ("/v1/kiban/status", {"id": EXECUTION_ID}, "status"),
        ("/v1/kiban/status", {"id": 12, "status": "PROGRESS"}, "id"),
        ("/v1/kiban/status", "just a string", "body"),
    ],
)
def test_schema_violations_are_422_naming_the_field(
    receiver: httpx.Client, redis_client: redis.Redis, path: str, body: Any, field: str
) -> None:
    response = receiver.post(path, json=body, headers=AUTH)
    assert response.status_code == 422
    detail = error(response)
    assert detail["error"] == "validation_error"
    assert field in [d["field"] for d in detail["detail"]]
    assert redis_client.llen("rq:queue:workfloo") == 0


def test_extra_fields_are_ignored(receiver: httpx.Client) -> None:
    assert receiver.post(NIP_PATH, json={**NIP, "unexpected": {"a": 1}}, headers=AUTH).status_code == 200


def test_body_over_the_limit_is_413(start_receiver: Callable[..., httpx.Client], redis_url: str) -> None:
    client = start_receiver(redis_url, bridge_max_body_bytes=1000)
    padded = {**NIP, "errorMessage": "x" * 2000}
    assert client.post(NIP_PATH, json=padded, headers=AUTH).status_code == 413
    assert client.post(NIP_PATH, json=NIP, headers=AUTH).status_code == 200

    def chunks() -> Any:  # no Content-Length at all: counted while streaming
        yield orjson.dumps(padded)[:600]
        yield orjson.dumps(padded)[600:]

    chunked = client.post(NIP_PATH, content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert chunked.status_code == 413
    assert error(chunked)["error"] == "payload_too_large"
    assert redis.Redis.from_url(redis_url).llen("rq:queue:workfloo") == 1


def _raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_lying_content_length_never_stores_anything(
    start_receiver: Callable[..., httpx.Client], redis_url: str
) -> None:
    client = start_receiver(redis_url, bridge_max_body_bytes=1000)
    port = client.base_url.port
    assert port is not None
    big = orjson.dumps({**NIP, "errorMessage": "x" * 5000})
    head = (
        f"POST {NIP_PATH} HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n"
    ).encode()
    # Claims 10 bytes, sends 5 kB: the server reads 10 bytes of broken JSON.
    low = _raw_request(port, head + b"Content-Length: 10\r\n\r\n" + big)
    assert low.startswith(b"HTTP/1.1 400")
    # Claims a small size but is chunked and large: counted while streaming (uvicorn refuses both headers).
    both = _raw_request(
        port, head + b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(big)
    )
    assert both.startswith(b"HTTP/1.1 4")
    chunked = _raw_request(
        port, head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n"
    )
    assert chunked.startswith(b"HTTP/1.1 413")
    # Claims more than the limit: refused before reading.
    high = _raw_request(port, head + b"Content-Length: 5000\r\n\r\n{}")
    assert high.startswith(b"HTTP/1.1 413")
    assert redis.Redis.from_url(redis_url).llen("rq:queue:workfloo") == 0


async def test_body_reader_counts_bytes_even_when_content_length_lies() -> None:
    """Behind a server that does not enforce framing, the declared length is still not trusted
    (ASGI-level: no HTTP server on loopback lets a body exceed its Content-Length)."""
    from starlette.requests import Request

    from receiver.http import HTTPError, read_body

    messages = [
        {"type": "http.request", "body": b"x" * 800, "more_body": True},
        {"type": "http.request", "body": b"x" * 800, "more_body": False},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"10")], "path": "/"}
    with pytest.raises(HTTPError) as raised:
        await read_body(Request(scope, receive), 1000)
    assert raised.value.status == 413


def test_non_numeric_content_length_is_400(receiver: httpx.Client) -> None:
    port = receiver.base_url.port
    assert port is not None
    head = f"POST {NIP_PATH} HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\nContent-Type: application/json\r\n"
    answer = _raw_request(port, head.encode() + b"Content-Length: abc\r\nConnection: close\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 400")


# -- operations endpoints ---------------------------------------------------------------------------


def test_health_ready_404_405(receiver: ReceiverClient) -> None:
    assert receiver.get("/healthz").json() == {"status": "ok"}
    assert receiver.internal.get("/readyz").json() == {"status": "ready", "redis": True}
    missing = receiver.get("/nope")
    assert missing.status_code == 404
    assert error(missing)["error"] == "not_found"
    wrong_method = receiver.get(NIP_PATH)
    assert wrong_method.status_code == 405
    assert error(wrong_method)["error"] == "method_not_allowed"


def test_metrics(receiver: ReceiverClient) -> None:
    receiver.post(NIP_PATH, json=NIP, headers=AUTH)
    receiver.post(NIP_PATH, json=NIP, headers=AUTH)
    receiver.post(NIP_PATH, json=NIP, headers={})
    text = receiver.internal.get("/metrics").text

    route = "/v1/kiban/executions/{execution_id}/nip-events"
    assert f'receiver_requests_total{{method="POST",route="{route}",status="200"}} 2.0' in text
    assert f'receiver_requests_total{{method="POST",route="{route}",status="401"}} 1.0' in text
    assert 'receiver_callbacks_duplicate_total{kind="nip"} 1.0' in text
    assert 'receiver_callbacks_accepted_total{kind="nip"} 1.0' in text
    assert 'receiver_intake_seconds_count{kind="nip"} 2.0' in text
    assert 'receiver_queue_depth{queue="workfloo"} 1.0' in text


def test_openapi_lists_every_route_and_status(receiver: ReceiverClient, redis_url: str) -> None:
    from receiver.app import create_app
    from workers.core.settings import load_settings

    document = receiver.internal.get("/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    app = create_app(load_settings(redis_url=redis_url))
    served = {route.path for route in app.routes}  # type: ignore[attr-defined]
    assert set(document["paths"]) == served
    callbacks = [path for path in served if path.startswith("/v1/kiban/")]
    assert len(callbacks) == 5
    for path in callbacks:
        responses = document["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "401", "408", "413", "415", "422", "503"}
    assert set(document["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}


def test_command_routes_extension_point(
    monkeypatch: pytest.MonkeyPatch, serve_receiver: Callable[..., Any], redis_url: str
) -> None:
    """``receiver.endpoints.commands.routes(settings)`` and ``openapi_paths`` are merged into the app."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from receiver.endpoints import commands
    from receiver.intake.rqjob import utc_stamp
    from workers.core.settings import load_settings

    async def command(request: Request) -> JSONResponse:
        accepted = await request.app.state.intake.enqueue(
            "cmd-1", "builtins.len", {"x": 1}, description="command", stamp=utc_stamp()
        )
        return JSONResponse({"accepted": accepted})

    monkeypatch.setattr(
        commands, "routes", lambda settings: [Route("/v1/test-command", command, methods=["POST"])]
    )
    monkeypatch.setattr(commands, "openapi_paths", lambda settings: {"/v1/test-command": {"post": {}}})
    server = serve_receiver(load_settings(redis_url=redis_url, bridge_callback_keys=KEY))
    with httpx.Client(base_url=server.internal_url) as client:
        assert client.post("/v1/test-command").json() == {"accepted": True}
        assert client.post("/v1/test-command").json() == {"accepted": False}
        assert "/v1/test-command" in client.get("/openapi.json").json()["paths"]
    assert (
        Job.fetch("cmd-1", connection=redis.Redis.from_url(redis_url), serializer=JOB_SERIALIZER).func_name
        == "builtins.len"
    )
