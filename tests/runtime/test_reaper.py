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

from workers.core.contract import JOB_SERIALIZER
from workers.core.settings import load_settings
from workers.runtime import dead_letters as dlq
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
