"""Every RQ internal the bridge's worker classes and reaper rely on; ``tests/runtime/test_rq_internals.py``
pins each one, so an RQ upgrade that moves one fails there instead of silently losing crash recovery.

Hooks the worker classes override (RQ calls them by name; a rename upstream would leave dead overrides),
listed in ``OVERRIDDEN_HOOKS``:

* ``BaseWorker.should_run_maintenance_tasks`` (a property) and ``run_maintenance_tasks``: the work loop's
  maintenance step, between jobs and after each idle dequeue timeout; the reaper runs there;
* ``BaseWorker.get_heartbeat_ttl(job, working_time)``: the TTL of the job's started-registry entry;
* ``BaseWorker.bootstrap`` and ``BaseWorker._install_signal_handlers``: the window before RQ's signal
  handlers exist; ``request_warm_stop`` sets the ``_stop_requested`` flag the loop checks before a dequeue.
  ``work()`` forks the scheduler (``_start_scheduler``) inside that window, so the scheduler inherits the
  early-signal handler;
* ``BaseWorker.handle_exception(job, *exc_info)``: RQ's version logs the job's arguments (the whole
  applicant form) and the exception text at ERROR; the bridge logs the job id, function and a traceback
  whose exception texts are codes (``workers.core.log.safe_traceback``), then runs the exception handlers
  (``run_exception_handlers``) as RQ does. ``log_job_description`` is off: a job's description is its
  call with the arguments;
* ``BaseWorker.unsubscribe``: RQ sends ``UNSUBSCRIBE`` and then stops its pub/sub thread, whose
  ``stop()`` (redis-py) joins without a timeout. A thread that reads the unsubscribe confirmation before
  the stop flag is set loops once more and waits the thread's ``sleep_time`` (RQ: 60 s) for a
  subscription, so a burst or warm shutdown hung up to a minute. ``stop_pubsub_thread`` sets the flag
  first (``PubSubWorkerThread._running``), then unsubscribes, and waits at most a second;
* ``SimpleWorker.execute_job``, rebuilt from ``prepare_execution``, ``perform_job``,
  ``maintain_heartbeats`` and ``set_state``: a heartbeat thread beside the in-process job.

State read or written directly, only through the functions below:

* ``BaseWorker.scheduler``, ``RQScheduler._process``, ``RQScheduler.name``, ``acquire_locks(auto_start=)``,
  ``RQScheduler.get_locking_key``, the ``last_heartbeat`` field of the ``SCHEDULER_KEY_TEMPLATE`` hash, and
  ``rq.scripts.release_lock`` (compare-and-delete on the holder's name);
* the started registry as a sorted set of ``<job id>:<execution id>`` entries scored by expiry time
  (``rq.utils.parse_composite_key``), and ``Queue.intermediate_queue_key`` (the list a job sits in between
  its dequeue and its start);
* ``BaseWorker._exc_handlers`` and ``rq.job_lifecycle.call_exception_handlers``: the exception handler
  stack a job failure walks;
* ``rq.job_lifecycle.record_job_failure``: fail a job exactly as RQ does (failed registry and result);
* the job hash's ``data`` field (the serialized call, zlib-compressed, as ``Job.to_dict`` writes it) and
  the ``Job.args`` setter that re-serializes it: ``replace_job_args`` rewrites a running job's stored
  arguments (the start job drops its sealed form once Kiban has it);
* ``rq.defaults``: an argument left at RQ's default takes the bridge's setting instead;
* ``CronJob.enqueue``: RQ's builds its ``Queue`` with the default (pickle) serializer and takes none, so
  ``register_cron_job`` gives the registered job ``JsonCronJob.enqueue`` instead: the same steps (enqueue,
  job history capped and expiring, cron-job registry, one pipeline) with ``JOB_SERIALIZER``.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from typing import Any

import redis
from rq import Queue, SimpleWorker, cron_job_registry
from rq.cron import CronJob, CronScheduler
from rq.defaults import (
    DEFAULT_CRON_JOB_HISTORY_LIMIT,
    DEFAULT_CRON_JOB_HISTORY_TTL,
    DEFAULT_JOB_MONITORING_INTERVAL,
    DEFAULT_MAINTENANCE_TASK_INTERVAL,
    DEFAULT_WORKER_TTL,
)
from rq.job import Job
from rq.job_lifecycle import call_exception_handlers, record_job_failure
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.scripts import release_lock
from rq.utils import now, parse_composite_key, utcparse
from rq.worker import BaseWorker

from workers.core.contract import JOB_SERIALIZER

__all__ = [
    "DEFAULT_JOB_MONITORING_INTERVAL",
    "DEFAULT_MAINTENANCE_TASK_INTERVAL",
    "DEFAULT_WORKER_TTL",
    "OVERRIDDEN_HOOKS",
    "JsonCronJob",
    "claim_started_entry",
    "expired_started_entries",
    "fail_job",
    "leave_intermediate_queue",
    "register_cron_job",
    "release_scheduler_lock",
    "replace_job_args",
    "request_warm_stop",
    "run_exception_handlers",
    "scheduler_heartbeat_age",
    "scheduler_lock_holder",
    "scheduler_running",
    "start_scheduler",
    "stop_pubsub_thread",
]

OVERRIDDEN_HOOKS: dict[type, tuple[str, ...]] = {
    BaseWorker: (
        "should_run_maintenance_tasks",
        "run_maintenance_tasks",
        "get_heartbeat_ttl",
        "bootstrap",
        "_install_signal_handlers",
        "handle_exception",
        "unsubscribe",
    ),
    SimpleWorker: ("execute_job",),
}
"""RQ methods the bridge's worker classes override, by the RQ class that defines them."""


