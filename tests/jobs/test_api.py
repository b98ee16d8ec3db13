"""The Python API: commands enqueued with an idempotency key are enqueued once, for as long as the key
is remembered, whatever happened to the job since."""

from __future__ import annotations

import redis
from rq import Queue

from workers.core import keys
from workers.core.contract import JOB_SERIALIZER
from workers.core.settings import load_settings
from workers.jobs import api


def _queue(client: redis.Redis) -> Queue:
    return Queue("workfloo", connection=client, serializer=JOB_SERIALIZER)


def test_the_idempotency_key_outlives_the_job_hash(redis_client: redis.Redis) -> None:
    settings = load_settings()
    first = api.start_application(redis_client, {"email": "a@b.co"}, settings=settings, idempotency_key="o-1")
    assert _queue(redis_client).job_ids == [first]
    # The job ran and its hash expired (BRIDGE_JOB_RESULT_TTL_SECONDS), long before the key is forgotten.
    redis_client.delete(f"rq:job:{first}")
    redis_client.delete(_queue(redis_client).key)

    again = api.start_application(redis_client, {"email": "a@b.co"}, settings=settings, idempotency_key="o-1")

    assert again == first
    assert _queue(redis_client).job_ids == []
    assert not redis_client.exists(f"rq:job:{first}")
    ttl = redis_client.ttl(keys.dedupe(first))
    assert settings.bridge_dedupe_ttl_seconds - 5 <= ttl <= settings.bridge_dedupe_ttl_seconds


def test_a_repeated_key_never_rewrites_a_queued_job(redis_client: redis.Redis) -> None:
    settings = load_settings()
    first = api.start_application(redis_client, {"email": "a@b.co"}, settings=settings, idempotency_key="o-2")
    stored = redis_client.hget(f"rq:job:{first}", "data")
    api.start_application(redis_client, {"email": "a@b.co"}, settings=settings, idempotency_key="o-2")
    assert _queue(redis_client).job_ids == [first]  # enqueued once, not twice
    assert redis_client.hget(f"rq:job:{first}", "data") == stored


def test_the_http_and_python_commands_share_one_key_space(redis_client: redis.Redis) -> None:
    """An HTTP ``Idempotency-Key`` and the API's ``idempotency_key`` name the same command."""
    settings = load_settings()
    redis_client.set(keys.dedupe(api.new_command_id("start", "o-3")), "2026-12-06T00:00:00Z")
    assert api.start_application(redis_client, {"a": 1}, settings=settings, idempotency_key="o-3")
    assert _queue(redis_client).job_ids == []


def test_a_retried_nip_is_enqueued_and_stored_once(redis_client: redis.Redis) -> None:
    settings = load_settings()
    first = api.validate_nip(redis_client, "exec1", "123456", settings=settings, idempotency_key="n-1")
    assert redis_client.exists(keys.nip_ref(first))
    redis_client.delete(keys.nip_ref(first))  # the validate job ran and took the NIP

    again = api.validate_nip(redis_client, "exec1", "123456", settings=settings, idempotency_key="n-1")

    assert again == first
    assert _queue(redis_client).job_ids == [first]
    assert not redis_client.exists(keys.nip_ref(first))
    other = api.validate_nip(redis_client, "exec2", "123456", settings=settings, idempotency_key="n-1")
    assert other != first


def test_without_a_key_every_call_is_a_new_command(redis_client: redis.Redis) -> None:
    settings = load_settings()
    ids = {api.resend_nip(redis_client, "exec1", settings=settings) for _ in range(2)}
    ids |= {api.validate_nip(redis_client, "exec1", "123456", settings=settings) for _ in range(2)}
    assert len(ids) == 4 and len(_queue(redis_client).job_ids) == 4


def test_command_result_names_the_status_as_rq_spells_it(redis_client: redis.Redis) -> None:
    """``"queued"``, not ``"JobStatus.QUEUED"`` (``str()`` of RQ's enum on Python 3.11+)."""
    settings = load_settings()
    command = api.start_application(redis_client, {"email": "a@b.co"}, settings=settings)
    assert api.command_result(redis_client, command) == {"status": "queued", "result": None}
    assert api.command_result(redis_client, "cmd-start-unknown") is None
