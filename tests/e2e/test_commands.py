"""Command endpoints on the receiver, over real HTTP and Redis: auth, validation, and what gets queued."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from rq import Queue
from rq.job import Job

from workers.core import crypto, keys
from workers.core.contract import JOB_SERIALIZER
from workers.core.settings import load_settings
from workers.jobs import data_keys, state
from workers.sandbox.serving import ServerThread

KEY = "in-74ddd3f76bd2e02188f50fdfe99558f7ede8e15b"


@pytest.fixture
def receiver(redis_url: str, serve_receiver: Callable[..., ServerThread]) -> Iterator[str]:
    settings = load_settings(
        redis_url=redis_url,
        bridge_internal_keys=KEY,
        bridge_callback_keys="cb-ed0a8849c8757d73187e38dc13f1cbec84dc67ec",
    )
    yield serve_receiver(settings).internal_url


def post(url: str, body: Any = None, *, key: str | None = KEY, **kwargs: Any) -> httpx.Response:
    headers = {"x-api-key": key} if key else {}
    headers.update(kwargs.pop("headers", {}))
    if body is None:
        return httpx.post(url, headers=headers, **kwargs)
    return httpx.post(url, json=body, headers=headers, **kwargs)


def test_start_application_queues_the_command(receiver: str, redis_client: redis.Redis) -> None:
    response = post(f"{receiver}/v1/applications", {"form": {"email": "a@b.co", "first_name": "A"},
                                                    "scenarioId": "approved"})  # fmt: skip
    assert response.status_code == 202
    command_id = response.json()["command_id"]
    job = Job.fetch(command_id, connection=redis_client, serializer=JOB_SERIALIZER)
    assert job.func_name == "workers.jobs.commands.start_application"
    command = job.args[0]
    assert set(command) == {"command_id", "sealed_form", "scenario_id"}
    assert (command["command_id"], command["scenario_id"]) == (command_id, "approved")
    assert "a@b.co" not in repr(command)
    form = data_keys().open_json(command["sealed_form"], crypto.FORM, command_id)
    assert form == {"email": "a@b.co", "first_name": "A"}
    assert command_id.encode() in redis_client.lrange(
        Queue("workfloo", connection=redis_client, serializer=JOB_SERIALIZER).key, 0, -1
    )


def test_top_level_fields_are_the_form(receiver: str, redis_client: redis.Redis) -> None:
    response = post(f"{receiver}/v1/applications", {"email": "a@b.co", "scenarioId": "rejected"})
    job = Job.fetch(response.json()["command_id"], connection=redis_client, serializer=JOB_SERIALIZER)
    command = job.args[0]
    form = data_keys().open_json(command["sealed_form"], crypto.FORM, command["command_id"])
    assert form == {"email": "a@b.co"} and command["scenario_id"] == "rejected"


def test_idempotency_key_gives_one_command(receiver: str) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = post(f"{receiver}/v1/applications", {"form": {"email": "a@b.co"}}, headers=headers).json()
    second = post(f"{receiver}/v1/applications", {"form": {"email": "a@b.co"}}, headers=headers).json()
    assert first["command_id"] == second["command_id"]
    assert (first["status"], second["status"]) == ("accepted", "duplicate")


def test_nip_never_enters_the_job_payload(receiver: str, redis_client: redis.Redis) -> None:
    response = post(f"{receiver}/v1/applications/abc123/nip", {"nip": "123456"})
    assert response.status_code == 202
    command_id = response.json()["command_id"]
    job = Job.fetch(command_id, connection=redis_client, serializer=JOB_SERIALIZER)
    assert job.func_name == "workers.jobs.commands.validate_nip"
    assert "123456" not in repr(job.args)
    stored = redis_client.get(keys.nip_ref(command_id)) or b""
    assert stored.startswith(b"wfe1.") and b"123456" not in stored
    assert state.take_nip(redis_client, job.args[0]["nip_ref"], data_keys()) == "123456"
    assert redis_client.ttl(keys.nip_ref(command_id)) > 0


def test_resend(receiver: str, redis_client: redis.Redis) -> None:
    response = post(f"{receiver}/v1/applications/abc123/nip/resend")
    assert response.status_code == 202
    job = Job.fetch(response.json()["command_id"], connection=redis_client, serializer=JOB_SERIALIZER)
    assert job.args[0]["execution_id"] == "abc123" and job.args[0]["resend"] is None


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/applications", {}, "form"),
        ("/v1/applications", {"form": []}, "form"),
        ("/v1/applications", {"form": {"x": {"nested": 1}}}, "form.x"),
        ("/v1/applications", {"form": {"x": "1"}, "scenarioId": 5}, "scenarioId"),
        ("/v1/applications/abc/nip", {"nip": "12ab"}, "nip"),
        ("/v1/applications/abc/nip", {}, "nip"),
        ("/v1/applications/bad%20id/nip", {"nip": "123456"}, "execution_id"),
    ],
)
def test_schema_errors_name_the_field(receiver: str, path: str, body: Any, field: str) -> None:
    response = post(f"{receiver}{path}", body)
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert response.json()["detail"][0]["field"] == field


def test_wrong_or_missing_key_is_401(receiver: str) -> None:
    assert post(f"{receiver}/v1/applications", {"form": {"a": "b"}}, key=None).status_code == 401
    assert post(f"{receiver}/v1/applications", {"form": {"a": "b"}}, key="nope").status_code == 401
    callback_key = post(
        f"{receiver}/v1/applications", {"form": {"a": "b"}}, key="cb-ed0a8849c8757d73187e38dc13f1cbec84dc67ec"
    )
    assert callback_key.status_code == 401  # the callback key does not open the command endpoints


def test_bad_json_content_type_and_size(receiver: str) -> None:
    url = f"{receiver}/v1/applications"
    bad_json = post(url, content=b"{nope", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"] == "invalid_json"
    assert post(url, content=b"a=b", headers={"content-type": "text/plain"}).status_code == 415
    big = post(url, {"form": {"x": "y" * 70_000}})
    assert big.status_code == 413


def test_redis_down_is_503(private_redis: Any, serve_receiver: Callable[..., ServerThread]) -> None:
    settings = load_settings(redis_url=private_redis.url, bridge_internal_keys=KEY, redis_timeout_seconds=0.3)
    url = serve_receiver(settings).internal_url
    private_redis.stop(kill=True)
    response = post(f"{url}/v1/applications", {"form": {"a": "b"}})
    assert response.status_code == 503 and response.json()["error"] == "redis_unavailable"


def test_a_slow_command_body_gets_408_and_no_job(
    redis_url: str, redis_client: redis.Redis, serve_receiver: Callable[..., ServerThread]
) -> None:
    """The body deadline covers the command endpoints too, not only the Kiban callbacks (slow loris)."""
    import socket
    from urllib.parse import urlsplit

    settings = load_settings(
        redis_url=redis_url, bridge_internal_keys=KEY, bridge_body_read_timeout_seconds=0.5
    )
    url = urlsplit(serve_receiver(settings, guarded=False).internal_url)
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/applications HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
            b"x-api-key: " + KEY.encode() + b'\r\nContent-Length: 40\r\n\r\n{"form": '
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
    assert redis_client.llen("rq:queue:workfloo") == 0


def test_a_retried_nip_command_is_answered_as_the_first_one(receiver: str, redis_client: redis.Redis) -> None:
    """A client retry of a NIP (same ``Idempotency-Key``) gets the first command back, even after its job
    ran and took the NIP: no second job, which Kiban would answer 400 (``action.failed``), and no NIP
    stored again."""
    headers = {"Idempotency-Key": "nip-attempt-1"}
    first = post(f"{receiver}/v1/applications/abc123/nip", {"nip": "123456"}, headers=headers)
    assert (first.status_code, first.json()["status"]) == (202, "accepted")
    command_id = first.json()["command_id"]
    state.drop_nip(redis_client, command_id)  # the validate job ran and took the NIP
    queue = Queue("workfloo", connection=redis_client, serializer=JOB_SERIALIZER)

    again = post(f"{receiver}/v1/applications/abc123/nip", {"nip": "123456"}, headers=headers)

    assert (again.status_code, again.json()) == (202, {"command_id": command_id, "status": "duplicate"})
    assert queue.job_ids == [command_id]
    assert not redis_client.exists(keys.nip_ref(command_id))
    # The key names one command of one application: another application's NIP is its own command.
    other = post(f"{receiver}/v1/applications/def456/nip", {"nip": "654321"}, headers=headers).json()
    assert other["status"] == "accepted" and other["command_id"] != command_id
    # Without a key every request is a new command, as before.
    plain = [post(f"{receiver}/v1/applications/abc123/nip", {"nip": "123456"}).json() for _ in range(2)]
    assert plain[0]["command_id"] != plain[1]["command_id"]


def test_a_bad_nip_idempotency_key_is_refused(receiver: str) -> None:
    response = post(
        f"{receiver}/v1/applications/abc123/nip", {"nip": "123456"}, headers={"Idempotency-Key": "x" * 201}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "Idempotency-Key"


def get_command(url: str, command_id: str, *, key: str | None = KEY) -> httpx.Response:
    return httpx.get(f"{url}/v1/commands/{command_id}", headers={"x-api-key": key} if key else {})


def test_a_command_reports_its_status_and_then_its_execution_id(
    receiver: str, redis_client: redis.Redis
) -> None:
    command_id = post(f"{receiver}/v1/applications", {"form": {"email": "a@b.co"}}).json()["command_id"]
    answer = get_command(receiver, command_id)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"command_id": command_id, "status": "queued", "execution_id": None}
    assert "a@b.co" not in answer.text

    # What start_application does once Kiban executed: the execution id checkpointed in the job's meta.
    job = Job.fetch(command_id, connection=redis_client, serializer=JOB_SERIALIZER)
    job.meta["execution_id"] = "exec-9"
    job.save_meta()  # type: ignore[no-untyped-call]
    redis_client.hset(job.key, "status", "started")
    assert get_command(receiver, command_id).json() == {
        "command_id": command_id, "status": "started", "execution_id": "exec-9",
    }  # fmt: skip

    nip = post(f"{receiver}/v1/applications/exec-7/nip", {"nip": "123456"}).json()["command_id"]
    assert get_command(receiver, nip).json()["execution_id"] == "exec-7"  # from the command itself


def test_an_unknown_command_is_404_and_the_key_is_required(receiver: str) -> None:
    command_id = post(f"{receiver}/v1/applications/exec-7/nip/resend").json()["command_id"]
    assert get_command(receiver, command_id, key=None).status_code == 401
    assert get_command(receiver, command_id, key="wrong").status_code == 401
    assert get_command(receiver, "cmd-start-01jzzzzzzzzzzzzzzzzzzzzzzz").status_code == 404
    assert get_command(receiver, "finished-exec-7").status_code == 404  # not a command's job
