"""``forget_application`` against a real Redis, without workers: what counts as the application's, what is
in flight, and that an id which is a prefix of another's never takes the other's records with it."""

from __future__ import annotations

import pytest
import redis
from rq import Queue
from rq.job import Job

from workers.core import contract, keys
from workers.core.contract import JOB_SERIALIZER
from workers.core.errors import ErasureRefusedError, PermanentError
from workers.core.events import Event, EventType
from workers.core.settings import Settings, load_settings
from workers.fanout.publisher import Publisher
from workers.jobs import state
from workers.jobs.erasure import execution_sha256, forget_application


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return load_settings(redis_url=redis_url)


def seed(client: redis.Redis, settings: Settings, execution_id: str, link_id: str) -> Job:
    """What the workers leave for one application: state, link, events with once-keys, a finished job."""
    publisher = Publisher(client, settings)
    state.set_fields(client, execution_id, {state.COMMAND_ID: f"cmd-start-{execution_id}"})
    state.map_link(client, link_id, execution_id)
    publisher.publish(
        Event(type=EventType.NIP_SENT, execution_id=execution_id, data={"date": "d1", "link_id": link_id}),
        once_key=f"nip:{execution_id}:SENT:d1",
    )
    publisher.publish(
        Event(type=EventType.WORKFLOO_COMPLETED, execution_id=execution_id),
        once_key=f"finished:{execution_id}",
    )
    client.set(keys.dedupe(f"finished-{execution_id}"), "stamp", ex=60)
    queue = Queue(settings.bridge_queue, connection=client, serializer=JOB_SERIALIZER)
    return queue.enqueue(
        contract.RESEND_FUNCTION, {"execution_id": execution_id, "resend": 1, "command_id": None},
        job_id=f"nip-resend-{execution_id}-1",
    )  # fmt: skip


def keys_of(client: redis.Redis) -> set[str]:
    return {key.decode() for key in client.scan_iter(count=1000)}


def test_an_id_that_prefixes_another_takes_nothing_of_the_other(
    redis_client: redis.Redis, settings: Settings
) -> None:
    seed(redis_client, settings, "a1-b2", "link-2")
    other = keys_of(redis_client)
    other_stream = redis_client.xlen(settings.events_stream)
    job = seed(redis_client, settings, "a1", "link-1")
    job.cancel()  # no longer in flight

    report = forget_application(redis_client, settings, "a1", force=True)

    assert report.execution_sha256 == execution_sha256("a1") and report.jobs == 1
    assert report.stream_entries == 2
    left = keys_of(redis_client)
    assert other <= left, sorted(other - left)
    assert not [key for key in left if "a1" in key.replace("a1-b2", "")]
    assert redis_client.xlen(settings.events_stream) == other_stream + 1  # + application.forgotten
    assert state.resolve_link(redis_client, "link-2") == "a1-b2"
    assert Job.exists("nip-resend-a1-b2-1", connection=redis_client)


def test_queued_work_refuses_and_deletes_nothing(redis_client: redis.Redis, settings: Settings) -> None:
    seed(redis_client, settings, "exec-1", "link-1")  # a queued resend job
    before = keys_of(redis_client)
    with pytest.raises(ErasureRefusedError) as refused:
        forget_application(redis_client, settings, "exec-1")
    assert "exec-1" not in str(refused.value) and "1 jobs" in str(refused.value)
    assert keys_of(redis_client) == before

    report = forget_application(redis_client, settings, "exec-1", force=True)
    assert report.in_flight_jobs == 1 and report.forced
    assert not Job.exists("nip-resend-exec-1-1", connection=redis_client)
    assert (
        redis_client.llen(
            Queue(settings.bridge_queue, connection=redis_client, serializer=JOB_SERIALIZER).key
        )
        == 0
    )


def test_open_execution_refuses(redis_client: redis.Redis, settings: Settings) -> None:
    state.touch_open(redis_client, "exec-2")
    with pytest.raises(ErasureRefusedError):
        forget_application(redis_client, settings, "exec-2")
    assert forget_application(redis_client, settings, "exec-2", force=True).was_open


def test_forgetting_twice_reports_nothing_left(redis_client: redis.Redis, settings: Settings) -> None:
    seed(redis_client, settings, "exec-3", "link-3").cancel()
    assert not forget_application(redis_client, settings, "exec-3").nothing_left
    second = forget_application(redis_client, settings, "exec-3")
    assert second.nothing_left and second.deleted == 0 and second.published


def test_an_invalid_id_is_refused_before_any_scan(redis_client: redis.Redis, settings: Settings) -> None:
    with pytest.raises(PermanentError):
        forget_application(redis_client, settings, "*")
