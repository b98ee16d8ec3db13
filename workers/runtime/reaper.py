"""The reaper: jobs of dead workers go back to the front of their queue, same job id.

A started-registry entry whose heartbeat expired belongs to a worker that died mid-job (SIGKILL, OOM,
a lost node). RQ would *fail* such a job minutes later; the bridge's jobs are idempotent, so running it
again is the recovery. ``ZREM`` of the entry decides which reaper owns it. A job that keeps killing
workers is dead-lettered after ``max_requeues`` crashes, with ``action.failed``; ``CRASH_REQUEUES`` in the
job's meta counts them (jobs read it to know a run is a crash re-run).
"""

from __future__ import annotations

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from workers.core import keys
from workers.core.contract import ABANDONED, CRASH_REQUEUES, DEAD_LETTERS, JOB_SERIALIZER
from workers.core.events import Event, EventType
from workers.core.log import get_logger
from workers.core.settings import Settings, get_settings
from workers.fanout.publisher import Publisher
from workers.jobs import lease
from workers.runtime import rq_internals
from workers.runtime.dead_letters import publish_dead_lettered

log = get_logger(__name__)


RQ_CLEANUP_MARGIN_SECONDS = 60
"""Added to every started-registry entry's TTL, and added back by the reaper when it looks for dead ones.

RQ's own ``StartedJobRegistry.cleanup`` runs on any ``count`` / ``get_job_ids`` of the registry (a
dashboard, ``rq info``-style tooling, a test) and in every worker's maintenance, and it *fails* an expired
entry's job (a dead letter) instead of requeuing it. With entries expiring at heartbeat + grace, that
cleanup raced the reaper after each crash and sometimes won. With the margin, the reaper (every few
seconds) sees the entry dead at heartbeat + grace as before, and RQ's cleanup only 60 s later."""


def reap_abandoned(
    connection: redis.Redis,
    queue_names: list[str],
    *,
    max_requeues: int,
    settings: Settings | None = None,
    now: float | None = None,
) -> list[str]:
    """Requeue jobs whose worker is dead, and jobs stranded in RQ's intermediate list; return their ids.

    A worker is dead when its job's started-registry entry expired *and* its RQ worker key is gone too
    (a key expires on Redis's clock, whoever wrote it). Times are compared on Redis's clock (``TIME``),
    never this host's, unless ``now`` is given."""
    s = settings or get_settings()
    clock = rq_internals.redis_time(connection) if now is None else now
    requeued: list[str] = []
    # Entries carry RQ_CLEANUP_MARGIN_SECONDS on top of heartbeat + grace: dead = within the margin.
    cutoff = clock + RQ_CLEANUP_MARGIN_SECONDS
    for name in queue_names:
        queue = Queue(name, connection=connection, serializer=JOB_SERIALIZER)
        for entry in rq_internals.expired_started_entries(connection, queue, cutoff):
            owner = rq_internals.started_entry_worker(connection, entry)
            if owner is not None and rq_internals.worker_key_exists(connection, owner):
                continue  # a late heartbeat, not a dead worker: its key still lives
            job = _abandoned_job(connection, queue, entry)
            if job is None:
                continue
            rq_internals.leave_intermediate_queue(connection, queue, job.id)
            if _requeue(connection, s, queue, job, max_requeues):
                requeued.append(job.id)
        for job in _stranded_jobs(connection, s, queue, clock):
            if _requeue(connection, s, queue, job, max_requeues):
                requeued.append(job.id)
    return requeued


