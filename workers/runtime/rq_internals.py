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
* ``BaseWorker.unsubscribe``: RQ stops its pub/sub thread with ``PubSubWorkerThread.stop()``, which redis-py
  8.2 made an unbounded join, while the thread may wait up to RQ's 60 s ``sleep_time`` for a subscription
  the UNSUBSCRIBE has just ended: a worker's shutdown then hung for a minute. ``stop_pubsub`` clears the
  thread's ``_running`` flag and joins it for a bounded time (the thread is a daemon);
* ``BaseWorker.handle_job_failure(job, queue, started_job_registry, exc_string, execution)``: RQ stores
  ``exc_string`` as the failure record (``exc_string`` of the ``rq:results:<id>`` entry, ``exc_info`` of the
  job hash, the failed registry) and logs its start at DEBUG. ``_finalize_failure`` formats it from the
  ``exc_info`` it has just handed to ``handle_exception``, with the chained exceptions' texts (the data
  they echo); the bridge stores the code-only traceback ``handle_exception`` built for that job instead.
  RQ's other callers pass its own words (a killed work-horse, a stopped job). A job whose
  ``failure_ttl`` is None would keep its record a year and its result for ever: ``keep_failure_for``;
* ``BaseWorker.perform_job(job, queue, execution)``: the run of one job in the process that runs it (the
  work-horse of a forking worker); the override counts and times it once RQ has recorded its status;
* ``Worker.execute_job``: RQ's fork of the work-horse and its watch; the override opens the pipe the
  horse hands its metrics back through (RQ's public ``is_horse`` tells the horse from the worker);
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
from rq import Queue, SimpleWorker, Worker, cron_job_registry
from rq.cron import CronJob, CronScheduler
from rq.defaults import (
    DEFAULT_CRON_JOB_HISTORY_LIMIT,
    DEFAULT_CRON_JOB_HISTORY_TTL,
    DEFAULT_JOB_MONITORING_INTERVAL,
    DEFAULT_MAINTENANCE_TASK_INTERVAL,
    DEFAULT_WORKER_TTL,
)
from rq.executions import Execution, cleanup_execution
from rq.job import Job
from rq.job_lifecycle import call_exception_handlers, record_job_failure
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.scripts import release_lock
from rq.utils import parse_composite_key, utcparse
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
    "keep_failure_for",
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
    "stop_pubsub",
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
        "handle_job_failure",
        "prepare_job_execution",
        "maintain_heartbeats",
        "handle_job_success",
        "perform_job",
    ),
    SimpleWorker: ("execute_job",),
    Worker: ("execute_job",),
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


def stop_pubsub(worker: BaseWorker, wait: float = 1.0) -> None:
    """Unsubscribe the worker's command channel and stop its pub/sub thread within ``wait`` seconds."""
    thread = worker.pubsub_thread
    if thread is None:
        return
    thread._running.clear()  # the loop ends after its current get_message, however redis-py stops it
    worker.pubsub.unsubscribe()
    worker.pubsub.subscribed_event.set()  # wakes a get_message waiting for a subscription that is gone
    thread.join(timeout=wait)
    if not thread.is_alive():
        worker.pubsub.close()


def run_exception_handlers(worker: BaseWorker, job: Job, *exc_info: Any) -> None:
    """Walk the worker's exception handler stack for a failed job, as RQ's ``handle_exception`` does."""
    call_exception_handlers(worker._exc_handlers, job, *exc_info)


def expire_worker_key(worker: BaseWorker, seconds: int) -> None:
    """Set the TTL of the worker's key (``rq:worker:<name>``) and of its executions set."""
    with worker.connection.pipeline() as pipe:
        pipe.expire(worker.key, seconds)
        pipe.expire(worker.executions_key, seconds)
        pipe.execute()


def worker_key_exists(connection: redis.Redis, worker_name: str) -> bool:
    """True while RQ's key of worker ``worker_name`` exists (the worker beat within its TTL)."""
    return bool(connection.exists(BaseWorker.redis_worker_namespace_prefix + worker_name))


def end_execution(worker: BaseWorker, job: Job, execution: Execution) -> None:
    """Delete a run's execution record as RQ does at the end of a run, touching nothing else of the job."""
    with worker.connection.pipeline() as pipe:
        cleanup_execution(worker, job, pipe, execution)
        pipe.execute()


# --- scheduler -------------------------------------------------------------------------------------


def scheduler_running(scheduler: RQScheduler) -> bool:
    process = scheduler._process
    return process is not None and process.is_alive()


def scheduler_lock_holder(connection: redis.Redis, queue_name: str) -> str | None:
    """Name of the scheduler holding ``queue_name``'s lock, None when nobody does."""
    return _text(connection.get(RQScheduler.get_locking_key(queue_name)))


def scheduler_heartbeat_age(connection: redis.Redis, holder: str) -> float | None:
    """Seconds since scheduler ``holder`` last beat, on Redis's clock; None when it never did (or its
    hash is gone)."""
    text = _text(connection.hget(SCHEDULER_KEY_TEMPLATE % holder, "last_heartbeat"))
    return None if text is None else redis_time(connection) - utcparse(text).timestamp()


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


def started_entry_worker(connection: redis.Redis, entry: str) -> str | None:
    """Name of the worker that wrote started-registry ``entry`` (its execution record, else the job
    hash's ``worker_name``); None when neither is left."""
    job_id, execution_id = parse_composite_key(entry)
    name = _text(connection.hget(Execution(execution_id, job_id, connection).key, "worker_name"))
    if not name:
        name = _text(connection.hget(Job.key_for(job_id), "worker_name"))
    return name or None


def redis_time(connection: redis.Redis) -> float:
    """Redis's clock (``TIME``), in epoch seconds: one clock for every host comparing times."""
    seconds, micros = connection.time()
    return float(seconds) + micros / 1_000_000


def started_job_ids(connection: redis.Redis, queue: Queue) -> set[str]:
    """Job ids with an entry (``<job id>:<execution id>``) in ``queue``'s started registry, read without
    RQ's cleanup (the registry holds one entry per running job: small)."""
    entries = (_text(raw) for raw in connection.zrange(queue.started_job_registry.key, 0, -1))
    return {parse_composite_key(entry)[0] for entry in entries if entry}


def intermediate_job_ids(connection: redis.Redis, queue: Queue) -> list[str]:
    """Job ids in RQ's intermediate list of ``queue`` (dequeued, not yet started)."""
    return [
        text for text in (_text(r) for r in connection.lrange(queue.intermediate_queue_key, 0, -1)) if text
    ]


def claim_intermediate_job(connection: redis.Redis, queue: Queue, job_id: str) -> bool:
    """Remove ``job_id`` from the intermediate list; True when this caller removed it."""
    return bool(connection.lrem(queue.intermediate_queue_key, 1, job_id))


def registry_size(connection: redis.Redis, key: str) -> int:
    """Entries in one of RQ's registries, counted without RQ's ``cleanup`` (which ``count`` runs: for
    the started registry it fails every expired entry's job with ``AbandonedJobError``)."""
    return int(connection.zcard(key))


def leave_intermediate_queue(connection: redis.Redis, queue: Queue, job_id: str) -> None:
    connection.lrem(queue.intermediate_queue_key, 1, job_id)


def keep_failure_for(job: Job, seconds: int) -> None:
    """Give ``job`` a failure TTL of ``seconds`` unless it has its own: RQ's default (None) keeps the
    failed job a year (``DEFAULT_FAILURE_TTL``) and its ``rq:results`` failure record without a TTL."""
    if job.failure_ttl is None:
        job.failure_ttl = seconds


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