def _text(raw: object) -> str | None:
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


# --- worker ----------------------------------------------------------------------------------------


def request_warm_stop(worker: BaseWorker) -> None:
    """Make the work loop stop before its next dequeue, as RQ's own SIGTERM handler does."""
    worker._stop_requested = True


def run_exception_handlers(worker: BaseWorker, job: Job, *exc_info: Any) -> None:
    """Walk the worker's exception handler stack for a failed job, as RQ's ``handle_exception`` does."""
    call_exception_handlers(worker._exc_handlers, job, *exc_info)


def stop_pubsub_thread(worker: BaseWorker, timeout: float = 1.0) -> None:
    """Stop the worker's pub/sub thread and unsubscribe, waiting at most ``timeout`` for the thread: the
    run flag first, so the thread leaves its loop on the unsubscribe confirmation instead of waiting
    ``sleep_time`` for a new subscription."""
    thread = worker.pubsub_thread
    if thread is None:
        return
    thread._running.clear()
    worker.pubsub.unsubscribe()
    thread.join(timeout)
    worker.pubsub.close()


# --- scheduler -------------------------------------------------------------------------------------


def scheduler_running(scheduler: RQScheduler) -> bool:
    process = scheduler._process
    return process is not None and process.is_alive()


def scheduler_lock_holder(connection: redis.Redis, queue_name: str) -> str | None:
    """Name of the scheduler holding ``queue_name``'s lock, None when nobody does."""
    return _text(connection.get(RQScheduler.get_locking_key(queue_name)))


def scheduler_heartbeat_age(connection: redis.Redis, holder: str) -> float | None:
    """Seconds since scheduler ``holder`` last beat; None when it never did (or its hash is gone)."""
    text = _text(connection.hget(SCHEDULER_KEY_TEMPLATE % holder, "last_heartbeat"))
    return None if text is None else (now() - utcparse(text)).total_seconds()


def release_scheduler_lock(connection: redis.Redis, queue_name: str, holder: str) -> bool:
    """Delete ``queue_name``'s scheduler lock only if ``holder`` still holds it."""
    return bool(release_lock(connection, RQScheduler.get_locking_key(queue_name), holder))


def start_scheduler(scheduler: RQScheduler) -> bool:
    """Take every free scheduler lock and start the scheduler process; True when any was taken."""
    return bool(scheduler.acquire_locks(auto_start=True))  # type: ignore[no-untyped-call]


# --- started registry and intermediate queue -------------------------------------------------------


def expired_started_entries(connection: redis.Redis, queue: Queue, until: float | None = None) -> list[str]:
    """Started-registry entries of ``queue`` expiring at or before ``until`` (epoch seconds; default now)."""
    cutoff = time.time() if until is None else until
    raw = connection.zrangebyscore(queue.started_job_registry.key, 0, cutoff)
    return [text for text in (_text(r) for r in raw) if text is not None]


def claim_started_entry(connection: redis.Redis, queue: Queue, entry: str) -> str | None:
    """Remove ``entry`` from the started registry; its job id when this caller removed it (``ZREM``
    decides between concurrent reapers and RQ's own cleanup), None when someone else did."""
    if not connection.zrem(queue.started_job_registry.key, entry):
        return None
    job_id, _execution = parse_composite_key(entry)
    return job_id


def leave_intermediate_queue(connection: redis.Redis, queue: Queue, job_id: str) -> None:
    connection.lrem(queue.intermediate_queue_key, 1, job_id)


def fail_job(connection: redis.Redis, job: Job, reason: str) -> None:
    """Fail ``job`` the way RQ fails one: status, failed registry and a failure result with ``reason``."""
    with connection.pipeline() as pipe:
        record_job_failure(job, reason, pipe)
        pipe.execute()


# --- cron ------------------------------------------------------------------------------------------


class JsonCronJob(CronJob):
    """A ``CronJob`` that enqueues with ``JOB_SERIALIZER``."""

    def enqueue(self, connection: redis.Redis) -> Job:
        """RQ hook: ``CronJob.enqueue`` with the bridge's serializer."""
        if not self.func:
            raise ValueError("CronJob has no function to enqueue")
        queue = Queue(self.queue_name, connection=connection, serializer=JOB_SERIALIZER)
        with connection.pipeline() as pipeline:
            job = queue.enqueue(
                self.func, args=self.args, kwargs=self.kwargs, **self.job_options, pipeline=pipeline
            )
            assert job.enqueued_at is not None
            stamp = job.enqueued_at.timestamp()
            pipeline.zadd(self.job_history_key, {job.id: stamp})
            pipeline.zremrangebyrank(self.job_history_key, 0, -(DEFAULT_CRON_JOB_HISTORY_LIMIT + 1))
            pipeline.expire(self.job_history_key, DEFAULT_CRON_JOB_HISTORY_TTL)
            cron_job_registry.add(self.name, pipeline, enqueue_timestamp=stamp)
            pipeline.execute()
        return job


def register_cron_job(scheduler: CronScheduler, func: Callable[..., Any], **options: Any) -> CronJob:
    """``scheduler.register(func, **options)``, the registered job enqueuing with ``JOB_SERIALIZER``."""
    job = scheduler.register(func, **options)
    job.__class__ = JsonCronJob  # same state, one method replaced
    return job


def replace_job_args(job: Job, args: tuple[Any, ...]) -> None:
    """Replace ``job``'s positional arguments in memory and in its stored hash (only the ``data`` field:
    status, meta and result are RQ's). Later saves by RQ write the same new arguments."""
    job.args = args
    job.connection.hset(job.key, "data", zlib.compress(job.data))
