"""The project's RQ worker classes, tuned for crash recovery within seconds, and the reaper.

RQ's defaults find a job abandoned by a SIGKILLed worker only after minutes: a busy worker refreshes the
job's ``StartedJobRegistry`` entry with a TTL of ``job_monitoring_interval`` (30 s) **+ 60 s**, RQ's
registry maintenance runs every 10 minutes, and it then *fails* the job (it requeues only jobs enqueued
with ``Retry``). Here:

* ``get_heartbeat_ttl`` is ``worker_heartbeat_seconds + worker_heartbeat_grace_seconds`` (3 + 7 s), and a
  busy worker refreshes it every ``worker_heartbeat_seconds`` (the fork ``Worker`` does so while it waits
  for its work-horse; ``BridgeSimpleWorker`` runs a small heartbeat thread beside the job);
* every worker runs the *reaper* every ``reaper_interval_seconds`` (between jobs and while idle: an idle
  worker blocks on the queue for at most ``worker_ttl_seconds - 15`` s): an entry of the started registry
  whose heartbeat expired belongs to a dead worker, so its job is requeued at the front with the **same
  job id** (``ZREM`` decides which reaper owns it). A job that keeps killing workers is dead-lettered
  after ``reaper_max_requeues`` crashes, with ``action.failed``.

Worst case from SIGKILL to the job running again: heartbeat TTL (10 s) + reaper period (3 s) + an idle
worker's poll (5 s) ≈ 18 s, inside the 30 s target. Jobs are idempotent, so the rare false positive
(a live but stalled worker) costs a duplicate run, never a duplicate effect.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
import time
from typing import Any

import redis
from rq import Queue, SimpleWorker, Worker
from rq.defaults import DEFAULT_JOB_MONITORING_INTERVAL, DEFAULT_MAINTENANCE_TASK_INTERVAL, DEFAULT_WORKER_TTL
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.scripts import release_lock
from rq.utils import import_attribute, now, parse_composite_key, utcparse
from rq.worker import WorkerStatus

from workers.core.errors import SettingsError
from workers.core.events import Event, EventType
from workers.core.log import get_logger
from workers.core.settings import Settings, get_settings

log = get_logger(__name__)

CRASH_REQUEUES = "crash_requeues"

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
    """Requeue jobs whose worker stopped heart-beating; return their ids."""
    requeued: list[str] = []
    # Entries carry RQ_CLEANUP_MARGIN_SECONDS on top of heartbeat + grace: dead = within the margin.
    cutoff = (time.time() if now is None else now) + RQ_CLEANUP_MARGIN_SECONDS
    for name in queue_names:
        queue = Queue(name, connection=connection)
        registry_key = queue.started_job_registry.key
        for raw in connection.zrangebyscore(registry_key, 0, cutoff):
            entry = raw.decode() if isinstance(raw, bytes) else str(raw)
            if not connection.zrem(registry_key, entry):
                continue  # another reaper (or RQ's own cleanup) took it
            job_id, _execution = parse_composite_key(entry)
            try:
                job = Job.fetch(job_id, connection=connection)
            except NoSuchJobError:
                continue
            status = job.get_status(refresh=True)
            if status == JobStatus.QUEUED:
                # Killed between RQ's prepare_execution (this registry entry) and prepare_job_execution
                # (status STARTED): the job is left in the intermediate list and in no queue, and RQ's
                # own clean-up would *fail* it minutes later. Requeue it like any abandoned job.
                if connection.lpos(queue.key, job_id) is not None:
                    continue
            elif status != JobStatus.STARTED:
                continue
            connection.lrem(queue.intermediate_queue_key, 1, job_id)
            crashes = int(job.meta.get(CRASH_REQUEUES, 0)) + 1
            if crashes > max_requeues:
                reason = f"abandoned {crashes} times (worker died mid-job each time); dead-lettered"
                with connection.pipeline() as pipe:
                    record_job_failure(job, reason, pipe)
                    pipe.execute()
                _publish_abandoned(connection, settings, job, reason)
                log.error("job_dead_lettered_after_crashes", job_id=job_id, crashes=crashes)
                continue
            job.meta[CRASH_REQUEUES] = crashes
            job.save_meta()  # type: ignore[no-untyped-call]
            queue.enqueue_job(job, at_front=True)
            requeued.append(job_id)
            log.warning("job_requeued_after_worker_death", job_id=job_id, crashes=crashes, queue=name)
    return requeued


def _publish_abandoned(connection: redis.Redis, settings: Settings | None, job: Job, reason: str) -> None:
    from workers.fanout.publisher import Publisher

    execution_id = None
    if job.args and isinstance(job.args[0], dict):
        execution_id = job.args[0].get("execution_id")
    try:
        Publisher(connection, settings or get_settings()).publish(
            Event(
                type=EventType.ACTION_FAILED,
                execution_id=execution_id,
                data={"action": job.func_name, "job_id": job.id, "reason": reason, "retryable": False},
            ),
            once_key=f"action-failed:{job.id}:abandoned:{int(job.meta.get('dlq_replays', 0))}",
        )
    except redis.RedisError:
        log.warning("action_failed_not_published", job_id=job.id)


class _BridgeWorkerMixin:
    """Project settings as defaults, short heartbeat TTLs, and the reaper in the maintenance loop."""

    job_monitoring_interval: int
    worker_ttl: int
    maintenance_interval: int
    connection: redis.Redis
    queues: list[Queue]

    def _configure(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            s = get_settings()
        except SettingsError as exc:  # `rq worker -w workers.runtime.worker.…`: one line, exit 2
            print(f"workfloo-bridge: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        self._bridge_settings = s
        if kwargs.get("worker_ttl") in (None, DEFAULT_WORKER_TTL):
            kwargs["worker_ttl"] = s.worker_ttl_seconds
        kwargs.pop("default_worker_ttl", None)
        if kwargs.get("job_monitoring_interval") in (None, DEFAULT_JOB_MONITORING_INTERVAL):
            kwargs["job_monitoring_interval"] = s.worker_heartbeat_seconds
        if kwargs.get("maintenance_interval") in (None, DEFAULT_MAINTENANCE_TASK_INTERVAL):
            kwargs["maintenance_interval"] = s.worker_maintenance_seconds
        self._grace = s.worker_heartbeat_grace_seconds
        self._reaped_at: float | None = None
        return kwargs

    _early_stop = False
    _stop_requested: bool

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        """RQ installs its SIGTERM/SIGINT handlers only after registering and starting the scheduler;
        a signal in that window killed the process outright. Remember it instead, and stop cleanly
        (warm shutdown, nothing taken) as soon as RQ's handlers are in place."""

        def remember(signum: int, frame: Any) -> None:
            self._early_stop = True

        signal.signal(signal.SIGTERM, remember)
        signal.signal(signal.SIGINT, remember)
        super().bootstrap(*args, **kwargs)  # type: ignore[misc]

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()  # type: ignore[misc]
        if self._early_stop:
            self._stop_requested = True  # the work loop checks this before taking a job

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = int(max(1, min(job.timeout - working_time, interval)))
        return interval + self._grace + RQ_CLEANUP_MARGIN_SECONDS

    def _reap_due(self) -> bool:
        period = self._bridge_settings.reaper_interval_seconds
        return self._reaped_at is None or time.monotonic() - self._reaped_at >= period

    def take_over_dead_scheduler(self) -> bool:
        """Start this worker's scheduler when the one holding a queue's scheduler lock is dead.

        RQ lets a scheduler lock (TTL 61 s) expire on its own and retries acquiring it only in the
        10-minute maintenance; scheduled jobs (backoff retries, NIP resends) would wait that long after
        the worker running the scheduler was SIGKILLed. A live scheduler refreshes its heartbeat every
        second, so a holder silent for ``scheduler_stale_seconds`` (10 s) is dead and its lock is released
        (compare-and-delete on the holder's name) for this worker's scheduler to take.
        """
        scheduler: RQScheduler | None = getattr(self, "scheduler", None)
        if scheduler is None:
            return False
        process = scheduler._process
        if process is not None and process.is_alive():
            return False
        for queue in self.queues:
            lock_key = RQScheduler.get_locking_key(queue.name)
            raw = self.connection.get(lock_key)
            if raw is None:
                continue
            holder = raw.decode() if isinstance(raw, bytes) else str(raw)
            if holder == scheduler.name:
                continue
            beat = self.connection.hget(SCHEDULER_KEY_TEMPLATE % holder, "last_heartbeat")
            text = beat.decode() if isinstance(beat, bytes) else beat
            age = None if text is None else (now() - utcparse(text)).total_seconds()
            if age is None or age > self._bridge_settings.scheduler_stale_seconds:
                release_lock(self.connection, lock_key, holder)
                log.warning("scheduler_lock_taken_over", queue=queue.name, dead_holder=holder)
        return bool(scheduler.acquire_locks(auto_start=True))  # type: ignore[no-untyped-call]

    def reap(self) -> list[str]:
        self._reaped_at = time.monotonic()
        try:
            self.take_over_dead_scheduler()
        except redis.RedisError:
            log.warning("scheduler_takeover_redis_error")
        try:
            return reap_abandoned(
                self.connection,
                [q.name for q in self.queues],
                max_requeues=self._bridge_settings.reaper_max_requeues,
                settings=self._bridge_settings,
            )
        except redis.RedisError:
            log.warning("reaper_redis_error")
            return []


