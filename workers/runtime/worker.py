"""The project's RQ worker classes, tuned for crash recovery within seconds.

RQ's defaults notice a SIGKILLed worker's job after minutes and then fail it. These classes keep a short
heartbeat on the started job (also for the in-process worker, from a small thread) and run the reaper
(``workers.runtime.reaper``) in every worker's maintenance loop, so a crashed job runs again within about
18 s with the defaults. docs/workers.md, "Crash recovery", has the figures and the reasoning; every RQ
hook overridden here is listed and pinned by a test in ``workers.runtime.rq_internals``.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
from typing import Any

import redis
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.utils import import_attribute
from rq.worker import WorkerStatus

from workers.core import tracing
from workers.core.contract import JOB_SERIALIZER
from workers.core.crypto import require_keys
from workers.core.errors import SettingsError
from workers.core.log import describe_exception, get_logger, redactor, safe_traceback
from workers.core.metrics import replay, start_journal, take_journal
from workers.core.settings import Settings, get_settings
from workers.jobs import lease
from workers.runtime import rq_internals
from workers.runtime.dead_letters import dead_letter_of, publish_dead_lettered
from workers.runtime.metrics import record_job_run
from workers.runtime.reaper import RQ_CLEANUP_MARGIN_SECONDS, reap_abandoned

log = get_logger(__name__)


class _BridgeWorkerMixin:
    """Project settings as defaults, the JSON job serializer, short heartbeat TTLs, and the reaper in the
    maintenance loop.

    The overrides of RQ hooks are marked ``RQ hook``; see ``workers.runtime.rq_internals``.
    """

    job_monitoring_interval: int
    worker_ttl: int
    maintenance_interval: int
    connection: redis.Redis
    queues: list[Queue]

    def _configure(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            s = get_settings()
            require_keys(s)  # jobs open the sealed form and NIP: refuse to start without a key
        except SettingsError as exc:  # `rq worker -w workers.runtime.worker.…`: one line, exit 2
            print(f"workfloo-bridge: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        self._bridge_settings = s
        tracing.configure(s, "worker")
        self._tracing_pid = os.getpid()
        # JSON always, whatever the caller asked (``rq worker --serializer``): a pickled job fails as a
        # bad job instead of running code.
        kwargs["serializer"] = JOB_SERIALIZER
        if kwargs.get("worker_ttl") in (None, rq_internals.DEFAULT_WORKER_TTL):
            kwargs["worker_ttl"] = s.worker_ttl_seconds
        kwargs.pop("default_worker_ttl", None)
        if kwargs.get("job_monitoring_interval") in (None, rq_internals.DEFAULT_JOB_MONITORING_INTERVAL):
            kwargs["job_monitoring_interval"] = s.worker_heartbeat_seconds
        if kwargs.get("maintenance_interval") in (None, rq_internals.DEFAULT_MAINTENANCE_TASK_INTERVAL):
            kwargs["maintenance_interval"] = s.worker_maintenance_seconds
        kwargs["log_job_description"] = False  # the description is the call with the applicant's form
        self._grace = s.worker_heartbeat_grace_seconds
        self._reaped_at: float | None = None
        return kwargs

    _early_stop = False
    _tracing_pid = 0  # the worker's own pid (set by _configure): a horse's differs

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        """RQ hook. RQ installs its SIGTERM/SIGINT handlers only after registering and starting the
        scheduler; a signal in that window killed the process outright. Remember it instead, and stop
        cleanly (warm shutdown, nothing taken) as soon as RQ's handlers are in place.

        The scheduler process is forked inside that window and inherits the handler; until it installs
        its own, a signal to it takes RQ's default action (death), or the worker's teardown, which
        SIGTERMs and joins the scheduler, would wait for it forever."""
        worker_pid = os.getpid()

        def remember(signum: int, frame: Any) -> None:
            if os.getpid() != worker_pid:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            self._early_stop = True

        signal.signal(signal.SIGTERM, remember)
        signal.signal(signal.SIGINT, remember)
        super().bootstrap(*args, **kwargs)  # type: ignore[misc]

    def _install_signal_handlers(self) -> None:
        """RQ hook: RQ's handlers are in place now; honour a signal that arrived before them."""
        super()._install_signal_handlers()  # type: ignore[misc]
        if self._early_stop:
            rq_internals.request_warm_stop(self)  # type: ignore[arg-type]

    def unsubscribe(self) -> None:
        """RQ hook: stop the command-channel thread in bounded time (``rq_internals.stop_pubsub``)."""
        rq_internals.stop_pubsub(self)  # type: ignore[arg-type]

    _failure_text: tuple[str, str] | None = None  # (job id, code-only traceback) for handle_job_failure

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """RQ hook: RQ logs the job's arguments and the exception's text; log the job and a traceback
        whose exception texts are codes instead, then run the exception handlers as RQ does."""
        try:
            func: str | None = job.func_name
        except Exception:  # an undeserialisable job still gets its failure logged
            func = None
        exception = safe_traceback(exc_info) if exc_info[1] is not None else None
        self._failure_text = (job.id, exception) if exception else None
        log.error(
            "job_exception", job_id=job.id, func=func, queue=job.origin,
            error=describe_exception(exc_info[1]) if exc_info[1] is not None else None,
            exception=exception,
        )  # fmt: skip
        self._signal_dead_letter(job, exc_info[1])
        rq_internals.run_exception_handlers(self, job, *exc_info)  # type: ignore[arg-type]

    def handle_job_failure(
        self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = "",
        execution: Any = None,
    ) -> None:  # fmt: skip
        """RQ hook: RQ stores ``exc_string`` (the traceback with every exception's text) as the failure
        record; store the code-only traceback ``handle_exception`` built for this job instead (RQ's own
        words, such as a killed work-horse's, through the redactor), for ``BRIDGE_JOB_FAILURE_TTL_SECONDS``
        unless the job has its own failure TTL."""
        built, self._failure_text = self._failure_text, None
        text = built[1] if built is not None and built[0] == job.id else redactor.text(exc_string)
        rq_internals.keep_failure_for(job, self._bridge_settings.job_failure_ttl_seconds)
        super().handle_job_failure(  # type: ignore[misc]
            job, queue, started_job_registry=started_job_registry, exc_string=text, execution=execution
        )

    def _signal_dead_letter(self, job: Job, exc: BaseException | None) -> None:
        """``job.dead_lettered`` for a failure that lands the job in the failed registry (not a job RQ
        retries itself, nor one stopped on request); never breaks the failure handling."""
        if job.should_retry or getattr(self, "_stopped_job_id", None) == job.id:
            return
        try:
            code, reason = dead_letter_of(exc, job)
            publish_dead_lettered(self.connection, self._bridge_settings, job, code=code, reason=reason)
        except Exception:
            log.warning("dead_letter_signal_failed", job_id=job.id)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """RQ hook: the started-registry entry lives heartbeat + grace (+ RQ's cleanup margin)."""
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = int(max(1, min(job.timeout - working_time, interval)))
        return interval + self._grace + RQ_CLEANUP_MARGIN_SECONDS

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """RQ hook: RQ's bookkeeping before a job runs, then the busy worker key's TTL cut as below."""
        super().prepare_job_execution(job, remove_from_intermediate_queue)  # type: ignore[misc]
        self._busy_key_ttl()

    def maintain_heartbeats(self, job: Job, execution: Any) -> None:
        """RQ hook: RQ's heartbeat, then the worker key's TTL cut to heartbeat + grace while busy (RQ
        gives it 60 s more), so the reaper, which takes a worker for dead only once its key is gone too,
        recovers a dead worker's job within seconds."""
        super().maintain_heartbeats(job, execution)  # type: ignore[misc]
        self._busy_key_ttl()

    def _busy_key_ttl(self) -> None:
        rq_internals.expire_worker_key(self, self.job_monitoring_interval + self._grace)  # type: ignore[arg-type]

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        """RQ hook (in the work-horse, or the worker itself for ``SimpleWorker``): RQ's run of the job,
        counted and timed by function and outcome (``bridge_job_runs_total``, ``bridge_job_duration_seconds``)
        once RQ has recorded its status, inside the job's span when tracing is on (a child of the context
        the job carries, ``workers.core.tracing``, exported before a horse exits)."""
        started = time.monotonic()
        try:
            if not tracing.active():
                return bool(super().perform_job(job, queue, execution))  # type: ignore[misc]
            try:
                with tracing.span(
                    f"job {_function_name(job)}",
                    parent=_job_traceparent(job),
                    kind=tracing.SpanKind.CONSUMER,
                    attributes={"messaging.message.id": job.id, "messaging.destination.name": queue.name},
                ) as span:
                    succeeded = bool(super().perform_job(job, queue, execution))  # type: ignore[misc]
                    if not succeeded:  # RQ handled the exception: the span says so with the job's status
                        tracing.set_error(span, "job failed")
                    return succeeded
            finally:
                if os.getpid() != self._tracing_pid:  # a forked work-horse exits without exporting
                    tracing.flush()
        finally:
            record_job_run(job, time.monotonic() - started, stood_down=lease.stood_down(job.id))

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Any) -> None:
        """RQ hook: a run that lost its job's lease to a newer run (``workers.jobs.lease``) records
        nothing, neither status nor result: the newer run owns them. Only its execution is cleaned up."""
        if lease.stood_down(job.id):
            log.warning("job_run_stood_down", job_id=job.id)
            rq_internals.end_execution(self, job, execution)  # type: ignore[arg-type]
            return
        super().handle_job_success(job, queue, started_job_registry, execution)  # type: ignore[misc]

    @property
    def should_run_maintenance_tasks(self) -> bool:
        """RQ hook: due when the reaper is due (every few seconds) or RQ's own maintenance is."""
        return self._reap_due() or self._rq_maintenance_due()

    def run_maintenance_tasks(self) -> None:
        """RQ hook: the reaper, then RQ's maintenance (registry cleanup, scheduler restart) when due."""
        if self._reap_due():
            self.reap()
        if self._rq_maintenance_due():
            super().run_maintenance_tasks()  # type: ignore[misc]

    def _rq_maintenance_due(self) -> bool:
        return bool(super().should_run_maintenance_tasks)  # type: ignore[misc]

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
        if scheduler is None or rq_internals.scheduler_running(scheduler):
            return False
        for queue in self.queues:
            holder = rq_internals.scheduler_lock_holder(self.connection, queue.name)
            if holder is None or holder == scheduler.name:
                continue
            age = rq_internals.scheduler_heartbeat_age(self.connection, holder)
            if age is None or age > self._bridge_settings.scheduler_stale_seconds:
                rq_internals.release_scheduler_lock(self.connection, queue.name, holder)
                log.warning("scheduler_lock_taken_over", queue=queue.name, dead_holder=holder)
        return rq_internals.start_scheduler(scheduler)

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

    _metrics_fd: int | None = None

    def execute_job(self, job: Job, queue: Queue) -> None:
        """RQ hook: RQ's fork and watch of the work-horse, with a pipe the horse hands its metrics back
        through (what it counts dies with it otherwise); replayed here once it has exited."""
        read_fd, write_fd = os.pipe()
        self._metrics_fd = write_fd
        try:
            super().execute_job(job, queue)
        finally:
            self._metrics_fd = None
            os.close(write_fd)
            with os.fdopen(read_fd, "rb") as pipe:
                replay(pipe.read())

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        """RQ hook: in the work-horse, journal what the run counts and write it to the worker's pipe."""
        fd = self._metrics_fd if self.is_horse else None
        if fd is None:
            return super().perform_job(job, queue, execution)
        start_journal()
        try:
            return super().perform_job(job, queue, execution)
        finally:
            payload = take_journal()
            try:
                os.write(fd, payload[:_PIPE_CAPACITY])  # one write, within the pipe's buffer
            except OSError:
                log.warning("metrics_not_handed_back", job_id=job.id)


