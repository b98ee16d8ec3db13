"""The RQ internals ``workers.runtime.rq_internals`` lists still exist and behave as the bridge expects,
and both worker classes take the one maintenance path (reaper, then RQ's maintenance when due)."""

from __future__ import annotations

import inspect
import operator
import time
import zlib

import orjson
import pytest
import redis
from rq import Queue, SimpleWorker, Worker, cron_job_registry
from rq.cron import CronJob, CronScheduler
from rq.defaults import DEFAULT_CRON_JOB_HISTORY_TTL
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.utils import now, utcformat
from rq.worker import BaseWorker

from workers.core.contract import JOB_SERIALIZER
from workers.core.settings import load_settings
from workers.runtime import rq_internals
from workers.runtime.worker import BridgeSimpleWorker, BridgeWorker

QUEUE = "workfloo"
WORKER_CLASSES = [BridgeSimpleWorker, BridgeWorker]


def test_every_overridden_hook_is_rqs_and_is_overridden() -> None:
    for rq_class, names in rq_internals.OVERRIDDEN_HOOKS.items():
        bridge_classes = [c for c in WORKER_CLASSES if issubclass(c, rq_class)]
        assert bridge_classes, rq_class
        for name in names:
            assert name in vars(rq_class), f"RQ no longer defines {rq_class.__name__}.{name}"
            for bridge in bridge_classes:
                owner = next(c for c in bridge.__mro__ if name in vars(c))
                assert owner.__module__ == "workers.runtime.worker", (bridge.__name__, name)


def test_rqs_work_loop_still_calls_the_hooks() -> None:
    source = inspect.getsource(BaseWorker)
    for call in (
        "self.should_run_maintenance_tasks",
        "self.run_maintenance_tasks()",
        "self._install_signal_handlers()",
        "if self._stop_requested",
        "self.get_heartbeat_ttl(",
        "self.prepare_job_execution(job",
        "self.handle_job_success(",
    ):
        assert call in source, call
    work = inspect.getsource(BaseWorker.work)
    order = [
        work.index(step)
        for step in ("self.bootstrap(", "self._start_scheduler(", "self._install_signal_handlers()")
    ]
    assert order == sorted(order), "the early-signal window no longer spans the scheduler's fork"
    assert "self.maintain_heartbeats(job, execution)" in inspect.getsource(Worker)  # the fork's monitor
    simple = inspect.getsource(SimpleWorker.execute_job)
    assert "prepare_execution" in simple and "perform_job" in simple


def test_rqs_failure_path_is_what_the_handle_exception_override_replaces(redis_client: redis.Redis) -> None:
    """RQ's ``handle_exception`` logs the job's arguments and walks the handler stack the override walks
    too; RQ logs a job's description (its call, arguments included) only when ``log_job_description``."""
    source = inspect.getsource(BaseWorker.handle_exception)
    assert "job.args" in source and "call_exception_handlers(self._exc_handlers" in source
    assert "self.handle_exception(job, *exc_info)" in inspect.getsource(BaseWorker._finalize_failure)
    assert "if self.log_job_description:" in inspect.getsource(BaseWorker.dequeue_job_and_maintain_ttl)
    for worker_class in WORKER_CLASSES:
        assert worker_class([QUEUE], connection=redis_client).log_job_description is False


