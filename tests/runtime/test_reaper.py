"""The reaper: an expired started-registry entry's job is requeued (same id), a job that keeps killing
workers is dead-lettered, a live heartbeat is left alone, and RQ's own registry cleanup cannot fail a dead
worker's job before the reaper requeues it."""

from __future__ import annotations

import json
import time

import redis
from rq import Queue
from rq.job import JobStatus
from rq.registry import FailedJobRegistry

from workers.core import keys
from workers.core.contract import JOB_SERIALIZER
from workers.core.settings import load_settings
from workers.runtime import dead_letters as dlq
from workers.runtime import rq_internals
from workers.runtime.reaper import RQ_CLEANUP_MARGIN_SECONDS, reap_abandoned
from workers.runtime.worker import build_worker

QUEUE = "workfloo"


def test_poison_job_is_dead_lettered_after_max_requeues(redis_client: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    job = queue.enqueue("time.sleep", 1, job_id="poison")
    # Pretend a worker took it and died: STARTED, with an expired heartbeat entry.
    job.set_status(JobStatus.STARTED)
    redis_client.lrem(queue.key, 0, job.id)
    redis_client.zadd(queue.started_job_registry.key, {f"{job.id}:exec1": time.time() - 5})
    assert reap_abandoned(redis_client, [QUEUE], max_requeues=1, settings=load_settings()) == ["poison"]
    assert redis_client.lrange(queue.key, 0, -1) == [b"poison"]
    # It "kills" its worker again.
    redis_client.lrem(queue.key, 0, job.id)
    job.set_status(JobStatus.STARTED)
    redis_client.zadd(queue.started_job_registry.key, {f"{job.id}:exec2": time.time() - 5})
    assert reap_abandoned(redis_client, [QUEUE], max_requeues=1, settings=load_settings()) == []
    letters = dlq.list_dead_letters(redis_client, QUEUE)
    assert [letter.job_id for letter in letters] == ["poison"]
    assert "abandoned 2 times" in letters[0].reason
    # Every dead letter raises a signal, the reaper's too.
    signals = [
        json.loads(fields[b"event"])
        for _, fields in redis_client.xrange("workfloo:events")
        if fields[b"type"] == b"job.dead_lettered"
    ]
    assert [(e["data"]["job_id"], e["data"]["code"], e["data"]["function"]) for e in signals] == [
        ("poison", "abandoned", "time.sleep")
    ]


def test_job_killed_before_it_was_marked_started_is_requeued(redis_client: redis.Redis) -> None:
    """SIGKILL between RQ's prepare_execution (started-registry entry) and prepare_job_execution (status
    STARTED): the job is QUEUED, in the intermediate list and in no queue. It must be requeued, not left
    for RQ's intermediate-queue clean-up to fail (found by tests/resilience/test_worker_crash.py)."""
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    job = queue.enqueue("time.sleep", 1, job_id="half-started")
    redis_client.lmove(queue.key, queue.intermediate_queue_key, "RIGHT", "LEFT")
    redis_client.zadd(queue.started_job_registry.key, {f"{job.id}:exec1": time.time() - 5})
    assert job.get_status(refresh=True) == JobStatus.QUEUED
    assert reap_abandoned(redis_client, [QUEUE], max_requeues=3, settings=load_settings()) == ["half-started"]
    assert redis_client.lrange(queue.key, 0, -1) == [b"half-started"]
    assert redis_client.lrange(queue.intermediate_queue_key, 0, -1) == []
    # A QUEUED job that is still in its queue is not touched (nothing to recover).
    other = queue.enqueue("time.sleep", 1, job_id="waiting")
    redis_client.zadd(queue.started_job_registry.key, {f"{other.id}:exec1": time.time() - 5})
    assert reap_abandoned(redis_client, [QUEUE], max_requeues=3, settings=load_settings()) == []
    assert redis_client.lrange(queue.key, 0, -1).count(b"waiting") == 1


def test_live_heartbeat_is_not_reaped(redis_client: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    job = queue.enqueue("time.sleep", 1, job_id="alive")
    job.set_status(JobStatus.STARTED)
    beat_expires = time.time() + 30  # the last heartbeat is still valid for 30 s
    redis_client.zadd(
        queue.started_job_registry.key, {f"{job.id}:exec1": beat_expires + RQ_CLEANUP_MARGIN_SECONDS}
    )
    assert reap_abandoned(redis_client, [QUEUE], max_requeues=3) == []


def test_rq_registry_cleanup_leaves_a_dead_workers_job_to_the_reaper(redis_client: redis.Redis) -> None:
    """RQ's ``StartedJobRegistry.cleanup`` (run by any ``count``, and by RQ's maintenance in every worker)
    fails an expired entry's job; a dead bridge worker's job must be requeued by the reaper instead."""
    settings = load_settings()
    worker = build_worker(redis_client, settings)
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    job = queue.enqueue("time.sleep", 1, job_id="orphan")
    job.set_status(JobStatus.STARTED)
    redis_client.lrem(queue.key, 0, job.id)
    # The worker's last heartbeat, written long enough ago that the worker counts as dead (by 5 s).
    last_beat = time.time() - settings.worker_heartbeat_seconds - settings.worker_heartbeat_grace_seconds - 5
    ttl = worker.get_heartbeat_ttl(job)
    redis_client.zadd(queue.started_job_registry.key, {f"{job.id}:exec1": last_beat + ttl})
    assert queue.started_job_registry.count == 1  # runs RQ's cleanup: the entry must survive it
    assert job.get_status(refresh=True) == JobStatus.STARTED
    assert FailedJobRegistry(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER).count == 0
    assert reap_abandoned(redis_client, [QUEUE], max_requeues=3, settings=settings) == ["orphan"]
    assert redis_client.lrange(queue.key, 0, -1) == [b"orphan"]


def _dead_started(redis_client: redis.Redis, queue: Queue, job_id: str, worker: str) -> None:
    """``job_id`` STARTED by ``worker``, its heartbeat entry expired (by 5 s)."""
    job = queue.enqueue("time.sleep", 1, job_id=job_id)
    job.set_status(JobStatus.STARTED)
    redis_client.lrem(queue.key, 0, job.id)
    redis_client.hset(f"rq:execution:{job_id}:exec1", "worker_name", worker)
    redis_client.zadd(queue.started_job_registry.key, {f"{job_id}:exec1": time.time() - 5})


def test_a_worker_whose_key_still_lives_is_not_taken_for_dead(redis_client: redis.Redis) -> None:
    """A stale heartbeat entry alone is not death: the worker's RQ key must have expired too."""
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    _dead_started(redis_client, queue, "slow-beat", "w-alive")
    redis_client.hset("rq:worker:w-alive", "state", "busy")
    redis_client.expire("rq:worker:w-alive", 30)
    settings = load_settings()
    assert reap_abandoned(redis_client, [QUEUE], max_requeues=3, settings=settings) == []
    redis_client.delete("rq:worker:w-alive")  # its key expired: now it is dead
    assert reap_abandoned(redis_client, [QUEUE], max_requeues=3, settings=settings) == ["slow-beat"]


def test_requeuing_revokes_the_lease_of_the_run_that_had_the_job(redis_client: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    _dead_started(redis_client, queue, "paused", "w-paused")
    redis_client.hset(keys.job_lease("paused"), mapping={"token": "77", "owner": "w-paused:1"})
    assert reap_abandoned(redis_client, [QUEUE], max_requeues=3, settings=load_settings()) == ["paused"]
    assert redis_client.hget(keys.job_lease("paused"), "token") != b"77"
    assert redis_client.ttl(keys.job_lease("paused")) > 0


def test_reaper_compares_on_redis_time(redis_client: redis.Redis) -> None:
    seconds, micros = redis_client.time()
    assert abs(rq_internals.redis_time(redis_client) - (seconds + micros / 1e6)) < 1.0


def test_job_stranded_in_the_intermediate_list_is_requeued(redis_client: redis.Redis) -> None:
    """A worker died between taking the job off the queue and registering it as started: the job is in
    RQ's intermediate list only. It is requeued once it stayed there heartbeat + grace."""
    settings = load_settings()
    patience = settings.worker_heartbeat_seconds + settings.worker_heartbeat_grace_seconds
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    queue.enqueue("time.sleep", 1, job_id="stranded")
    redis_client.lmove(queue.key, queue.intermediate_queue_key, "RIGHT", "LEFT")
    t0 = rq_internals.redis_time(redis_client)
    assert reap_abandoned(redis_client, [QUEUE], max_requeues=3, settings=settings, now=t0) == []
    later = t0 + patience + 1
    assert reap_abandoned(redis_client, [QUEUE], max_requeues=3, settings=settings, now=later) == ["stranded"]
    assert redis_client.lrange(queue.key, 0, -1) == [b"stranded"]
    assert redis_client.lrange(queue.intermediate_queue_key, 0, -1) == []
    assert not redis_client.exists(keys.stranded(QUEUE, "stranded"))
    # A job in the intermediate list that is running (it has a started entry) is left alone.
    queue.enqueue("time.sleep", 1, job_id="running")
    redis_client.lrem(queue.key, 0, "running")
    redis_client.lpush(queue.intermediate_queue_key, "running")
    redis_client.zadd(queue.started_job_registry.key, {"running:exec1": time.time() + 600})
    for now in (later, later + patience + 1):
        assert reap_abandoned(redis_client, [QUEUE], max_requeues=3, settings=settings, now=now) == []
    assert redis_client.lrange(queue.intermediate_queue_key, 0, -1) == [b"running"]


def test_what_rqs_cleanup_leaves_is_recovered_once(redis_client: redis.Redis) -> None:
    """Every worker down, and an RQ tool (``rq info``, a dashboard) counted the started registry: RQ's
    cleanup requeued the dead worker's job (it carries RQ retries) but left its id in the intermediate
    list. The reaper clears the leftover and does not queue the job a second time."""
    from rq import Retry

    settings = load_settings()
    patience = settings.worker_heartbeat_seconds + settings.worker_heartbeat_grace_seconds
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    job = queue.enqueue("time.sleep", 1, job_id="retried", retry=Retry(max=3))
    redis_client.lmove(queue.key, queue.intermediate_queue_key, "RIGHT", "LEFT")
    job.set_status(JobStatus.STARTED)
    redis_client.zadd(queue.started_job_registry.key, {"retried:exec1": time.time() - 600})
    assert queue.started_job_registry.count == 0  # RQ's cleanup ran: requeued, not failed
    assert redis_client.lrange(queue.key, 0, -1) == [b"retried"]
    t0 = rq_internals.redis_time(redis_client)
    for now in (t0, t0 + patience + 1):
        assert reap_abandoned(redis_client, [QUEUE], max_requeues=3, settings=settings, now=now) == []
    assert redis_client.lrange(queue.key, 0, -1) == [b"retried"]
    assert redis_client.lrange(queue.intermediate_queue_key, 0, -1) == []
    assert (
        FailedJobRegistry(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER).get_job_count(
            cleanup=False
        )
        == 0
    )