_PIPE_CAPACITY = 60_000
"""Linux pipes buffer 64 KiB: the horse's single write never blocks on a parent that reads after it exits."""


class BridgeSimpleWorker(_BridgeWorkerMixin, SimpleWorker):
    """In-process worker: no fork per job, the pooled httpx clients live for the worker's lifetime.

    RQ's ``SimpleWorker`` does not heartbeat while a job runs; a daemon thread does it here so the short
    heartbeat TTL stays valid for long jobs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **self._configure(kwargs))

    def execute_job(self, job: Job, queue: Queue) -> None:
        """RQ hook: ``SimpleWorker.execute_job`` with a heartbeat thread beside the job."""
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


def _function_name(job: Job) -> str:
    try:
        return str(job.func_name).rsplit(".", 1)[-1]
    except Exception:  # an undeserialisable job still gets its span
        return "unknown"


def _job_traceparent(job: Job) -> str | None:
    """The context a job carries: in its meta (jobs the workers enqueue) or its payload (the receiver's)."""
    found = job.meta.get(tracing.TRACEPARENT)
    if not found:
        try:
            args = job.args
        except Exception:
            args = ()
        if args and isinstance(args[0], dict):
            found = args[0].get(tracing.TRACEPARENT)
    return found if isinstance(found, str) else None


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
        serializer=JOB_SERIALIZER,
    )