def test_rqs_stored_failure_is_the_exc_string_the_handle_job_failure_override_replaces() -> None:
    """RQ formats the failure it stores from the exc_info it has just given ``handle_exception`` (so the
    override can pair them by job), passes it to ``handle_job_failure`` by keyword, and writes it into the
    failed registry (the job hash's ``exc_info``) and the ``rq:results`` entry, with the job's failure TTL
    (None: a year for the job, no TTL for the result)."""
    finalize = inspect.getsource(BaseWorker._finalize_failure)
    logged_at = finalize.index("self.handle_exception(job, *exc_info)")
    assert logged_at < finalize.index("self.handle_job_failure(")
    assert "exc_string=format_exc_info(exc_info)" in finalize
    handle = inspect.getsource(BaseWorker.handle_job_failure)
    assert "job._handle_failure(\n                    exc_string," in handle
    stored = inspect.getsource(Job._handle_failure)
    assert "ttl=self.failure_ttl,\n            exc_string=exc_string" in stored
    assert "self.failure_ttl,\n            exc_string=exc_string" in stored
    assert "job._exc_info = exc_string" in inspect.getsource(FailedJobRegistry.add)
    assert "if ttl is not None:" in inspect.getsource(Result.save)


def test_keep_failure_for_fills_only_rqs_default(redis_client: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    default, own = queue.enqueue("time.sleep", 0), queue.enqueue("time.sleep", 0, failure_ttl=90)
    for job in (default, own):
        rq_internals.keep_failure_for(job, 600)
    assert (default.failure_ttl, own.failure_ttl) == (600, 90)
    rq_internals.fail_job(redis_client, default, "gave up")
    assert 590 < redis_client.ttl(f"rq:results:{default.id}") <= 600
    assert 590 < redis_client.ttl(default.key) <= 600


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_rq_defaults_take_the_bridge_settings(redis_client: redis.Redis, worker_class: type[Worker]) -> None:
    settings = load_settings()
    worker = worker_class([QUEUE], connection=redis_client)
    assert worker.worker_ttl == settings.worker_ttl_seconds
    assert worker.job_monitoring_interval == settings.worker_heartbeat_seconds
    assert worker.maintenance_interval == settings.worker_maintenance_seconds


def test_warm_stop_sets_the_flag_the_loop_checks(redis_client: redis.Redis) -> None:
    worker = BridgeSimpleWorker([QUEUE], connection=redis_client)
    assert worker._stop_requested is False
    rq_internals.request_warm_stop(worker)
    assert worker._stop_requested is True


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_stopping_the_command_channel_is_bounded(
    redis_client: redis.Redis, worker_class: type[Worker]
) -> None:
    """The pub/sub thread waits (up to RQ's 60 s) for a subscription once the channel is unsubscribed;
    the worker's teardown must not wait with it."""
    worker = worker_class([QUEUE], connection=redis_client)
    worker.subscribe()
    worker.pubsub.unsubscribe()  # the thread reads the reply, then waits for a new subscription
    time.sleep(0.3)
    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < 3
    assert not worker.pubsub_thread.is_alive()


def test_scheduler_lock_helpers(redis_client: redis.Redis) -> None:
    assert (
        rq_internals.scheduler_running(
            RQScheduler([QUEUE], connection=redis_client, serializer=JOB_SERIALIZER)
        )
        is False
    )
    assert rq_internals.scheduler_lock_holder(redis_client, QUEUE) is None
    redis_client.set(RQScheduler.get_locking_key(QUEUE), "dead-holder")
    assert rq_internals.scheduler_lock_holder(redis_client, QUEUE) == "dead-holder"
    assert rq_internals.scheduler_heartbeat_age(redis_client, "dead-holder") is None
    redis_client.hset(SCHEDULER_KEY_TEMPLATE % "dead-holder", "last_heartbeat", utcformat(now()))
    age = rq_internals.scheduler_heartbeat_age(redis_client, "dead-holder")
    assert age is not None and 0 <= age < 5
    assert rq_internals.release_scheduler_lock(redis_client, QUEUE, "someone-else") is False
    assert rq_internals.scheduler_lock_holder(redis_client, QUEUE) == "dead-holder"
    assert rq_internals.release_scheduler_lock(redis_client, QUEUE, "dead-holder") is True
    assert rq_internals.scheduler_lock_holder(redis_client, QUEUE) is None


def test_started_registry_entries_are_found_and_claimed_once(redis_client: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    queue.enqueue("time.sleep", 0, job_id="dead")
    queue.enqueue("time.sleep", 0, job_id="alive")
    key = queue.started_job_registry.key
    redis_client.zadd(key, {"dead:exec1": time.time() - 5, "alive:exec1": time.time() + 60})
    assert rq_internals.expired_started_entries(redis_client, queue) == ["dead:exec1"]
    assert rq_internals.claim_started_entry(redis_client, queue, "dead:exec1") == "dead"
    assert rq_internals.claim_started_entry(redis_client, queue, "dead:exec1") is None
    assert rq_internals.expired_started_entries(redis_client, queue, time.time() + 120) == ["alive:exec1"]


def test_leaving_the_intermediate_queue(redis_client: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    redis_client.lpush(queue.intermediate_queue_key, "stuck", "other")
    rq_internals.leave_intermediate_queue(redis_client, queue, "stuck")
    assert redis_client.lrange(queue.intermediate_queue_key, 0, -1) == [b"other"]


def test_fail_job_is_a_dead_letter_with_the_reason(redis_client: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    job = queue.enqueue("time.sleep", 0, job_id="doomed")
    rq_internals.fail_job(redis_client, job, "gave up")
    assert "doomed" in FailedJobRegistry(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    fetched = Job.fetch("doomed", connection=redis_client, serializer=JOB_SERIALIZER)
    assert fetched.get_status(refresh=True) == JobStatus.FAILED
    result = fetched.latest_result()
    assert result is not None and result.exc_string == "gave up"


def test_replace_job_args_rewrites_the_stored_call(redis_client: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    job = queue.enqueue("builtins.print", {"secret": "CANARY-ARGS"}, job_id="rewritten")
    job.meta["kept"] = 1
    job.save_meta()  # type: ignore[no-untyped-call]
    rq_internals.replace_job_args(job, ({"secret": None},))
    assert b"CANARY-ARGS" not in zlib.decompress(redis_client.hget(job.key, "data") or b"")
    fetched = Job.fetch("rewritten", connection=redis_client, serializer=JOB_SERIALIZER)
    assert fetched.args == ({"secret": None},) or list(fetched.args) == [{"secret": None}]
    assert fetched.func_name == "builtins.print" and fetched.meta == {"kept": 1}
    job.save()  # RQ's own later saves keep the new arguments
    assert list(Job.fetch("rewritten", connection=redis_client, serializer=JOB_SERIALIZER).args) == [
        {"secret": None}
    ]


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_maintenance_runs_the_reaper_then_rqs_maintenance(
    redis_client: redis.Redis, worker_class: type[Worker]
) -> None:
    worker = worker_class([QUEUE], connection=redis_client)
    assert worker.should_run_maintenance_tasks  # both due at start
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    job = queue.enqueue("time.sleep", 0, job_id="abandoned")
    job.set_status(JobStatus.STARTED)
    redis_client.lrem(queue.key, 0, job.id)
    redis_client.zadd(queue.started_job_registry.key, {f"{job.id}:exec1": time.time() - 5})
    worker.run_maintenance_tasks()
    assert redis_client.lrange(queue.key, 0, -1) == [b"abandoned"]  # the reaper ran
    assert worker.last_cleaned_at is not None  # so did RQ's maintenance
    assert not worker.should_run_maintenance_tasks  # neither is due right after


def test_the_cron_job_enqueues_json_jobs_as_rqs_own_would(redis_client: redis.Redis) -> None:
    """RQ's ``CronJob.enqueue`` takes no serializer; ``register_cron_job`` swaps in one that does and
    keeps the rest: the job history (capped, expiring) and the cron-job registry."""
    assert "enqueue" in vars(CronJob), "RQ no longer defines CronJob.enqueue"
    cron = CronScheduler(connection=redis_client)
    cron_job = rq_internals.register_cron_job(
        cron, operator.add, queue_name=QUEUE, args=(2, 3), interval=60, name="probe-cron"
    )
    assert cron.enqueue_jobs() == [cron_job]
    (job_id,) = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER).job_ids
    raw = redis_client.hget(f"rq:job:{job_id}", "data") or b""
    assert orjson.loads(zlib.decompress(raw)) == ["_operator.add", None, [2, 3], {}]
    assert cron_job.get_job_ids(redis_client) == [job_id]
    assert 0 < redis_client.ttl(cron_job.job_history_key) <= DEFAULT_CRON_JOB_HISTORY_TTL
    assert "probe-cron" in cron_job_registry.get_names(redis_client)
    SimpleWorker([QUEUE], connection=redis_client, serializer=JOB_SERIALIZER).work(burst=True)
    assert Job.fetch(job_id, connection=redis_client, serializer=JOB_SERIALIZER).return_value() == 5


def test_started_entry_names_its_worker_and_the_worker_key_tells_if_it_lives(
    redis_client: redis.Redis,
) -> None:
    from rq.executions import Execution

    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    job = queue.enqueue("time.sleep", 1, job_id="owned")
    with redis_client.pipeline() as pipe:
        Execution.create(job, 30, pipeline=pipe, worker_name="w-owner")
        pipe.execute()
    [entry] = rq_internals.expired_started_entries(redis_client, queue, time.time() + 60)
    assert rq_internals.started_entry_worker(redis_client, entry) == "w-owner"
    assert rq_internals.started_job_ids(redis_client, queue) == {"owned"}
    assert not rq_internals.worker_key_exists(redis_client, "w-owner")
    worker = BridgeSimpleWorker([QUEUE], connection=redis_client, name="w-owner")
    worker.register_birth()
    assert rq_internals.worker_key_exists(redis_client, "w-owner")
    rq_internals.expire_worker_key(worker, 5)
    assert 0 < redis_client.ttl(worker.key) <= 5


def test_registry_size_runs_no_cleanup(redis_client: redis.Redis) -> None:
    """RQ's ``count`` would fail this dead worker's job (AbandonedJobError); ``registry_size`` only counts."""
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    job = queue.enqueue("time.sleep", 1, job_id="abandoned")
    job.set_status(JobStatus.STARTED)
    redis_client.zadd(queue.started_job_registry.key, {"abandoned:exec1": time.time() - 600})
    assert rq_internals.registry_size(redis_client, queue.started_job_registry.key) == 1
    assert job.get_status(refresh=True) == JobStatus.STARTED
    assert queue.started_job_registry.count == 0  # RQ's own count: the cleanup the bridge avoids
    assert job.get_status(refresh=True) == JobStatus.FAILED


def test_intermediate_list_helpers(redis_client: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    queue.enqueue("time.sleep", 1, job_id="taken")
    redis_client.lmove(queue.key, queue.intermediate_queue_key, "RIGHT", "LEFT")
    assert rq_internals.intermediate_job_ids(redis_client, queue) == ["taken"]
    assert rq_internals.claim_intermediate_job(redis_client, queue, "taken")
    assert not rq_internals.claim_intermediate_job(redis_client, queue, "taken")


def test_unsubscribe_never_waits_for_the_pubsub_threads_sleep(redis_client: redis.Redis) -> None:
    """RQ's order (UNSUBSCRIBE, then redis-py's ``stop()``, which joins without a timeout) let a thread
    that read the confirmation first wait its 60 s sleep for a new subscription; the override sets the
    stop flag first and waits at most a second. Repeated, because the bad order only loses a race."""
    assert "_running" in vars(redis.client.PubSubWorkerThread(redis_client.pubsub(), sleep_time=1))
    for _ in range(20):
        worker = BridgeSimpleWorker([QUEUE], connection=redis_client)
        worker.subscribe()
        started = time.monotonic()
        worker.unsubscribe()
        assert time.monotonic() - started < 2
        worker.pubsub_thread.join(1)
        assert not worker.pubsub_thread.is_alive()
