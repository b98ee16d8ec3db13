"""Crash recovery: a job whose worker process group is SIGKILLed mid-job runs again, same id, well
within 30 s, on another worker; a job that keeps killing workers is dead-lettered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.scheduler import RQScheduler

from workers.core.settings import load_settings
from workers.runtime import dead_letters as dlq
from workers.runtime.worker import CRASH_REQUEUES, RQ_CLEANUP_MARGIN_SECONDS, build_worker, reap_abandoned

BIN = Path(sys.executable).parent / "workfloo-bridge"
QUEUE = "workfloo"


def worker_env(redis_url: str, worker_class: str) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "WORKER_CLASS": worker_class,
        "WORKER_HEARTBEAT_SECONDS": "1",
        "WORKER_HEARTBEAT_GRACE_SECONDS": "2",
        "REAPER_INTERVAL_SECONDS": "0.5",
        "WORKER_TTL_SECONDS": "16",
        "LOG_LEVEL": "WARNING",
    }


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def start_worker(
    env: dict[str, str], procs: list[subprocess.Popen[bytes]], *, scheduler: bool = False
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(BIN), "worker", "--scheduler" if scheduler else "--no-scheduler"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(proc)
    return proc


def wait_for(predicate: object, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.parametrize(
    "worker_class", ["workers.runtime.worker.BridgeSimpleWorker", "workers.runtime.worker.BridgeWorker"]
)
def test_sigkilled_worker_job_finishes_on_another_worker(
    redis_url: str, redis_client: redis.Redis, spawn: list[subprocess.Popen[bytes]], worker_class: str
) -> None:
    env = worker_env(redis_url, worker_class)
    queue = Queue(QUEUE, connection=redis_client)
    job = queue.enqueue("time.sleep", 4, job_id="crash-me", job_timeout=60)
    first = start_worker(env, spawn)
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.STARTED, 15, "the job to start")
    os.killpg(first.pid, signal.SIGKILL)  # the whole process group: worker and any work-horse
    first.wait(timeout=10)
    killed_at = time.monotonic()
    start_worker(env, spawn)
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 30, "the job to finish elsewhere")
    assert time.monotonic() - killed_at < 30
    assert Job.fetch("crash-me", connection=redis_client).meta[CRASH_REQUEUES] == 1


def test_poison_job_is_dead_lettered_after_max_requeues(redis_client: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=redis_client)
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


def test_job_killed_before_it_was_marked_started_is_requeued(redis_client: redis.Redis) -> None:
    """SIGKILL between RQ's prepare_execution (started-registry entry) and prepare_job_execution (status
    STARTED): the job is QUEUED, in the intermediate list and in no queue. It must be requeued, not left
    for RQ's intermediate-queue clean-up to fail (found by tests/resilience/test_worker_crash.py)."""
    queue = Queue(QUEUE, connection=redis_client)
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
    queue = Queue(QUEUE, connection=redis_client)
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
    queue = Queue(QUEUE, connection=redis_client)
    job = queue.enqueue("time.sleep", 1, job_id="orphan")
    job.set_status(JobStatus.STARTED)
    redis_client.lrem(queue.key, 0, job.id)
    # The worker's last heartbeat, written long enough ago that the worker counts as dead (by 5 s).
    last_beat = time.time() - settings.worker_heartbeat_seconds - settings.worker_heartbeat_grace_seconds - 5
    ttl = worker.get_heartbeat_ttl(job)
    redis_client.zadd(queue.started_job_registry.key, {f"{job.id}:exec1": last_beat + ttl})
    assert queue.started_job_registry.count == 1  # runs RQ's cleanup: the entry must survive it
    assert job.get_status(refresh=True) == JobStatus.STARTED
    assert FailedJobRegistry(QUEUE, connection=redis_client).count == 0
    assert reap_abandoned(redis_client, [QUEUE], max_requeues=3, settings=settings) == ["orphan"]
    assert redis_client.lrange(queue.key, 0, -1) == [b"orphan"]


def test_scheduled_jobs_survive_the_death_of_the_scheduler_holder(
    redis_url: str, redis_client: redis.Redis, spawn: list[subprocess.Popen[bytes]]
) -> None:
    env = {
        **worker_env(redis_url, "workers.runtime.worker.BridgeSimpleWorker"),
        "SCHEDULER_STALE_SECONDS": "3",
    }
    holder = start_worker(env, spawn, scheduler=True)
    lock = RQScheduler.get_locking_key(QUEUE)
    wait_for(lambda: redis_client.get(lock) is not None, 15, "the first worker to take the scheduler lock")
    start_worker(env, spawn, scheduler=True)
    time.sleep(1)
    os.killpg(holder.pid, signal.SIGKILL)  # worker and its scheduler process
    holder.wait(timeout=10)
    killed_at = time.monotonic()
    job = Queue(QUEUE, connection=redis_client).enqueue_in(timedelta(seconds=1), "time.sleep", 0)
    # RQ alone: the dead holder's lock lives 61 s and is retried at the next maintenance.
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 30, "the scheduled job to run")
    assert time.monotonic() - killed_at < 30


def test_sigterm_right_after_registration_is_a_clean_stop(
    redis_client: redis.Redis, redis_url: str, spawn: list[subprocess.Popen[bytes]]
) -> None:
    """RQ registers the worker and starts its scheduler before it installs its signal handlers; a
    SIGTERM in that window (an orchestrator stopping a pod that just started) used to kill the process
    (exit -15). It must be a warm shutdown: exit 0, worker deregistered."""
    from rq import Worker

    env = worker_env(redis_url, "workers.runtime.worker.BridgeSimpleWorker")
    for _ in range(3):
        proc = start_worker(env, spawn, scheduler=True)
        deadline = time.monotonic() + 30
        while not Worker.all(connection=redis_client) and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert Worker.all(connection=redis_client) == []