def _requeue(connection: redis.Redis, s: Settings, queue: Queue, job: Job, max_requeues: int) -> bool:
    """Requeue a recovered job at the front of its queue (True), or dead-letter a poison pill (False).
    Either way the run that had it loses its lease first: if its worker was only paused, it stops
    before its next effect."""
    lease.revoke(connection, job.id, s)
    crashes = int(job.meta.get(CRASH_REQUEUES, 0)) + 1
    if crashes > max_requeues:
        reason = f"abandoned {crashes} times (worker died mid-job each time); dead-lettered"
        rq_internals.fail_job(connection, job, reason)
        _publish_abandoned(connection, s, job, reason)
        publish_dead_lettered(connection, s, job, code=ABANDONED, reason=f"abandoned {crashes} times")
        log.error("job_dead_lettered_after_crashes", job_id=job.id, crashes=crashes)
        return False
    job.meta[CRASH_REQUEUES] = crashes
    job.save_meta()  # type: ignore[no-untyped-call]
    queue.enqueue_job(job, at_front=True)
    log.warning("job_requeued_after_worker_death", job_id=job.id, crashes=crashes, queue=queue.name)
    return True


def _abandoned_job(connection: redis.Redis, queue: Queue, entry: str) -> Job | None:
    """The job of an expired entry when this reaper claimed it and it needs recovering, else None."""
    job_id = rq_internals.claim_started_entry(connection, queue, entry)
    if job_id is None:
        return None  # another reaper (or RQ's own cleanup) took it
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JOB_SERIALIZER)
    except NoSuchJobError:
        return None
    status = job.get_status(refresh=True)
    if status == JobStatus.QUEUED:
        # Killed between RQ's prepare_execution (this registry entry) and prepare_job_execution
        # (status STARTED): the job is left in the intermediate list and in no queue, and RQ's
        # own clean-up would *fail* it minutes later. Requeue it like any abandoned job.
        return None if connection.lpos(queue.key, job_id) is not None else job
    return job if status == JobStatus.STARTED else None


def _stranded_jobs(connection: redis.Redis, s: Settings, queue: Queue, clock: float) -> list[Job]:
    """Jobs left in RQ's intermediate list by a worker that died between taking them off the queue and
    registering them as started: in no queue and no registry, and failed by RQ's intermediate-queue
    clean-up a minute later. A live worker registers a job milliseconds after taking it, so one seen
    there without a started entry for heartbeat + grace is stranded; ``LREM`` decides which reaper
    recovers it."""
    ids = rq_internals.intermediate_job_ids(connection, queue)
    if not ids:
        return []
    started = rq_internals.started_job_ids(connection, queue)
    patience = s.worker_heartbeat_seconds + s.worker_heartbeat_grace_seconds
    stranded: list[Job] = []
    for job_id in ids:
        mark = keys.stranded(queue.name, job_id)
        if job_id in started:
            connection.delete(mark)  # it was only on its way to running
            continue
        connection.set(mark, repr(clock), nx=True, ex=max(60, 4 * patience))
        first_seen = connection.get(mark)
        if first_seen is None or clock - float(first_seen) < patience:
            continue
        if not rq_internals.claim_intermediate_job(connection, queue, job_id):
            continue  # another reaper took it
        connection.delete(mark)
        try:
            job = Job.fetch(job_id, connection=connection, serializer=JOB_SERIALIZER)
        except NoSuchJobError:
            continue
        status = job.get_status(refresh=True)
        if status in (JobStatus.QUEUED, JobStatus.STARTED) and connection.lpos(queue.key, job_id) is None:
            stranded.append(job)  # else a leftover of a finished run, or still queued: nothing to do
    return stranded


def _publish_abandoned(connection: redis.Redis, settings: Settings, job: Job, reason: str) -> None:
    execution_id = None
    if job.args and isinstance(job.args[0], dict):
        execution_id = job.args[0].get("execution_id")
    try:
        Publisher(connection, settings).publish(
            Event(
                type=EventType.ACTION_FAILED,
                execution_id=execution_id,
                data={"action": job.func_name, "job_id": job.id, "reason": reason, "retryable": False},
            ),
            once_key=f"action-failed:{job.id}:abandoned:{int(job.meta.get(DEAD_LETTERS, 0))}",
        )
    except redis.RedisError:
        log.warning("action_failed_not_published", job_id=job.id)
