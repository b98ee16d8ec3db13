"""Job leases (fencing tokens), inside a real RQ worker on a real Redis: a run holds its job's lease until
the reaper (or a newer run) takes it; a run that lost it stops quietly, records nothing, and
``record_once`` keeps the first value recorded."""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue, get_current_job
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from workers.core import keys
from workers.core.contract import JOB_SERIALIZER
from workers.core.errors import LeaseLostError
from workers.core.settings import load_settings
from workers.jobs import lease
from workers.jobs.retry import guarded
from workers.runtime.worker import build_worker

SEEN: list[Any] = []


def _guarded(body: Any) -> Any:
    job = get_current_job()
    assert job is not None
    return guarded(job.connection, load_settings(), "probe", "exec-l", lambda: body(job))


def holds_then_loses() -> Any:
    def body(job: Job) -> str:
        conn = job.connection
        lease.check(conn, "first effect")
        SEEN.append(lease.record_once(conn, "execution_id", "first"))
        SEEN.append(lease.record_once(conn, "execution_id", "second"))  # the first value stands
        lease.revoke(conn, job.id, load_settings())  # what the reaper does before requeuing
        SEEN.append(lease.current(conn))
        lease.check(conn, "second effect")
        SEEN.append("effect after the lease was lost")
        return "done"

    return _guarded(body)


def loses_then_fails() -> Any:
    def body(job: Job) -> None:
        lease.revoke(job.connection, job.id, load_settings())
        raise RuntimeError("a late answer a newer run made stale")

    return _guarded(body)


def newer_run_took_over() -> Any:
    def body(job: Job) -> None:
        conn = job.connection
        conn.hset(keys.job_lease(job.id), "token", "999999999")  # a newer run began meanwhile
        try:
            lease.record_once(conn, "execution_id", "late")
        except LeaseLostError:
            SEEN.append("lost")
            raise

    return _guarded(body)


def _run(client: redis.Redis, func: str) -> Job:
    SEEN.clear()
    job = Queue("workfloo", connection=client, serializer=JOB_SERIALIZER).enqueue(
        f"{__name__}.{func}", job_id=f"lease-{func.replace('_', '-')}"
    )
    build_worker(client, load_settings(), cls="workers.runtime.worker.BridgeSimpleWorker").work(burst=True)
    return job


def _quiet(client: redis.Redis, job: Job) -> None:
    """The run recorded nothing: no result, no dead letter, no action.failed, status not final."""
    assert job.get_status(refresh=True) not in (JobStatus.FINISHED, JobStatus.FAILED)
    assert job.latest_result() is None
    assert (
        FailedJobRegistry("workfloo", connection=client, serializer=JOB_SERIALIZER).get_job_count(
            cleanup=False
        )
        == 0
    )
    assert not client.exists("workfloo:timeline:exec-l")


def test_a_run_that_loses_its_lease_stops_before_the_next_effect(redis_client: redis.Redis) -> None:
    job = _run(redis_client, "holds_then_loses")
    assert SEEN == ["first", "first", False]
    _quiet(redis_client, job)
    assert redis_client.hget(keys.job_lease(job.id), "rec:execution_id") == b"first"
    assert redis_client.ttl(keys.job_lease(job.id)) > 0


def test_a_failure_after_the_lease_was_lost_is_no_dead_letter(redis_client: redis.Redis) -> None:
    _quiet(redis_client, _run(redis_client, "loses_then_fails"))


def test_a_lost_run_records_nothing(redis_client: redis.Redis) -> None:
    job = _run(redis_client, "newer_run_took_over")
    assert SEEN == ["lost"]
    assert redis_client.hget(keys.job_lease(job.id), "rec:execution_id") is None
    _quiet(redis_client, job)


def test_tokens_are_never_handed_out_twice(redis_client: redis.Redis) -> None:
    settings = load_settings()
    lease.revoke(redis_client, "a", settings)
    first = redis_client.hget(keys.job_lease("a"), "token")
    redis_client.delete(keys.job_lease("a"))  # the lease hash expired
    lease.revoke(redis_client, "a", settings)
    assert int(redis_client.hget(keys.job_lease("a"), "token") or 0) > int(first or 0)


def test_outside_a_job_every_check_passes(redis_client: redis.Redis) -> None:
    lease.check(redis_client, "anything")
    assert lease.record_once(redis_client, "execution_id", "x") == "x"
    assert lease.current(redis_client)
    assert redis_client.keys("*") == []