JOB_MODULES = ("workers.jobs.callbacks", "workers.jobs.commands", "workers.jobs.reconcile")


class BridgeWorker(_BridgeWorkerMixin, Worker):
    """Fork-per-job worker (RQ's default model): a crashing job cannot take the worker down.

    The job modules are imported in the parent so every forked work-horse inherits them (otherwise each
    job pays the imports again: ~75 ms here). Vendor HTTP clients cannot be shared that way (a forked
    child must not reuse the parent's sockets), so each job opens its own connections.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **self._configure(kwargs))
        for module in JOB_MODULES:
            importlib.import_module(module)

    @property
    def should_run_maintenance_tasks(self) -> bool:
        return self._reap_due() or bool(super().should_run_maintenance_tasks)

    def run_maintenance_tasks(self) -> None:
        if self._reap_due():
            self.reap()
        if super().should_run_maintenance_tasks:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]


class BridgeSimpleWorker(_BridgeWorkerMixin, SimpleWorker):
    """In-process worker: no fork per job, the pooled httpx clients live for the worker's lifetime.

    RQ's ``SimpleWorker`` does not heartbeat while a job runs; a daemon thread does it here so the short
    heartbeat TTL stays valid for long jobs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **self._configure(kwargs))

    @property
    def should_run_maintenance_tasks(self) -> bool:
        return self._reap_due() or bool(super().should_run_maintenance_tasks)

    def run_maintenance_tasks(self) -> None:
        if self._reap_due():
            self.reap()
        if super().should_run_maintenance_tasks:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.job_monitoring_interval):
                try:
                    self.maintain_heartbeats(job, execution)
                except Exception:  # a missed beat only shortens the grace; never kill the job
                    log.warning("heartbeat_failed", job_id=job.id)

        thread = threading.Thread(target=beat, name=f"heartbeat-{job.id}", daemon=True)
        thread.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            thread.join(timeout=5)
        self.set_state(WorkerStatus.IDLE)


def worker_class(settings: Settings, override: str | None = None) -> type[Worker] | type[SimpleWorker]:
    cls: type[Worker] | type[SimpleWorker] = import_attribute(override or settings.worker_class)  # type: ignore[assignment]
    return cls


def build_worker(
    connection: redis.Redis,
    settings: Settings,
    *,
    queues: list[str] | None = None,
    name: str | None = None,
    cls: str | None = None,
) -> Worker | SimpleWorker:
    """A worker for the bridge's queue with the project's settings."""
    klass = worker_class(settings, cls)
    return klass(
        queues or [settings.bridge_queue],
        connection=connection,
        name=name,
        worker_ttl=settings.worker_ttl_seconds,
        job_monitoring_interval=settings.worker_heartbeat_seconds,
        maintenance_interval=settings.worker_maintenance_seconds,
        default_result_ttl=settings.job_result_ttl_seconds,
    )
